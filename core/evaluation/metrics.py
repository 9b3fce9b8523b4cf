"""Classification metrics for a labelled set, computed with scikit-learn.

:func:`evaluate_predictions` returns one JSON-ready dict; the dashboard's metrics page
draws exactly this dict, and ``train.py`` / ``core.evaluation.evaluate`` write it.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             roc_auc_score, roc_curve)

from core.inference.calibration import reliability
from core.data.spec import SEQUENCE_FAMILIES, UNKNOWN_SEQUENCE


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


def macro_f1_over(present: Sequence[int]):
    """Macro-F1 over the classes ``present`` in a set's ground truth. A class the set has no slice of (e.g.
    "other lesion" on Kaggle Testing) is left out instead of averaged in as a zero; a slice predicted as it
    still costs the F1 of its true class."""
    labels = list(present)
    return lambda y, p: f1_score(y, p, labels=labels, average="macro", zero_division=0)


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
    macro_f1 = macro_f1_over(sorted(set(labels.tolist())))
    out: dict = {
        "n": int(len(labels)),
        "accuracy": float(accuracy_score(labels, preds)),
        "accuracy_ci95": bootstrap_ci(labels, preds, accuracy_score, n_boot),
        "macro_f1": float(macro_f1(labels, preds)),
        "macro_f1_classes": [class_names[i] for i in sorted(set(labels.tolist()))],
        "macro_f1_ci95": bootstrap_ci(labels, preds, macro_f1, n_boot),
        "confusion_matrix": confusion_matrix(labels, preds, labels=ks).tolist(),
        "per_class": {name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                             "support": int(support[i]),
                             # small classes (a 44-class set has some under 25 slices) need their interval
                             "recall_ci95": list(_wilson(int(((labels == i) & (preds == i)).sum()),
                                                         int(support[i]))) if support[i] else None}
                      for i, name in enumerate(class_names)},
        "roc_auc": {}, "roc_curves": {},
        "calibration": {"calibrated": reliability(probs, labels)},
        "misclassified": [
            {"file": files[i], "true": class_names[labels[i]], "predicted": class_names[preds[i]],
             "confidence": float(probs[i, preds[i]])}
            for i in np.flatnonzero(preds != labels)
        ],
    }
    views = collapsed_views(out["confusion_matrix"], class_names)
    if views:
        out["collapsed"] = views
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


# The outcome for a tumour or lesion outside glioma / meningioma / pituitary (data_specs/multisource.json).
OTHER_LESION = "other_lesion"

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


def detection_metrics(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], confident_at: float,
                      ood: np.ndarray | None = None, sequences: Sequence[str] | None = None,
                      tumour_mm2: np.ndarray | None = None, min_tumour_mm2: float | None = None,
                      files: Sequence[str] | None = None) -> dict | None:
    """Tumour present vs absent, whatever the type: the reading a radiologist needs first.

    Args:
        labels: int (N,) true classes; probs: float (N, K) calibrated probabilities.
        confident_at: confidence in [0, 1] at and above which a result is shown as confident.
        ood: bool (N,) outside-intended-use flags; a flagged miss is not a *confident* miss (the reader is
            told not to trust the class).
        sequences: the MRI sequence per slice; figures are repeated per sequence family (T1, T1C+, T2/FLAIR).
        tumour_mm2: labelled tumour area per slice (volumes); with ``min_tumour_mm2`` the sensitivity is also
            given on slices with at least that much tumour.
    Returns:
        None when no class means "no tumour"; else ``sensitivity`` (tumour slices given any tumour or lesion
        class), ``specificity`` (no-tumour slices called no tumour), their counts, ``confident_misses`` (tumour
        slices called no tumour at or above ``confident_at`` and not flagged) with their rate among tumour
        slices and files, and ``by_sequence``.
    """
    negative = set(no_finding_classes(class_names))
    if not negative:
        return None
    labels = np.asarray(labels)
    probs = np.asarray(probs)
    neg_idx = [i for i, n in enumerate(class_names) if n in negative]
    truth = ~np.isin(labels, neg_idx)
    pred = ~np.isin(probs.argmax(1), neg_idx)
    conf = probs.max(1)
    flagged = np.zeros(len(labels), bool) if ood is None else np.asarray(ood, bool)
    confident_miss = truth & ~pred & (conf >= confident_at) & ~flagged

    def block(m: np.ndarray) -> dict:
        pos, neg = truth & m, ~truth & m
        out = {"n_tumour": int(pos.sum()), "n_no_tumour": int(neg.sum()),
               "sensitivity": float(pred[pos].mean()) if pos.any() else None,
               "specificity": float((~pred[neg]).mean()) if neg.any() else None,
               "confident_misses": int((confident_miss & m).sum()),
               "confident_miss_rate": float((confident_miss & m).sum() / pos.sum()) if pos.any() else None}
        if pos.any():
            out["sensitivity_ci95"] = list(_wilson(int(pred[pos].sum()), int(pos.sum())))
        if neg.any():
            out["specificity_ci95"] = list(_wilson(int((~pred[neg]).sum()), int(neg.sum())))
        return out

    result = block(np.ones(len(labels), bool))
    result["confident_at"] = confident_at
    if files is not None:
        result["confident_miss_files"] = [files[i] for i in np.flatnonzero(confident_miss)]
    if sequences is not None:
        fams = np.array([SEQUENCE_FAMILIES.get(s, s) for s in sequences])
        result["by_sequence"] = {f: block(fams == f) for f in sorted(set(fams)) if f != UNKNOWN_SEQUENCE}
    if tumour_mm2 is not None and min_tumour_mm2 is not None:
        area = np.asarray(tumour_mm2, float)
        big = truth & (area >= min_tumour_mm2)
        result["min_tumour_mm2"] = min_tumour_mm2
        result["n_tumour_at_least_min"] = int(big.sum())
        result["sensitivity_at_least_min"] = float(pred[big].mean()) if big.any() else None
        if big.any():
            result["sensitivity_at_least_min_ci95"] = list(_wilson(int(pred[big].sum()), int(big.sum())))
    return result


def per_class_by_sequence(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str],
                          sequences: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Per sequence family (T1, T1C+, T2/FLAIR): each class's precision, recall and support, for the classes
    present in that family's slices."""
    labels, pred = np.asarray(labels), np.asarray(probs).argmax(1)
    fams = np.array([SEQUENCE_FAMILIES.get(s, s) for s in sequences])
    out = {}
    for fam in sorted(set(fams.tolist()) - {UNKNOWN_SEQUENCE}):
        m = fams == fam
        present = sorted(set(labels[m].tolist()))
        prec, rec, _, sup = precision_recall_fscore_support(labels[m], pred[m], labels=present, zero_division=0)
        out[fam] = {class_names[k]: {"precision": float(p), "recall": float(r), "support": int(n)}
                    for k, p, r, n in zip(present, prec, rec, sup)}
    return out


def _wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: honest for small counts and for rates near 0 or 1."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def class_recall_as(labels: np.ndarray, probs: np.ndarray, class_names: Sequence[str], true_class: str,
                    predicted: Sequence[str]) -> dict | None:
    """Share of ``true_class`` slices predicted as one of ``predicted`` (e.g. other lesions called no tumour)."""
    if true_class not in class_names:
        return None
    t = np.asarray(labels) == class_names.index(true_class)
    if not t.any():
        return None
    hit = np.isin(np.asarray(probs).argmax(1), [class_names.index(p) for p in predicted if p in class_names])
    k = int((hit & t).sum())
    return {"n": int(t.sum()), "count": k, "rate": k / int(t.sum()), "rate_ci95": list(_wilson(k, int(t.sum())))}


def pooled_missed_findings(sets: Sequence[Mapping], class_names: Sequence[str], confident_at: float) -> dict | None:
    """:func:`missed_findings` summed over several sets (the held-out parts of several sources)."""
    parts = [r for r in (missed_findings(m, class_names, confident_at) for m in sets) if r is not None]
    if not parts:
        return None
    out = {k: sum(p[k] for p in parts) for k in ("with_finding", "missed", "missed_confident", "without_finding",
                                                 "false_alarms")}
    out["max_confidence"] = max((p["max_confidence"] for p in parts if p["max_confidence"] is not None), default=None)
    out["missed_files"] = [f for p in parts for f in p["missed_files"]]
    return out


# Sequence suffixes of "<type> <sequence>" class names (the 44-class set), longest first so "T1C+" wins over "T1".
SEQUENCE_SUFFIXES = ("T1C+", "T1", "T2")


def type_and_sequence(name: str) -> tuple[str, str | None]:
    """``"Astrocitoma T1C+"`` -> ``("Astrocitoma", "T1C+")``; a name without a sequence suffix -> ``(name, None)``."""
    for seq in SEQUENCE_SUFFIXES:
        if name.endswith(" " + seq):
            return name[: -len(seq) - 1].strip(), seq
    return name, None


def collapsed_view(matrix: Sequence[Sequence[int]], class_names: Sequence[str], group_of) -> dict:
    """A K x K confusion matrix merged into groups of classes (``group_of(name) -> group``).

    Returns ``groups`` (in first-seen order), the merged ``confusion_matrix`` (rows true, columns predicted),
    ``accuracy`` with a Wilson ``accuracy_ci95`` (slices as independent trials), and ``per_group`` recall and
    precision with Wilson intervals and support. Merging is exact: a slice is right when its predicted class is
    in its true class's group.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    groups: list[str] = []
    for n in class_names:
        if group_of(n) not in groups:
            groups.append(group_of(n))
    index = np.array([groups.index(group_of(n)) for n in class_names])
    g = len(groups)
    merged = np.zeros((g, g), np.int64)
    np.add.at(merged, (index[:, None].repeat(len(index), 1), index[None, :].repeat(len(index), 0)), cm)
    n, right = int(merged.sum()), int(np.trace(merged))
    per_group = {}
    for i, name in enumerate(groups):
        support, called = int(merged[i].sum()), int(merged[:, i].sum())
        per_group[name] = {"support": support, "recall": merged[i, i] / support if support else None,
                           "recall_ci95": list(_wilson(int(merged[i, i]), support)) if support else None,
                           "precision": merged[i, i] / called if called else None,
                           "precision_ci95": list(_wilson(int(merged[i, i]), called)) if called else None}
        per_group[name] = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v)
                           for k, v in per_group[name].items()}
    return {"groups": groups, "confusion_matrix": merged.tolist(), "n": n,
            "accuracy": right / n if n else float("nan"), "accuracy_ci95": list(_wilson(right, n)),
            "per_group": per_group}


def collapsed_views(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> dict | None:
    """For "<type> <sequence>" classes (every class has a sequence suffix): the ``type`` view (sequences merged)
    and the ``sequence`` view (types merged), each a :func:`collapsed_view`; None for other class lists."""
    if len(class_names) < 4 or any(type_and_sequence(n)[1] is None for n in class_names):
        return None
    return {"type": collapsed_view(matrix, class_names, lambda n: type_and_sequence(n)[0]),
            "sequence": collapsed_view(matrix, class_names, lambda n: type_and_sequence(n)[1])}


def implied_type_and_sequence(probabilities: Mapping[str, float]) -> dict[str, tuple[str, float]] | None:
    """For a "<type> <sequence>" model: the most likely type and sequence, each with its probability summed over
    the classes that share it (``{"type": (name, p), "sequence": (name, p)}``); None for other class lists."""
    names = list(probabilities)
    if collapsed_views(np.zeros((len(names), len(names)), int), names) is None:
        return None
    out = {}
    for part, which in (("type", 0), ("sequence", 1)):
        sums: dict[str, float] = {}
        for n, p in probabilities.items():
            key = type_and_sequence(n)[which]
            sums[key] = sums.get(key, 0.0) + float(p)
        best = max(sums, key=sums.get)
        out[part] = (best, sums[best])
    return out
