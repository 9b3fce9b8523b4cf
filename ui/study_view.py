"""Pieces of the Study review page that need no streamlit: the strip chart, what the slice viewer is sent, and the
download records."""
from __future__ import annotations

import base64
import io
import json

import cv2

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.explain.cam import CAM_METHOD_NAMES, CLASS_AGNOSTIC, COLORMAPS, overlay
from core.inference.study import SeriesReview
from core.io.dicom import DicomDisplay, apply_display_window
from core.io.series import Series
from ui.charts import class_colours
from ui.imaging import colour_scale, draw_peak_marker, to_uint8


def strip_chart(review: SeriesReview, current: int, height: int = 230) -> go.Figure:
    """Per-slice calibrated class probabilities along the slice axis (slices numbered from 1), the rule's
    threshold on the tumour probability, the longest positive run shaded and the shown slice marked.
    A click anywhere in a slice's column selects it (the page jumps to that slice)."""
    x = np.arange(1, review.n_slices + 1)
    colours = class_colours(review.class_names)
    fig = go.Figure()
    if review.run is not None:
        fig.add_vrect(x0=review.run[0] + 0.5, x1=review.run[1] + 1.5, fillcolor="#E45756", opacity=0.12,
                      line_width=0, annotation_text="positive run", annotation_position="top left")
    # One transparent full-height bar per slice takes the clicks: anywhere in a slice's column jumps to it. The
    # curves are plain lines: markers on every class curve made each redraw of the chart (on every slice change,
    # to move its line) cost the browser a few hundred milliseconds.
    fig.add_trace(go.Bar(x=x, y=np.full(len(x), 1.13), base=-0.08, width=1.0, name="slice", showlegend=False,
                         marker=dict(color="rgba(0,0,0,0)", line=dict(width=0)),
                         selected=dict(marker=dict(opacity=1)), unselected=dict(marker=dict(opacity=1)),
                         hovertemplate="slice %{x}<extra></extra>"))
    for i, c in enumerate(review.class_names):
        fig.add_trace(go.Scatter(x=x, y=review.probabilities[:, i], mode="lines", name=c,
                                 line=dict(width=1.5, color=colours[c]), hovertemplate=f"{c} %{{y:.1%}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=review.tumour_prob, mode="lines", name="tumour (1 − no tumour)",
                             line=dict(width=2.5, color="black", dash="dot"),
                             hovertemplate="tumour %{y:.1%}<extra></extra>"))
    if review.ood.any():
        k = np.flatnonzero(review.ood)
        fig.add_trace(go.Scatter(x=k + 1, y=np.full(len(k), -0.04), mode="markers", name="outside intended use",
                                 marker=dict(symbol="x", size=5, color="#9E9E9E"),
                                 hovertemplate="slice %{x}: outside intended use<extra></extra>"))
    fig.add_hline(y=review.rule.threshold, line_dash="dash", line_color="#E45756",
                  annotation_text=f"t = {review.rule.threshold:.0%}", annotation_position="bottom right")
    fig.add_vline(x=current + 1, line_color="#4C78A8", line_width=2)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), hovermode="x unified",
                      legend=dict(orientation="h", y=-0.25), clickmode="event+select", bargap=0)
    fig.update_xaxes(title_text="slice", range=[0.5, review.n_slices + 0.5])
    fig.update_yaxes(title_text="probability", range=[-0.08, 1.05])
    return fig


def move_marker(fig: go.Figure, current: int) -> go.Figure:
    """Move the shown-slice line of a :func:`strip_chart` figure to slice ``current`` (0-based), in place.

    Building the chart costs tens of milliseconds (plotly validates every trace); moving one shape costs
    nothing, so the page builds it once per series and moves the line on each slice change."""
    line = fig.layout.shapes[-1]  # add_vline is the chart's last shape
    line.x0 = line.x1 = current + 1
    return fig


def png_uri(img: np.ndarray) -> str:
    """A PNG data URI of a uint8 grey (H, W) or RGB (H, W, 3) image, encoded by OpenCV at low compression: a few
    milliseconds where PIL's default takes tens on a noisy MRI slice (the viewer is sent one per slice)."""
    bgr = img if img.ndim == 2 else np.ascontiguousarray(img[..., ::-1])
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # cannot happen for a uint8 array; keep the page working anyway
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def jpeg_uri(rgb: np.ndarray, quality: int = 90) -> str:
    """A JPEG data URI of a uint8 RGB image: the heatmap overlays (a colour picture of where the model looked,
    not the diagnostic image, which goes as PNG) at a quarter of their PNG size."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def slice_display(series: Series, plane: str, k: int) -> DicomDisplay:
    """Slice ``k`` of ``plane`` as stored (``values``: float (H, W) in the series' own units), for windowing."""
    return DicomDisplay(values=series.plane_image(k, plane), monochrome1=False, file_window=None,
                        voi_lut_sequence=False)


def windowed_slice(series: Series, plane: str, k: int, centre: float, width: float) -> np.ndarray:
    """Slice ``k`` of ``plane`` as stored, through the display window (centre, width): uint8 (H, W)."""
    return to_uint8(apply_display_window(slice_display(series, plane, k), centre, width))


def slice_caption(review: SeriesReview, k: int) -> str:
    """What the viewer says of slice ``k`` (0-based) next to "Slice N of n"."""
    if review.blank[k]:
        return "blank slice (no signal): not predicted"
    p = review.probabilities[k]
    predicted = int(np.nan_to_num(p, nan=-1.0).argmax())
    return (f"{review.class_names[predicted]} ({p[predicted]:.1%}) · tumour probability {review.tumour_prob[k]:.1%}"
            + (" · outside intended use" if review.ood[k] else "") + (" · positive" if review.positive[k] else ""))


def heatmap_panel(item, cam, method: str, opacity: float, colormap: str) -> tuple[np.ndarray, dict]:
    """A slice's heatmap as the viewer shows it: the overlay with its peak ring (uint8 (H, W, 3)) and what the
    viewer is sent ({src: JPEG data URI, title, peak, scale})."""
    blend = draw_peak_marker(overlay(item, cam.heatmap, opacity, colormap), cam.peak)
    title = f"{CAM_METHOD_NAMES.get(method, method)}: " + ("class-agnostic" if method in CLASS_AGNOSTIC
                                                          else cam.target)
    px, py = cam.peak_pixel()
    return blend, {"src": jpeg_uri(blend), "title": title, "peak": f"Ring: heatmap peak at x={px}, y={py} px.",
                   "scale": "1 = peak of the predicted class's map" if cam.scale < 1 else "1 = this map's peak"}


def colour_stops(colormap: str) -> list[str]:
    """The colour bar of a heatmap colour map as CSS colours, from 0 to 1."""
    return [c for _, c in colour_scale(COLORMAPS[colormap])]


def slice_table(review: SeriesReview) -> pd.DataFrame:
    """One row per slice (numbered from 1): calibrated probabilities, tumour probability, flags."""
    df = pd.DataFrame(review.probabilities, columns=review.class_names).round(6)
    df.insert(0, "slice", np.arange(1, review.n_slices + 1))
    df["tumour_probability"] = review.tumour_prob.round(6)
    df["positive"] = review.positive
    df["outside_intended_use"] = review.ood
    df["ood_reason"] = [r or "" for r in review.ood_reasons]
    return df


def series_record(series: Series, review: SeriesReview, model_info: dict) -> dict:
    """The series result for download: verdict, rule, model, non-identifying tags. No patient tag, no pixel."""
    return {"series": series.name, "series_sha256": series.key, "format": series.source_format,
            "acquired_plane": series.acquired_plane, "voxel_size_mm": list(series.zooms),
            **review.summary(), **model_info, "dicom_tags": dict(series.tags), "warnings": list(series.warnings),
            "notice": "Research use only - not for diagnosis."}


def record_json(record: dict) -> bytes:
    return (json.dumps(record, indent=2) + "\n").encode()


def slices_csv(review: SeriesReview, series: Series, model_info: dict) -> bytes:
    df = slice_table(review)
    df.insert(0, "series_sha256", series.key)
    for k, v in model_info.items():
        df[k] = v
    buf = io.StringIO()
    df.to_csv(buf, index=False)
    return buf.getvalue().encode()
