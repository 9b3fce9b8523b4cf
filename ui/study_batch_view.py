"""The results of a batch review of studies on the Batch review page: status, the series table, downloads."""
from __future__ import annotations

import streamlit as st

from ui.batch_job import CANCELLED, DONE, FAILED, format_seconds
from ui.study_job import StudyJob


def study_results(job: StudyJob) -> None:
    """Draw a study job's outcome: one row per series (verdict, type, positive slices, flags), error rows with
    their reason, and the series / per-slice CSV downloads."""
    if job.status == DONE:
        st.success(f"Reviewed **{job.done:,}** studies ({job.n_series:,} series) from `{job.label}` in "
                   f"{format_seconds(job.elapsed_seconds)} ({job.n_errors} unreadable).", icon=":material/task_alt:")
    elif job.status == CANCELLED:
        st.warning(f"Stopped after **{job.done:,}** of {job.total:,} studies; the finished rows are kept below.",
                   icon=":material/stop_circle:")
    elif job.status == FAILED:
        st.error(f"The review stopped after {job.done:,} studies: {job.error}. Finished rows are kept below.")
    skipped = list(job.skipped)
    if skipped:
        with st.expander(f"{len(skipped)} path(s) skipped while walking the folder"):
            st.dataframe({"path": [p for p, _ in skipped], "reason": [r for _, r in skipped]}, hide_index=True)
    df = job.frame()
    if not len(df):
        st.info("No results yet.")
        return
    st.caption(":material/visibility_off: **\"No tumour found\" is not a negative read.** A series verdict is a "
               "rule over slice results; open the series on the *Study review* page to read it slice by slice.")
    m = st.columns(4)
    ok = df[df["error"] == ""]
    m[0].metric("Series", f"{len(df):,}")
    m[1].metric("Called tumour", f"{int(ok['tumour'].fillna(False).sum()):,}")
    m[2].metric("Outside intended use / uncertain",
                f"{int(ok['outside_intended_use'].fillna(False).sum())} / {int(ok['uncertain'].fillna(False).sum())}")
    m[3].metric("Unreadable", f"{int((df['error'] != '').sum()):,}")
    st.subheader("Series")
    shown = ["path", "series", "format", "n_slices", "verdict", "tumour_type", "positive_first", "positive_last",
             "top_slices", "uncertain", "outside_intended_use", "warnings", "error"]
    st.dataframe(df[shown], key="study_batch_table", hide_index=True,
                 column_config={"path": st.column_config.TextColumn("study", width="medium"),
                                "positive_first": "first positive", "positive_last": "last positive",
                                "n_slices": "slices", "error": st.column_config.TextColumn("error", width="large")})
    d1, d2, _ = st.columns([1, 1, 2])
    d1.download_button("Series CSV", job.series_csv, "study_series.csv", "text/csv", on_click="ignore",
                       icon=":material/download:", width="stretch", key="study_csv_series")
    d2.download_button("Per-slice CSV", job.slices_csv, "study_slices.csv", "text/csv", on_click="ignore",
                       icon=":material/table:", width="stretch", key="study_csv_slices")
    st.caption("Each row names the model (name, version, SHA-256) and the rule; slices are numbered from 1, "
               "inferior first. No DICOM patient tag is read into the app or written to these files.")
