"""Single scan: one JPG/PNG/DICOM (uploaded, or picked from the last batch) -> class, confidence, Grad-CAM."""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import pandas as pd
import streamlit as st

from core.cam import CAM_METHOD_NAMES, CAM_METHODS, CLASS_AGNOSTIC, COLORMAPS, overlay
from core.checkpoint import METRICS_FILE
from core.dicom_io import apply_display_window
from core.errors import ImageLoadError
from core.image_io import DEFAULT_LIMITS, DecodeLimits, read_source_bytes
from core.metrics import OTHER_LESION, no_finding_classes, pooled_missed_findings
from ui import charts, state, views
from ui.imaging import draw_peak_marker, grey_to_rgb, png_bytes, to_uint8
from ui.results import Analysis, analyse_bytes, explain, record_csv, record_json, result_record

UPLOAD, FROM_BATCH = "Upload a file", "From the last batch review"
CAM_LABELS = CAM_METHOD_NAMES | {"eigencam": "EigenCAM (class-agnostic)"}
MAX_CACHED = 8


def default_cam_method() -> str:
    """The CAM method chosen for the loaded model on validation patients (card ``explanation``), else Grad-CAM."""
    method = (state.current().predictor.bundle.card.get("explanation") or {}).get("method")
    return method if method in CAM_METHODS else "gradcam"


ctx = state.current()
st.title("Single scan")
st.caption("Upload one brain MRI slice (JPG, PNG or DICOM) to see the predicted class, its calibrated "
           "confidence and where the model looked.")


# -- input ----------------------------------------------------------------------------------
def pick_source() -> tuple[bytes, str] | None:
    """The chosen file's bytes and display name, or None. Shows its own error messages."""
    job = st.session_state.get(state.BATCH_KEY)
    has_batch = job is not None and bool(job.rows)
    if "single_source" not in st.session_state:
        st.session_state["single_source"] = FROM_BATCH if (state.SELECTED_KEY in st.session_state and has_batch) \
            else UPLOAD
    mode = st.segmented_control("Source", [UPLOAD, FROM_BATCH], key="single_source", required=True,
                                label_visibility="collapsed")
    limits = DecodeLimits(max_bytes=ctx.upload_limit_mb * 1024 * 1024)
    if mode == FROM_BATCH:
        if not has_batch:
            st.info("No batch review in this session yet. Run one on the **Batch review** page, or upload a file.",
                    icon=":material/info:")
            return None
        options = [r["path"] for r in job.rows]
        chosen = st.session_state.get(state.SELECTED_KEY, {}).get("label")
        if chosen in options and st.session_state.get("single_batch_file") not in options:
            st.session_state["single_batch_file"] = chosen
        rel = st.selectbox(f"File from the last batch ({job.label}, {len(options):,} files)", options,
                           key="single_batch_file")
        if rel is None:
            return None
        try:
            data, _ = read_source_bytes(job.abs_path(rel), DEFAULT_LIMITS)  # same limits as the batch run
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
            ctx.audit.record(source="single", file_sha256=analysis.file_sha256, model_sha256=model.sha256,
                             model_version=model.version,
                             predicted=pred.label, confidence=pred.confidence, probabilities=pred.probabilities,
                             ood=pred.ood, uncertain=pred.is_uncertain(ctx.uncertain_below),
                             cam_method=st.session_state.get("cam_method", default_cam_method()))
        except Exception as exc:  # noqa: BLE001 - logging must not hide the result
            st.warning(f"The prediction could not be written to the audit trail: {exc}")
        state.show_audit_count(ctx)
    cache[key] = analysis
    while len(cache) > MAX_CACHED:
        cache.popitem(last=False)
    return analysis


def display_window(analysis: Analysis) -> tuple[float, float] | None:
    """Window/level sliders for a grey DICOM slice; the (centre, width) chosen, or None for other files.
    Display only: the prediction and the heatmap always use the file's own window."""
    disp = analysis.display
    if disp is None:
        return None
    lo, hi = disp.value_range
    span = max(hi - lo, 1.0)
    step = 1.0 if span >= 50 else span / 500
    kc, kw = f"win_centre_{analysis.file_sha256[:12]}", f"win_width_{analysis.file_sha256[:12]}"
    c0, w0 = disp.default_window
    c0, w0 = min(max(c0, lo - span), hi + span), min(max(w0, step), 2 * span)

    def reset(centre: float, width: float) -> None:
        st.session_state[kc], st.session_state[kw] = centre, width

    if kc not in st.session_state:
        reset(float(c0), float(w0))
    with st.expander("Window / level (display only)", icon=":material/contrast:"):
        centre = st.slider("Window centre (level)", float(lo - span), float(hi + span), step=step, key=kc)
        width = st.slider("Window width", float(step), float(2 * span), step=step, key=kw)
        b1, b2 = st.columns(2)
        b1.button("File window" if disp.file_window or disp.voi_lut_window else "Default window", on_click=reset,
                  args=(c0, w0), key=f"win_reset_{analysis.file_sha256[:12]}", width="stretch")
        full_c, full_w = disp.full_range_window
        b2.button("Full range", on_click=reset, args=(full_c, full_w), key=f"win_full_{analysis.file_sha256[:12]}",
                  width="stretch")
        st.caption("Changes only what you see here. The model and the heatmap always use the file's own window.")
    return centre, width


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

# -- result -----------------------------------------------------------------------------------
with st.container(border=True):
    c1, c2, c3 = st.columns([1.2, 1, 1.3])
    c1.metric("Predicted class", pred.label if not uncertain else f"{pred.label} (uncertain)",
              help="The class with the highest calibrated probability.")
    c2.metric("Calibrated confidence", f"{pred.confidence:.1%}",
              help="Temperature-scaled probability of the predicted class.")
    status = ("Outside intended use" if pred.ood else "Uncertain — review" if uncertain else "Confident")
    c3.metric("Status", status, help=f"'Uncertain' below {threshold:.0%} (sidebar); 'outside intended use' "
                                     "when the image does not look like a brain MRI slice.")
    if pred.ood:
        st.warning(f"**Outside intended use.** {pred.ood_reason or 'The image is unlike the training MRI slices.'} "
                   "The prediction is not meaningful for this image.", icon=":material/report:")
    if uncertain:
        st.warning(f"**Uncertain.** Calibrated confidence {pred.confidence:.1%} is below the {threshold:.0%} "
                   "threshold set in the sidebar. Treat the class as undetermined and review the scan.",
                   icon=":material/help:")
    if not pred.ood and pred.label in no_finding_classes(names):
        shipped = views.read_json(Path(ctx.config.weights_dir) / METRICS_FILE) or {}
        # Quote held-out figures only where they were measured for the model that gave this result (the record
        # train.py and core.evaluate write: its name and identity).
        bundle = ctx.predictor.bundle
        measured_here = shipped.get("model") == {"name": bundle.name, **bundle.identity}
        held = {k: m for k, m in views.held_out_sets(shipped).items() if not k.endswith("_leak_free")} \
            if measured_here else {}
        missed = pooled_missed_findings(list(held.values()), shipped.get("class_names", names), threshold) \
            if held else None
        where = ", ".join(m.get("title", k) for k, m in held.items())
        st.info("**\"No tumour\" is not a negative read.** The model can miss a tumour with high confidence; read "
                "the whole slice." + (f" On the held-out parts ({where}): " + views.missed_findings_text(missed, threshold)
                                      if missed else ""), icon=":material/visibility_off:")
    if not pred.ood and pred.label == OTHER_LESION:
        st.info("**Other lesion.** The slice looks like it shows a tumour or lesion that is not a glioma, meningioma "
                "or pituitary tumour: for example a schwannoma, metastasis, medulloblastoma, germinoma, papilloma, "
                "central neurocytoma, granuloma or tuberculoma. The model does not name the type; read the slice.",
                icon=":material/radiology:")
    for w in pred.warnings:
        st.info(w, icon=":material/info:")

# -- explanation controls ---------------------------------------------------------------------
k1, k2, k3, k4 = st.columns([1.1, 1.3, 1, 0.8])
method = k1.selectbox("CAM method", list(CAM_METHODS), format_func=lambda m: CAM_LABELS.get(m, m), key="cam_method",
                      index=list(CAM_METHODS).index(default_cam_method()))
target_options = [None] + list(range(len(names)))
target = k2.selectbox(
    "Explain class", target_options, key="cam_target", disabled=method in CLASS_AGNOSTIC,
    format_func=lambda t: f"predicted ({pred.label})" if t is None else names[t],
    help="Show the evidence for another class, e.g. why glioma rather than meningioma. "
         "EigenCAM ignores the class.")
opacity = k3.slider("Overlay opacity", 0.0, 1.0, 0.45, 0.05, key="cam_opacity")
colormap = k4.selectbox("Colour map", list(COLORMAPS), key="cam_colormap")

try:
    with st.spinner(f"Computing {CAM_LABELS.get(method, method)}…"):
        cam = explain(ctx.predictor, analysis, method, None if method in CLASS_AGNOSTIC else target)
except Exception as exc:  # noqa: BLE001
    st.error(f"The heatmap could not be computed ({type(exc).__name__}: {exc}).", icon=":material/error:")
    st.stop()

grey = to_uint8(analysis.decoded.pixels)
blend = draw_peak_marker(overlay(analysis.pre, cam.heatmap, opacity, colormap), cam.peak)
w, h = analysis.decoded.size
left, mid, right = st.columns([1, 1, 0.95])
with left:
    window = display_window(analysis)
    if window is not None:
        grey = to_uint8(apply_display_window(analysis.display, *window))
    st.markdown("**Original**" + (f" — DICOM, window {window[0]:g} / {window[1]:g}" if window else
                                  " — DICOM, shown with its window" if analysis.is_dicom else ""))
    st.image(grey_to_rgb(grey), width="stretch", caption=f"{name} · {w}×{h} px · {analysis.decoded.source_format}")
with mid:
    explained = "class-agnostic" if method in CLASS_AGNOSTIC else f"evidence for **{cam.target}**"
    st.markdown(f"**{CAM_LABELS.get(method, method)}** — {explained}")
    st.image(blend, width="stretch",
             caption=f"Ring: heatmap peak at x={cam.peak[0]:.0%}, y={cam.peak[1]:.0%} of the image")
with right:
    st.markdown("**Probabilities (calibrated)**")
    st.plotly_chart(charts.probability_bar(pred.probabilities, pred.label, threshold), key="prob_chart",
                    config={"displayModeBar": False})
    st.markdown("**File**")
    st.dataframe(pd.DataFrame({"field": ["name", "format", "size", "SHA-256", "OOD score"],
                               "value": [name, f"{analysis.decoded.source_format} ({analysis.decoded.original_mode}, "
                                         f"{analysis.decoded.bit_depth}-bit)", f"{w}×{h} px",
                                         analysis.file_sha256[:16] + "…", f"{pred.ood_score:.1f}"]}),
                 hide_index=True, width="stretch", key="file_info")
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

# -- downloads ----------------------------------------------------------------------------------
info = ctx.model_info
record = result_record(pred, file_name=Path(name).name, file_sha256=analysis.file_sha256,
                       model_name=info["model_name"], model_version=info["model_version"],
                       model_sha256=info["model_sha256"], uncertain_below=threshold,
                       source_format=analysis.decoded.source_format, cam_method=method,
                       cam_target=None if method in CLASS_AGNOSTIC else cam.target, cam_peak=cam.peak,
                       dicom_tags=analysis.decoded.dicom_tags)
stem = Path(name).stem or "scan"
d1, d2, d3 = st.columns(3)
d1.download_button("Overlay PNG", png_bytes(blend), f"{stem}_{method}.png", "image/png", on_click="ignore",
                   icon=":material/image:", width="stretch")
d2.download_button("Result JSON", record_json(record), f"{stem}_result.json", "application/json",
                   on_click="ignore", icon=":material/data_object:", width="stretch")
d3.download_button("Result CSV", record_csv(record), f"{stem}_result.csv", "text/csv", on_click="ignore",
                   icon=":material/table:", width="stretch")
st.caption(f"Downloads include the model version ({info['model_version']}, weights SHA-256 "
           f"{info['model_sha256'][:12]}) and the file's SHA-256.")
