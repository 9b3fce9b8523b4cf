"""Evaluate a model on any labelled folder tree (``ROOT/<class>/**/<image>``).

    python -m core.evaluate FOLDER [--weights weights] [--out metrics.json] [--device auto]
    python -m core.evaluate --held-out [--weights weights] [--out metrics.json]

The second form re-runs the per-source evaluation of ``train.py``: the held-out (test) part of every
source the model's card declares, rebuilt and verified against the card's fingerprints.

The same code path as serving: files go through :func:`core.inference.pipeline.stream`, the one
pipeline every consumer uses; :func:`run_sources` is its metrics accumulator. ``train.py`` uses it for the shipped
metrics, and the dashboard for re-evaluation.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from core.inference.calibration import softmax
from core.review.audit_trail import AuditTrail, record_prediction
from core.model.checkpoint import DEFAULT_MODEL_DIR, load_bundle
from core.data.dataset import list_labelled_files
from core.model.device import select_device
from core.errors import CheckpointError
from core.evaluation.metrics import evaluate_predictions, summary
from core.inference.pipeline import Source, stream
from core.inference.predictor import Predictor
from core.model.registry import find_model

ProgressFn = Callable[[int, int], None]


@dataclass
class LabelledRun:
    """Raw outputs for the readable files of a labelled tree (index-aligned)."""

    files: list[str]
    labels: np.ndarray  # int (N,)
    logits: np.ndarray  # float (N, K), before temperature
    ood_flags: np.ndarray  # bool (N,)
    ood_scores: np.ndarray  # float (N,)
    errors: list[dict]  # unreadable files: {"file", "error"}


def run_labelled(predictor: Predictor, root: str | Path, batch_size: int = 32,
                 progress: ProgressFn | None = None, show_bar: bool = False,
                 audit: AuditTrail | None = None) -> LabelledRun:
    """Predict every image below ``root/<class>`` for the predictor's classes.

    Sub-folders whose names are not among the model's classes are ignored. With
    ``audit``, every prediction (file SHA-256, never the image) is appended to it.
    """
    root = Path(root)
    names = predictor.class_names
    if not any((root / n).is_dir() for n in names):
        raise ValueError(f"{root} has none of the class folders {names}; expected ROOT/<class>/<images>")
    return run_files(predictor, root, list_labelled_files(root, names), batch_size, progress, show_bar, audit)


def run_files(predictor: Predictor, root: str | Path, files: list[tuple[str, int]], batch_size: int = 32,
              progress: ProgressFn | None = None, show_bar: bool = False,
              audit: AuditTrail | None = None) -> LabelledRun:
    """Predict the files ``root/<relative path>`` with their known labels (index into the model's classes)."""
    root = Path(root)
    return run_sources(predictor, ((root / rel, lab) for rel, lab in files), len(files), root=root,
                       batch_size=batch_size, progress=progress, show_bar=show_bar, audit=audit)


def run_sources(predictor: Predictor, sources: Iterable[tuple[Source, int]], total: int = 0, *,
                root: str | Path | None = None, batch_size: int = 32, progress: ProgressFn | None = None,
                show_bar: bool = False, audit: AuditTrail | None = None, num_workers: int | None = 0) -> LabelledRun:
    """The metrics accumulator over :func:`core.inference.pipeline.stream`: ``(source, label)`` pairs (a file path, or
    an :class:`core.inference.pipeline.InMemory` image such as a volume slice) -> a :class:`LabelledRun`.

    ``label`` indexes the model's classes. Unreadable files are listed in ``errors``, never raised. With
    ``audit``, every prediction (file SHA-256, never the image) is appended to it.
    """
    labels_in: list[int] = []

    def feed() -> Iterator[Source]:  # the stream reads a source only after its label is known
        for src, lab in sources:
            labels_in.append(lab)
            yield src

    kept, labels, logits, flags, scores, errors = [], [], [], [], [], []
    bar = tqdm(total=total or None, desc="evaluating", disable=not show_bar)
    for i, res in enumerate(stream(predictor, feed(), root=root, batch_size=batch_size, num_workers=num_workers,
                                   hash_files=audit is not None), start=1):
        pr = res.prediction
        if pr is None:
            errors.append({"file": res.path, "error": res.error})
        else:
            if audit is not None:
                record_prediction(audit, res, source="evaluate", model_sha256=predictor.bundle.sha256,
                                  model_version=predictor.bundle.version)
            kept.append(res.path)
            labels.append(labels_in[res.index])
            logits.append(pr.logits)
            scores.append(pr.ood_score)
            flags.append(pr.ood)
        bar.update(1)
        if progress:
            progress(i, total)
    bar.close()
    k = len(predictor.class_names)
    return LabelledRun(kept, np.array(labels, int), np.array(logits).reshape(-1, k), np.array(flags, bool),
                       np.array(scores, float), errors)


def metrics_for_run(run: LabelledRun, class_names: list[str], temperature: float,
                    mask: np.ndarray | None = None) -> dict:
    """:func:`core.evaluation.metrics.evaluate_predictions` on a run (optionally a boolean subset)."""
    m = np.ones(len(run.files), bool) if mask is None else mask
    files = [f for f, keep in zip(run.files, m) if keep]
    out = evaluate_predictions(run.labels[m], softmax(run.logits[m], temperature), class_names, files,
                               probs_uncalibrated=softmax(run.logits[m], 1.0))
    out["ood_flagged"] = int(run.ood_flags[m].sum())
    out["unreadable"] = run.errors if mask is None else []
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Evaluate a model on a labelled folder tree ROOT/<class>/<images>, or "
                                            "on the held-out parts of the data it was trained from.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", nargs="?", help="labelled folder: one sub-folder per class, named as in the model card")
    p.add_argument("--held-out", action="store_true",
                   help="instead of FOLDER: the held-out part of every source in the model card's data spec")
    p.add_argument("--data-root", default=None, help="with --held-out: folder of the data spec's sources "
                                                     "(default: the one recorded in the card)")
    p.add_argument("--weights", default=str(DEFAULT_MODEL_DIR), help="model folder (model_card.json + weights), or "
                                                                      "with --model the registry folder holding it")
    p.add_argument("--model", default=None, help="a model of the registry --weights by name (core.model.registry); "
                                                 "default: the folder's own bundle")
    p.add_argument("--out", default=None, help="write the full metrics JSON here")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    args = p.parse_args(argv)
    if bool(args.folder) == args.held_out:
        p.error("give a labelled FOLDER or --held-out (one of the two)")
    try:  # as core.review.folder: a bad model folder, device or labelled folder is a clear error, not a traceback
        bundle = load_bundle(find_model(args.weights, args.model) if args.model else args.weights)
        predictor = Predictor(bundle, select_device(args.device), batch_size=args.batch_size)
        if args.held_out:
            from core.evaluation.source_eval import evaluate_parts
            from core.data.splits import split_of_model

            data, root, split = split_of_model(bundle.card, args.data_root)
            metrics = {"sets": evaluate_parts(predictor, data, split, root, "test").sets,
                       "class_names": bundle.class_names}
        else:
            run = run_labelled(predictor, args.folder, args.batch_size, show_bar=True)
            metrics = metrics_for_run(run, bundle.class_names, bundle.temperature)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics["model"] = {"name": bundle.name, **bundle.identity}
    if args.held_out:
        for key, m in metrics["sets"].items():
            print(key, json.dumps(summary(m) | {"detection": {k: v for k, v in (m.get("detection") or {}).items()
                                                                if k in ("sensitivity", "specificity",
                                                                         "confident_misses")}}))
    else:
        print(json.dumps(summary(metrics), indent=2))
        if run.errors:
            print(f"{len(run.errors)} unreadable file(s) skipped; see 'unreadable' in the JSON")
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
