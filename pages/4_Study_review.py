"""Study review: whole series (NIfTI, DICOM files or a zip of them) -> one verdict per series, slice by slice."""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import pandas as pd
import streamlit as st

from core.cam import CAM_METHOD_NAMES, CAM_METHODS, CLASS_AGNOSTIC, COLORMAPS, overlay
from core.dicom_io import DicomDisplay, apply_display_window
from core.report_pdf import KeyImage, study_pdf
from core.results_sr import ModelIdentity, SeriesFinding
from core.display import analysed_window
from core.series import PLANES, Series, SeriesLoad, read_series
from core.study import SeriesReview, load_rule, review_series, rule_model_sha256, slice_cam
from ui import state, views
from ui.imaging import colour_scale, draw_peak_marker, to_uint8
from ui.study_view import record_json, series_record, slices_csv, slice_table, strip_chart
from ui.viewer import image_pair

MAX_CACHED = 4
ctx = state.current()
st.title("Study review")
st.caption("Upload whole series: a NIfTI volume (.nii, .nii.gz), the DICOM files of one or more series, a "
           "multi-frame DICOM, or a .zip of them. Every slice is predicted and each series gets one verdict.")
st.warning(f"**{state.RESEARCH_NOTICE}** The series verdict is a rule over slice results, not a reading.",
           icon=":material/science:")


def _cache(name: str) -> OrderedDict:
    return st.session_state.setdefault(name, OrderedDict())


def _remember(cache: OrderedDict, key, value, limit: int = MAX_CACHED):
    cache[key] = value
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def load_uploads(uploads) -> list[SeriesLoad]:
    """Read every series of the upload once per set of files (the result stays in the session)."""
    files = [(u.name, u.getvalue()) for u in uploads]
    h = hashlib.sha256()
    for name, data in files:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    cache = _cache("study_loads")
    if h.hexdigest() in cache:
        return cache[h.hexdigest()]
    with st.spinner("Reading the series…"):
        loads = read_series(files)
    return _remember(cache, h.hexdigest(), loads, limit=2)  # whole volumes: keep the last two uploads only


def get_review(series: Series, plane: str) -> SeriesReview:
    """Every slice predicted once per series, plane and model (logged once to the audit trail)."""
    rule, model = load_rule(), ctx.predictor.bundle
    key = (series.key, plane, model.sha256, model.version, rule)
    cache = _cache("study_reviews")
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    bar = st.progress(0.0, text=f"Predicting every slice of {series.name}…")
    review = review_series(ctx.predictor, series, rule, plane,
                           progress=lambda done, n: bar.progress(done / n, text=f"Predicted {done} of {n} slices"))
    bar.empty()
    if ctx.audit is not None:
        try:  # one record per series: the content hash, the verdict and the model; never a name or a tag
            ctx.audit.record(source="study", file_sha256=series.key, model_sha256=model.sha256,
                             model_version=model.version, predicted=review.verdict_text(),
                             confidence=float(review.tumour_prob.max(initial=0.0)), ood=review.series_ood,
                             uncertain=review.uncertain)
        except Exception as exc:  # noqa: BLE001 - logging must not hide the result
            st.warning(f"The review could not be written to the audit trail: {exc}")
        state.show_audit_count(ctx)
    return _remember(cache, key, review)


uploads = st.file_uploader("MRI series", type=["nii", "gz", "dcm", "dicom", "zip"], accept_multiple_files=True,
                           key="study_upload",
                           help=f"NIfTI, DICOM or .zip, at most {ctx.upload_limit_mb} MB per file. DICOM patient "
                                "tags are never read into the app.")
plane = st.segmented_control("Reading plane", list(PLANES), default="axial", key="study_plane", required=True,
                             help="Axial by default. Coronal and sagittal are cut from the same voxels; no slice "
                                  "is interpolated from its neighbours.")
if not uploads:
    st.info("Waiting for a series.", icon=":material/hourglass_empty:")
    st.stop()

loads = load_uploads(uploads)
good = [l for l in loads if l.series is not None]

# -- every series of the upload, each with its verdict ---------------------------------------------------------
reviews: dict[str, SeriesReview] = {}
for l in good:  # every series is reviewed once (cached), so the list shows a verdict for each
    try:
        reviews[l.series.key] = get_review(l.series, plane)
    except Exception as exc:  # noqa: BLE001 - never a traceback in the page; the other series still run
        l.error = f"{l.label}: the series could not be reviewed ({type(exc).__name__}: {exc})"
good = [l for l in good if l.series.key in reviews]
rows = []
for l in loads:
    rv = reviews.get(l.series.key) if l.series is not None else None
    if rv is None:
        rows.append({"series": l.label, "format": "–", "slices": None, "verdict": "cannot be read",
                     "positive slices": ""})
        continue
    s = rv.summary()
    rows.append({"series": l.series.name, "format": l.series.source_format, "slices": rv.n_slices,
                 "verdict": rv.verdict_text() + (" (uncertain)" if rv.uncertain else ""),
                 "positive slices": f"{s['positive_range'][0]}–{s['positive_range'][1]}" if s["positive_range"]
                 else "none"})
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", key="study_series_table")
for l in loads:
    if l.error:
        st.error(f"**{l.label} cannot be reviewed.** {l.error}", icon=":material/broken_image:")
if not good:
    st.stop()

labels = [f"{i + 1}. {l.series.name} — {reviews[l.series.key].verdict_text()}" for i, l in enumerate(good)]
choice = st.selectbox("Series to review", range(len(good)), format_func=lambda i: labels[i], key="study_series")
series = good[min(choice, len(good) - 1)].series
review = reviews[series.key]

# -- the series summary on top --------------------------------------------------------------------------------
s = review.summary()
with st.container(border=True):
    st.subheader(f"{series.name} · {series.source_format}", anchor=False)
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    c1.metric("Series verdict", review.verdict_text() + (" (uncertain)" if review.uncertain else ""))
    c2.metric("Positive slices", f"{s['positive_range'][0]}–{s['positive_range'][1]}" if s["positive_range"] else "none",
              help="The longest run of slices over the threshold (slices numbered from 1, inferior first).")
    c3.metric("Highest tumour probability", f"{s['max_tumour_probability']:.1%}")
    c4.metric("Top slices", ", ".join(map(str, s["top_slices"][:3])) or "–")
    st.caption(f"**Rule:** {review.rule.describe()} (chosen on validation patients; see the README). "
               f"{review.n_slices} {plane} slices, {int(review.ood.sum())} outside intended use.")
    if plane != "axial":
        st.warning(f"**{plane.capitalize()} slices.** The model was trained, and the rule chosen, on axial slices "
                   "only: read this plane's results as untested.", icon=":material/rotate_90_degrees_ccw:")
    chosen_for = rule_model_sha256()
    if chosen_for != ctx.predictor.bundle.sha256:
        st.warning("**The rule was not chosen for this model.** " + (
            f"k and t were chosen on validation patients with the model `{chosen_for[:12]}`; for this model they "
            "are untested." if chosen_for else "No recorded choice was found; the default rule is used."),
            icon=":material/rule:")
    if review.series_ood:
        st.error("**Outside intended use.** Over half of this series' slices do not look like the brain MRI slices "
                 "the model was trained on, so the verdict is not meaningful. "
                 f"(Applied to the slices anyway, the rule would say: {'tumour' if review.tumour else 'no tumour'}.)",
                 icon=":material/report:")
    elif review.uncertain:
        st.warning("**Uncertain.** The verdict changes with a slightly different threshold or run length: "
                   "read the series.", icon=":material/help:")
    if not review.tumour and not review.series_ood:
        st.info("**\"No tumour found\" is not a negative read.** The model misses tumours on some slices; read the "
                "whole series.", icon=":material/visibility_off:")
    for w in series.warnings:
        st.info(w, icon=":material/info:")

# -- slice navigation: slider, ← → keys, click on the strip chart ---------------------------------------------
n = review.n_slices
skey = f"study_slice_{series.key[:12]}_{plane}"
ckey = f"study_strip_{series.key[:12]}_{plane}"
if skey not in st.session_state:
    st.session_state[skey] = (review.top_slices[0] if review.top_slices else n // 2) + 1
# A click on the strip chart (its selection is in the session before the slider is drawn) jumps to that slice.
points = ((st.session_state.get(ckey) or {}).get("selection") or {}).get("points") or []
if points:
    clicked = int(round(points[0].get("x", st.session_state[skey])))
    if st.session_state.get(ckey + "_done") != clicked:
        st.session_state[ckey + "_done"] = clicked
        st.session_state[skey] = min(max(clicked, 1), n)


def step(delta: int) -> None:
    st.session_state[skey] = min(max(st.session_state[skey] + delta, 1), n)


b1, b2, b3 = st.columns([1, 1, 6], vertical_alignment="bottom")
b1.button("Previous", icon=":material/arrow_back:", key="study_prev", on_click=step, args=(-1,), shortcut="Left",
          width="stretch", disabled=st.session_state[skey] <= 1)
b2.button("Next", icon=":material/arrow_forward:", key="study_next", on_click=step, args=(1,), shortcut="Right",
          width="stretch", disabled=st.session_state[skey] >= n)
shown = b3.slider(f"Slice (1 = most {'inferior' if plane == 'axial' else 'posterior' if plane == 'coronal' else 'right'})",
                  1, n, key=skey, help="Keys ← → step one slice; click the chart below to jump.")
k = shown - 1
st.plotly_chart(strip_chart(review, k), key=ckey, on_select="rerun", selection_mode="points",
                config={"displaylogo": False})
st.caption("Calibrated probability of each class per slice; dotted: tumour probability (1 − no tumour); dashed: "
           "the rule's threshold; shaded: the longest positive run; blue line: the slice shown. Click a point to "
           "jump to its slice.")

# -- the shown slice: image and heatmap, computed when shown -----------------------------------------------------
k1, k2, k3, k4 = st.columns([1.2, 1, 1, 0.8])
card_method = (ctx.predictor.bundle.card.get("explanation") or {}).get("method")
methods = list(CAM_METHODS)
method = k1.selectbox("CAM method", methods, key="study_cam_method",
                      index=methods.index(card_method) if card_method in methods else methods.index("gradcam"),
                      format_func=lambda m: CAM_METHOD_NAMES.get(m, m))
names = review.class_names
predicted = int(np.nan_to_num(review.probabilities[k], nan=-1.0).argmax())
target = k2.selectbox("Explain class", [-1] + list(range(len(names))), key="study_cam_target",
                      disabled=method in CLASS_AGNOSTIC,
                      format_func=lambda t: f"predicted ({names[predicted]})" if t == -1 else
                      f"{names[t]} ({np.nan_to_num(review.probabilities[k, t]):.1%})")
opacity = k3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="study_opacity")
colormap = k4.selectbox("Colour map", list(COLORMAPS), key="study_colormap")

cams = _cache("study_cams")
ckey_cam = (series.key, plane, k, method, target, ctx.predictor.bundle.sha256)
if ckey_cam not in cams:
    try:
        _remember(cams, ckey_cam, slice_cam(ctx.predictor, series, review, k, method,
                                            None if target == -1 or method in CLASS_AGNOSTIC else target))
    except Exception as exc:  # noqa: BLE001
        st.error(f"The heatmap could not be computed ({type(exc).__name__}: {exc}).", icon=":material/error:")
        st.stop()
cam, item = cams[ckey_cam]

stored = series.plane_image(k, plane)
display = DicomDisplay(values=stored, monochrome1=False, file_window=None, voi_lut_sequence=False)
lo, hi = float(stored.min()), float(stored.max())
span = max(hi - lo, 1.0)
wc, ww = f"study_wc_{series.key[:12]}", f"study_ww_{series.key[:12]}"
analysed = analysed_window(display, item.decoded.pixels, item.window)
series_lo, series_hi = review.scale


def set_window(c: float, w: float) -> None:
    st.session_state[wc], st.session_state[ww] = float(c), float(w)


if wc not in st.session_state:
    set_window((series_lo + series_hi) / 2, max(series_hi - series_lo, 1.0))
vmin, vmax = min(lo, series_lo) - span, max(hi, series_hi) + span
st.session_state[wc] = float(min(max(st.session_state[wc], vmin), vmax))
st.session_state[ww] = float(min(max(st.session_state[ww], 1.0), 2 * (vmax - vmin)))
left, right = st.columns([2, 0.95])
with left:
    with st.expander("Window / level (display only)", icon=":material/contrast:"):
        centre = st.slider("Window centre (level)", vmin, vmax, key=wc)
        width = st.slider("Window width", 1.0, 2 * (vmax - vmin), key=ww)
        w1, w2, w3 = st.columns(3)
        w1.button("Series window", on_click=set_window, width="stretch", key="study_win_series",
                  args=((series_lo + series_hi) / 2, max(series_hi - series_lo, 1.0)))
        w2.button("As analysed (this slice)", on_click=set_window, args=analysed, width="stretch",
                  key="study_win_analysed")
        w3.button("Full range", on_click=set_window, args=((lo + hi) / 2, span), width="stretch",
                  key="study_win_full")
        st.caption("Changes only what you see; the model and the heatmap always use the series as analysed.")
    grey = to_uint8(apply_display_window(display, centre, width))
    blend = draw_peak_marker(overlay(item, cam.heatmap, opacity, colormap), cam.peak)
    p = review.probabilities[k]
    title = f"{CAM_METHOD_NAMES.get(method, method)}: " + ("class-agnostic" if method in CLASS_AGNOSTIC else cam.target)
    if review.blank[k]:
        line = "blank slice (no signal): not predicted"
    else:
        line = (f"{names[predicted]} ({p[predicted]:.1%}) · tumour probability {review.tumour_prob[k]:.1%}"
                + (" · **outside intended use**" if review.ood[k] else "") + (" · positive" if review.positive[k] else ""))
    st.markdown(f"**Slice {shown} of {n}** · {line}")
    st.plotly_chart(image_pair(grey, blend, (f"Slice {shown}", title), colour_scale(COLORMAPS[colormap]),
                               "1 = peak of the predicted class's map" if cam.scale < 1 else "1 = this map's peak"),
                    key="study_pair", config={"scrollZoom": True, "displaylogo": False})
    px, py = cam.peak_pixel()
    st.caption(f"Ring: heatmap peak at x={px}, y={py} px. Scroll to zoom, drag to pan; both panels move together. "
               + ("Outside intended use: " + review.ood_reasons[k] if review.ood[k] and review.ood_reasons[k] else ""))
with right:
    st.markdown("**Series**")
    facts = {"name": series.name, "format": series.source_format, "acquired plane": series.acquired_plane,
             "voxel size": " × ".join(f"{z:g}" for z in series.zooms) + " mm", "SHA-256": series.key[:16] + "…"}
    st.dataframe(pd.DataFrame({"field": list(facts), "value": list(facts.values())}), hide_index=True,
                 width="stretch", key="study_facts")
    if series.tags:
        st.markdown("**DICOM acquisition** (non-identifying tags only)")
        st.dataframe(pd.DataFrame({"tag": list(series.tags), "value": list(series.tags.values())}), hide_index=True,
                     width="stretch", key="study_tags")
    st.caption(":material/lock: Patient, institution and date tags are never read into the app.")
    st.markdown("**This slice (calibrated)**")
    st.dataframe(pd.DataFrame({"class": names, "probability": ["–" if np.isnan(v) else f"{v:.1%}" for v in p]}), hide_index=True,
                 width="stretch", key="study_slice_probs")

# -- downloads ------------------------------------------------------------------------------------------------
info = ctx.model_info
stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in series.name)[:60] or "series"
d1, d2, d3 = st.columns(3)


def series_pdf() -> bytes:
    """The series report (``core.report_pdf.study_pdf``) with the shown slice as its key image. Labelled by
    format and size only: a NIfTI file name can name the patient."""
    finding = SeriesFinding(verdict=bool(review.tumour and not review.series_ood), tumour_type=review.tumour_type,
                            probability=float(np.nanmax(review.tumour_prob)) if review.n_slices else 0.0,
                            positive_slices=[f"slice {i + 1}" for i in np.flatnonzero(review.positive)])
    return study_pdf(finding, ModelIdentity.from_card(ctx.predictor.bundle.card),
                     views.metrics_for(ctx.predictor.bundle, ctx.weights_dir), review.n_slices,
                     key_images=[KeyImage(f"Slice {shown} of {n}: {title}", blend)],
                     rule=f"{review.verdict_text()}. Rule: {review.rule.describe()}.",
                     series_label=f"{series.source_format}, {review.n_slices} {review.plane} slices")


d3.download_button("PDF report", series_pdf, f"{series.key[:12]}_series_report.pdf", "application/pdf",
                   on_click="ignore", icon=":material/picture_as_pdf:", width="stretch",
                   help="Verdict, rule, the shown slice with its heatmap, model identity and its measured per-source "
                        "performance; no file name or patient tag.")
d1.download_button("Series result JSON", record_json(series_record(series, review, info)), f"{stem}_series.json",
                   "application/json", on_click="ignore", icon=":material/data_object:", width="stretch")
d2.download_button("Per-slice CSV", slices_csv(review, series, info), f"{stem}_slices.csv", "text/csv",
                   on_click="ignore", icon=":material/table:", width="stretch")
with st.expander("Per-slice table"):
    st.dataframe(slice_table(review), hide_index=True, width="stretch", key="study_slice_table")
