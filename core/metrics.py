"""Classification metrics for a labelled set, computed with scikit-learn.

:func:`evaluate_predictions` returns one JSON-ready dict; the dashboard's metrics page
draws exactly this dict, and ``train.py`` / ``core.evaluate`` write it.
"""
from __future__ import annotations

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
