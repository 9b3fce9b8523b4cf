"""``python -m core.evaluate``: evaluate a model on a labelled folder, or on the held-out parts of its data spec.
The command line only; the work is in :mod:`core.evaluation.evaluate` and :mod:`core.evaluation.source_eval`.

    python -m core.evaluate FOLDER [--weights weights] [--out metrics.json] [--device auto]
    python -m core.evaluate --held-out [--weights weights] [--out metrics.json]

The second form re-runs the per-source evaluation of ``train.py``: the held-out (test) part of every
source the model's card declares, rebuilt and verified against the card's fingerprints.
Exit codes: 0 done, 2 refused (a bad model folder, device, labelled folder or data spec).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.data.splits import split_of_model
from core.errors import CheckpointError
from core.evaluation.evaluate import LabelledRun, metrics_for_run, run_labelled
from core.evaluation.metrics import summary
from core.evaluation.source_eval import evaluate_parts
from core.inference.predictor import Predictor
from core.model.checkpoint import ModelBundle, load_bundle
from core.model.device import select_device
from core.model.registry import add_model_options, model_folder


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m core.evaluate``."""
    p = argparse.ArgumentParser(description="Evaluate a model on a labelled folder tree ROOT/<class>/<images>, or "
                                            "on the held-out parts of the data it was trained from.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", nargs="?", help="labelled folder: one sub-folder per class, named as in the model card")
    p.add_argument("--held-out", action="store_true",
                   help="instead of FOLDER: the held-out part of every source in the model card's data spec")
    p.add_argument("--data-root", default=None, help="with --held-out: folder of the data spec's sources "
                                                     "(default: the one recorded in the card)")
    add_model_options(p)
    p.add_argument("--out", default=None, help="write the full metrics JSON here")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    return p


def held_out_metrics(predictor: Predictor, bundle: ModelBundle, data_root: str | None) -> dict:
    """``{"sets": {part: metrics}, "class_names"}``: the held-out (test) part of every source of the card's data
    spec (:func:`core.evaluation.source_eval.evaluate_parts`). ValueError when the data does not match the card."""
    data, root, split = split_of_model(bundle.card, data_root)
    return {"sets": evaluate_parts(predictor, data, split, root, "test").sets, "class_names": bundle.class_names}


def print_held_out(metrics: dict) -> None:
    """One line per evaluated part: its summary and the detection figures a reader checks first."""
    for key, m in metrics["sets"].items():
        print(key, json.dumps(summary(m) | {"detection": {k: v for k, v in (m.get("detection") or {}).items()
                                                            if k in ("sensitivity", "specificity",
                                                                     "confident_misses")}}))


def print_folder(metrics: dict, run: LabelledRun) -> None:
    """The summary of a labelled folder's metrics, and how many files could not be read."""
    print(json.dumps(summary(metrics), indent=2))
    if run.errors:
        print(f"{len(run.errors)} unreadable file(s) skipped; see 'unreadable' in the JSON")


def main(argv: list[str] | None = None) -> int:
    """``python -m core.evaluate``; returns the exit code (see the module docstring)."""
    p = build_parser()
    args = p.parse_args(argv)
    if bool(args.folder) == args.held_out:
        p.error("give a labelled FOLDER or --held-out (one of the two)")
    try:  # as core.batch: a bad model folder, device or labelled folder is a clear error, not a traceback
        bundle = load_bundle(model_folder(args.weights, args.model))
        predictor = Predictor(bundle, select_device(args.device), batch_size=args.batch_size)
        if args.held_out:
            metrics = held_out_metrics(predictor, bundle, args.data_root)
        else:
            run = run_labelled(predictor, args.folder, args.batch_size, show_bar=True)
            metrics = metrics_for_run(run, bundle.class_names, bundle.temperature)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics["model"] = {"name": bundle.name, **bundle.identity}
    if args.held_out:
        print_held_out(metrics)
    else:
        print_folder(metrics, run)
    if args.out:
        Path(args.out).write_text(json.dumps(metrics, indent=2))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
