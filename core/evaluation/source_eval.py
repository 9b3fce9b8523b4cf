"""Evaluate a model on the held-out parts of every declared source, through the serving code.

Single images are read from disk, decoded and preprocessed by ``core`` exactly as an upload would be; volume
slices are cut from the NIfTI files by ``core.io.volumes`` and preprocessed by the same definition. Each part
gets the full metric set of ``core.evaluation.metrics.evaluate_predictions`` plus what a reader needs across sources:
tumour sensitivity and specificity (overall and per sequence), confident misses, the share of other
lesions called "no tumour", and on volumes with tumour labels the Grad-CAM pointing game.

``train.py`` writes these figures into ``metrics.json``; ``python -m core.evaluate --data-spec`` re-runs them
for any model.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from core.explain.cam import Explainer
from core.inference.calibration import softmax
from core.data.spec import DataSpec, SourceSpec
from core.evaluation.evaluate import LabelledRun, metrics_for_run, run_files, run_sources
from core.inference.pipeline import InMemory
from core.evaluation.metrics import (OTHER_LESION, class_recall_as, detection_metrics, no_finding_classes,
                          per_class_by_sequence)
from core.inference.predictor import Predictor
from core.preprocess import preprocess_decoded
from core.data.sources import iter_volume_slices, slice_label, source_root
from core.data.splits import DataSplit

POINTING_DILATION = 0.05  # of the image side: the tolerance of the pointing game
DEFAULT_CONFIDENT_AT = 0.6  # the dashboard's default "uncertain below" threshold

Log = Callable[[str], None]


def pointing_hit(peak_xy: tuple[float, float], mask: np.ndarray, dilation: float = POINTING_DILATION) -> bool:
    """Whether a heatmap peak (x, y as fractions of width and height) falls inside ``mask`` (bool (H, W))
    dilated by ``dilation`` of the image's longer side."""
    h, w = mask.shape
    r = max(1, int(round(dilation * max(h, w))))
    grown = cv2.dilate(mask.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    x = min(w - 1, int(peak_xy[0] * w))
    y = min(h - 1, int(peak_xy[1] * h))
    return bool(grown[y, x])


def _set_metrics(run: LabelledRun, predictor: Predictor, mask: np.ndarray | None, sequences: list[str],
                 confident_at: float, tumour_mm2: np.ndarray | None = None,
                 min_tumour_mm2: float | None = None) -> dict:
    names = predictor.class_names
    m = np.ones(len(run.files), bool) if mask is None else mask
    out = metrics_for_run(run, names, predictor.temperature, mask)
    probs = softmax(run.logits[m], predictor.temperature)
    seqs = [s for s, keep in zip(sequences, m) if keep]
    out["detection"] = detection_metrics(
        run.labels[m], probs, names, confident_at, run.ood_flags[m], seqs,
        None if tumour_mm2 is None else tumour_mm2[m], min_tumour_mm2, [f for f, k in zip(run.files, m) if k])
    other = class_recall_as(run.labels[m], probs, names, OTHER_LESION, no_finding_classes(names))
    if other is not None:
        out["other_lesion_called_no_tumour"] = other
    out["sequences"] = {s: seqs.count(s) for s in sorted(set(seqs))}
    out["per_class_by_sequence"] = per_class_by_sequence(run.labels[m], probs, names, seqs)
    return out


def _tree_part(predictor: Predictor, source: SourceSpec, split: DataSplit, data_root: Path, part: str,
               confident_at: float, show_bar: bool) -> tuple[dict[str, dict], list[LabelledRun]]:
    idx = split.select(part, source.name)
    out: dict[str, dict] = {}
    runs = []
    for fixed in (True, False):
        sel = [i for i in idx if bool(split.fixed_test[i]) == fixed]
        if not sel:
            continue
        root = source_root(source, data_root, fixed)
        recs = [split.records[i] for i in sel]
        by_path = {r.path: (r, bool(split.leak_free[i])) for r, i in zip(recs, sel)}
        run = run_files(predictor, root, [(r.path, r.label) for r in recs], predictor.batch_size, show_bar=show_bar)
        runs.append(run)
        sequences = [by_path[f][0].sequence for f in run.files]
        key = f"{source.name}_{part}"
        where = f"`{root.name}`" if fixed else f"the {part} part of `{source.root}`"
        out[key] = _set_metrics(run, predictor, None, sequences, confident_at)
        out[key]["definition"] = f"All readable images of {where}."
        leak_free = np.array([by_path[f][1] for f in run.files])
        if fixed and not leak_free.all():
            out[key + "_leak_free"] = _set_metrics(run, predictor, leak_free, sequences, confident_at)
            out[key + "_leak_free"]["definition"] = (
                f"Images of {where} with no exact (SHA-256) or near (pHash) copy in any training or validation part")
    return out, runs


def _core_by_sequence(run: LabelledRun, predictor: Predictor, sequences: list[str], core_of: dict[str, float],
                      min_mm2: float, confident_at: float) -> dict[str, dict]:
    """Sensitivity on slices with at least ``min_mm2`` of tumour core, per sequence family."""
    from core.data.spec import SEQUENCE_FAMILIES

    probs = softmax(run.logits, predictor.temperature)
    area = np.array([core_of[f] for f in run.files])
    fams = np.array([SEQUENCE_FAMILIES.get(s, s) for s in sequences])
    out = {}
    for fam in sorted(set(fams.tolist())):
        m = fams == fam
        d = detection_metrics(run.labels[m], probs[m], predictor.class_names, confident_at,
                              tumour_mm2=area[m], min_tumour_mm2=min_mm2)
        out[fam] = {"n_tumour": d["n_tumour_at_least_min"], "sensitivity": d["sensitivity_at_least_min"]}
    return out


def _volume_part(predictor: Predictor, source: SourceSpec, data_root: Path, part: str, confident_at: float,
                 cam_method: str | None, show_bar: bool, log: Log) -> tuple[dict[str, dict], list[LabelledRun]]:
    cases = set(source.test_cases if part == "test" else source.val_cases)
    if not cases:
        return {}, []
    names = predictor.class_names
    root = Path(data_root) / source.root
    seq_of, area_of, core_of, masks, pre_items = {}, {}, {}, {}, {}

    def items():
        for s in iter_volume_slices(source, root, cases, with_masks=cam_method is not None):
            cls, _ = slice_label(source, s.tumour_mm2)
            name = s.record_path
            seq_of[name] = s.sequence
            area_of[name] = -1.0 if s.tumour_mm2 is None else s.tumour_mm2
            core_of[name] = -1.0 if s.core_mm2 is None else s.core_mm2
            if s.tumour_mask is not None and s.tumour_mm2 and s.tumour_mm2 >= source.min_tumour_mm2:
                masks[name] = s.tumour_mask
                pre_items[name] = preprocess_decoded(s.image, predictor.spec)  # for the pointing game below
            yield InMemory(name, s.image), names.index(cls)

    run = run_sources(predictor, items(), batch_size=predictor.batch_size, show_bar=show_bar)
    key = f"{source.name}_{part}"
    has_labels = source.label_volume is not None
    sequences = [seq_of[f] for f in run.files]
    areas = np.array([area_of[f] for f in run.files])
    out = {key: _set_metrics(run, predictor, None, sequences, confident_at, areas if has_labels else None,
                             source.min_tumour_mm2 if has_labels else None)}
    out[key]["definition"] = (f"Axial brain slices of the {part} cases {sorted(cases)} of `{source.root}` "
                              "(each case wholly in this part)")
    if source.core_labels and has_labels:
        # The same slices judged by their tumour core alone: on T1c an oedema-only slice shows little.
        core = detection_metrics(run.labels, softmax(run.logits, predictor.temperature), predictor.class_names,
                                 confident_at, run.ood_flags, sequences, np.array([core_of[f] for f in run.files]),
                                 source.min_tumour_mm2)
        out[key]["detection"]["core"] = {
            "labels": list(source.core_labels), "min_mm2": source.min_tumour_mm2,
            "n_tumour": core["n_tumour_at_least_min"], "sensitivity": core["sensitivity_at_least_min"],
            "sensitivity_ci95": core.get("sensitivity_at_least_min_ci95"),
            "by_sequence": _core_by_sequence(run, predictor, sequences, core_of, source.min_tumour_mm2, confident_at)}
    out[key]["cases"] = sorted(cases)
    if masks and cam_method:
        tumour_class = names.index(source.labels["tumour"])
        hits, files = [], list(masks)
        explainer = Explainer(predictor)  # one per run: the pointing game is this run's only CAM user
        for i in range(0, len(files), 32):
            chunk = files[i:i + 32]
            cams = explainer.compute([pre_items[f] for f in chunk], [tumour_class] * len(chunk), cam_method)
            hits += [pointing_hit(c.peak, masks[f]) for c, f in zip(cams, chunk)]
        out[key]["pointing_game"] = {
            "method": cam_method, "target": names[tumour_class], "n": len(hits), "hits": int(sum(hits)),
            "rate": float(np.mean(hits)), "dilation_of_image_side": POINTING_DILATION,
            "min_tumour_mm2": source.min_tumour_mm2,
            "definition": f"the {cam_method} peak for class '{names[tumour_class]}' falls inside the labelled tumour "
                          f"dilated by {POINTING_DILATION:.0%} of the image side (slices with >= "
                          f"{source.min_tumour_mm2:g} mm^2 of tumour)"}
        log(f"{key}: pointing game {out[key]['pointing_game']['rate']:.3f} on {len(hits)} slices")
    return out, [run]


@dataclass
class PartsEvaluation:
    """Metric sets keyed ``<source>_<part>`` (and ``_leak_free``), and the OOD scores and flags of every
    evaluated slice, pooled (the in-distribution side of the OOD measurement)."""

    sets: dict[str, dict]
    ood_scores: np.ndarray
    ood_flags: np.ndarray


def evaluate_parts(predictor: Predictor, data: DataSpec, split: DataSplit, data_root: str | Path, part: str = "test",
                   confident_at: float = DEFAULT_CONFIDENT_AT, cam_method: str | None = "gradcam",
                   show_bar: bool = True, log: Log = print, sources: list[str] | None = None) -> PartsEvaluation:
    """Metric sets for ``part`` ("test" or "val") of every source (or of ``sources``). Each set records its
    ``source``, ``part``, ``title`` and ``definition``."""
    data_root = Path(data_root)
    out: dict[str, dict] = {}
    runs: list[LabelledRun] = []
    for source in data.sources:
        if sources is not None and source.name not in sources:
            continue
        if source.kind == "volumes":
            sets, r = _volume_part(predictor, source, data_root, part, confident_at, cam_method, show_bar, log)
        else:
            sets, r = _tree_part(predictor, source, split, data_root, part, confident_at, show_bar)
        runs += r
        for key, m in sets.items():
            fixed_name = Path(source.test_root).name if source.test_root and part == "test" else None
            what = fixed_name or ("held-out" if part == "test" else "validation")
            m.update({"source": source.name, "part": part,
                      "title": f"{source.title or source.name} {what}"
                               + (", leakage-free" if key.endswith("_leak_free") else "")})
            out[key] = m
    scores = np.concatenate([r.ood_scores for r in runs]) if runs else np.zeros(0)
    flags = np.concatenate([r.ood_flags for r in runs]) if runs else np.zeros(0, bool)
    return PartsEvaluation(out, scores, flags)
