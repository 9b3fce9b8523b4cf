"""Single scan: one JPG/PNG/DICOM (uploaded, or picked from the last batch) -> class, confidence, Grad-CAM."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from core.explain.cam import CAM_METHOD_NAMES, CAM_METHODS, CLASS_AGNOSTIC, COLORMAPS, on_reading_scale, overlay
from core.io.dicom import apply_display_window
from core.io.display import analysed_window, grey_display
from core.errors import ImageLoadError
from core.io.decode import read_source_bytes
from core.io.types import DEFAULT_LIMITS, DecodeLimits
from core.evaluation.metrics import OTHER_LESION, implied_type_and_sequence, no_finding_classes, pooled_missed_findings
from core.preprocess import analysed_view
from core.report.pdf import single_scan_pdf
from core.report.sr import ModelIdentity
from ui import charts, feedback, state, views
from ui.imaging import colour_original, colour_scale, draw_peak_marker, labelled_overlay, png_bytes, to_uint8
from ui.results import (Analysis, analyse_bytes, explain, overlay_file_name, record_csv, record_json,
                        result_record)
from ui.viewer import image_pair

UPLOAD, FROM_BATCH = "Upload a file", "From the last batch review"
CAM_LABELS = CAM_METHOD_NAMES | {"eigencam": "EigenCAM (class-agnostic)"}
# "Explain class" option for the predicted class. Not None: a selectbox holding None shows "Choose an option".
PREDICTED = -1
MAX_CACHED = 8


def default_cam_method() -> str:
    """The CAM method chosen for the loaded model on validation patients (card ``explanation``), else Grad-CAM."""
    method = state.current().predictor.bundle.card.explanation.method
    return method if method in CAM_METHODS else "gradcam"


ctx = state.current()
st.title("Single scan")
st.caption("Upload one brain MRI slice (JPG, PNG or DICOM) to see the predicted class, its calibrated "
           "confidence and where the model looked.")


# -- input ----------------------------------------------------------------------------------
def pick_source() -> tuple[bytes, str] | None:
    """The chosen file's bytes and display name, or None. Shows its own error messages."""
    job = st.session_state.get(state.BATCH_KEY)
    options = [r["path"] for r in job.rows_snapshot()] if job is not None else []
    opened = st.session_state.get(state.SELECTED_KEY) or {}
    # A file opened from another page that is not a row of the last batch (Model metrics → Misclassified).
    elsewhere = bool(opened.get("path")) and opened.get("label") not in options
    if "single_source" not in st.session_state:
        st.session_state["single_source"] = FROM_BATCH if (opened and (options or elsewhere)) else UPLOAD
    mode = st.segmented_control("Source", [UPLOAD, FROM_BATCH], key="single_source", required=True,
                                label_visibility="collapsed",
                                format_func=lambda m: "Opened from another page" if m == FROM_BATCH and elsewhere
                                else m)
    limits = DecodeLimits(max_bytes=ctx.upload_limit_mb * 1024 * 1024)
    if mode == FROM_BATCH:
        if elsewhere:
            st.session_state.pop("single_batch_file", None)  # not one of the batch's files
            c1, c2 = st.columns([4, 1], vertical_alignment="center")
            c1.caption(f":material/open_in_new: Opened from *Model metrics*: `{opened['label']}`")
            c2.button("Close", key="single_close_opened", width="stretch",
                      on_click=lambda: st.session_state.pop(state.SELECTED_KEY, None))
            source_path, rel = opened["path"], opened["label"]
        else:
            if not options:
                st.info("No batch review in this session yet. Run one on the **Batch review** page, or upload a "
                        "file.", icon=":material/info:")
                return None
            chosen = opened.get("label")
            if chosen in options and st.session_state.get("single_batch_file") not in options:
                st.session_state["single_batch_file"] = chosen
            rel = st.selectbox(f"File from the last batch ({job.label}, {len(options):,} files)", options,
                               key="single_batch_file")
            if rel is None:
                return None
            batch_neighbours(rel)
            source_path = job.abs_path(rel)
        try:
            data, _ = read_source_bytes(source_path, DEFAULT_LIMITS)  # same limits as the batch run
        except ImageLoadError as exc:
            st.error(str(exc), icon=":material/broken_image:")
            return None
        return data, rel
    up = st.file_uploader(
        "Brain MRI slice", type=["jpg", "jpeg", "png", "dcm", "dicom"], key="single_upload",
        help=f"JPG, PNG or DICOM (.dcm), at most {ctx.upload_limit_mb} MB. DICOM patient tags are never read.")
    st.caption(f":material/upload_file: One file, JPG / PNG / DICOM, up to **{ctx.upload_limit_mb} MB**.")
    if up is None:
        return None
    if up.size > limits.max_bytes:
        st.error(f"{up.name} is {up.size / 1e6:.1f} MB; the upload limit is {ctx.upload_limit_mb} MB.",
                 icon=":material/block:")
        return None
    return up.getvalue(), up.name


def get_analysis(data: bytes, name: str) -> Analysis:
    """Analyse once per file and model in this session (and log it once to the audit trail)."""
    cache: OrderedDict = st.session_state.setdefault("single_analyses", OrderedDict())
    model = ctx.predictor.bundle
    # The model's identity, not only its weights: a re-fit keeps the weights but changes the probabilities.
    key = (hashlib.sha256(data).hexdigest(), model.sha256, model.version, ctx.predictor.tta)
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    with st.spinner(f"Analysing {name}…"):
        analysis = analyse_bytes(ctx.predictor, data, name)
    pred = analysis.prediction
    if ctx.audit is not None:
        try:
            analysis.audit_id = ctx.audit.record(
                source="single", file_sha256=analysis.file_sha256, model_sha256=model.sha256,
                model_version=model.version, predicted=pred.label, confidence=pred.confidence,
                probabilities=pred.probabilities, ood=pred.ood, uncertain=pred.is_uncertain(ctx.uncertain_below),
                cam_method=st.session_state.get("cam_method", default_cam_method()))
        except Exception as exc:  # noqa: BLE001 - logging must not hide the result
            st.warning(f"The prediction could not be written to the audit trail: {exc}")
        state.show_audit_count(ctx)
    cache[key] = analysis
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return analysis


def display_window(analysis: Analysis) -> tuple[float, float] | None:
    """Window/level sliders for any grey image; the (centre, width) chosen, or None for a colour image.

    They start at the window that shows what the model analysed (the preprocessing's intensity window, in
    the file's own units: DICOM modality units or grey levels). Display only: the prediction and the heatmap
    never change with them.
    """
    disp = grey_display(analysis.decoded)
    if disp is None:
        return None
    lo, hi = disp.value_range
    span = max(hi - lo, 1.0)
    step = 1.0 if span >= 50 else span / 500
    kc, kw = f"win_centre_{analysis.file_sha256[:12]}", f"win_width_{analysis.file_sha256[:12]}"

    def fit(window: tuple[float, float]) -> tuple[float, float]:  # keep a preset inside the sliders' ranges
        c, w = window
        return float(min(max(c, lo - span), hi + span)), float(min(max(w, step), 2 * span))

    analysed = fit(analysed_window(disp, analysis.decoded.pixels, analysis.pre.window))

    def reset(centre: float, width: float) -> None:
        st.session_state[kc], st.session_state[kw] = centre, width

    if kc not in st.session_state:
        reset(*analysed)
    with st.expander("Window / level (display only)", icon=":material/contrast:"):
        centre = st.slider("Window centre (level)", float(lo - span), float(hi + span), step=step, key=kc)
        width = st.slider("Window width", float(step), float(2 * span), step=step, key=kw)
        presets = {"As analysed": analysed}
        if analysis.is_dicom:
            presets["File window" if disp.file_window or disp.voi_lut_window else "Default window"] = \
                fit(disp.default_window)
        presets["Full range"] = fit(disp.full_range_window)
        for col, (label, window) in zip(st.columns(len(presets)), presets.items()):
            col.button(label, on_click=reset, args=window, key=f"win_{label}_{analysis.file_sha256[:12]}",
                       width="stretch")
        st.caption("Starts at **As analysed**: the contrast the model saw. Changes only what you see here; the "
                   "model and the heatmap always use the file as analysed.")
    return centre, width


def batch_neighbours(rel: str) -> None:
    """Previous / next file of the last batch review, in the order of its table as last filtered (keyboard: the
    left and right arrow keys)."""
    before, after = state.neighbour_in_batch(rel, -1), state.neighbour_in_batch(rel, +1)

    def go(neighbour: tuple) -> None:
        st.session_state["single_batch_file"] = neighbour[1]

    b1, b2, b3 = st.columns([1, 1, 3], vertical_alignment="center")
    b1.button("Previous", icon=":material/arrow_back:", key="single_prev", disabled=before is None, on_click=go,
              args=(before,), shortcut="Left", width="stretch")
    b2.button("Next", icon=":material/arrow_forward:", key="single_next", disabled=after is None, on_click=go,
              args=(after,), shortcut="Right", width="stretch")
    b3.caption("Previous / next file of the batch table · keys ← →")


source = pick_source()
if source is None:
    st.info("Waiting for a scan. The model, its version and the device are shown in the sidebar.",
            icon=":material/hourglass_empty:")
    st.stop()
data, name = source
try:
    analysis = get_analysis(data, name)
except ImageLoadError as exc:
    st.error(f"**This file cannot be analysed.** {exc}", icon=":material/broken_image:")
    st.stop()
except Exception as exc:  # noqa: BLE001 - never a traceback in the page
    st.error(f"**Unexpected problem while analysing {name}:** {type(exc).__name__}: {exc}", icon=":material/error:")
    st.stop()

pred = analysis.prediction
names = ctx.class_names
threshold = ctx.uncertain_below
uncertain = pred.is_uncertain(threshold)
confidence = charts.format_confidence(pred.confidence)  # rounded down: never shown equal to the threshold
ood_threshold = ctx.predictor.ood.threshold if ctx.predictor.ood is not None else None


def model_metrics() -> dict | None:
    """The loaded model's own metrics file (``ui.views.metrics_for``), or None."""
    return views.metrics_for(ctx.predictor.bundle, ctx.weights_dir)


def sentence(text: str) -> str:
    """``text`` as a sentence: capital first letter, closing full stop."""
    text = text.strip()
    return (text[:1].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")) if text else text


# -- result -----------------------------------------------------------------------------------
with st.container(border=True):
    if pred.ood:
        # Outside intended use: the headline is the refusal and its reason, never a class.
        reason = sentence(pred.ood_reason or "the image is unlike the MRI slices the model was trained on")
        st.error(f"### Outside intended use\n{reason} The model's output is not meaningful for this image, so no "
                 "class is shown.", icon=":material/report:")
        show_anyway = st.toggle("Show the model's output anyway", key=f"ood_show_{analysis.file_sha256[:12]}",
                                help="For checking the model's behaviour only: the class, probabilities and heatmap "
                                     "of an image outside intended use are not a reading.")
    else:
        show_anyway = True
        c1, c2, c3 = st.columns([1.2, 1, 1.3])
        c1.metric("Predicted class", pred.label if not uncertain else f"{pred.label} (uncertain)",
                  help="The class with the highest calibrated probability.")
        c2.metric("Calibrated confidence", confidence,
                  help="Temperature-scaled probability of the predicted class.")
        c3.metric("Status", f"Uncertain (< {threshold:.0%})" if uncertain else f"Confident (≥ {threshold:.0%})",
                  help=f"'Confident' means a calibrated confidence of at least {threshold:.0%}; below it the result "
                       "is 'uncertain' (threshold set in the sidebar).")
    if uncertain and not pred.ood:
        st.warning(f"**Uncertain.** Calibrated confidence {confidence} is below the {threshold:.0%} "
                   "threshold set in the sidebar. Treat the class as undetermined and review the scan.",
                   icon=":material/help:")
    if not pred.ood and pred.label in no_finding_classes(names):
        shipped = model_metrics() or {}
        held = {k: m for k, m in views.held_out_sets(shipped).items() if not k.endswith("_leak_free")}
        missed = pooled_missed_findings(list(held.values()), shipped.get("class_names", names), threshold) \
            if held else None
        where = ", ".join(m.get("title", k) for k, m in held.items())
        measured = f" On the held-out parts ({where}): " + views.missed_findings_text(missed, threshold) \
            if missed else ""
        st.info("**\"No tumour\" is not a negative read.** The model can miss a tumour with high confidence; read "
                "the whole slice." + measured, icon=":material/visibility_off:")
    if not pred.ood and pred.label == OTHER_LESION:
        st.info("**Other lesion.** The slice looks like it shows a tumour or lesion that is not a glioma, meningioma "
                "or pituitary tumour: for example a schwannoma, metastasis, medulloblastoma, germinoma, papilloma, "
                "central neurocytoma, granuloma or tuberculoma. The model does not name the type; read the slice.",
                icon=":material/radiology:")
    for w in pred.warnings:
        st.info(w, icon=":material/info:")
    if pred.ood and show_anyway:
        st.caption(f":grey[Model output, not a reading: {pred.label}, calibrated confidence {confidence}.]")

w, h = analysis.decoded.size
file_facts = pd.DataFrame({
    "field": ["name", "format", "size", "SHA-256", "OOD score"],
    "value": [name, f"{analysis.decoded.source_format} ({analysis.decoded.original_mode}, "
              f"{analysis.decoded.bit_depth}-bit)", f"{w}×{h} px", analysis.file_sha256[:16] + "…",
              f"{pred.ood_score:.1f}" + (f" (flagged above {ood_threshold:.1f})" if ood_threshold is not None
                                         and np.isfinite(ood_threshold) else "")]})


def file_panel() -> None:
    st.markdown("**File**")
    st.dataframe(file_facts, hide_index=True, width="stretch", key="file_info")
    st.caption("OOD score: distance of the slice's features from the training MRI slices; above the threshold "
               "(about 1 % of validation MRI slices) the image is flagged as outside intended use.")
    if analysis.is_dicom:
        st.markdown("**DICOM acquisition** (non-identifying tags only)")
        tags = dict(analysis.decoded.dicom_tags)
        if analysis.window:
            tags.update(analysis.window)
        if tags:
            st.dataframe(pd.DataFrame({"tag": list(tags), "value": [str(v) for v in tags.values()]}),
                         hide_index=True, width="stretch", key="dicom_tags")
        else:
            st.caption("The file carries none of the acquisition tags shown here.")
        st.caption(":material/lock: Patient, institution and date tags are never read into the app.")


info = ctx.model_info
stem = Path(name).stem or "scan"
TOP_K = 5  # a model with many classes (the 44-class one) shows its top classes, not 44 bars


def probability_panel() -> None:
    """Calibrated probabilities: every class, or the top five of a many-class model with the type and sequence
    they imply (probabilities summed over the classes that share them)."""
    probs = pred.probabilities
    if len(probs) <= 8:
        st.markdown("**Probabilities (calibrated)**")
        shown = probs
    else:
        st.markdown(f"**Top {TOP_K} of {len(probs)} classes (calibrated)**")
        shown = dict(sorted(probs.items(), key=lambda kv: -kv[1])[:TOP_K])
    st.plotly_chart(charts.probability_bar(shown, pred.label, threshold), key="prob_chart",
                    config={"displayModeBar": False})
    implied = implied_type_and_sequence(probs)
    if implied:
        (kind, p_kind), (seq, p_seq) = implied["type"], implied["sequence"]
        st.markdown(f"Implied type **{kind}** ({charts.format_confidence(p_kind)}) · sequence **{seq}** "
                    f"({charts.format_confidence(p_seq)})",
                    help="Each is the sum of the probabilities of the classes that share it.")



def reader_feedback() -> None:
    """Agree / disagree with this result, stored in the audit trail beside the prediction."""
    feedback.feedback_form(ctx.audit, key="single_feedback", file_sha256=analysis.file_sha256,
                           model_sha256=info["model_sha256"], model_version=info["model_version"],
                           predicted=pred.label, class_names=names, prediction_id=analysis.audit_id)

if not show_anyway:
    # Only the file as it is (in colour for a photo) and the record of the refusal.
    left, right = st.columns([2, 0.95])
    colour = colour_original(data)
    left.image(colour if colour is not None else to_uint8(analysis.decoded.pixels), width="stretch",
               caption=f"{name} · {w}×{h} px · {analysis.decoded.source_format}" +
                       (" · shown in colour, as uploaded" if colour is not None else ""))
    with right:
        file_panel()
    record = result_record(pred, file_name=Path(name).name, file_sha256=analysis.file_sha256,
                           model_name=info["model_name"], model_version=info["model_version"],
                           model_sha256=info["model_sha256"], uncertain_below=threshold,
                           source_format=analysis.decoded.source_format, dicom_tags=analysis.decoded.dicom_tags)
    reader_feedback()
    d2, d3, d4 = st.columns(3)
    d4.download_button("PDF report", lambda: single_scan_pdf(record, ModelIdentity.from_card(ctx.predictor.bundle.card),
                                                             model_metrics()),
                       f"{analysis.file_sha256[:12]}_report.pdf", "application/pdf", on_click="ignore",
                       icon=":material/picture_as_pdf:", width="stretch")
    d2.download_button("Result JSON", record_json(record), f"{stem}_result.json", "application/json",
                       on_click="ignore", icon=":material/data_object:", width="stretch")
    d3.download_button("Result CSV", record_csv(record), f"{stem}_result.csv", "text/csv", on_click="ignore",
                       icon=":material/table:", width="stretch")
    st.stop()

# -- explanation controls ---------------------------------------------------------------------
# A new scan starts by explaining its predicted class: the target never carries over from another file.
if st.session_state.get("cam_target_for") != (analysis.file_sha256, ctx.predictor.bundle.sha256):
    st.session_state["cam_target_for"] = (analysis.file_sha256, ctx.predictor.bundle.sha256)
    st.session_state["cam_target"] = PREDICTED
k1, k2, k3, k4 = st.columns([1.1, 1.3, 1, 0.8])
method = k1.selectbox("CAM method", list(CAM_METHODS), format_func=lambda m: CAM_LABELS.get(m, m), key="cam_method",
                      index=list(CAM_METHODS).index(default_cam_method()))
agnostic = method in CLASS_AGNOSTIC
target = k2.selectbox(
    "Explain class", [PREDICTED] + list(range(len(names))), key="cam_target", disabled=agnostic,
    format_func=lambda t: f"predicted ({pred.label})" if t == PREDICTED else
    f"{names[t]} ({pred.probabilities.get(names[t], 0.0):.1%})",
    help="Show the evidence for another class, e.g. why glioma rather than meningioma. "
         "EigenCAM ignores the class.")
opacity = k3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
colormap = k4.selectbox("Colour map", list(COLORMAPS), key="cam_colormap")

try:
    with st.spinner(f"Computing {CAM_LABELS.get(method, method)}…"):
        target_index = None if agnostic or target == PREDICTED else target
        raw = explain(ctx.explainer, analysis, method, target_index)
        # Another class's map goes on the predicted class's scale, so weak evidence is drawn faint, not hot.
        other = target_index is not None and target_index != pred.index
        reference = explain(ctx.explainer, analysis, method, None) if other else None
        cam = on_reading_scale(raw, analysis.head_mask(ctx.predictor.spec), reference)
except Exception as exc:  # noqa: BLE001
    st.error(f"The heatmap could not be computed ({type(exc).__name__}: {exc}).", icon=":material/error:")
    st.stop()

p_target = pred.probabilities.get(cam.target, 0.0)
if agnostic:
    scale_label = "1 = this map's peak"
elif other and cam.strength is not None and reference is not None and reference.strength:
    scale_label = f"1 = peak of the {pred.label} map"
else:
    scale_label = "1 = this map's peak"
px, py = cam.peak_pixel()
blend = draw_peak_marker(overlay(analysis.pre, cam.heatmap, opacity, colormap), cam.peak)

left, right = st.columns([2, 0.95])
with left:
    window = display_window(analysis)
    grey = to_uint8(apply_display_window(grey_display(analysis.decoded), *window)) if window is not None \
        else to_uint8(analysed_view(analysis.pre))
    explained = "class-agnostic" if agnostic else f"evidence for **{cam.target}** (p = {p_target:.1%})"
    st.markdown(f"**Original** · {name} · {w}×{h} px · {analysis.decoded.source_format}"
                + (f" — window {window[0]:g} / {window[1]:g}" if window else "")
                + f"  \n**{CAM_LABELS.get(method, method)}** — {explained}")
    st.plotly_chart(image_pair(grey, blend, ("Original", f"{CAM_LABELS.get(method, method)}: "
                                             + ("class-agnostic" if agnostic else cam.target)),
                               colour_scale(COLORMAPS[colormap]), scale_label),
                    key="image_pair", config={"scrollZoom": True, "displaylogo": False})
    st.caption(f"Ring: heatmap peak at x={px}, y={py} px of the {w}×{h} original. Scroll to zoom and drag to pan; "
               "both panels move together (double-click to reset). The map is kept to the head.")
    if other and cam.scale < 1.0:
        st.info(f"**Weak evidence.** The map for {cam.target} (p = {p_target:.1%}) is drawn on the {pred.label} "
                f"map's scale: its peak is {cam.scale:.0%} of the {pred.label} map's peak.", icon=":material/tune:")
    elif other and cam.strength is None:
        st.warning(f"**Each map is stretched to its own peak** with this engine, so the map for {cam.target} "
                   f"(p = {p_target:.1%}) looks as hot as a strong one. Read it as where, not how much.",
                   icon=":material/tune:")
with right:
    probability_panel()
    file_panel()

# -- downloads ----------------------------------------------------------------------------------
record = result_record(pred, file_name=Path(name).name, file_sha256=analysis.file_sha256,
                       model_name=info["model_name"], model_version=info["model_version"],
                       model_sha256=info["model_sha256"], uncertain_below=threshold,
                       source_format=analysis.decoded.source_format, cam_method=method,
                       cam_target=None if agnostic else cam.target, cam_peak=cam.peak,
                       dicom_tags=analysis.decoded.dicom_tags)
labelled = labelled_overlay(blend, [
    f"{CAM_METHOD_NAMES.get(method, method)}: " + ("class-agnostic" if agnostic else
                                                   f"evidence for {cam.target} (p = {p_target:.1%})"),
    f"Predicted: {pred.label} ({confidence})" + (" - OUTSIDE INTENDED USE" if pred.ood else "")
    + (" - uncertain" if uncertain and not pred.ood else ""),
    f"Model: {info['model_name']} v{info['model_version']}, SHA-256 {info['model_sha256'][:12]}",
    f"Peak: x={px}, y={py} px of {w}x{h}. File SHA-256 {analysis.file_sha256[:12]}",
    "RESEARCH USE ONLY - NOT FOR DIAGNOSIS",
], COLORMAPS[colormap], scale_label)
d1, d2, d3, d4 = st.columns(4)
d4.download_button("PDF report", lambda: single_scan_pdf(record, ModelIdentity.from_card(ctx.predictor.bundle.card),
                                                         model_metrics(), overlay=labelled),
                   f"{analysis.file_sha256[:12]}_report.pdf", "application/pdf", on_click="ignore",
                   icon=":material/picture_as_pdf:", width="stretch",
                   help="Result, heatmap, probabilities, model identity and its measured per-source performance; "
                        "no file name or patient tag (the PDF is named by the file's SHA-256).")
d1.download_button("Overlay PNG", png_bytes(labelled), overlay_file_name(stem, "agnostic" if agnostic else cam.target,
                                                                         method),
                   "image/png", on_click="ignore", icon=":material/image:", width="stretch")
d2.download_button("Result JSON", record_json(record), f"{stem}_result.json", "application/json",
                   on_click="ignore", icon=":material/data_object:", width="stretch")
d3.download_button("Result CSV", record_csv(record), f"{stem}_result.csv", "text/csv", on_click="ignore",
                   icon=":material/table:", width="stretch")
st.caption(f"Downloads include the model version ({info['model_version']}, weights SHA-256 "
           f"{info['model_sha256'][:12]}) and the file's SHA-256. The overlay PNG has the class, method, model and "
           "the research-use notice burned in.")
reader_feedback()
