"""How much a model leans on the skull: its validation slices, as they are and skull-stripped.

Research archives such as BraTS publish brains with the skull removed; in the multi-source data only BraTS looks
like that. A model that calls a tumour less often once the skull is gone has learnt the skull (or the framing
it gives) as part of its tumour evidence. This runs on the VALIDATION slices of every source that shows a skull
(the data spec's ``skull_stripped`` sources are left out), through the model's own crop, with the approximate
strip ``core.data.augment.strip_skull`` at a few depths. It selects nothing and is never run on a test part.

    python -m tools.skull_strip_check [--weights weights [--weights runs/OTHER ...]] [--out reports/skull_strip_check.json]

Writes, per model, source and depth: the share of tumour slices called a tumour (any tumour class), the share of
no-tumour slices called no tumour, and accuracy.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DEPTHS = (0.04, 0.07, 0.10)  # erosion of the head mask, fraction of the side (the training draw is 0.03-0.08)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", action="append", default=[], help="model folder (repeat to compare; default weights/)")
    p.add_argument("--data-root", default=None, help="folder of the data spec's sources (default: the card's)")
    p.add_argument("--cache-dir", default=".cache", help="train.py's cache of preprocessed images")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--out", default=None, help="JSON report (default: print only)")
    return p


def validation_crops(card, data_root, cache_dir) -> tuple[np.ndarray, list, list]:
    """uint8 (N, S, S) validation crops at the model's input spec, their records and the sources left alone."""
    from core.data.sources import index_sources
    from core.data.splits import split_of_model, trainable

    data, root, split = split_of_model(card, data_root, cache_dir)
    images = split.images
    if card.split_spec != card.input_spec:  # split on the ancestor's crop, images at the model's
        again = index_sources(data, root, card.input_spec, cache_dir)
        assert [r.path for s in again for r in s.records] == [r.path for r in split.records]
        images = np.concatenate([s.images for s in again])
    stripped = sorted(s.name for s in data.sources if s.skull_stripped)
    val = [i for i in trainable(split, "val", card.data.left_out) if split.records[i].source not in stripped]
    return images[val], [split.records[i] for i in val], stripped


def predict(predictor, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """Predicted class index per uint8 (N, S, S) crop, through the predictor's standardisation and TTA."""
    out = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i:i + batch]).float() / 255
        logits, _ = predictor.logits_and_scores(predictor.standardise(x))
        out.append(logits.argmax(1))
    return np.concatenate(out)


def rates(pred: np.ndarray, labels: np.ndarray, no_tumour: int) -> dict:
    tumour, normal = labels != no_tumour, labels == no_tumour
    return {"tumour_called_tumour": float(np.mean(pred[tumour] != no_tumour)) if tumour.any() else None,
            "no_tumour_called_no_tumour": float(np.mean(pred[normal] == no_tumour)) if normal.any() else None,
            "accuracy": float(np.mean(pred == labels))}


def main(argv: list[str] | None = None) -> int:
    from core.errors import CheckpointError
    from core.inference.predictor import Predictor
    from core.model.checkpoint import load_bundle
    from core.model.device import select_device

    args = build_parser().parse_args(argv)
    device = select_device(args.device)
    t0 = time.time()
    models = []
    for folder in args.weights or [str(REPO / "weights")]:
        try:
            bundle = load_bundle(folder)
            if "notumor" not in bundle.class_names:
                raise ValueError(f"{folder} has no 'notumor' class: this check is for the tumour / no-tumour models")
            images, records, stripped = validation_crops(bundle.card, args.data_root, args.cache_dir)
        except (CheckpointError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        models.append(check(Predictor(bundle, device), images, records, stripped, folder))
    report = {"command": "python -m tools.skull_strip_check " + " ".join(argv if argv is not None else sys.argv[1:]),
              "part": "val", "depths": list(DEPTHS), "seconds": round(time.time() - t0, 1), "models": models}
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def check(predictor, images: np.ndarray, records: list, stripped: list, folder: str) -> dict:
    """One model's rows: its validation crops as they are and stripped at each of ``DEPTHS``, per source."""
    from core.data.augment import strip_skull

    names = list(predictor.bundle.class_names)
    labels = np.array([r.label for r in records])  # class indices in the model's order
    sources = np.array([r.source for r in records])
    no_tumour = names.index("notumor")
    runs = {"as stored": predict(predictor, images)}
    for depth in DEPTHS:
        runs[f"skull stripped, depth {depth:g}"] = predict(predictor, np.stack([strip_skull(im, depth) for im in images]))
    table = {name: {src: dict(rates(pred[sources == src], labels[sources == src], no_tumour),
                              slices=int((sources == src).sum()))
                    for src in dict.fromkeys(sources.tolist())}
             for name, pred in runs.items()}

    def share(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    for name, per in table.items():
        print(f"{folder} {name}: " + "; ".join(f"{s} tumour->tumour {share(r['tumour_called_tumour'])}, "
                                               f"normal->normal {share(r['no_tumour_called_no_tumour'])}"
                                               for s, r in per.items()))
    return {"folder": folder, "model": predictor.bundle.card.identity, "sources_left_alone": stripped, "rows": table}


if __name__ == "__main__":
    sys.exit(main())
