"""The slice viewer of the Study review page: the image / heatmap pair in the browser, the rest as a fragment.

The pair, its slider, ←/→ and the Previous / Next buttons live in the page (``ui.slice_stack``): a move draws
at once from the slices and heatmaps already sent. Each move is reported, and this fragment reruns (only this
part of the page): it follows the shown slice (strip-chart line, the slice's probabilities, downloads), computes
its heatmap and its neighbours' (``core.explain.study_cams.SliceCams``, in the background) and sends the viewer
what it lacks, nearest to the shown slice first. A click on the strip chart or "Go to slice" jumps the viewer.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pandas as pd
import streamlit as st

from core.explain.cam import CAM_METHOD_NAMES, CAM_METHODS, CLASS_AGNOSTIC, COLORMAPS
from core.io.display import analysed_window
from core.report.pdf import KeyImage, study_pdf
from core.report.sr import ModelIdentity, SeriesFinding
from core.io.series import Series
from core.inference.study import SeriesReview
from core.explain.study_cams import SliceCams
from ui import views
from ui.slice_stack import BLENDS_PER_RUN, GREYS_PER_RUN, BrowserView, nearest_missing, slice_stack
from ui.study_view import (colour_stops, heatmap_panel, move_marker, png_uri, record_json, series_record,
                           slice_caption, slice_display, slice_table, slices_csv, strip_chart,
                           windowed_slice)

MAX_CAM_SETS = 4  # SliceCams kept per session (series x plane x method x target)
AHEAD = 16  # heatmaps computed ahead on each side of the shown slice: 33 slices, within the 48 SliceCams keeps
NEAR = 4  # the viewer asks again while one of these neighbours' heatmaps is being computed; the farther ones
# travel with the next report (each rerun of the page also redraws the strip chart in the browser)


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


def _shown_slice(series: Series, review: SeriesReview, plane: str) -> tuple[int, dict, BrowserView, str]:
    """The slice shown (1-based), the last jump asked for here ({k, nonce}), the browser's view and the viewer's
    key. A click on the strip chart or "Go to slice" is a jump; otherwise the viewer's last report decides."""
    n, tag = review.n_slices, f"{series.key[:12]}_{plane}"
    skey, ckey, jkey, vkey = (f"study_slice_{tag}", f"study_strip_{tag}", f"study_jump_{tag}",
                              f"study_stack_{tag}")
    if skey not in st.session_state:
        st.session_state[skey] = (review.top_slices[0] if review.top_slices else n // 2) + 1
    jump = st.session_state.setdefault(jkey, {"k": None, "nonce": 0})
    view = BrowserView.read(vkey, n)
    points = ((st.session_state.get(ckey) or {}).get("selection") or {}).get("points") or []
    clicked = int(round(points[0].get("x", st.session_state[skey]))) if points else None
    if clicked is not None and st.session_state.get(ckey + "_done") != clicked:
        st.session_state[ckey + "_done"] = clicked
        _jump(skey, jkey, clicked, n)
    elif view.k is not None and view.tick != st.session_state.get(vkey + "_tick") and view.goto >= jump["nonce"]:
        st.session_state[skey] = view.k + 1  # a report from before the last jump does not undo it
    st.session_state[vkey + "_tick"] = view.tick

    gkey = f"study_goto_{tag}"

    def go_to() -> None:
        # Emptied again here, never written from the script: a box the page rewrote on each move could send a
        # stale number back while the viewer moves, and jump the reader back.
        if st.session_state[gkey] is not None:
            _jump(skey, jkey, st.session_state[gkey], n)
        st.session_state[gkey] = None

    c1, c2 = st.columns([1, 5], vertical_alignment="bottom")
    c1.number_input("Go to slice", 1, n, value=None, step=1, key=gkey, on_change=go_to, placeholder=f"1–{n}",
                    help="Type a slice number and press Enter. Or use ← → and the slider of the viewer below, or "
                         "click the chart.")
    first = {"axial": "inferior", "coronal": "posterior"}.get(plane, "right")
    c2.caption(f"Slice 1 = most {first}. Keys ← → step one slice; click the chart at a slice to jump to it.")
    return st.session_state[skey], st.session_state[jkey], view, vkey


def _jump(skey: str, jkey: str, to: int, n: int) -> None:
    st.session_state[skey] = min(max(int(to), 1), n)
    st.session_state[jkey] = {"k": st.session_state[skey] - 1, "nonce": st.session_state[jkey]["nonce"] + 1}


@st.fragment
def slice_viewer(ctx, series: Series, review: SeriesReview, plane: str) -> None:
    """Go-to box, strip chart, CAM controls, the viewer of the shown slice, and the downloads."""
    shown, jump, view, vkey = _shown_slice(series, review, plane)
    k = shown - 1
    st.plotly_chart(_strip(series, review, ctx.predictor.bundle.sha256, k),
                    key=f"study_strip_{series.key[:12]}_{plane}", on_select="rerun", selection_mode="points",
                    config={"displaylogo": False})
    st.caption("Calibrated probability of each class per slice; dotted: tumour probability (1 − no tumour); dashed: "
               "the rule's threshold; shaded: the longest positive run; blue line: the slice shown. Click the "
               "chart at a slice to jump to it.")
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
        cam, item = cams.get(k)  # the shown slice's map now; the rest ahead, in the background
    except Exception as exc:  # noqa: BLE001 - never a traceback in the page
        st.error(f"The heatmap could not be computed ({type(exc).__name__}: {exc}).", icon=":material/error:")
        return
    cams.prefetch(cams.neighbours(k, around=AHEAD))
    blend, panel = heatmap_panel(item, cam, method, opacity, colormap)
    style = (method, target, opacity, colormap)
    _viewer(ctx, series, review, plane, k, jump, view, vkey, cams, item, style, panel)
    _downloads(ctx, series, review, shown, blend, panel["title"])


def _window(series: Series, review: SeriesReview, plane: str, k: int, item) -> tuple[float, float]:
    """The window / level expander (display only): returns (centre, width)."""
    display = slice_display(series, plane, k)
    lo, hi = float(display.values.min()), float(display.values.max())
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
    return centre, width


def _to_send(series: Series, review: SeriesReview, plane: str, k: int, view: BrowserView, cams: SliceCams,
             window: tuple[float, float], style: tuple, shown_panel: dict) -> dict:
    """What the viewer lacks, nearest to slice ``k`` first: grey slices (PNG) and computed heatmaps (JPEG; the
    encoded ones are kept per style so a slice is encoded once), and whether more will follow."""
    n = review.n_slices
    grey_id = f"{series.key[:16]}|{plane}|{window[0]:.6g}|{window[1]:.6g}"
    blend_id = f"{series.key[:16]}|{plane}|{cams.method}|{cams.target}|{style[2]:.3g}|{style[3]}|{review.rule}"
    held_greys = view.holds(view.grey_id == grey_id, view.greys)
    held_blends = view.holds(view.blend_id == blend_id, view.blends)
    if view.k is None:  # the viewer has not reported yet: the shown slice only, then it asks
        greys_wanted, blend_wanted = [k], [k]
    else:
        greys_wanted = nearest_missing(n, k, held_greys, GREYS_PER_RUN)
        blend_wanted = nearest_missing(n, k, held_blends, n, within=AHEAD)
    greys = {j: png_uri(windowed_slice(series, plane, j, *window)) for j in greys_wanted}
    encoded = _cache("study_blend_uris")
    mine = encoded.get(blend_id) or _remember(encoded, blend_id, {}, 1)
    mine[k] = shown_panel
    blends, more = {}, False
    for j in blend_wanted:
        if j not in mine and cams.cached(j):
            cam, item = cams.get(j)
            mine[j] = heatmap_panel(item, cam, style[0], style[2], style[3])[1]
        if j not in mine:  # still being computed ahead: ask again soon if the reader is about to need it
            more = more or (abs(j - k) <= NEAR and cams.busy())
        elif len(blends) < BLENDS_PER_RUN:
            blends[j] = mine[j]
        else:
            more = True  # ready, over this rerun's share
    more = more or bool(nearest_missing(n, k, held_greys | set(greys), 1))
    return {"n": n, "grey_id": grey_id, "blend_id": blend_id, "greys": greys, "blends": blends,
            "pending": more}


def _viewer(ctx, series: Series, review: SeriesReview, plane: str, k: int, jump: dict, view: BrowserView,
            vkey: str, cams: SliceCams, item, style: tuple, panel: dict) -> None:
    """Window/level, the viewer of the series (image / heatmap pair) and the series facts."""
    names = review.class_names
    left, right = st.columns([2, 0.95])
    with left:
        window = _window(series, review, plane, k, item)
        sent = _to_send(series, review, plane, k, view, cams, window, style, panel)
        slice_stack(vkey, k=k, captions=[slice_caption(review, j) for j in range(review.n_slices)],
                    colours=colour_stops(style[3]), goto=jump, **sent)
        ood = review.ood_reasons[k] if review.ood[k] and review.ood_reasons[k] else ""
        st.caption("Left: the slice as stored, through the window above. Right: the heatmap over the slice as the "
                   "model saw it, ring at its peak. Scroll to zoom, drag to pan (both panels move together), "
                   "double-click to reset." + (f" Slice {k + 1} is outside intended use: {ood}" if ood else ""))
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
        st.markdown(f"**Slice {k + 1} of {review.n_slices} (calibrated)**")
        st.dataframe(pd.DataFrame({"class": names, "probability": ["–" if np.isnan(v) else f"{v:.1%}"
                                                                   for v in review.probabilities[k]]}),
                     hide_index=True, width="stretch", key="study_slice_probs")


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
