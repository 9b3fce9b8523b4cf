"""The slice viewer of the Study review page, as a fragment: moving to another slice reruns only this part.

Why a fragment: a slider move, an arrow key or a click on the strip chart used to rerun the whole page (the
series table, the summary, every widget: 0.4-0.9 s). Inside ``st.fragment`` only the viewer reruns, and what
it draws is reused: the heatmaps come from a :class:`core.explain.study_cams.SliceCams` (kept, and the neighbours of
the shown slice computed ahead in the background), the strip chart is built once per series and only its
slice line moves, and the image pair figure only gets new image sources.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import streamlit as st

from core.explain.cam import CAM_METHOD_NAMES, CAM_METHODS, CLASS_AGNOSTIC, COLORMAPS, overlay
from core.io.dicom import DicomDisplay, apply_display_window
from core.io.display import analysed_window
from core.report.pdf import KeyImage, study_pdf
from core.report.sr import ModelIdentity, SeriesFinding
from core.io.series import Series
from core.inference.study import SeriesReview
from core.explain.study_cams import SliceCams
from ui import views
from ui.imaging import colour_scale, draw_peak_marker, to_uint8
from ui.study_view import move_marker, record_json, refill_pair, series_record, slice_table, slices_csv, strip_chart

MAX_CAM_SETS = 4  # SliceCams kept per session (series x plane x method x target)


def _cache(name: str) -> OrderedDict:
    return st.session_state.setdefault(name, OrderedDict())


def _remember(cache: OrderedDict, key, value, limit: int):
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)
    return value


def slice_cams(ctx, series: Series, review: SeriesReview, method: str, target: int | None) -> SliceCams:
    """The session's heatmap store for this series, plane, method and target (made on first use)."""
    key = (series.key, review.plane, method, target, ctx.predictor.bundle.sha256, review.rule)
    cache = _cache("study_slice_cams")
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    return _remember(cache, key, SliceCams(ctx.explainer, series, review, method, target), MAX_CAM_SETS)


def _strip(series: Series, review: SeriesReview, model_sha: str, k: int):
    key = (series.key, review.plane, model_sha, review.rule)
    cache = _cache("study_strips")
    fig = cache.get(key) or _remember(cache, key, strip_chart(review, k), 2)
    return move_marker(fig, k)


@st.fragment
def slice_viewer(ctx, series: Series, review: SeriesReview, plane: str) -> None:
    """Slider, ← → keys, strip chart, the shown slice's image and heatmap, and the downloads."""
    n = review.n_slices
    skey = f"study_slice_{series.key[:12]}_{plane}"
    ckey = f"study_strip_{series.key[:12]}_{plane}"
    if skey not in st.session_state:
        st.session_state[skey] = (review.top_slices[0] if review.top_slices else n // 2) + 1
    # A click on the strip chart (its selection is in the session before the slider is drawn) jumps to it.
    points = ((st.session_state.get(ckey) or {}).get("selection") or {}).get("points") or []
    if points:
        clicked = int(round(points[0].get("x", st.session_state[skey])))
        if st.session_state.get(ckey + "_done") != clicked:
            st.session_state[ckey + "_done"] = clicked
            st.session_state[skey] = min(max(clicked, 1), n)

    def step(delta: int) -> None:
        st.session_state[skey] = min(max(st.session_state[skey] + delta, 1), n)

    b1, b2, b3 = st.columns([1, 1, 6], vertical_alignment="bottom")
    b1.button("Previous", icon=":material/arrow_back:", key="study_prev", on_click=step, args=(-1,),
              shortcut="Left", width="stretch", disabled=st.session_state[skey] <= 1)
    b2.button("Next", icon=":material/arrow_forward:", key="study_next", on_click=step, args=(1,), shortcut="Right",
              width="stretch", disabled=st.session_state[skey] >= n)
    first = {"axial": "inferior", "coronal": "posterior"}.get(plane, "right")
    shown = b3.slider(f"Slice (1 = most {first})", 1, n, key=skey,
                      help="Keys ← → step one slice; click the chart below to jump.")
    k = shown - 1
    st.plotly_chart(_strip(series, review, ctx.predictor.bundle.sha256, k), key=ckey, on_select="rerun",
                    selection_mode="points", config={"displaylogo": False})
    st.caption("Calibrated probability of each class per slice; dotted: tumour probability (1 − no tumour); dashed: "
               "the rule's threshold; shaded: the longest positive run; blue line: the slice shown. Click a point "
               "to jump to its slice.")

    # -- the shown slice: image and heatmap, computed when shown (or ahead, for the neighbours) -----------------
    k1, k2, k3, k4 = st.columns([1.2, 1, 1, 0.8])
    card_method = ctx.predictor.bundle.card.explanation.method
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
    cams = slice_cams(ctx, series, review, method, None if target == -1 or method in CLASS_AGNOSTIC else target)
    try:
        cam, item = cams.get(k)
    except Exception as exc:  # noqa: BLE001 - never a traceback in the page
        st.error(f"The heatmap could not be computed ({type(exc).__name__}: {exc}).", icon=":material/error:")
        return
    blend, title = _viewer(ctx, series, review, plane, k, shown, cam, item, method, opacity, colormap)
    cams.prefetch(cams.neighbours(k))  # the slices the reader reaches next, computed while this one is read
    _downloads(ctx, series, review, shown, blend, title)


def _viewer(ctx, series: Series, review: SeriesReview, plane: str, k: int, shown: int, cam, item, method: str,
            opacity: float, colormap: str):
    """Window/level, the image / heatmap pair and the series facts. Returns (the blend, its title)."""
    n, names = review.n_slices, review.class_names
    stored = series.plane_image(k, plane)
    display = DicomDisplay(values=stored, monochrome1=False, file_window=None, voi_lut_sequence=False)
    lo, hi = float(stored.min()), float(stored.max())
    span = max(hi - lo, 1.0)
    wc, ww = f"study_wc_{series.key[:12]}", f"study_ww_{series.key[:12]}"
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
            w2.button("As analysed (this slice)", on_click=set_window, width="stretch", key="study_win_analysed",
                      args=analysed_window(display, item.decoded.pixels, item.window))
            w3.button("Full range", on_click=set_window, args=((lo + hi) / 2, span), width="stretch",
                      key="study_win_full")
            st.caption("Changes only what you see; the model and the heatmap always use the series as analysed.")
        grey = to_uint8(apply_display_window(display, centre, width))
        blend = draw_peak_marker(overlay(item, cam.heatmap, opacity, colormap), cam.peak)
        p = review.probabilities[k]
        predicted = int(np.nan_to_num(p, nan=-1.0).argmax())
        title = f"{CAM_METHOD_NAMES.get(method, method)}: " + ("class-agnostic" if method in CLASS_AGNOSTIC
                                                                else cam.target)
        if review.blank[k]:
            line = "blank slice (no signal): not predicted"
        else:
            line = (f"{names[predicted]} ({p[predicted]:.1%}) · tumour probability {review.tumour_prob[k]:.1%}"
                    + (" · **outside intended use**" if review.ood[k] else "")
                    + (" · positive" if review.positive[k] else ""))
        st.markdown(f"**Slice {shown} of {n}** · {line}")
        pair = refill_pair(st.session_state.get("study_pair_fig"), grey, blend, (f"Slice {shown}", title),
                           colour_scale(COLORMAPS[colormap]),
                           "1 = peak of the predicted class's map" if cam.scale < 1 else "1 = this map's peak")
        st.session_state["study_pair_fig"] = pair
        st.plotly_chart(pair, key="study_pair", config={"scrollZoom": True, "displaylogo": False})
        px, py = cam.peak_pixel()
        st.caption(f"Ring: heatmap peak at x={px}, y={py} px. Scroll to zoom, drag to pan; both panels move "
                   "together. " + ("Outside intended use: " + review.ood_reasons[k]
                                   if review.ood[k] and review.ood_reasons[k] else ""))
    with right:
        st.markdown("**Series**")
        facts = {"name": series.name, "format": series.source_format, "acquired plane": series.acquired_plane,
                 "voxel size": " × ".join(f"{z:g}" for z in series.zooms) + " mm", "SHA-256": series.key[:16] + "…"}
        st.dataframe(pd.DataFrame({"field": list(facts), "value": list(facts.values())}), hide_index=True,
                     width="stretch", key="study_facts")
        if series.tags:
            st.markdown("**DICOM acquisition** (non-identifying tags only)")
            st.dataframe(pd.DataFrame({"tag": list(series.tags), "value": list(series.tags.values())}),
                         hide_index=True, width="stretch", key="study_tags")
        st.caption(":material/lock: Patient, institution and date tags are never read into the app.")
        st.markdown("**This slice (calibrated)**")
        st.dataframe(pd.DataFrame({"class": names, "probability": ["–" if np.isnan(v) else f"{v:.1%}"
                                                                   for v in review.probabilities[k]]}),
                     hide_index=True, width="stretch", key="study_slice_probs")
    return blend, title


def slice_table_panel(review: SeriesReview) -> None:
    """The per-slice table, drawn by the page outside the fragment (it does not change with the shown slice)."""
    with st.expander("Per-slice table"):
        st.dataframe(slice_table(review), hide_index=True, width="stretch", key="study_slice_table")


def _downloads(ctx, series: Series, review: SeriesReview, shown: int, blend: np.ndarray, title: str) -> None:
    """Series JSON, per-slice CSV and PDF: built only when a button is pressed (callables), not on every move."""
    info, n = ctx.model_info, review.n_slices
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in series.name)[:60] or "series"
    d1, d2, d3 = st.columns(3)

    def series_pdf() -> bytes:
        """The series report with the shown slice as its key image. Labelled by format and size only: a NIfTI
        file name can name the patient."""
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
                       help="Verdict, rule, the shown slice with its heatmap, model identity and its measured "
                            "per-source performance; no file name or patient tag.")
    d1.download_button("Series result JSON", lambda: record_json(series_record(series, review, info)),
                       f"{stem}_series.json", "application/json", on_click="ignore", icon=":material/data_object:",
                       width="stretch")
    d2.download_button("Per-slice CSV", lambda: slices_csv(review, series, info), f"{stem}_slices.csv", "text/csv",
                       on_click="ignore", icon=":material/table:", width="stretch")
