"""Batch review: a server folder (inside the allowed roots) or a multi-file upload, streamed through core."""
from __future__ import annotations

import shutil
from pathlib import Path

import streamlit as st

from core.explain.cam import CAM_METHOD_NAMES, CAM_METHODS, COLORMAPS
from core.io.files import PathNotAllowedError, count_image_files, resolve_within
from core.evaluation.metrics import OTHER_LESION, no_finding_classes
from core.report.pdf import batch_pdf
from core.report.sr import ModelIdentity
from core.review.studies import has_studies
from ui import charts, state, views
from ui.batch_job import (CANCELLED, DONE, FAILED, STOP_WAIT_S, BatchJob, BatchLimitError, active_jobs,
                          display_frame, export_csv, filter_frame, format_seconds, save_uploads, with_threshold)
from ui.charts import format_confidence
from ui.study_batch_view import study_results
from ui.study_job import StudyJob

FOLDER, UPLOAD = "Folder on the server", "Upload files"
STUDIES = "Folder of studies"  # whole series (NIfTI, DICOM series folders, zips): ui/study_job.py
LOCAL, RAY = "Local (default)", "Ray cluster"
IMAGE_TYPES = ["jpg", "jpeg", "png", "dcm", "dicom", "tif", "tiff", "bmp"]
PROGRESS_POLL_S = 1.0  # how often the progress panel of a running review refreshes itself

ctx = state.current()
st.title("Batch review")
st.caption("Review a whole folder of slices. Files stream through the model in the background: you can use "
           "the other pages meanwhile, and the sidebar shows the progress. A file that cannot be read becomes an "
           "error row and never stops the run.")
job: BatchJob | None = st.session_state.get(state.BATCH_KEY)
busy = job is not None and job.running


def limit_message() -> str:
    return (f"**The server is already running {active_jobs()} batch review(s), its limit** (`max_batch_jobs` = "
            f"{ctx.config.max_batch_jobs} in the app config). Start again when one has finished.")


# -- input --------------------------------------------------------------------------------------
def ray_engine(mode: str):
    """A Ray engine joined to the configured cluster, or None after a message saying why not (no address,
    uploads, Ray not installed, cluster unreachable): never a traceback."""
    address = ctx.config.ray_address
    if not address:
        st.error("**No Ray cluster is configured.** Set `ray_address` in the app config (or `MRI_RAY_ADDRESS`) to "
                 "the head node's HOST:PORT, or run the review locally.", icon=":material/hub:")
        return None
    if mode == UPLOAD:  # uploads sit in a temporary folder of this server, which the cluster's nodes cannot read
        st.error("**Uploaded files are reviewed locally.** The cluster's nodes read files from shared storage; "
                 "choose *Local*, or put the files in a folder every node mounts.", icon=":material/hub:")
        return None
    from core.review.ray_engine import RayEngine  # no import of ray itself until a cluster is asked for

    try:
        engine = RayEngine(ctx.weights_dir, address=address)
        with st.spinner(f"Connecting to the Ray cluster at {address}…"):
            engine.connect()
    except RuntimeError as exc:  # RayUnavailableError: not installed, nothing answering, or refused
        st.error(f"**The Ray cluster cannot be used.** {str(exc).rstrip('.')}. Choose *Local* to review on this "
                 "server.",
                 icon=":material/cloud_off:")
        return None
    return engine


def input_panel() -> tuple[str, str | None, list | None, str] | None:
    """Draw the input panel; ``(mode, folder, uploaded files, engine choice)`` once Start is pressed while no
    review of this session runs, else None."""
    with st.container(border=True):
        mode = st.segmented_control("Input", [FOLDER, UPLOAD, STUDIES], default=FOLDER, required=True,
                                    key="batch_mode",
                                    label_visibility="collapsed")
        if mode != UPLOAD:
            roots = ", ".join(f"`{r}`" for r in ctx.config.allowed_roots)
            st.selectbox("Pick a folder", views.folder_choices(tuple(map(str, ctx.config.allowed_roots))), index=None, key="batch_pick",
                         placeholder="Browse the allowed folders (two levels deep) or type a path below",
                         on_change=lambda: st.session_state.update(batch_folder=st.session_state["batch_pick"] or ""))
            folder = st.text_input("Folder to review (searched recursively for JPG, PNG and DICOM)", key="batch_folder",
                                   placeholder="e.g. data/brain-tumor-mri/Testing",
                                   help="Absolute, or relative to the first allowed folder. Class sub-folders "
                                        "(glioma/, meningioma/, …) add a ground-truth column.")
            st.caption(f":material/lock: Browsing is limited to: {roots} (set `allowed_roots` in the app config).")
            if mode == STUDIES:
                st.caption(":material/view_in_ar: Each NIfTI volume, DICOM series folder or zip under the folder is "
                           "a study: one row per series (verdict, positive slices, flags) and a per-slice CSV.")
            files = None
        else:
            files = st.file_uploader("Slices to review", type=IMAGE_TYPES, accept_multiple_files=True,
                                     key="batch_upload",
                                     help=f"Each file at most {ctx.upload_limit_mb} MB.")
            st.caption(f":material/upload_file: Several files at once, each up to **{ctx.upload_limit_mb} MB**.")
            folder = None
        engine_choice = st.radio(
            "Run on", [LOCAL, RAY], horizontal=True, key="batch_engine",
            help="Local: this server's CPU/GPU. Ray cluster: the configured cluster's nodes predict, this server "
                 "writes the rows and the audit trail (README, 'Scaling out').")
        if engine_choice == RAY:
            st.caption(f":material/hub: Ray cluster: `{ctx.config.ray_address}`" if ctx.config.ray_address else
                       ":material/hub: No Ray cluster is configured (`ray_address` in the app config, or "
                       "`MRI_RAY_ADDRESS`).")
        clicked = st.button("Start review", type="primary", icon=":material/play_arrow:", key="batch_start",
                            disabled=busy, help="Stop the running review first." if busy else None)
        if not clicked or busy:
            return None
    return mode, folder, files, engine_choice


def chosen_source(mode: str, folder: str | None, files: list | None,
                  engine_choice: str) -> tuple[Path, str, Path | None] | None:
    """``(root, label, upload folder)`` of the chosen input (uploads saved to a temporary folder, which is then
    the root), or None after a message saying why it cannot be reviewed."""
    if mode == UPLOAD:
        if not files:
            st.error("Choose one or more files to upload first.", icon=":material/upload_file:")
            return None
        upload_dir = save_uploads(files)
        return upload_dir, f"{len(files)} uploaded file(s)", upload_dir
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
    if mode == STUDIES and (engine_choice == RAY or not has_studies(root)):
        st.warning("Studies are reviewed on this server (choose *Local*)." if engine_choice == RAY else
                   f"No NIfTI volume, DICOM series folder or zip was found under `{root}`.")
        return None
    if mode == FOLDER and count_image_files(root) == 0:
        st.warning(f"No JPG, PNG, TIFF, BMP or DICOM files were found under `{root}`.")
        return None
    return root, str(root), None


def start_job(mode: str, root: Path, label: str, upload_dir: Path | None, engine) -> BatchJob | None:
    """Replace this session's review by a new one over ``root``; None after a message when it cannot start
    (the uploaded files, if any, are then removed)."""
    if job is not None:
        job.discard()  # one review per session: a new one replaces the last (and its uploaded files)
    try:
        if mode == STUDIES:
            return StudyJob.start_studies(ctx.predictor, root, label=label, audit=ctx.audit,
                                          max_jobs=ctx.config.max_batch_jobs)
        return BatchJob.start(ctx.predictor, root, label=label, audit=ctx.audit, uncertain_below=ctx.uncertain_below,
                              upload_dir=upload_dir, max_jobs=ctx.config.max_batch_jobs, engine=engine,
                              engine_label=f"the Ray cluster at {ctx.config.ray_address}" if engine else "")
    except BatchLimitError:  # another session started one since the check above
        st.error(limit_message(), icon=":material/hourglass_top:")
    except (OSError, ValueError) as exc:
        st.error(f"The review could not start: {exc}")
    if upload_dir is not None:
        shutil.rmtree(upload_dir, ignore_errors=True)
    return None


def new_job() -> BatchJob | None:
    """Draw the input panel; return a freshly started job when the user starts one."""
    chosen = input_panel()
    if chosen is None:
        return None
    mode, folder, files, engine_choice = chosen
    if active_jobs() >= ctx.config.max_batch_jobs:  # checked before the old results are discarded
        st.error(limit_message(), icon=":material/hourglass_top:")
        return None
    source = chosen_source(mode, folder, files, engine_choice)
    if source is None:
        return None
    root, label, upload_dir = source
    engine = None
    if engine_choice == RAY:
        engine = ray_engine(mode)
        if engine is None:
            if upload_dir is not None:
                shutil.rmtree(upload_dir, ignore_errors=True)
            return None
    return start_job(mode, root, label, upload_dir, engine)


started = new_job()
if started is not None:
    st.session_state[state.BATCH_KEY] = started
    st.rerun()  # redraw from the top: the sidebar line and the disabled Start button see the running review


# -- progress (the review runs in a worker thread; this panel polls it) ---------------------------
def stop_review() -> None:
    """Stop button: waits for the chunk in flight, so the count shown next is final; finished rows are kept."""
    running: BatchJob | None = st.session_state.get(state.BATCH_KEY)
    if running is not None:
        running.cancel(wait=STOP_WAIT_S)


@st.fragment(run_every=PROGRESS_POLL_S)
def progress_panel(shown_rows: int) -> None:
    """Progress of the running review, redrawn every second without rerunning (or blocking) the page;
    ``shown_rows``: how many rows the page below was drawn with."""
    running: BatchJob | None = st.session_state.get(state.BATCH_KEY)
    if running is None or not running.running:
        st.rerun()  # finished: redraw the whole page with the final status and every row
    if shown_rows == 0 and running.done:
        st.rerun()  # the first rows are in: draw the table, so the reader can start while the review goes on
    with st.container(border=True):
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        c1.markdown(f":material/progress_activity: **{'Stopping' if running.stopping else 'Reviewing'}** "
                    f"`{running.label}`" + (f" on {running.engine_label}" if running.engine_label else ""))
        c2.button("Stop", icon=":material/stop_circle:", key="batch_stop", width="stretch", on_click=stop_review,
                  disabled=running.stopping)
        st.progress(running.fraction, text=running.progress_text())
        st.caption(f":material/info: The review continues on the server while you use other pages. The results "
                   f"below are the {shown_rows:,} rows finished when this page was drawn; they refresh when the "
                   "review ends or you change a filter.")


frame = job.frame() if job is not None else None  # one snapshot of the rows for this whole run
if job is not None and job.running:
    progress_panel(len(frame))

if job is None:
    st.info("Choose a folder or upload files, then press **Start review**.", icon=":material/info:")
    st.stop()
if isinstance(job, StudyJob):  # a folder of studies: its own table and downloads
    study_results(job)
    st.stop()

# -- status ---------------------------------------------------------------------------------------
if job.status == DONE:
    st.success(f"Reviewed **{job.done:,}** files from `{job.label}` in {format_seconds(job.elapsed_seconds)} "
               f"({job.n_errors} unreadable)" + (f" on {job.engine_label}" if job.engine_label else "") + ".",
               icon=":material/task_alt:")
elif job.status == CANCELLED:
    st.warning(f"Stopped after **{job.done:,}** of {job.total:,} files; the finished rows are kept below.",
               icon=":material/stop_circle:")
elif job.status == FAILED:
    st.error(f"The review stopped after {job.done:,} files: {job.error}. Finished rows are kept below.")
skipped = list(job.skipped)  # the worker may still append to it
if skipped:
    with st.expander(f"{len(skipped)} path(s) skipped while walking the folder"):
        st.dataframe({"path": [p for p, _ in skipped], "reason": [r for _, r in skipped]}, hide_index=True)
if not len(frame):
    st.info("No results yet.")
    st.stop()

# -- filters + summary ------------------------------------------------------------------------------
names = job.class_names
df = with_threshold(frame, ctx.uncertain_below)
labelled = bool((df["true_label"] != "").any())
with st.container(border=True):
    f1, f2, f3 = st.columns([2.4, 1.8, 2])
    # Pills wrap onto a second line instead of hiding a class behind "+1", as multiselect chips did.
    classes = f1.pills("Predicted class", names, selection_mode="multi", default=names, key="flt_classes") or []
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
m[2].metric(f"Uncertain (< {format_confidence(ctx.uncertain_below)})", f"{int(view['uncertain'].sum()):,}")
m[3].metric("Unreadable", f"{int((view['error'] != '').sum()):,}")
if labelled:
    judged = view["correct"].dropna()
    if job.partial:
        # A labelled tree is read class folder by class folder: part of it covers only the first classes.
        m[4].metric("Accuracy (labelled rows)", "–",
                    help="Not shown for a partial run: the folder is read class by class, so the rows done so "
                         "far would give a biased figure.")
        m[4].caption(f"partial run: {len(df):,} of {job.total:,} files")
    else:
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
column_config.update({f"p_{c}": st.column_config.TextColumn(f"p({c})") for c in names})  # text: "–" if none
job.view_paths = table["path"].tolist()  # previous / next scan from the single-scan view follow this order
selection = st.dataframe(table, key="batch_table", on_select="rerun", selection_mode="single-row", hide_index=True,
                         column_config=column_config, height=min(560, 38 + 35 * max(1, len(table))))
picked = selection.selection.rows if selection is not None else []
if picked and picked[0] < len(table):  # one click: choosing a row opens it
    rel = table.iloc[picked[0]]["path"]
    state.open_in_single_scan(job.abs_path(rel), rel)
s1, s2, s3, s4 = st.columns([2, 1, 1, 1])
s1.caption(":material/open_in_new: Click a row's left edge to open it in the single-scan view.")
shown_paths, threshold = table["path"].tolist(), ctx.uncertain_below
# CSVs are built only when a button is pressed (callables), not on every rerun; each reads the rows at that
# moment, so heatmap peaks recorded by the gallery below are in it.
s2.download_button("CSV (shown rows)", lambda: export_csv(job, threshold, shown_paths), "batch_results_filtered.csv",
                   "text/csv", on_click="ignore", icon=":material/download:", width="stretch", key="csv_shown")
s3.download_button("CSV (all rows)", lambda: export_csv(job, threshold), "batch_results.csv", "text/csv",
                   on_click="ignore", icon=":material/download:", width="stretch", key="csv_all")
s4.download_button("PDF summary",
                   lambda: batch_pdf(with_threshold(job.frame(), threshold).to_dict("records"),
                                     ModelIdentity.from_card(ctx.predictor.bundle.card),
                                     views.metrics_for(ctx.predictor.bundle, ctx.weights_dir)),
                   "batch_summary.pdf", "application/pdf",
                   on_click="ignore", icon=":material/picture_as_pdf:", width="stretch", key="pdf_summary",
                   help="Counts per class, flags, errors, the model's identity and measured per-source performance; "
                        "no file names.")
st.caption("The CSV names the model (name, version, SHA-256) and the uncertainty threshold of its `uncertain` "
           "column. `cam_method` and `cam_peak_x`/`cam_peak_y` (the heatmap's peak for the predicted class, as "
           "fractions of the original image's width and height) are filled only for rows whose heatmap was "
           "computed: the gallery pages shown below with *Heatmaps* on.")


# -- gallery ----------------------------------------------------------------------------------------
st.subheader("Gallery")
g1, g2, g3, g4 = st.columns([1, 1.2, 1, 1])
show_cam = g1.toggle("Heatmaps", value=True, key="gal_cam", help="Grad-CAM overlays, computed for the shown page only.")
method = g2.selectbox("CAM method", list(CAM_METHODS), key="gal_method", disabled=not show_cam,
                      format_func=lambda m: CAM_METHOD_NAMES.get(m, m))
opacity = g3.slider("Opacity", 0.0, 1.0, 0.45, 0.05, key="gal_opacity", disabled=not show_cam)
cmap = g4.selectbox("Colour map", list(COLORMAPS), key="gal_cmap", disabled=not show_cam)
start, stop = views.pager(len(view), ctx.config.gallery_page_size, key="gal_page")
page_rows = view.iloc[start:stop]
if len(page_rows):
    with st.spinner("Rendering thumbnails…"):
        images, peaks = views.thumbnails_with_peaks(ctx.explainer, [job.abs_path(p) for p in page_rows["path"]],
                                                    method if show_cam else None, opacity, cmap)
    if show_cam:  # the CSV downloads carry the heatmaps computed here
        job.record_cams(method, dict(zip(page_rows["path"], peaks)))
    items = []
    for _, r in page_rows.iterrows():
        if r["error"]:
            cap = ":red[**unreadable**]"
        else:
            flags = (" :orange-badge[OOD]" if r["ood"] else "") + (" :violet-badge[uncertain]" if r["uncertain"] else "")
            truth = ""
            if r["true_label"]:
                truth = f" · true {r['true_label']} " + (":green[✓]" if r["correct"] is True else ":red[✗]")
            cap = f"**{r['predicted']}** {format_confidence(r['confidence'])}{truth}{flags}"
        items.append({"title": r["path"], "caption": cap})
    views.gallery(items, images, key="gal",
                  on_open=lambda item: state.open_in_single_scan(job.abs_path(item["title"]), item["title"]))
else:
    st.caption("No rows match the filters.")
