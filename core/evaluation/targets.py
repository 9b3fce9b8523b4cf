"""The model's acceptance targets, read off the figures that ``train.py`` and the tools wrote.

One list, so the README and the metrics page say the same thing: each target names the metric set and
field it is judged on, and :func:`evaluate_targets` returns the measured value and whether it is met
(``None`` when the figure was not measured, e.g. a set missing from a metrics file).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Target:
    """``measure(metrics, extra) -> value or None``; met when ``value >= bound`` (or ``<=`` with ``at_most``)."""

    group: str
    text: str
    bound: float
    measure: Callable[[Mapping, Mapping], float | None]
    at_most: bool = False
    fmt: str = ".3f"


def _get(d: Mapping | None, *path):
    for p in path:
        if not isinstance(d, Mapping) or p not in d:
            return None
        d = d[p]
    return d


def _det(set_key: str, *field: str) -> Callable[[Mapping, Mapping], float | None]:
    return lambda m, _: _get(m, "sets", set_key, "detection", *field)


def _min_by_sequence(set_key: str) -> Callable[[Mapping, Mapping], float | None]:
    def f(m: Mapping, _: Mapping) -> float | None:
        seq = _get(m, "sets", set_key, "detection", "by_sequence") or {}
        vals = [v["sensitivity"] for v in seq.values() if v.get("sensitivity") is not None]
        return min(vals) if vals else None
    return f


def _worst_over_test_sets(field: str, largest: bool) -> Callable[[Mapping, Mapping], float | None]:
    """The worst value of a per-set figure over every held-out (test) part."""
    def f(m: Mapping, _: Mapping) -> float | None:
        vals = []
        for key, s in (_get(m, "sets") or {}).items():
            if s.get("part") != "test" or key.endswith("_leak_free"):
                continue
            v = _get(s, "detection", field) if field.startswith("confident") else s.get(field)
            if v is not None:
                vals.append(v)
        return (max if largest else min)(vals) if vals else None
    return f


def _clahe_drop(_: Mapping, extra: Mapping) -> float | None:
    shifts = _get(extra, "shift_eval", "shifts") or {}
    if "clahe" not in shifts or "none" not in shifts:
        return None
    return shifts["none"]["accuracy"] - shifts["clahe"]["accuracy"]


# Every bundle is judged on this one.
WEIGHTS_TARGET = Target("Weights", "weights file ≤ 50 MB", 50.0,
                        lambda _, e: None if e.get("card") is None or e["card"].weights.bytes is None
                        else e["card"].weights.bytes / 1e6, at_most=True, fmt=".1f")

TARGETS: tuple[Target, ...] = (
    Target("Feltrin held-out", "tumour sensitivity ≥ 0.97", 0.97, _det("feltrin_test", "sensitivity")),
    Target("Feltrin held-out", "tumour sensitivity ≥ 0.95 in each sequence (lowest shown)", 0.95,
           _min_by_sequence("feltrin_test")),
    Target("Feltrin held-out", "specificity ≥ 0.95", 0.95, _det("feltrin_test", "specificity")),
    Target("Feltrin held-out", "other lesions called \"no tumour\" ≤ 5 %", 0.05,
           lambda m, _: _get(m, "sets", "feltrin_test", "other_lesion_called_no_tumour", "rate"), at_most=True),
    Target("BraTS held-out patients", "slice sensitivity ≥ 0.95 on slices with ≥ 1 cm² of tumour", 0.95,
           _det("brats_test", "sensitivity_at_least_min")),
    Target("BraTS held-out patients", "specificity ≥ 0.90 on brain slices without tumour", 0.90,
           _det("brats_test", "specificity")),
    Target("BraTS held-out patients", "Grad-CAM pointing game ≥ 0.80", 0.80,
           lambda m, _: _get(m, "sets", "brats_test", "pointing_game", "rate")),
    Target("Every held-out part", "confident misses ≤ 1 % of tumour slices (worst part shown)", 0.01,
           _worst_over_test_sets("confident_miss_rate", largest=True), at_most=True),
    Target("Kaggle Testing", "accuracy ≥ 0.985 (other-lesion answers count as wrong)", 0.985,
           lambda m, _: _get(m, "sets", "kaggle_test", "accuracy")),
    Target("Kaggle Testing", "leakage-free accuracy ≥ 0.98", 0.98,
           lambda m, _: _get(m, "sets", "kaggle_test_leak_free", "accuracy")),
    Target("Stress test", "CLAHE row no more than 1 point below the unchanged images", 0.01, _clahe_drop,
           at_most=True),
    Target("Calibration", "ECE ≤ 0.03 on each held-out part (worst part shown)", 0.03,
           _worst_over_test_sets("ece", largest=True), at_most=True),
    WEIGHTS_TARGET,
    Target("Speed", "single scan predict + Grad-CAM ≤ 250 ms p50 on the 2-core CPU (bench)", 250.0,
           lambda _, e: _get(e, "single_scan_p50_ms"), at_most=True, fmt=".0f"),
)


def _collapsed_accuracy(set_key: str, view: str) -> Callable[[Mapping, Mapping], float | None]:
    return lambda m, _: _get(m, "sets", set_key, "collapsed", view, "accuracy")


# The 44-class model (tumour type x sequence, Feltrin slices; issue 19), judged on its held-out part.
FINE_TARGETS: tuple[Target, ...] = (
    Target("Feltrin held-out (44 classes)", "macro-F1 ≥ 0.90 over the 44 classes", 0.90,
           lambda m, _: _get(m, "sets", "feltrin_test", "macro_f1")),
    Target("Feltrin held-out (44 classes)", "tumour-type accuracy ≥ 0.93 (sequences merged)", 0.93,
           _collapsed_accuracy("feltrin_test", "type")),
    Target("Feltrin held-out (44 classes)", "sequence accuracy ≥ 0.97 (types merged)", 0.97,
           _collapsed_accuracy("feltrin_test", "sequence")),
    WEIGHTS_TARGET,
)


def evaluate_targets(metrics: Mapping, extra: Mapping | None = None,
                     targets: tuple[Target, ...] = TARGETS) -> list[dict]:
    """Rows ``{"group", "target", "measured", "met"}`` (measured None and met None: not measured).

    ``extra`` may hold ``card`` (the :class:`core.model.card.ModelCard`), ``shift_eval`` (the stress-test report
    for this model) and ``single_scan_p50_ms`` (from the benchmark for this model). ``targets``: :data:`TARGETS`
    (the default model) or :data:`FINE_TARGETS` (the 44-class model).
    """
    extra = extra or {}
    rows = []
    for t in targets:
        value = t.measure(metrics, extra)
        met = None if value is None else (value <= t.bound if t.at_most else value >= t.bound)
        rows.append({"group": t.group, "target": t.text, "measured": value, "met": met,
                     "shown": "not measured" if value is None else format(value, t.fmt)})
    return rows
