"""Pieces of the Study review page that need no streamlit: the strip chart and the download records."""
from __future__ import annotations

import base64
import io
import json

import cv2

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.io.series import Series
from core.inference.study import SeriesReview
from ui.charts import class_colours
from ui.imaging import grey_to_rgb
from ui.viewer import image_pair


def strip_chart(review: SeriesReview, current: int, height: int = 230) -> go.Figure:
    """Per-slice calibrated class probabilities along the slice axis (slices numbered from 1), the rule's
    threshold on the tumour probability, the longest positive run shaded and the shown slice marked.
    Clicking a point selects it (the page jumps to that slice)."""
    x = np.arange(1, review.n_slices + 1)
    colours = class_colours(review.class_names)
    fig = go.Figure()
    if review.run is not None:
        fig.add_vrect(x0=review.run[0] + 0.5, x1=review.run[1] + 1.5, fillcolor="#E45756", opacity=0.12,
                      line_width=0, annotation_text="positive run", annotation_position="top left")
    for i, c in enumerate(review.class_names):
        fig.add_trace(go.Scatter(x=x, y=review.probabilities[:, i], mode="lines+markers", name=c,
                                 marker=dict(size=4), line=dict(width=1.5, color=colours[c]),
                                 hovertemplate=f"slice %{{x}}: {c} %{{y:.1%}}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x, y=review.tumour_prob, mode="lines", name="tumour (1 − no tumour)",
                             line=dict(width=2.5, color="black", dash="dot"),
                             hovertemplate="slice %{x}: tumour %{y:.1%}<extra></extra>"))
    if review.ood.any():
        k = np.flatnonzero(review.ood)
        fig.add_trace(go.Scatter(x=k + 1, y=np.full(len(k), -0.04), mode="markers", name="outside intended use",
                                 marker=dict(symbol="x", size=5, color="#9E9E9E"),
                                 hovertemplate="slice %{x}: outside intended use<extra></extra>"))
    fig.add_hline(y=review.rule.threshold, line_dash="dash", line_color="#E45756",
                  annotation_text=f"t = {review.rule.threshold:.0%}", annotation_position="bottom right")
    fig.add_vline(x=current + 1, line_color="#4C78A8", line_width=2)
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=10, b=10), hovermode="closest",
                      legend=dict(orientation="h", y=-0.25), clickmode="event+select")
    fig.update_xaxes(title_text="slice", range=[0.5, review.n_slices + 0.5])
    fig.update_yaxes(title_text="probability", range=[-0.08, 1.05])
    return fig


def fast_png_uri(rgb: np.ndarray) -> str:
    """A PNG data URI of a uint8 RGB image, encoded by OpenCV at low compression: a few milliseconds where
    PIL's default takes tens on a noisy MRI slice (the page encodes two per slice change)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:  # cannot happen for a uint8 RGB array; keep the page working anyway
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def move_marker(fig: go.Figure, current: int) -> go.Figure:
    """Move the shown-slice line of a :func:`strip_chart` figure to slice ``current`` (0-based), in place.

    Building the chart costs tens of milliseconds (plotly validates every trace); moving one shape costs
    nothing, so the page builds it once per series and moves the line on each slice change."""
    line = fig.layout.shapes[-1]  # add_vline is the chart's last shape
    line.x0 = line.x1 = current + 1
    return fig


def refill_pair(fig: go.Figure | None, left: np.ndarray, right: np.ndarray, titles: tuple[str, str],
                colorscale: list[list], colour_title: str) -> go.Figure:
    """The image pair of ``ui.viewer.image_pair`` with new images and titles, reusing ``fig`` (built by an
    earlier call) when its size and colour bar fit: only the two image sources and the titles change, instead
    of rebuilding the subplot figure (about 0.1 s) on every slice change."""
    h, w = left.shape[:2]
    fits = (fig is not None and getattr(fig, "_study_shape", None) == (h, w, colour_title)
            and fig.data[2].marker.colorscale == tuple(tuple(c) for c in colorscale))
    if not fits:
        fig = image_pair(left, right, titles, colorscale, colour_title)
        fig._study_shape = (h, w, colour_title)
        return fig
    fig.data[0].source = fast_png_uri(grey_to_rgb(left))
    fig.data[1].source = fast_png_uri(grey_to_rgb(right))
    for ann, text in zip(fig.layout.annotations, titles):
        ann.text = text
    return fig


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
