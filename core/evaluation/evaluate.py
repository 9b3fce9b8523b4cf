"""Evaluate a model on any labelled folder tree (``ROOT/<class>/**/<image>``): the library behind
``python -m core.evaluate`` (its command line is :mod:`core.evaluate`; the held-out parts of a data spec are
:mod:`core.evaluation.source_eval`'s).

The same code path as serving: files go through :func:`core.inference.pipeline.stream`, the one
pipeline every consumer uses; :func:`run_sources` is its metrics accumulator. ``train.py`` uses it for the shipped
metrics, and the dashboard for re-evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from core.inference.calibration import softmax
from core.review.audit_trail import AuditTrail, record_prediction
from core.data.dataset import list_labelled_files
from core.evaluation.metrics import evaluate_predictions
from core.inference.pipeline import Source, stream
from core.inference.predictor import Predictor

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
