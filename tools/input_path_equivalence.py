"""Is the fast input path (``head_search="gamma_hist"``) equivalent to a model's own input path? Issue 22.

On the validation slices of every source of the model's multi-source split (rebuilt from its card and verified
against the card's fingerprint, as ``tools.validation_split`` does), each slice goes through both paths exactly as
the batch pipeline runs them (``core.inference.pipeline.load_file``: read, ``decode_for``, ``preprocess_decoded``):

* reference: the card's ``input_spec`` (full decode, its own head search), or for a card already on the fast
  path, the same spec with the search it replaces (``gamma_otsu``: the definition it must keep matching);
* candidate: the same spec with ``head_search="gamma_hist"`` (a JPEG decoded at the size the crop needs, the
  histogram head search, the 8-bit crop). Volume slices have no file: both paths start from the same decoded
  slice and differ only in the search and the crop.

It reports, per source and pooled, the crop-box IoU between the two (gate: IoU >= 0.98 on >= 99 % of slices) and
the validation accuracy of the shipped weights on each path (gate: within 0.2 points), and writes
``reports/input_path_equivalence.json``. It changes no model card: flipping a model to the fast path is
``train.py``'s decision (its card records the spec), taken on this report.

    python -m tools.input_path_equivalence                       # shipped weights/, card's data root
    python -m tools.input_path_equivalence --limit 50            # a smoke run on the first 50 slices per source
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
IOU_GATE, IOU_SHARE_GATE, ACCURACY_GATE_POINTS = 0.98, 0.99, 0.2


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """IoU of two (x0, y0, x1, y1) boxes in pixels; 1.0 for two empty boxes."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union if union > 0 else 1.0


def _summary(ious: list[float], right_ref: list[bool], right_new: list[bool], same: list[bool]) -> dict:
    ious_a = np.asarray(ious, float)
    n = len(ious_a)
    acc_ref, acc_new = float(np.mean(right_ref)) if n else 0.0, float(np.mean(right_new)) if n else 0.0
    return {"slices": n, "iou_share_at_least_0.98": round(float((ious_a >= IOU_GATE).mean()), 4) if n else None,
            "iou_min": round(float(ious_a.min()), 4) if n else None,
            "iou_median": round(float(np.median(ious_a)), 4) if n else None,
            "accuracy_reference": round(acc_ref, 4), "accuracy_fast": round(acc_new, 4),
            "accuracy_delta_points": round(100 * (acc_new - acc_ref), 2),
            "same_prediction_share": round(float(np.mean(same)), 4) if n else None}


def _items(split, data, root: Path, val: np.ndarray, limit: int | None):
    """(source name, label, loader) per validation record; a loader returns (reference input, fast input)."""
    from core.io.decode import read_source_bytes
    from core.io.types import DEFAULT_LIMITS
    from core.data.sources import iter_volume_slices, source_root

    by_source: dict[str, list[int]] = {}
    for i in val:
        by_source.setdefault(split.records[i].source, []).append(int(i))
    for name, idx in by_source.items():
        idx = idx[:limit] if limit else idx
        source = data.source(name)
        if source.kind == "folder_tree":
            for i in idx:
                r = split.records[i]
                path = source_root(source, root, bool(split.fixed_test[i])) / r.path
                yield name, r.label, ("file", read_source_bytes(path, DEFAULT_LIMITS)[0], path.name)
        else:
            wanted = {split.records[i].path: split.records[i] for i in idx}
            cases = {r.case for r in wanted.values()}
            for item in iter_volume_slices(source, root / source.root, cases):
                r = wanted.get(item.record_path)
                if r is not None:
                    yield name, r.label, ("slice", item.image, item.record_path)


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m tools.input_path_equivalence``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(REPO / "weights"), help="model folder")
    p.add_argument("--data-root", default=None, help="folder of the data spec's sources (default: the card's)")
    p.add_argument("--cache-dir", default=".cache", help="train.py's cache of preprocessed images")
    p.add_argument("--out", default=str(REPO / "reports" / "input_path_equivalence.json"))
    p.add_argument("--limit", type=int, default=None, help="at most this many slices per source (smoke runs)")
    p.add_argument("--device", default="cpu", help="device for the forward passes (core.model.device.select_device)")
    return p


def compare_paths(predictor, items, ref_spec, fast_spec) -> tuple[dict[str, dict[str, list]], list[str]]:
    """Each item of :func:`_items` through both input paths, predicted 64 at a time: per source, the crop-box IoU
    and whether each path (and both alike) predicted the label; and the reasons of the items that failed."""
    from core.errors import ImageLoadError
    from core.preprocess import decode_for, preprocess_decoded

    rows: dict[str, dict[str, list]] = {}
    failed: list[str] = []
    pending: list[tuple[str, int, object, object]] = []

    def flush() -> None:
        if not pending:
            return
        ref = predictor.predict_preprocessed([x[2] for x in pending])
        new = predictor.predict_preprocessed([x[3] for x in pending])
        for (src, label, a, b), pa, pb in zip(pending, ref, new):
            row = rows.setdefault(src, {"iou": [], "ref": [], "new": [], "same": []})
            row["iou"].append(box_iou(a.crop_box, b.crop_box))
            row["ref"].append(pa.index == label)
            row["new"].append(pb.index == label)
            row["same"].append(pa.index == pb.index)
        pending.clear()

    for src, label, (kind, payload, name) in items:
        try:
            if kind == "file":  # exactly what core.inference.pipeline.load_file runs for each spec
                a = preprocess_decoded(decode_for(payload, name, ref_spec), ref_spec)
                b = preprocess_decoded(decode_for(payload, name, fast_spec), fast_spec)
            else:
                a, b = preprocess_decoded(payload, ref_spec), preprocess_decoded(payload, fast_spec)
        except ImageLoadError as exc:
            failed.append(str(exc))
            continue
        pending.append((src, label, a, b))
        if len(pending) >= 64:
            flush()
    flush()
    return rows, failed


def main(argv: list[str] | None = None) -> int:
    from core.model.checkpoint import load_bundle
    from core.data.dataset import fingerprint
    from core.model.device import select_device
    from core.errors import CheckpointError
    from core.inference.predictor import Predictor
    from core.data.splits import split_of_model, trainable
    from core.preprocess import full_path_spec

    args = build_parser().parse_args(argv)

    try:
        bundle = load_bundle(args.weights)
        data, root, split = split_of_model(bundle.card, args.data_root, args.cache_dir, 2)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    val = trainable(split, "val", bundle.card.data.left_out)
    if fingerprint([split.records[i] for i in val]) != bundle.card.training.validation_fingerprint:
        print("error: the rebuilt validation part does not match the card's validation fingerprint", file=sys.stderr)
        return 2
    ref_spec = full_path_spec(bundle.spec)
    fast_spec = replace(ref_spec, head_search="gamma_hist")
    predictor = Predictor(bundle, select_device(args.device))
    rows, failed = compare_paths(predictor, _items(split, data, root, val, args.limit), ref_spec, fast_spec)
    per_source = {src: _summary(r["iou"], r["ref"], r["new"], r["same"]) for src, r in rows.items()}
    pooled = _summary(*(sum((r[k] for r in rows.values()), []) for k in ("iou", "ref", "new", "same")))
    gates = {"iou_share": pooled["iou_share_at_least_0.98"] is not None
             and pooled["iou_share_at_least_0.98"] >= IOU_SHARE_GATE,
             "accuracy": abs(pooled["accuracy_delta_points"]) <= ACCURACY_GATE_POINTS}
    report = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m tools.input_path_equivalence" + ("" if not argv and len(sys.argv) < 2 else " " + " ".join(
            argv if argv is not None else sys.argv[1:])),
        "model": {"sha256": bundle.sha256, "version": bundle.version, "tta": predictor.tta,
                  "precision": predictor.precision},
        "reference_spec": ref_spec.to_dict(), "fast_spec": fast_spec.to_dict(),
        "gates": {"iou": f">= {IOU_GATE} on >= {100 * IOU_SHARE_GATE:.0f} % of slices",
                  "accuracy": f"within {ACCURACY_GATE_POINTS} points"},
        "passed": {**gates, "all": all(gates.values()) and not args.limit},
        "limit_per_source": args.limit, "pooled": pooled, "per_source": per_source, "unreadable": failed,
        # What train.py recorded for these weights on the same part (its own cached images): a sanity check.
        "card_val_accuracy": bundle.card.training.kept_validation().get("val_accuracy"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps({"pooled": pooled, "per_source": per_source, "passed": report["passed"]}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
