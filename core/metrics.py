"""Classification metrics for a labelled set, computed with scikit-learn.

:func:`evaluate_predictions` returns one JSON-ready dict; the dashboard's metrics page
draws exactly this dict, and ``train.py`` / ``core.evaluate`` write it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             roc_auc_score, roc_curve)

from core.calibration import reliability


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray, metric, n_boot: int = 1000, seed: int = 0,
                 alpha: float = 0.05) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric(labels, preds)`` over resampled cases."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    stats = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        stats[i] = metric(labels[idx], preds[idx])
    return float(np.quantile(stats, alpha / 2)), float(np.quantile(stats, 1 - alpha / 2))


def _macro_f1(y, p):
    return f1_score(y, p, average="macro", zero_division=0)


def evaluate_predictions(labels: np.ndarray, probs: np.ndarray, class_names: list[str], files: list[str],
                         probs_uncalibrated: np.ndarray | None = None, n_boot: int = 1000) -> dict:
    """Full metric set for one labelled set.

    Args:
        labels: int (N,) true class indices.
        probs: float (N, K) calibrated probabilities (rows sum to 1).
        class_names: K names, index-aligned with ``probs`` columns.
        files: N file identifiers (for the misclassified list).
        probs_uncalibrated: optional (N, K) before temperature scaling, for the reliability comparison.
    """
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    preds = probs.argmax(axis=1)
    k = len(class_names)
    ks = list(range(k))
    prec, rec, f1, support = precision_recall_fscore_support(labels, preds, labels=ks, zero_division=0)
    out: dict = {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "accuracy_ci95": bootstrap_ci(labels, preds, accuracy_score, n_boot),
        "macro_f1": float(_macro_f1(labels, preds)),
        "macro_f1_ci95": bootstrap_ci(labels, preds, _macro_f1, n_boot),
        "confusion_matrix": confusion_matrix(labels, preds, labels=ks).tolist(),
        "per_class": {name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                             "support": int(support[i])} for i, name in enumerate(class_names)},
        "roc_auc": {}, "roc_curves": {},
        "calibration": {"calibrated": reliability(probs, labels)},
        "misclassified": [
            {"file": files[i], "true": class_names[labels[i]], "predicted": class_names[preds[i]],
             "confidence": float(probs[i, preds[i]])}
            for i in np.flatnonzero(preds != labels)
        ],
    }
    out["ece"] = out["calibration"]["calibrated"]["ece"]
    if probs_uncalibrated is not None:
        out["calibration"]["uncalibrated"] = reliability(np.asarray(probs_uncalibrated), labels)
        out["ece_uncalibrated"] = out["calibration"]["uncalibrated"]["ece"]
    for i, name in enumerate(class_names):
        positives = labels == i
        if positives.all() or not positives.any():
            continue  # AUC is undefined with one class present
        out["roc_auc"][name] = float(roc_auc_score(positives, probs[:, i]))
        fpr, tpr, _ = roc_curve(positives, probs[:, i], drop_intermediate=True)
        out["roc_curves"][name] = {"fpr": np.round(fpr, 5).tolist(), "tpr": np.round(tpr, 5).tolist()}
    return out


def summary(m: dict) -> dict:
    """The headline numbers of :func:`evaluate_predictions` output (for the model card)."""
    keys = ("n", "accuracy", "accuracy_ci95", "macro_f1", "macro_f1_ci95", "ece", "ece_uncalibrated")
    return {k: m[k] for k in keys if k in m} | {"n_misclassified": len(m.get("misclassified", []))}


# Class names that mean "no tumour", compared on their lower-cased letters alone, as prefixes:
# "notumor", "No_Tumour", "_NORMAL T1" (the 44-class variant) match; "abnormal" does not.
NO_FINDING_PREFIXES = ("notumor", "notumour", "normal", "healthy", "nofinding")


def no_finding_classes(class_names: Sequence[str]) -> list[str]:
    """The classes whose names mean "no tumour" (see :data:`NO_FINDING_PREFIXES`); empty if none do."""
    return [n for n in class_names if "".join(filter(str.isalpha, n.lower())).startswith(NO_FINDING_PREFIXES)]


def missed_findings(m: Mapping, class_names: Sequence[str], confident_at: float) -> dict | None:
    """Tumours read as "no tumour": the error a reader most needs to know about.

    A confusion between two tumour classes still sends the slice for review; a tumour called
    "no tumour" with high confidence does not. Read from :func:`evaluate_predictions` output.

    Args:
        m: one set's metrics (``confusion_matrix`` K x K, ``misclassified`` list).
        class_names: the K names, index-aligned with the confusion matrix.
        confident_at: calibrated confidence at and above which a result is shown as confident
            (the dashboard's "uncertain below" threshold), in [0, 1].
    Returns:
        None when no class means "no tumour"; else ``with_finding`` (slices of any other class),
        ``missed`` (of those, predicted as a no-tumour class), ``missed_confident`` (of those, with
        confidence >= ``confident_at``), ``max_confidence`` (highest confidence of a miss, or None),
        ``missed_files`` (their file names), ``without_finding`` and ``false_alarms`` (no-tumour
        slices given a tumour class).
    """
    negative = set(no_finding_classes(class_names))
    if not negative:
        return None
    cm = np.asarray(m["confusion_matrix"])
    is_neg = np.array([n in negative for n in class_names])
    misses = [r for r in m.get("misclassified", []) if r["true"] not in negative and r["predicted"] in negative]
    confidences = [float(r["confidence"]) for r in misses]
    return {
        "with_finding": int(cm[~is_neg].sum()),
        "missed": int(cm[np.ix_(~is_neg, is_neg)].sum()),
        "missed_confident": sum(c >= confident_at for c in confidences),
        "max_confidence": max(confidences, default=None),
        "missed_files": [r["file"] for r in misses],
        "without_finding": int(cm[is_neg].sum()),
        "false_alarms": int(cm[np.ix_(is_neg, ~is_neg)].sum()),
    }
