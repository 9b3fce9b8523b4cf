"""The image / heatmap pair of the single-scan view as one plotly figure (no streamlit).

Why one figure with two panels: zoom and pan (scroll, drag, double-click to reset) act on both panels at
once, because the second panel's axes are tied to the first's (``matches``). The reader inspects the same
region of the scan and of its heatmap.
"""
from __future__ import annotations

import base64

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ui.imaging import grey_to_rgb, png_bytes


def _data_uri(rgb: np.ndarray) -> str:
    # A PNG data URI is far smaller in the page than a z array of every pixel.
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def image_pair(left: np.ndarray, right: np.ndarray, titles: tuple[str, str], colorscale: list[list] | None = None,
               colour_title: str = "", height: int = 460) -> go.Figure:
    """Two images of the same size side by side, with linked zoom/pan, pixel coordinates on hover and an
    optional colour bar for the right panel.

    Args:
        left, right: uint8 (H, W) grey or (H, W, 3) RGB images of the same height and width (original pixels).
        titles: panel titles.
        colorscale: plotly colorscale of the heatmap (``ui.imaging.colour_scale``); None: no colour bar.
        colour_title: the colour bar's title (what 0 and 1 mean).
    """
    left, right = grey_to_rgb(left), grey_to_rgb(right)
    h, w = left.shape[:2]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.02)
    for col, img in ((1, left), (2, right)):
        fig.add_trace(go.Image(source=_data_uri(img), x0=0, y0=0, dx=1, dy=1,
                               hovertemplate="x=%{x}, y=%{y} px<extra></extra>"), row=1, col=col)
    if colorscale:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", showlegend=False, hoverinfo="skip",
                                 marker=dict(colorscale=colorscale, cmin=0.0, cmax=1.0, color=[0.0], showscale=True,
                                             colorbar=dict(title=dict(text=colour_title, side="right"), len=0.9,
                                                           thickness=12, tickformat=".1f"))), row=1, col=2)
    # Linked axes: the right panel follows every zoom/pan of the left, and the reverse.
    fig.update_xaxes(range=[-0.5, w - 0.5], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(range=[h - 0.5, -0.5], showticklabels=False, showgrid=False, zeroline=False)
    fig.update_xaxes(matches="x", row=1, col=2)
    fig.update_yaxes(matches="y", row=1, col=2)
    fig.update_yaxes(scaleanchor="x", scaleratio=1, row=1, col=1)
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=30, b=0), dragmode="pan",
                      plot_bgcolor="rgba(0,0,0,0)")
    return fig
