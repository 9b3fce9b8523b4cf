"""Study review: whole series (NIfTI, DICOM files or a zip of them) -> one verdict per series, slice by slice."""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import pandas as pd
import streamlit as st

from core.io.read_series import read_series
from core.io.series import PLANES, Series, SeriesLoad
from core.inference.study import SeriesReview, load_rule, review_series, rule_model_sha256
from ui import state
from ui.study_viewer import slice_table_panel, slice_viewer

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

# -- slice navigation and the shown slice: a fragment, so a slice change reruns only the viewer ------------------
slice_viewer(ctx, series, review, plane)
slice_table_panel(review)
