"""Plotly figure builders: plain data in, ``go.Figure`` out (no streamlit, testable alone)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from core.evaluation.metrics import type_and_sequence

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#EECA3B", "#9D755D"]
ERROR_COLOUR = "#9E9E9E"


def format_confidence(p: float | None) -> str:
    """A confidence (or threshold) as a percentage with one decimal, rounded *down*: 0.5999 is "59.9%",
    never "60.0%", so a value under the uncertainty threshold never prints as equal to it. "–" when unknown."""
    if p is None or not np.isfinite(p):
        return "–"
    # The nudge (far below the 1e-6 the rows are rounded to) keeps a value that float arithmetic left a hair
    # under a tenth of a percent, e.g. 0.7 * 3 / 3, on that tenth.
    return f"{math.floor(float(p) * 1000 + 1e-9) / 10:.1f}%"


def class_colours(class_names: Sequence[str]) -> dict[str, str]:
    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(class_names)}


def _layout(fig: go.Figure, height: int, **kw) -> go.Figure:
    fig.update_layout(height=height, margin=dict(l=10, r=10, t=40 if kw.get("title") else 10, b=10), **kw)
    return fig


def probability_bar(probabilities: Mapping[str, float], predicted: str | None = None,
                    threshold: float | None = None) -> go.Figure:
    """Horizontal bars of calibrated class probabilities; the predicted class is highlighted."""
    names = list(probabilities)
    values = [float(probabilities[n]) for n in names]
    colours = ["#1f77b4" if n == predicted else "#B0BEC5" for n in names]
    fig = go.Figure(go.Bar(x=values, y=names, orientation="h", marker_color=colours,
                           text=[f"{v:.1%}" for v in values], textposition="outside", cliponaxis=False,
                           hovertemplate="%{y}: %{x:.2%}<extra></extra>"))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dot", line_color="#E45756",
                      annotation_text=f"uncertain below {threshold:.0%}", annotation_position="top")
    fig.update_xaxes(range=[0, 1.12], tickformat=".0%", title="calibrated probability")
    fig.update_yaxes(autorange="reversed")
    fig = _layout(fig, 80 + 44 * len(names), showlegend=False)
    fig.update_layout(margin=dict(t=30))
    return fig


def confusion_matrix_fig(matrix: Sequence[Sequence[float]], class_names: Sequence[str],
                         normalise: bool = False, title: str | None = None) -> go.Figure:
    """Heatmap of a K x K confusion matrix (rows: true class, columns: predicted);
    ``normalise`` divides each row by its total (recall on the diagonal)."""
    cm = np.asarray(matrix, dtype=float).reshape(len(class_names), len(class_names))
    if normalise:
        sums = cm.sum(axis=1, keepdims=True)
        z = np.divide(cm, sums, out=np.zeros_like(cm), where=sums > 0)
        text = [[f"{v:.0%}" for v in row] for row in z]
    else:
        z = cm
        text = [[f"{int(v)}" for v in row] for row in z]
    k = len(class_names)
    large = k > 12  # the 44-class model: no cell text (hover tells), more room, and blocks per tumour type
    fig = go.Figure(go.Heatmap(
        z=z, x=list(class_names), y=list(class_names), text=text, texttemplate="" if large else "%{text}",
        colorscale="Blues", zmin=0, zmax=1 if normalise else max(1.0, float(cm.max())),
        hovertemplate="true %{y}<br>predicted %{x}<br>%{text}<extra></extra>",
        colorbar=dict(title="share" if normalise else "count", tickformat=".0%" if normalise else None)))
    fig.update_xaxes(title="predicted class", side="bottom", tickfont=dict(size=9) if large else None)
    fig.update_yaxes(title="true class", autorange="reversed", tickfont=dict(size=9) if large else None)
    if large and all(type_and_sequence(n)[1] for n in class_names):
        # Lines between tumour types: each block holds one type's sequences (T1 / T1C+ / T2).
        types = [type_and_sequence(n)[0] for n in class_names]
        for i in range(1, k):
            if types[i] != types[i - 1]:
                for axis in ("x", "y"):
                    ends = dict(x0=i - 0.5, x1=i - 0.5, y0=-0.5, y1=k - 0.5) if axis == "x" else \
                        dict(y0=i - 0.5, y1=i - 0.5, x0=-0.5, x1=k - 0.5)
                    fig.add_shape(type="line", line=dict(color="#90A4AE", width=0.6), **ends)
    fig = _layout(fig, min(1100, 160 + 19 * k) if large else 360, title=title)
    if large:  # room for the long class names
        fig.update_layout(margin=dict(l=150, b=150))
    return fig


def roc_fig(roc_curves: Mapping[str, Mapping[str, Sequence[float]]], roc_auc: Mapping[str, float],
            class_names: Sequence[str]) -> go.Figure:
    """One-vs-rest ROC curve per class with its AUC in the legend."""
    colours = class_colours(class_names)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#BDBDBD"),
                             name="chance", hoverinfo="skip"))
    for name in class_names:
        curve = roc_curves.get(name)
        if not curve:
            continue
        auc = roc_auc.get(name)
        label = f"{name} (AUC {auc:.3f})" if auc is not None else name
        fig.add_trace(go.Scatter(x=curve["fpr"], y=curve["tpr"], mode="lines", name=label,
                                 line=dict(color=colours[name], width=2),
                                 hovertemplate=f"{name}<br>FPR %{{x:.3f}}<br>TPR %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title="false positive rate", range=[0, 1])
    fig.update_yaxes(title="true positive rate", range=[0, 1.02])
    return _layout(fig, 380, legend=dict(yanchor="bottom", y=0.02, xanchor="right", x=0.98))


def reliability_fig(calibration: Mapping[str, Mapping], ece: Mapping[str, float | None] | None = None) -> go.Figure:
    """Reliability diagram: accuracy vs mean confidence per bin, before and after calibration.

    ``calibration``: {"calibrated": {"bins": [...]}, "uncalibrated": {...}} as in metrics.json.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dash", color="#BDBDBD"),
                             name="perfect calibration", hoverinfo="skip"))
    styles = {"uncalibrated": ("before (T = 1)", "#F58518", "square"),
              "calibrated": ("after temperature scaling", "#4C78A8", "circle")}
    for key in ("uncalibrated", "calibrated"):
        part = calibration.get(key) or {}
        bins = [b for b in part.get("bins", []) if b.get("count") and b.get("confidence") is not None]
        if not bins:
            continue
        label, colour, symbol = styles[key]
        e = (ece or {}).get(key, part.get("ece"))
        if e is not None:
            label += f" — ECE {e:.3f}"
        fig.add_trace(go.Scatter(
            x=[b["confidence"] for b in bins], y=[b["accuracy"] for b in bins], mode="lines+markers", name=label,
            line=dict(color=colour), marker=dict(symbol=symbol, size=[6 + 14 * np.sqrt(b["count"] / max(
                bb["count"] for bb in bins)) for b in bins]),
            customdata=[[b["count"], b["lo"], b["hi"]] for b in bins],
            hovertemplate="bin %{customdata[1]:.2f}–%{customdata[2]:.2f}<br>confidence %{x:.3f}<br>"
                          "accuracy %{y:.3f}<br>%{customdata[0]} images<extra></extra>"))
    fig.update_xaxes(title="mean confidence in bin", range=[0, 1.02])
    fig.update_yaxes(title="accuracy in bin", range=[0, 1.02])
    return _layout(fig, 380, legend=dict(yanchor="top", y=0.98, xanchor="left", x=0.02))


def class_counts_fig(df: pd.DataFrame, class_names: Sequence[str]) -> go.Figure:
    """Bar chart of predicted-class counts (plus unreadable files) for a results table."""
    counts = df["predicted"].value_counts() if len(df) else pd.Series(dtype=int)
    names = list(class_names)
    values = [int(counts.get(c, 0)) for c in names]
    colours = [class_colours(class_names)[c] for c in names]
    n_err = int((df["error"].astype(str) != "").sum()) if len(df) else 0
    if n_err:
        names.append("unreadable")
        values.append(n_err)
        colours.append(ERROR_COLOUR)
    fig = go.Figure(go.Bar(x=names, y=values, marker_color=colours, text=values, textposition="outside",
                           cliponaxis=False, hovertemplate="%{x}: %{y}<extra></extra>"))
    fig.update_yaxes(title="files")
    return _layout(fig, 300, showlegend=False, title="Files per predicted class")


def confidence_histogram(df: pd.DataFrame, class_names: Sequence[str], threshold: float | None = None) -> go.Figure:
    """Stacked histogram of calibrated confidence by predicted class."""
    fig = go.Figure()
    colours = class_colours(class_names)
    for c in class_names:
        vals = df.loc[df["predicted"] == c, "confidence"].dropna() if len(df) else []
        fig.add_trace(go.Histogram(x=list(vals), name=c, marker_color=colours[c], xbins=dict(start=0, end=1.0001,
                                                                                              size=0.05)))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dot", line_color="#E45756",
                      annotation_text=f"uncertain below {format_confidence(threshold)}", annotation_position="top left")
    fig.update_layout(barmode="stack")
    fig.update_xaxes(title="calibrated confidence", range=[0, 1.0001], tickformat=".0%")
    fig.update_yaxes(title="files")
    return _layout(fig, 300, title="Confidence distribution")


def per_class_table(per_class: Mapping[str, Mapping[str, float]], class_names: Sequence[str]) -> pd.DataFrame:
    """precision / recall (with its Wilson 95 % interval when recorded) / F1 / support per class as a DataFrame
    (index: class)."""
    rows = []
    for c in class_names:
        m = per_class.get(c, {})
        ci = m.get("recall_ci95") or [None, None]
        rows.append({"class": c, "precision": m.get("precision"), "recall": m.get("recall"),
                     "recall 95% CI": f"{ci[0]:.2f} – {ci[1]:.2f}" if ci[0] is not None else "–", "f1": m.get("f1"),
                     "support": int(m.get("support", 0) or 0)})
    return pd.DataFrame(rows).set_index("class")


def detection_by_source_fig(sets: Mapping[str, Mapping]) -> go.Figure:
    """Tumour sensitivity and specificity of each held-out set, with their 95 % intervals as error bars."""
    fig = go.Figure()
    titles = [str(m.get("title", k)) for k, m in sets.items()]
    for name, field, colour in (("tumour sensitivity", "sensitivity", PALETTE[0]),
                                ("specificity", "specificity", PALETTE[2])):
        values, lo, hi = [], [], []
        for m in sets.values():
            d = m.get("detection") or {}
            key = f"{field}_at_least_min" if field == "sensitivity" and "sensitivity_at_least_min" in d else field
            v, ci = d.get(key), d.get(f"{key}_ci95") or [None, None]
            values.append(v)
            lo.append(None if v is None or ci[0] is None else v - ci[0])
            hi.append(None if v is None or ci[1] is None else ci[1] - v)
        fig.add_trace(go.Bar(name=name, x=titles, y=values, marker_color=colour,
                             error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo),
                             hovertemplate="%{x}<br>" + name + " %{y:.1%}<extra></extra>"))
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%")
    return _layout(fig, 320, barmode="group", legend=dict(orientation="h", y=-0.25))
