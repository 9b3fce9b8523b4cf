"""Batch review: a server folder (inside the allowed roots) or a multi-file upload, streamed through core."""
from __future__ import annotations

import time

import streamlit as st

from core.batch import csv_columns
from core.cam import CAM_METHODS, COLORMAPS
from core.files import PathNotAllowedError, count_image_files, resolve_within
from core.metrics import OTHER_LESION, no_finding_classes
from ui import charts, state, views
from ui.batch_job import (CANCELLED, DONE, FAILED, BatchJob, display_frame, filter_frame, format_seconds,
                          save_uploads, with_threshold)

FOLDER, UPLOAD = "Folder on the server", "Upload files"
IMAGE_TYPES = ["jpg", "jpeg", "png", "dcm", "dicom", "tif", "tiff", "bmp"]

ctx = state.current()
st.title("Batch review")
st.caption("Review a whole folder of slices. Files stream through the model; a file that cannot be read "
           "becomes an error row and never stops the run.")
job: BatchJob | None = st.session_state.get(state.BATCH_KEY)
if job is not None and job.running and st.session_state.get("batch_stop"):  # Stop was pressed: this run
    job.cancel(wait=30)  # waits for the row in flight, so the count shown is final
busy = job is not None and job.running


# -- input --------------------------------------------------------------------------------------
def new_job() -> BatchJob | None:
    """Draw the input panel; return a freshly started job when the user starts one."""
    with st.container(border=True):
        mode = st.segmented_control("Input", [FOLDER, UPLOAD], default=FOLDER, required=True, key="batch_mode",
                                    label_visibility="collapsed")
        if mode == FOLDER:
            roots = ", ".join(f"`{r}`" for r in ctx.config.allowed_roots)
            st.selectbox("Pick a folder", views.folder_choices(tuple(map(str, ctx.config.allowed_roots))), index=None, key="batch_pick",
                         placeholder="Browse the allowed folders (two levels deep) or type a path below",
                         on_change=lambda: st.session_state.update(batch_folder=st.session_state["batch_pick"] or ""))
            folder = st.text_input("Folder to review (searched recursively for JPG, PNG and DICOM)", key="batch_folder",
                                   placeholder="e.g. data/brain-tumor-mri/Testing",
                                   help="Absolute, or relative to the first allowed folder. Class sub-folders "
                                        "(glioma/, meningioma/, …) add a ground-truth column.")
            st.caption(f":material/lock: Browsing is limited to: {roots} (set `allowed_roots` in the app config).")
            files = None
        else:
            files = st.file_uploader("Slices to review", type=IMAGE_TYPES, accept_multiple_files=True,
                                     key="batch_upload",
                                     help=f"Each file at most {ctx.upload_limit_mb} MB.")
            st.caption(f":material/upload_file: Several files at once, each up to **{ctx.upload_limit_mb} MB**.")
            folder = None
        clicked = st.button("Start review", type="primary", icon=":material/play_arrow:", key="batch_start",
                            disabled=busy, help="Stop the running review first." if busy else None)
        if not clicked or busy:
            return None
    if mode == FOLDER:
        if not (folder or "").strip():
            st.error("Enter a folder path first.", icon=":material/folder_off:")
            return None
        try:
            root = resolve_within(folder.strip(), list(ctx.config.allowed_roots))
        except PathNotAllowedError as exc:
            st.error(f"**Folder refused.** {exc}", icon=":material/block:")
            return None
        if not root.is_dir():
            st.error(f"`{folder}` is not an existing folder.", icon=":material/folder_off:")
            return None
        if count_image_files(root) == 0:
            st.warning(f"No JPG, PNG, TIFF, BMP or DICOM files were found under `{root}`.")
            return None
        label, upload_dir = str(root), None
    else:
        if not files:
            st.error("Choose one or more files to upload first.", icon=":material/upload_file:")
            return None
        upload_dir = root = save_uploads(files)
        label = f"{len(files)} uploaded file(s)"
    if job is not None:
        job.discard()
    try:
        return BatchJob.start(ctx.predictor, root, label=label, audit=ctx.audit,
                              uncertain_below=ctx.uncertain_below, upload_dir=upload_dir)
    except (OSError, ValueError) as exc:
        st.error(f"The review could not start: {exc}")
        return None


started = new_job()
if started is not None:
    job = st.session_state[state.BATCH_KEY] = started
    busy = True

# -- processing (continues across reruns; Stop keeps finished rows) -------------------------------
if job is not None and job.running:
    panel = st.empty()
    with panel.container(border=True):
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        c1.markdown(f":material/progress_activity: **Reviewing** `{job.label}`")
        c2.button("Stop", icon=":material/stop_circle:", key="batch_stop", width="stretch")  # handled at the top
        bar = st.progress(job.fraction, text=job.progress_text())
        last = 0.0
        while job.running:
            job.step()
            now = time.monotonic()
            if now - last > 0.2 or not job.running:
                bar.progress(job.fraction, text=job.progress_text())
                last = now
    panel.empty()
    state.show_audit_count(ctx)

if job is None:
    st.info("Choose a folder or upload files, then press **Start review**.", icon=":material/info:")
    st.stop()

# -- status ---------------------------------------------------------------------------------------
if job.status == DONE:
    st.success(f"Reviewed **{job.done:,}** files from `{job.label}` in {format_seconds(job.active_seconds)} "
               f"({job.n_errors} unreadable).", icon=":material/task_alt:")
elif job.status == CANCELLED:
    st.warning(f"Stopped after **{job.done:,}** of {job.total:,} files; the finished rows are kept below.",
               icon=":material/stop_circle:")
elif job.status == FAILED:
    st.error(f"The review stopped after {job.done:,} files: {job.error}. Finished rows are kept below.")
if job.skipped:
    with st.expander(f"{len(job.skipped)} path(s) skipped while walking the folder"):
        st.dataframe({"path": [p for p, _ in job.skipped], "reason": [r for _, r in job.skipped]}, hide_index=True)
if not job.rows:
    st.info("No results yet.")
    st.stop()

# -- filters + summary ------------------------------------------------------------------------------
names = job.class_names
labelled = job.labelled
df = with_threshold(job.frame(), ctx.uncertain_below)
with st.container(border=True):
    f1, f2, f3 = st.columns([2, 2, 2.2])
    classes = f1.multiselect("Predicted class", names, default=names, key="flt_classes")
    conf = f2.slider("Confidence range", 0.0, 1.0, (0.0, 1.0), 0.01, key="flt_conf")
    with f3:
        flagged = st.checkbox("Flagged only (out-of-distribution or uncertain)", key="flt_flagged")
        errors_only = st.checkbox("Errors only", key="flt_errors")
        wrong = st.checkbox("Wrong only", key="flt_wrong", disabled=not labelled,
                            help=None if labelled else "Needs class sub-folders (a labelled tree).")
view = filter_frame(df, classes=classes, confidence=tuple(conf), flagged_only=flagged, errors_only=errors_only,
                    wrong_only=wrong and labelled)

m = st.columns(5 if labelled else 4)
m[0].metric("Files shown", f"{len(view):,}", help=f"{len(df):,} in this review")
m[1].metric("Out-of-distribution", f"{int(view['ood'].sum()):,}")
m[2].metric(f"Uncertain (< {ctx.uncertain_below:.0%})", f"{int(view['uncertain'].sum()):,}")
m[3].metric("Unreadable", f"{int((view['error'] != '').sum()):,}")
if labelled:
    judged = view["correct"].dropna()
    m[4].metric("Accuracy (labelled rows)", f"{judged.mean():.1%}" if len(judged) else "–",
                help=f"{int(judged.sum())} right of {len(judged)} with a class folder")
negatives = no_finding_classes(names)
if negatives and view["predicted"].isin(negatives).any():
    st.caption(":material/visibility_off: **\"No tumour\" rows are not negative reads.** The model can miss a "
               "tumour with high confidence (*Model metrics*: tumour slices read as no tumour); read those slices too.")
if OTHER_LESION in names and (view["predicted"] == OTHER_LESION).any():
    st.caption(":material/radiology: **\"other_lesion\" rows** look like a tumour or lesion that is not a glioma, "
               "meningioma or pituitary tumour (e.g. schwannoma, metastasis, medulloblastoma, granuloma); the model "
               "does not name the type.")
c1, c2 = st.columns(2)
c1.plotly_chart(charts.class_counts_fig(view, names), key="batch_counts", config={"displayModeBar": False})
c2.plotly_chart(charts.confidence_histogram(view, names, ctx.uncertain_below), key="batch_hist",
                config={"displayModeBar": False})

# -- table ------------------------------------------------------------------------------------------
st.subheader("Results")
table = display_frame(view, names, labelled).reset_index(drop=True)
column_config = {
    "path": st.column_config.TextColumn("file", width="large"),
    "predicted": st.column_config.TextColumn("predicted"),
    "confidence": st.column_config.ProgressColumn("confidence", min_value=0.0, max_value=1.0, format="percent"),
    "ood": st.column_config.CheckboxColumn("OOD"),
    "uncertain": st.column_config.CheckboxColumn("uncertain"),
    "true_label": st.column_config.TextColumn("true class"),
    "correct": st.column_config.CheckboxColumn("right"),
    "error": st.column_config.TextColumn("error", width="large"),
    "ood_reason": st.column_config.TextColumn("OOD reason"),
}
column_config.update({f"p_{c}": st.column_config.NumberColumn(f"p({c})", format="%.3f") for c in names})
selection = st.dataframe(table, key="batch_table", on_select="rerun", selection_mode="single-row", hide_index=True,
                         column_config=column_config, height=min(560, 38 + 35 * max(1, len(table))))
picked = selection.selection.rows if selection is not None else []
s1, s2, s3 = st.columns([2, 1, 1])
if picked and picked[0] < len(table):
    rel = table.iloc[picked[0]]["path"]
    if s1.button(f"Open {rel} in Single scan", icon=":material/open_in_new:", key="batch_open_selected"):
        state.open_in_single_scan(job.abs_path(rel), rel)
else:
    s1.caption("Select a row (left edge of the table) to open it in the single-scan view.")
export_cols = csv_columns(names)
# CSVs are built only when a button is pressed (callables), not on every rerun
s2.download_button("CSV (shown rows)", lambda: view[export_cols].to_csv(index=False), "batch_results_filtered.csv",
                   "text/csv", on_click="ignore", icon=":material/download:", width="stretch", key="csv_shown")
s3.download_button("CSV (all rows)", lambda: df[export_cols].to_csv(index=False), "batch_results.csv", "text/csv",
                   on_click="ignore", icon=":material/download:", width="stretch", key="csv_all")

# -- gallery ----------------------------------------------------------------------------------------
st.subheader("Gallery")
g1, g2, g3, g4 = st.columns([1, 1.2, 1, 1])
show_cam = g1.toggle("Heatmaps", value=True, key="gal_cam", help="Grad-CAM overlays, computed for the shown page only.")
method = g2.selectbox("CAM method", list(CAM_METHODS), key="gal_method", disabled=not show_cam)
opacity = g3.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="gal_opacity", disabled=not show_cam)
cmap = g4.selectbox("Colour map", list(COLORMAPS), key="gal_cmap", disabled=not show_cam)
start, stop = views.pager(len(view), ctx.config.gallery_page_size, key="gal_page")
page_rows = view.iloc[start:stop]
if len(page_rows):
    with st.spinner("Rendering thumbnails…"):
        images = views.thumbnails(ctx.predictor, [job.abs_path(p) for p in page_rows["path"]],
                                  method if show_cam else None, opacity, cmap)
    items = []
    for _, r in page_rows.iterrows():
        if r["error"]:
            cap = ":red[**unreadable**]"
        else:
            flags = (" :orange-badge[OOD]" if r["ood"] else "") + (" :violet-badge[uncertain]" if r["uncertain"] else "")
            truth = ""
            if r["true_label"]:
                truth = f" · true {r['true_label']} " + (":green[✓]" if r["correct"] is True else ":red[✗]")
            cap = f"**{r['predicted']}** {r['confidence']:.0%}{truth}{flags}"
        items.append({"title": r["path"], "caption": cap})
    views.gallery(items, images, key="gal",
                  on_open=lambda item: state.open_in_single_scan(job.abs_path(item["title"]), item["title"]))
else:
    st.caption("No rows match the filters.")
