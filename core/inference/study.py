"""One verdict per series: every slice predicted in one batched pass, then a stated rule (no streamlit).

The rule (:class:`SeriesRule`): a series shows a tumour when at least ``min_run`` contiguous slices each have a
tumour probability (1 - P(no tumour), calibrated) of at least ``threshold`` and are not outside intended use.
``k`` and ``t`` were chosen on the validation patients of the shared volumes by ``tools/choose_series_rule.py``
(recorded in ``reports/series_rule.json``); :func:`load_rule` reads that record, with a fallback default.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from core.paths import REPORTS_DIR
from core.inference.ood import image_gate
from core.inference.pipeline import InMemory, PipelineBatch, Result, load_file, predict_batch
from core.inference.predictor import Predictor
from core.preprocess import Preprocessed, preprocess_decoded
from core.io.series import Series

RULE_FILE = REPORTS_DIR / "series_rule.json"
NO_TUMOUR = "notumor"
SERIES_OOD_FRACTION = 0.5  # a series is outside intended use when over half its non-blank slices are
UNCERTAIN_MARGIN = 0.1  # the verdict is "uncertain" when it flips with the threshold this much lower, ...


@dataclass(frozen=True)
class SeriesRule:
    """Tumour if >= ``min_run`` contiguous slices have tumour probability >= ``threshold`` (not OOD)."""

    min_run: int = 3
    threshold: float = 0.5

    def describe(self) -> str:
        return (f"tumour when at least {self.min_run} contiguous slices each have a tumour probability "
                f"(1 − P(no tumour)) of at least {self.threshold:.0%} and are not outside intended use")


def rule_model_sha256(path: str | Path = RULE_FILE) -> str | None:
    """SHA-256 of the model whose validation results chose the recorded rule (None without a record)."""
    try:
        return str(json.loads(Path(path).read_text())["model"]["sha256"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def load_rule(path: str | Path = RULE_FILE) -> SeriesRule:
    """The rule recorded by ``tools/choose_series_rule.py``; the class default when there is no record."""
    try:
        rec = json.loads(Path(path).read_text())["chosen"]
        return SeriesRule(int(rec["min_run"]), float(rec["threshold"]))
    except (OSError, KeyError, TypeError, ValueError):
        return SeriesRule()


@dataclass
class SeriesReview:
    """Per-slice results and the series verdict.

    Attributes:
        probabilities: float32 (Z, K) calibrated class probabilities per slice (``class_names`` order); NaN rows
            for blank slices (no signal), which are not predicted.
        tumour_prob: float32 (Z,) 1 - P(no tumour); 0 for a blank slice.
        ood: bool (Z,) slice outside intended use; ``blank``: bool (Z,) an empty slice (no signal).
        ood_reasons: (Z,) the reason per flagged slice, else None.
        positive: bool (Z,) tumour_prob >= threshold and not OOD.
        run: (first, last) slice index of the longest positive run, or None.
        tumour: the verdict; ``tumour_type``: the most likely tumour class over the run (None without one).
        top_slices: up to 5 slice indices with the highest tumour probability (not OOD), highest first.
        uncertain: the verdict flips with the threshold ``UNCERTAIN_MARGIN`` lower or halfway to 1, or with the
            run length halved or doubled (the verdict is near the rule's edge).
        series_ood: over half the non-blank slices are outside intended use.
    """

    class_names: list[str]
    plane: str
    rule: SeriesRule
    probabilities: np.ndarray
    tumour_prob: np.ndarray
    ood: np.ndarray
    blank: np.ndarray
    ood_reasons: list[str | None]
    positive: np.ndarray
    run: tuple[int, int] | None
    tumour: bool
    tumour_type: str | None
    top_slices: list[int]
    uncertain: bool
    series_ood: bool
    scale: tuple[float, float] = (0.0, 1.0)
    warnings: list[str] = field(default_factory=list)

    @property
    def n_slices(self) -> int:
        return int(len(self.tumour_prob))

    def verdict_text(self) -> str:
        if self.series_ood:
            return "Outside intended use"
        if not self.tumour:
            return "No tumour found"
        return f"Tumour: {self.tumour_type}" if self.tumour_type else "Tumour"

    def summary(self) -> dict:
        """Plain-data summary (for JSON/CSV downloads): no pixel data, no patient tag."""
        return {
            "verdict": self.verdict_text(), "tumour": bool(self.tumour), "tumour_type": self.tumour_type,
            "rule": self.rule.describe(), "rule_min_run": self.rule.min_run, "rule_threshold": self.rule.threshold,
            "plane": self.plane, "n_slices": self.n_slices,
            "positive_range": [self.run[0] + 1, self.run[1] + 1] if self.run else None,  # 1-based, as shown
            "n_positive_slices": int(self.positive.sum()),
            "max_tumour_probability": float(self.tumour_prob.max(initial=0.0)),
            "top_slices": [k + 1 for k in self.top_slices], "uncertain": bool(self.uncertain),
            "outside_intended_use": bool(self.series_ood), "n_ood_slices": int(self.ood.sum()),
        }


def longest_run(mask: np.ndarray) -> tuple[int, int] | None:
    """(first, last) index of the longest run of True in a bool (Z,) array (the first on a tie), or None."""
    best, start, best_len = None, None, 0
    for i, v in enumerate(list(mask) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            if i - start > best_len:
                best, best_len = (start, i - 1), i - start
            start = None
    return best


def decide(tumour_prob: np.ndarray, ood: np.ndarray, rule: SeriesRule) -> tuple[bool, tuple[int, int] | None]:
    """The rule on per-slice results: (tumour?, longest positive run)."""
    run = longest_run((tumour_prob >= rule.threshold) & ~ood)
    return (run is not None and run[1] - run[0] + 1 >= rule.min_run), run


def slice_inputs(predictor: Predictor, series: Series, plane: str, scale: tuple[float, float],
                 indices) -> list[Preprocessed]:
    """Preprocessed model inputs of the given slices (the same path as a single uploaded slice)."""
    return [preprocess_decoded(series.decoded_slice(int(k), plane, scale), predictor.spec) for k in indices]


def slice_sources(series: Series, plane: str, scale: tuple[float, float], indices) -> Iterator[InMemory]:
    """The slices as the pipeline's in-memory sources (decoded lazily, one at a time, as the pipeline asks)."""
    for k in indices:
        yield InMemory(f"{series.name} slice {int(k) + 1}", series.decoded_slice(int(k), plane, scale))


def predict_series(predictor: Predictor, series: Series, plane: str = "axial", chunk: int = 32,
                   progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str | None], tuple[float, float]]:
    """Every slice predicted, ``chunk`` slices per forward pass (memory bounded by the chunk, not the series).

    Runs the one pipeline's two stages (``core.inference.pipeline.load_file`` on :class:`InMemory` slices, then
    ``core.inference.pipeline.predict_batch``), so a slice here is preprocessed and predicted exactly as an uploaded one.
    Returns (probabilities float32 (Z, K), NaN for a blank slice, which is not predicted; ood bool (Z,);
    blank bool (Z,); reasons; the series' intensity scale).
    ``progress(done, total)`` is called after each chunk.
    """
    n = series.n_slices(plane)
    scale = series.intensity_scale()
    probs = np.full((n, len(predictor.class_names)), np.nan, np.float32)
    ood, blank = np.zeros(n, bool), np.zeros(n, bool)
    reasons: list[str | None] = [None] * n
    queue: list[Result] = []

    def run(rows: list[Result]) -> None:
        # Every forward pass has the same batch shape (the last one padded with copies): the CPU backend
        # (oneDNN) prepares its kernels again, for seconds, for every new batch shape.
        pad = [Result("padding", item=rows[-1].item) for _ in range(chunk - len(rows))] if n > chunk else []
        for row in predict_batch(predictor, PipelineBatch(rows + pad, None))[:len(rows)]:
            k, pred = row.index, row.prediction
            probs[k] = [pred.probabilities[c] for c in predictor.class_names]
            ood[k], reasons[k] = pred.ood, pred.ood_reason

    for start in range(0, n, chunk):
        idx = range(start, min(n, start + chunk))
        for k, src in zip(idx, slice_sources(series, plane, scale, idx)):
            row = load_file(src, predictor.spec, hash_file=False, index=k)
            if row.item is None:  # a slice that cannot be preprocessed: shown as such, never a traceback
                ood[k], reasons[k] = True, f"slice could not be preprocessed ({row.error})"
            elif row.item.blank:
                # No signal at all (the empty slices above and below a skull-stripped brain): outside intended
                # use whatever the model says (``core.inference.ood.image_gate``), so the model is not run; no probabilities.
                blank[k], ood[k], reasons[k] = True, True, image_gate(0.0, True)
            else:
                queue.append(row)
        while len(queue) >= chunk:
            run(queue[:chunk])
            queue = queue[chunk:]
        if progress is not None:
            progress(min(n, start + chunk), n)
    if queue:
        run(queue)
    return probs, ood, blank, reasons, scale


def summarise(probs: np.ndarray, ood: np.ndarray, blank: np.ndarray, class_names: list[str], rule: SeriesRule,
              plane: str = "axial", reasons: list[str | None] | None = None,
              scale: tuple[float, float] = (0.0, 1.0), warnings: list[str] | None = None) -> SeriesReview:
    """The series verdict from per-slice results (see :class:`SeriesReview`)."""
    no = class_names.index(NO_TUMOUR) if NO_TUMOUR in class_names else None
    tumour_prob = np.nan_to_num(1.0 - probs[:, no] if no is not None else probs.max(axis=1), nan=0.0).astype(np.float32)
    tumour, run = decide(tumour_prob, ood, rule)
    positive = (tumour_prob >= rule.threshold) & ~ood
    tumour_type = None
    if tumour and run is not None:
        tumour_classes = [i for i, c in enumerate(class_names) if i != no]
        mean = probs[run[0]:run[1] + 1][:, tumour_classes].mean(axis=0)
        tumour_type = class_names[tumour_classes[int(mean.argmax())]]
    candidates = np.flatnonzero(~ood)
    top = [int(k) for k in candidates[np.argsort(-tumour_prob[candidates], kind="stable")][:5]]
    # Halfway to 1 rather than a fixed step up: a threshold near 1 plus a step would call nothing, ever.
    flips = {decide(tumour_prob, ood, r)[0] for r in (
        rule, SeriesRule(rule.min_run, max(0.0, rule.threshold - UNCERTAIN_MARGIN)),
        SeriesRule(rule.min_run, (1.0 + rule.threshold) / 2),
        SeriesRule(max(1, rule.min_run // 2), rule.threshold), SeriesRule(2 * rule.min_run, rule.threshold))}
    content = ~blank
    series_ood = bool(content.sum() == 0 or ood[content].mean() > SERIES_OOD_FRACTION)
    return SeriesReview(list(class_names), plane, rule, probs, tumour_prob, ood, blank,
                        list(reasons or [None] * len(probs)), positive, run, bool(tumour), tumour_type, top,
                        len(flips) > 1, series_ood, scale, list(warnings or []))


def review_series(predictor: Predictor, series: Series, rule: SeriesRule | None = None, plane: str = "axial",
                  chunk: int = 32, progress=None) -> SeriesReview:
    """Predict every slice of ``plane`` and summarise the series with ``rule`` (default: :func:`load_rule`)."""
    probs, ood, blank, reasons, scale = predict_series(predictor, series, plane, chunk, progress)
    return summarise(probs, ood, blank, predictor.class_names, rule or load_rule(), plane, reasons, scale,
                     series.warnings)

