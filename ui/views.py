"""Streamlit drawing functions shared by pages: thumbnail galleries and metrics views."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd
import streamlit as st

from core.model.card import ModelCard
from core.errors import ImageLoadError
from core.evaluation.metrics import missed_findings
from core.explain.cam import Explainer, overlay
from core.preprocess import analysed_view, preprocess
from ui import charts
from ui.imaging import grey_to_rgb, png_bytes, thumbnail, to_uint8

THUMB_SIDE = 200
GALLERY_COLUMNS = 6


def _stamp(path: str) -> tuple:
    try:
        s = Path(path).stat()
        return (s.st_mtime_ns, s.st_size)
    except OSError:
        return (None, None)


@st.cache_data(show_spinner=False, max_entries=16)
def _read_json(path: str, stamp: tuple) -> dict | None:
    del stamp  # cache key only
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_json(path: str | Path) -> dict | None:
    """A JSON file beside the model (metrics, data audit, stress test), re-read when it changes; None if
    it is missing or unreadable."""
    return _read_json(str(path), _stamp(str(path)))


Peak = tuple[float, float]


@st.cache_data(show_spinner=False, max_entries=256)
def _thumbs(paths: tuple[str, ...], stamps: tuple, cam_method: str | None, model_sha: str, opacity: float,
            colormap: str, side: int, _explainer: Explainer) -> list[tuple[bytes | str, Peak | None]]:
    """Per file: a PNG thumbnail (with a heatmap overlay for the predicted class when ``cam_method``) or an
    error message, and the heatmap's peak (x, y as fractions of the original image; None without heatmap)."""
    del stamps, model_sha  # cache key only
    items, slots, out = [], [], []
    for i, p in enumerate(paths):
        try:
            items.append(preprocess(p, _explainer.predictor.spec))
            slots.append(i)
            out.append((b"", None))
        except ImageLoadError as exc:
            out.append((str(exc), None))
        except Exception as exc:  # noqa: BLE001 - one bad file must not break the gallery
            out.append((f"{Path(p).name}: {type(exc).__name__}: {exc}", None))
    cams = _explainer.compute(items, None, cam_method) if (cam_method and items) else [None] * len(items)
    for i, item, cam in zip(slots, items, cams):
        img = (overlay(item, cam.heatmap, opacity, colormap) if cam is not None
               else grey_to_rgb(to_uint8(analysed_view(item))))  # the contrast the model saw
        out[i] = (png_bytes(thumbnail(img, side)), None if cam is None else tuple(map(float, cam.peak)))
    return out


def thumbnails_with_peaks(explainer: Explainer, paths: Sequence[str | Path], cam_method: str | None = None,
                          opacity: float = 0.45, colormap: str = "jet",
                          side: int = THUMB_SIDE) -> tuple[list[bytes | str], list[Peak | None]]:
    """Thumbnails for one gallery page and, per file, the peak of its heatmap for the predicted class (None
    without ``cam_method`` or for an unreadable file). On an unexpected failure, an error message per image
    (the page still renders)."""
    ps = tuple(str(p) for p in paths)
    try:
        out = _thumbs(ps, tuple(_stamp(p) for p in ps), cam_method, explainer.predictor.bundle.sha256,
                      float(opacity), colormap, int(side), explainer)
    except Exception as exc:  # noqa: BLE001 - e.g. a CAM failure; never a traceback in the page
        return [f"thumbnail failed ({type(exc).__name__}: {exc})"] * len(ps), [None] * len(ps)
    return [img for img, _ in out], [peak for _, peak in out]


def thumbnails(explainer: Explainer, paths: Sequence[str | Path], cam_method: str | None = None,
               opacity: float = 0.45, colormap: str = "jet", side: int = THUMB_SIDE) -> list[bytes | str]:
    """Thumbnails for one gallery page; on an unexpected failure, an error message per image
    (the page still renders)."""
    return thumbnails_with_peaks(explainer, paths, cam_method, opacity, colormap, side)[0]


@st.cache_data(show_spinner=False, ttl=30, max_entries=16)
def folder_choices(roots: tuple[str, ...]) -> list[str]:
    """Folders offered by the batch/re-evaluate folder pickers (refreshed every 30 s)."""
    from ui.batch_job import list_subfolders

    return list_subfolders(roots)


def pager(n_items: int, page_size: int, key: str) -> tuple[int, int]:
    """A page selector; returns the [start, stop) slice of the current page."""
    pages = max(1, math.ceil(n_items / page_size))
    if st.session_state.get(key, 1) > pages:
        st.session_state[key] = pages
    c1, c2 = st.columns([1, 4], vertical_alignment="bottom")
    page = c1.number_input(f"Page (of {pages})", min_value=1, max_value=pages, value=1, step=1, key=key)
    start = (int(page) - 1) * page_size
    stop = min(n_items, start + page_size)
    c2.caption(f"Showing {start + 1 if n_items else 0}–{stop} of {n_items:,}")
    return start, stop


def gallery(items: Sequence[dict], images: Sequence[bytes | str], key: str,
            on_open: Callable[[dict], None] | None = None, columns: int = GALLERY_COLUMNS,
            open_label: str = "Open") -> None:
    """Grid of thumbnails; ``items``: dicts with 'title' and 'caption' (markdown), and 'openable' (default
    True). With ``on_open``, an ``open_label`` button on each openable item calls ``on_open(item)``."""
    for r0 in range(0, len(items), columns):
        cols = st.columns(columns)
        for col, item, img in zip(cols, items[r0:r0 + columns], images[r0:r0 + columns]):
            with col.container(border=True):
                if isinstance(img, bytes) and img:
                    st.image(img, width="stretch")
                else:
                    msg = str(img) or "no image"
                    st.markdown(":red[:material/broken_image: **cannot be read**]", help=msg)
                    st.caption(msg if len(msg) <= 90 else msg[:87] + "…")
                st.markdown(item["caption"])
                st.caption(item["title"])
                if (on_open is not None and item.get("openable", True)
                        and st.button(open_label, key=f"{key}_open_{item['title']}", width="stretch",
                                      icon=":material/open_in_new:")):
                    on_open(item)


# -- metrics ---------------------------------------------------------------------------------
def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(float(v), spec)


def _ci(ci: Sequence[float] | None) -> str:
    if not ci or len(ci) != 2 or ci[0] is None:
        return ""
    return f"95% CI {ci[0]:.1%} – {ci[1]:.1%}"


def missed_findings_text(missed: dict, confident_at: float) -> str:
    """One sentence on tumours read as no tumour (:func:`core.evaluation.metrics.missed_findings` output)."""
    return (f"**Tumour slices read as no tumour: {missed['missed']} of {missed['with_finding']:,}**"
            + (f", {missed['missed_confident']} of them at or above the {confident_at:.0%} 'uncertain' threshold "
               f"(up to {missed['max_confidence']:.1%} confidence)" if missed["missed"] else "")
            + f". No-tumour slices given a tumour class: {missed['false_alarms']} of {missed['without_finding']:,}.")


def metrics_set_view(m: dict, class_names: Sequence[str], key: str, description: str | None = None,
                     confident_at: float | None = None) -> None:
    """Headline numbers, tumours read as no tumour (at ``confident_at``, the sidebar threshold), confusion
    matrix, per-class table, ROC and reliability for one evaluation set."""
    if not m or not m.get("n"):
        st.info("No images were evaluated for this set.")
        return
    if description:
        st.caption(description)
    c = st.columns(5)
    c[0].metric("Images", f"{int(m['n']):,}")
    c[1].metric("Accuracy", _fmt(m.get("accuracy"), ".1%"), help=_ci(m.get("accuracy_ci95")) or None)
    c[1].caption(_ci(m.get("accuracy_ci95")))
    c[2].metric("Macro-F1", _fmt(m.get("macro_f1"), ".3f"),
                help="Unweighted mean of the per-class F1 scores, over the classes this set has.")
    mf = m.get("macro_f1_ci95")
    c[2].caption(f"95% CI {mf[0]:.3f} – {mf[1]:.3f}" if mf and mf[0] is not None else "")
    ece, ece_u = m.get("ece"), m.get("ece_uncalibrated")
    c[3].metric("ECE (calibrated)", f"{ece:.3f}" if ece is not None else "–",
                delta=f"{ece - ece_u:+.3f} vs uncalibrated" if ece is not None and ece_u is not None else None,
                delta_color="inverse", help="Expected calibration error: lower is better.")
    c[4].metric("Flagged out-of-distribution", f"{int(m.get('ood_flagged', 0) or 0):,}")
    if m.get("unreadable"):
        st.warning(f"{len(m['unreadable'])} file(s) could not be read and were left out.")
    missed = None if confident_at is None else missed_findings(m, class_names, confident_at)
    if missed and missed["with_finding"]:
        (st.warning if missed["missed_confident"] else st.info)(
            missed_findings_text(missed, confident_at), icon=":material/visibility_off:")

    large = len(class_names) > 12  # the 44-class model: the matrix gets the full width and zoom
    left, right = (st.container(), st.container()) if large else st.columns(2)
    with left:
        norm = st.toggle("Row-normalised", value=False, key=f"{key}_cm_norm",
                         help="Off: counts. On: each row divided by the true-class total (recall on the diagonal).")
        st.plotly_chart(charts.confusion_matrix_fig(m["confusion_matrix"], class_names, normalise=norm,
                                                    title="Confusion matrix" + (" (row-normalised)" if norm else "")),
                        key=f"{key}_cm", config={"displayModeBar": large, "scrollZoom": large})
        if large:
            st.caption("Blocks: one tumour type each, its sequences (T1 / T1C+ / T2) inside. Drag to zoom, "
                       "double-click to reset; hover for the count.")
    if m.get("collapsed"):
        collapsed_views_panel(m["collapsed"], key)
    with right:
        st.markdown("**Per-class precision / recall / F1**")
        table = charts.per_class_table(m.get("per_class", {}), class_names)
        st.dataframe(table, width="stretch", key=f"{key}_per_class", column_config={
            "precision": st.column_config.NumberColumn(format="%.3f"),
            "recall": st.column_config.NumberColumn(format="%.3f"),
            "f1": st.column_config.NumberColumn("F1", format="%.3f"),
            "support": st.column_config.NumberColumn(format="%d")})
        st.caption("Support: number of images of that class in this set.")
    left, right = st.columns(2)
    with left:
        st.markdown("**ROC curves (one class vs rest)**")
        st.plotly_chart(charts.roc_fig(m.get("roc_curves", {}), m.get("roc_auc", {}), class_names),
                        key=f"{key}_roc", config={"displayModeBar": False})
    with right:
        st.markdown("**Reliability diagram — before and after calibration**")
        st.plotly_chart(charts.reliability_fig(m.get("calibration", {}),
                                               {"calibrated": m.get("ece"), "uncalibrated": m.get("ece_uncalibrated")}),
                        key=f"{key}_rel", config={"displayModeBar": False})


def collapsed_views_panel(collapsed: dict, key: str) -> None:
    """The 44-class model's two merged views: tumour type (sequences merged) and sequence (types merged), each
    with its accuracy, Wilson 95 % interval and confusion matrix."""
    st.markdown("**Merged views** — the same predictions, with sequences merged (tumour type) or types merged "
                "(sequence). A slice counts as right when its predicted class has the true type (or sequence).")
    cols = st.columns(2)
    for col, (name, title) in zip(cols, (("type", "Tumour type"), ("sequence", "Sequence"))):
        view = collapsed.get(name)
        if not view:
            continue
        with col:
            col.metric(f"{title} accuracy", _fmt(view.get("accuracy"), ".1%"), help=_ci(view.get("accuracy_ci95")))
            col.caption(_ci(view.get("accuracy_ci95")))
            st.plotly_chart(charts.confusion_matrix_fig(view["confusion_matrix"], view["groups"],
                                                        title=f"{title} ({len(view['groups'])} groups)"),
                            key=f"{key}_{name}_cm", config={"displayModeBar": False})


def audit_summary_view(summary: dict, report: dict | None) -> None:
    """Duplicates and train/test leakage found by the data audit."""
    if not summary and not report:
        st.info("No data-audit summary in the metrics file.")
        return
    s = summary or {}
    leakage = s.get("leakage") or (report or {}).get("leakage") or {}
    t_in_tr = (s.get("cross_split") or {}).get("Testing_in_Training", {})
    held_copies = (sum(v.get("with_copy_in_learnt_parts", 0) for k, v in leakage.items() if k.endswith("/test"))
                   if leakage else t_in_tr.get("Testing_files_with_exact_or_near_copy_in_Training", 0))
    c = st.columns(4)
    c[0].metric("Exact duplicate files", f"{s.get('exact_duplicate_files', 0):,}",
                help=f"{s.get('exact_duplicate_groups', 0)} groups of byte-identical images")
    c[1].metric("Exact or near duplicates", f"{s.get('duplicate_files_exact_or_near', 0):,}",
                help=f"{s.get('duplicate_groups_exact_or_near', 0)} groups; near = perceptual hash within "
                     f"{s.get('near_duplicate_max_hamming_bits', '?')} bits")
    c[2].metric("Test images also in training", f"{held_copies:,}",
                help="Held-out images with an exact or near copy in a part the model learnt from. Zero by "
                     "construction except in a published test split (Kaggle Testing), whose leakage-free subset "
                     "leaves them out.")
    c[3].metric("Label conflicts", f"{s.get('label_conflict_groups', 0):,}",
                help="Groups of duplicate images filed under different classes")
    if leakage:
        st.markdown("**Held-out parts and copies of training images** (grouped by near-duplicate cluster and by "
                    "case: a patient or subject is wholly in one part)")
        st.dataframe(pd.DataFrame([{"part": k, **v} for k, v in leakage.items()]), hide_index=True,
                     key="audit_leakage")
    if report and report.get("splits"):
        rows = []
        for split, info in report["splits"].items():
            row = {"split": split, "files": info.get("files"), "unreadable": info.get("unreadable")}
            row.update({f"{k}": v for k, v in (info.get("per_class") or {}).items()})
            rows.append(row)
        st.dataframe(pd.DataFrame(rows).set_index("split"), width="stretch", key="audit_splits")
    with st.expander("Full data-audit report (JSON)"):
        st.json(report or summary, expanded=1)


def non_mri_view(report: dict) -> None:
    """The non-MRI (CT) slices found in the Kaggle set (``reports/kaggle_ct_audit.json``, ``tools.ct_audit``) and
    how many the CT gate flags as outside intended use."""
    ct = (report.get("non_mri") or {}).get("CT") or {}
    model = report.get("model") or {}
    if not ct:
        return
    st.markdown("**Non-MRI slices in the Kaggle set** (found by a skull-ring measure and confirmed by eye; "
                "`python -m tools.ct_audit`)")
    rows = [{"split": split, "class": cls, "CT files": n}
            for split, per_class in (ct.get("per_split") or {}).items() for cls, n in per_class.items()]
    c = st.columns(3)
    c[0].metric("CT files", f"{ct.get('files', 0):,}", help=f"{ct.get('distinct_slices', '?')} distinct slices once "
                                                             "near copies are grouped")
    flagged = model.get("ct_flagged_outside_intended_use")
    c[1].metric("Flagged outside intended use", "–" if flagged is None else f"{flagged:,} of {ct.get('files', 0):,}",
                help="By the CT gate (core.inference.ood.ct_gate), for the model named in the report")
    c[2].metric("Other non-MRI files", f"{(report.get('non_mri') or {}).get('other', 0):,}")
    if rows:
        st.dataframe(pd.DataFrame(rows), hide_index=True, key="audit_non_mri")


def model_card_view(card: ModelCard) -> None:
    arch, training, spec = card.architecture, card.training, card.input_spec
    c = st.columns(4)
    c[0].metric("Architecture", arch.name or "?")
    params = arch.parameters
    c[1].metric("Parameters", f"{params / 1e6:.2f} M" if isinstance(params, (int, float)) else "?")
    c[2].metric("Input", f"{spec.image_size if spec else '?'} px, {spec.channels if spec else '?'} ch")
    c[3].metric("Temperature", f"{card.calibration.temperature:.3g}")
    st.markdown(f"**Intended use.** {'–' if card.intended_use is None else card.intended_use}")
    if card.inference.tta == "hflip":
        st.markdown("**Test-time augmentation.** Each slice is predicted together with its left-right mirror and "
                    "the two are averaged, so a mirrored slice gets the same probabilities. The heatmap is "
                    "computed on the slice as given.")
    st.markdown("**Training command**")
    st.code("–" if training.command is None else training.command, language="bash")
    fp = training.data_fingerprint
    if fp:
        st.markdown("**Data fingerprint** (SHA-256 over the file list and contents of each split)")
        st.dataframe(pd.DataFrame({"split": list(fp), "fingerprint": list(fp.values())}), hide_index=True,
                     width="stretch", key="card_fingerprint")
    facts = {k: getattr(training, k) for k in ("seed", "device", "epochs_run", "best_epoch", "best_weights",
                                               "train_files", "val_files")
             if getattr(training, k) is not None}
    if training.epochs_run == 0 and training.init_from:
        parent_sha = training.init_from.sha256
        facts = {"seed": training.seed,
                 "weights": f"unchanged from {'?' if parent_sha is None else parent_sha[:12]}… "
                            "(calibration and evaluation re-run)"}
    if facts:
        st.caption(" · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in facts.items()))
    with st.expander("Full model card (JSON)"):
        st.json(card.to_dict(), expanded=1)


# -- per-source figures ------------------------------------------------------------------------
def metrics_for(bundle, weights_dir: str | Path) -> dict | None:
    """The metrics file beside a model, only if it was measured for this very model (the record ``train.py`` and
    ``core.evaluation.evaluate`` write: its name and identity); None otherwise, so no other model's figures are quoted."""
    from core.model.checkpoint import METRICS_FILE

    measured = read_json(Path(weights_dir) / METRICS_FILE) or {}
    return measured if measured.get("model") == {"name": bundle.name, **bundle.identity} else None


def held_out_sets(metrics: dict) -> dict[str, dict]:
    """The held-out (test) sets of a metrics file, in file order; older single-tree files: Testing."""
    sets = metrics.get("sets", {}) or {}
    held = {k: m for k, m in sets.items() if m.get("part") == "test"}
    if held:
        return held
    legacy = {"testing_full": "Testing — full split", "testing_leak_free": "Testing — leakage-free"}
    return {k: dict(sets[k], title=t) for k, t in legacy.items() if k in sets}


def validation_sets(metrics: dict) -> dict[str, dict]:
    sets = metrics.get("sets", {}) or {}
    return {k: (m if m.get("title") else dict(m, title="Validation")) for k, m in sets.items()
            if m.get("part") == "val" or k == "validation"}


def _rate(v) -> float | None:
    return None if v is None else float(v)


def sources_frame(sets: dict[str, dict]) -> pd.DataFrame:
    """One row per set: images, accuracy, macro-F1, tumour sensitivity/specificity with 95% intervals,
    confident misses, other lesions called "no tumour", ECE and the pointing game."""
    rows = []
    for m in sets.values():
        d = m.get("detection") or {}
        other = m.get("other_lesion_called_no_tumour") or {}
        pg = m.get("pointing_game") or {}
        rows.append({
            "set": m.get("title", "?"), "images": m.get("n"), "accuracy": _rate(m.get("accuracy")),
            "macro-F1": _rate(m.get("macro_f1")),
            "tumour sensitivity": _rate(d.get("sensitivity_at_least_min", d.get("sensitivity"))),
            "sensitivity 95% CI": _ci(d.get("sensitivity_at_least_min_ci95", d.get("sensitivity_ci95"))).replace(
                "95% CI ", ""),
            "specificity": _rate(d.get("specificity")),
            "specificity 95% CI": _ci(d.get("specificity_ci95")).replace("95% CI ", ""),
            "confident misses": (f"{d['confident_misses']} of {d['n_tumour']}" if d.get("n_tumour") else "–")
            if d else "–",
            "other lesions → no tumour": f"{other['count']} of {other['n']}" if other else "–",
            "ECE": _rate(m.get("ece")),
            "pointing game": _rate(pg.get("rate")),
        })
    return pd.DataFrame(rows)


SOURCES_COLUMNS = {
    "accuracy": st.column_config.NumberColumn(format="percent"),
    "macro-F1": st.column_config.NumberColumn(format="%.3f"),
    "tumour sensitivity": st.column_config.NumberColumn(
        format="%.3f", help="Tumour or lesion slices given any tumour or lesion class (BraTS: slices with at "
                            "least 1 cm² of labelled tumour)."),
    "specificity": st.column_config.NumberColumn(format="%.3f", help="No-tumour slices called no tumour."),
    "confident misses": st.column_config.TextColumn(
        help="Tumour slices called no tumour at or above the confidence threshold and not flagged as outside "
             "intended use: the error a reader would not catch."),
    "ECE": st.column_config.NumberColumn(format="%.3f"),
    "pointing game": st.column_config.NumberColumn(
        format="%.3f", help="Share of tumour slices whose heatmap peak (the CAM method and layer in the model "
                            "card, chosen on validation patients) falls inside the labelled tumour."),
}


# Column formats of :func:`sequence_frame` tables (and of the stress test's per-sequence table).
SEQUENCE_COLUMNS = {"tumour sensitivity": st.column_config.NumberColumn(format="%.3f"),
                    "specificity": st.column_config.NumberColumn(format="%.3f")}


def sequence_frame(sets: dict[str, dict]) -> pd.DataFrame:
    """Tumour sensitivity and specificity per set and MRI sequence (T1, T1C+, T2/FLAIR), where known."""
    rows = []
    for m in sets.values():
        for seq, d in ((m.get("detection") or {}).get("by_sequence") or {}).items():
            rows.append({"set": m.get("title", "?"), "sequence": seq, "tumour slices": d.get("n_tumour"),
                         "tumour sensitivity": _rate(d.get("sensitivity")),
                         "sensitivity 95% CI": _ci(d.get("sensitivity_ci95")).replace("95% CI ", ""),
                         "no-tumour slices": d.get("n_no_tumour"), "specificity": _rate(d.get("specificity")),
                         "confident misses": d.get("confident_misses")})
    return pd.DataFrame(rows)


def detection_view(m: dict, key: str) -> None:
    """Tumour present vs absent for one set: sensitivity, specificity, per sequence, pointing game."""
    d = m.get("detection")
    if not d:
        return
    c = st.columns(4)
    if d.get("sensitivity") is not None:
        c[0].metric("Tumour sensitivity", f"{d['sensitivity']:.1%}", help=_ci(d.get("sensitivity_ci95")) or None)
        c[0].caption(f"{d['n_tumour']:,} tumour slices · {_ci(d.get('sensitivity_ci95'))}")
    if d.get("sensitivity_at_least_min") is not None:
        c[1].metric(f"… with ≥ {d['min_tumour_mm2'] / 100:g} cm² of tumour", f"{d['sensitivity_at_least_min']:.1%}")
        c[1].caption(f"{d['n_tumour_at_least_min']:,} slices · {_ci(d.get('sensitivity_at_least_min_ci95'))}")
    if d.get("specificity") is not None:
        c[2].metric("Specificity", f"{d['specificity']:.1%}")
        c[2].caption(f"{d['n_no_tumour']:,} no-tumour slices · {_ci(d.get('specificity_ci95'))}")
    if d.get("n_tumour"):
        c[3].metric("Confident misses", f"{d['confident_misses']}",
                    help=f"Tumour slices called no tumour with at least {d.get('confident_at', 0.6):.0%} "
                         "confidence and not flagged as outside intended use.")
    core = d.get("core")
    if core and core.get("sensitivity") is not None:
        per = ", ".join(f"{q} {v['sensitivity']:.1%} of {v['n_tumour']}" for q, v in core.get("by_sequence", {}).items()
                        if v.get("sensitivity") is not None)
        st.markdown(f"**Judged by the tumour core** (labels {', '.join(map(str, core['labels']))}: no oedema; at least "
                    f"{core['min_mm2'] / 100:g} cm²): sensitivity {core['sensitivity']:.1%} of {core['n_tumour']} slices "
                    f"({_ci(core.get('sensitivity_ci95'))}); {per}. Oedema alone shows little on T1c.")
    other = m.get("other_lesion_called_no_tumour")
    if other:
        st.markdown(f"**Other lesions called \"no tumour\":** {other['count']} of {other['n']} "
                    f"({other['rate']:.1%}, {_ci(other.get('rate_ci95'))}).")
    pg = m.get("pointing_game")
    if pg:
        st.markdown(f"**Heatmap pointing game:** {pg['hits']} of {pg['n']} ({pg['rate']:.1%}): {pg['definition']}.")
    seq = sequence_frame({key: m})
    if len(seq):
        st.dataframe(seq.drop(columns=["set"]), hide_index=True, width="stretch", key=f"{key}_by_sequence",
                     column_config=SEQUENCE_COLUMNS)
    per_class = m.get("per_class_by_sequence") or {}
    if per_class:
        st.markdown("**Per class and sequence** (precision / recall)")
        rows = [{"sequence": fam, "class": c, "precision": v["precision"], "recall": v["recall"],
                 "support": v["support"]} for fam, classes in per_class.items() for c, v in classes.items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key=f"{key}_class_sequence",
                     column_config={"precision": st.column_config.NumberColumn(format="%.3f"),
                                    "recall": st.column_config.NumberColumn(format="%.3f")})


def targets_view(rows: list[dict]) -> None:
    """The acceptance targets (``core.evaluation.targets``) with measured figures and met / not met."""
    df = pd.DataFrame([{"group": r["group"], "target": r["target"], "measured": r["shown"],
                        "met": "–" if r["met"] is None else ("yes" if r["met"] else "NO")} for r in rows])
    st.dataframe(df, hide_index=True, width="stretch", key="targets")


def set_folder(m: dict, key: str, card: ModelCard, candidates: Sequence[Path]) -> Path | None:
    """The folder a held-out set's file names are relative to, if its images are on this machine (None for
    volume slices, or when no candidate data root holds them)."""
    from core.data.spec import DataSpec, DataSpecError

    listed = [r["file"] for r in m.get("misclassified", [])[:20]]
    folders: list[Path] = []
    spec = card.data.spec
    if spec and m.get("source"):
        try:
            source = DataSpec.from_dict(spec).source(m["source"])
        except (DataSpecError, KeyError):
            return None
        if source.kind != "folder_tree":
            return None
        rel = source.test_root if key.startswith(f"{source.name}_test") and source.test_root else source.root
        folders = [base / rel for c in candidates for base in (c, c.parent)]
    else:  # single-tree metrics written before multi-source training
        folders = [c / "Testing" for c in candidates]
    return next((f for f in folders if f.is_dir() and any((f / x).is_file() for x in listed)), None)
