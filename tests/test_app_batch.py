"""AppTest: the batch review page.

A review runs in a background thread (``ui.batch_job.BatchJob``): AppTest runs the script once, so
tests wait for the job (:func:`finish`) and then run the script again to see the final page.
"""
from __future__ import annotations

import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from app_support import (APP, CLASSES, CORRUPT_BYTES, CORRUPT_NAME, all_text, always_no_tumour_bundle, make_app_env,
                         make_labelled_folder, scan_png)

TIMEOUT = 180
PAGE = "pages/2_Batch_review.py"


@pytest.fixture(autouse=True)
def _no_review_outlives_its_test():
    yield
    from ui.batch_job import cancel_all

    cancel_all()


@pytest.fixture
def app_env(tiny_bundle_dir, tmp_path, monkeypatch):
    return make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)


def slow_predictions(monkeypatch, seconds: float) -> None:
    """Every chunk of predictions takes ``seconds`` longer: a review is still running when the test looks."""
    from core.inference.predictor import Predictor

    fast = Predictor.predict_preprocessed

    def slow(self, items, *args, **kwargs):
        time.sleep(seconds)
        return fast(self, items, *args, **kwargs)

    monkeypatch.setattr(Predictor, "predict_preprocessed", slow)


def wait_until(condition, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def batch_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(PAGE).run()
    assert not at.exception and at.title[0].value == "Batch review"
    return at


def finish(at: AppTest) -> AppTest:
    """Wait for this session's review to end, then redraw the page (without a review, e.g. a refused folder,
    the page is left as it is, with its messages)."""
    job = at.session_state["batch_job"] if "batch_job" in at.session_state else None
    if job is None:
        return at
    assert job.wait(TIMEOUT), "the batch review did not finish"
    return at.run()


def run_folder(at: AppTest, folder: str, wait: bool = True) -> AppTest:
    at.text_input(key="batch_folder").input(folder).run()
    at.button(key="batch_start").click().run()
    return finish(at) if wait else at


def test_folder_batch_with_corrupted_file(app_env):
    make_labelled_folder(app_env.root / "set", per_class=2)
    at = batch_page()
    run_folder(at, "set")  # relative to the allowed root
    assert not at.exception
    assert any("Reviewed **9** files" in s.value and "1 unreadable" in s.value for s in at.success)
    table = at.dataframe(key="batch_table").value
    assert len(table) == 9
    for col in ["path", "predicted", "confidence", "ood", "uncertain", "error", "true_label", "correct"]:
        assert col in table.columns
    assert [f"p_{c}" for c in CLASSES] == [c for c in table.columns if c.startswith("p_")]
    bad = table[table["path"] == f"glioma/{CORRUPT_NAME}"].iloc[0]
    assert CORRUPT_NAME in bad["error"] and bad["predicted"] == ""
    good = table[table["error"] == ""]
    assert len(good) == 8 and good["predicted"].isin(CLASSES).all()
    assert set(good["true_label"]) == set(CLASSES)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Files shown"] == "9" and metrics["Unreadable"] == "1"
    assert "Accuracy (labelled rows)" in metrics
    assert len(at.get("plotly_chart")) == 2  # counts per class + confidence histogram
    # the gallery shows the page of thumbnails (8 images, the corrupted file as a message)
    assert len(at.image) == 8
    # every row went to the audit trail, the unreadable one with its error
    from core.review.audit_trail import AuditTrail

    rows = AuditTrail(app_env.audit_path).recent(50)
    assert len(rows) == 9 and sum(1 for r in rows if r["error"]) == 1 and all(r["source"] == "batch" for r in rows)


def test_no_tumour_rows_are_not_called_negative_reads(tiny_bundle_dir, tmp_path, monkeypatch):
    env = make_app_env(tmp_path, always_no_tumour_bundle(tiny_bundle_dir, tmp_path / "model"), monkeypatch)
    make_labelled_folder(env.root / "set", per_class=1, corrupt=False)
    at = run_folder(batch_page(), "set")
    assert (at.dataframe(key="batch_table").value["predicted"] == "notumor").all()
    assert "rows are not negative reads" in all_text(at)
    at.pills(key="flt_classes").set_value(["glioma"]).run()  # no "no tumour" row shown: no caution
    assert "rows are not negative reads" not in all_text(at)


def test_filters_and_exports(app_env):
    make_labelled_folder(app_env.root / "set", per_class=2)
    at = batch_page()
    run_folder(at, "set")
    at.checkbox(key="flt_errors").check().run()
    assert len(at.dataframe(key="batch_table").value) == 1
    at.checkbox(key="flt_errors").uncheck().run()
    at.pills(key="flt_classes").set_value([]).run()
    assert len(at.dataframe(key="batch_table").value) == 0
    at.pills(key="flt_classes").set_value(list(CLASSES)).run()
    at.slider(key="flt_conf").set_value((0.9, 1.0)).run()
    table = at.dataframe(key="batch_table").value
    assert (table["confidence"] >= 0.9).all()
    at.slider(key="flt_conf").set_value((0.0, 1.0)).run()
    at.checkbox(key="flt_wrong").check().run()
    table = at.dataframe(key="batch_table").value
    assert (table["correct"] == False).all()  # noqa: E712
    labels = [b.label for b in at.get("download_button")]
    assert "CSV (shown rows)" in labels and "CSV (all rows)" in labels
    assert not at.exception


def test_results_survive_page_switches(app_env):
    make_labelled_folder(app_env.root / "set", per_class=1)
    at = batch_page()
    run_folder(at, "set")
    at.switch_page("pages/3_Model_metrics.py").run()
    at.switch_page(PAGE).run()
    assert len(at.dataframe(key="batch_table").value) == 5
    assert any("Reviewed **5** files" in s.value for s in at.success)


@pytest.mark.parametrize("folder", ["/etc", "../..", "~"])
def test_traversal_outside_allowed_roots_is_refused(app_env, folder):
    at = batch_page()
    run_folder(at, folder)
    assert not at.exception
    assert any("Folder refused" in e.value and "outside the allowed folders" in e.value for e in at.error)
    assert not at.dataframe


def test_missing_and_empty_folders_give_messages(app_env):
    (app_env.root / "empty").mkdir()
    at = batch_page()
    run_folder(at, "does-not-exist")
    assert any("not an existing folder" in e.value for e in at.error)
    run_folder(at, "empty")
    assert any("No JPG, PNG" in w.value for w in at.warning)
    assert not at.exception


def test_uploaded_files_batch(app_env):
    at = batch_page()
    at.segmented_control(key="batch_mode").set_value("Upload files").run()
    at.file_uploader(key="batch_upload").set_value([
        ("a.png", scan_png(1, 0), "image/png"), ("b.png", scan_png(2, 3), "image/png"),
        ("../../evil.jpg", CORRUPT_BYTES, "image/jpeg")]).run()
    at.button(key="batch_start").click().run()
    finish(at)
    assert not at.exception
    table = at.dataframe(key="batch_table").value
    assert len(table) == 3
    assert set(table["path"]) == {"a.png", "b.png", "evil.jpg"}  # names reduced to a safe basename
    assert table.set_index("path").loc["evil.jpg", "error"] != ""
    assert "true_label" not in table.columns  # no class folders: no ground-truth columns
    # The uploaded files live in a temporary folder until the review is replaced by the next one.
    upload_dir = at.session_state["batch_job"].upload_dir
    assert upload_dir is not None and upload_dir.is_dir()
    make_labelled_folder(app_env.root / "set", per_class=1, corrupt=False)
    at.segmented_control(key="batch_mode").set_value("Folder on the server").run()
    run_folder(at, "set")
    assert len(at.dataframe(key="batch_table").value) == 4 and not upload_dir.exists()


def test_choosing_a_row_opens_single_scan(app_env):
    make_labelled_folder(app_env.root / "set", per_class=1)
    at = batch_page()
    run_folder(at, "set")
    table = at.dataframe(key="batch_table").value
    row = int(table.index[table["path"] == "pituitary/pituitary_0.png"][0])
    at.session_state["batch_table"] = {"selection": {"rows": [row], "columns": []}}
    at.run()  # selecting the row is enough: no second button to press
    assert not at.exception
    assert at.title[0].value == "Single scan"
    assert "pituitary/pituitary_0.png" in all_text(at)
    assert at.session_state["selected_file"]["label"] == "pituitary/pituitary_0.png"


def test_gallery_pages_and_open_button(app_env):
    make_labelled_folder(app_env.root / "set", per_class=7, corrupt=False)  # 28 files: two gallery pages
    at = batch_page()
    run_folder(at, "set")
    assert len(at.image) == 24
    at.toggle(key="gal_cam").set_value(False).run()
    at.number_input(key="gal_page").set_value(2).run()
    assert len(at.image) == 4
    at.button(key="gal_open_pituitary/pituitary_6.png").click().run()
    assert at.title[0].value == "Single scan" and "pituitary/pituitary_6.png" in all_text(at)


def test_cancelled_job_keeps_finished_rows(app_env, tiny_predictor, monkeypatch):
    """Stopping a review keeps what is done and gives a final count; a partial labelled run shows no accuracy
    (the tree is read class folder by class folder, so the first rows are all gliomas)."""
    from ui.batch_job import BatchJob

    slow_predictions(monkeypatch, 0.4)
    folder = make_labelled_folder(app_env.root / "set", per_class=3, corrupt=False)
    job = BatchJob.start(tiny_predictor, folder, label="set", audit=None, uncertain_below=0.5, chunk_size=2)
    assert job.total == 12
    wait_until(lambda: job.done >= 3)
    job.cancel(wait=60)
    assert job.status == "cancelled" and not job.running and 3 <= job.done < 12
    done = job.done
    time.sleep(0.5)
    assert job.done == done  # the worker has ended: the count is final
    at = batch_page()
    at.session_state["batch_job"] = job
    at.run()
    assert any(f"Stopped after **{done}** of 12" in w.value for w in at.warning)
    assert len(at.dataframe(key="batch_table").value) == done
    assert {m.label: m.value for m in at.metric}["Accuracy (labelled rows)"] == "–"
    assert f"partial run: {done} of 12 files" in all_text(at)


def test_review_keeps_running_while_the_user_is_on_another_page(app_env, monkeypatch):
    """Leaving the page neither pauses the review nor its clock; the sidebar shows its progress everywhere."""
    slow_predictions(monkeypatch, 0.5)
    make_labelled_folder(app_env.root / "set", per_class=5, corrupt=False)  # 20 files: 3 chunks of at most 8
    at = run_folder(batch_page(), "set", wait=False)
    assert not at.exception
    job = at.session_state["batch_job"]
    assert job.running and at.button(key="batch_stop")  # the progress panel, drawn without blocking the script
    assert "/ 20 files" in at.get("progress")[0].proto.text
    at.switch_page("pages/3_Model_metrics.py").run()
    assert at.title[0].value == "Model metrics"
    links = [link.value for link in at.sidebar.page_link if link.value.startswith("Batch review:")]
    assert links and "/ 20 files" in links[0]
    first = job.elapsed_seconds
    time.sleep(0.3)
    assert job.elapsed_seconds > first  # the clock runs with no script run at all
    assert job.wait(TIMEOUT)  # ...and so does the review: it ends while the user is on the metrics page
    assert job.status == "done" and job.done == 20
    assert job.elapsed_seconds >= 3 * 0.5  # wall time of the worker, not the time the page was open
    at.run()
    assert any(link.value == "Batch done: 20 / 20 files" for link in at.sidebar.page_link)
    at.switch_page(PAGE).run()
    assert any("Reviewed **20** files" in s.value for s in at.success)
    assert len(at.dataframe(key="batch_table").value) == 20
    assert {m.label: m.value for m in at.metric}["Accuracy (labelled rows)"] != "–"  # a finished run has one


def test_stop_button_keeps_finished_rows_and_gives_a_final_count(app_env, monkeypatch):
    slow_predictions(monkeypatch, 1.0)
    make_labelled_folder(app_env.root / "set", per_class=5, corrupt=False)
    at = run_folder(batch_page(), "set", wait=False)
    job = at.session_state["batch_job"]
    wait_until(lambda: job.done >= 1)
    at.button(key="batch_stop").click().run()
    assert not at.exception and not job.running
    done = job.done
    assert 1 <= done < 20
    assert any(f"Stopped after **{done}** of 20" in w.value for w in at.warning)
    assert len(at.dataframe(key="batch_table").value) == done
    assert f"partial run: {done} of 20 files" in all_text(at)


def test_the_server_runs_a_bounded_number_of_reviews(app_env, monkeypatch):
    """Over the limit, a user gets a message at once instead of a queue or a hang."""
    from ui.batch_job import BatchJob, BatchLimitError

    monkeypatch.setenv("MRI_MAX_BATCH_JOBS", "1")
    make_labelled_folder(app_env.root / "set", per_class=1, corrupt=False)
    gate = threading.Event()

    def held_rows():  # another session's review, still running
        gate.wait(TIMEOUT)
        yield from ()

    other = BatchJob(root=app_env.root, label="another session", class_names=list(CLASSES), model_sha256="x",
                     total=1, uncertain_below=0.6)
    other.launch(held_rows(), max_jobs=1)
    try:
        with pytest.raises(BatchLimitError, match="limit"):
            BatchJob(root=app_env.root, label="x", class_names=list(CLASSES), model_sha256="x", total=1,
                     uncertain_below=0.6).launch(iter(()), max_jobs=1)
        at = run_folder(batch_page(), "set")
        assert not at.exception
        assert any("already running 1 batch review" in e.value and "max_batch_jobs" in e.value for e in at.error)
        assert "batch_job" not in at.session_state
    finally:
        gate.set()
    assert other.wait(TIMEOUT)
    at = run_folder(at, "set")  # the slot is free again
    assert len(at.dataframe(key="batch_table").value) == 4


def test_csv_names_the_model_threshold_and_heatmap_peaks(app_env):
    """The gallery's heatmaps (shown page) are recorded in the rows, so the CSV downloads carry them."""
    import csv
    import io

    from core.review.folder import csv_columns
    from ui.batch_job import export_csv

    make_labelled_folder(app_env.root / "set", per_class=7, corrupt=False)  # 28 files: two gallery pages
    at = run_folder(batch_page(), "set")
    job = at.session_state["batch_job"]
    rows = list(csv.DictReader(io.StringIO(export_csv(job, 0.6))))
    assert list(rows[0]) == csv_columns(list(CLASSES))
    card = job.model_sha256
    assert {r["model_sha256"] for r in rows} == {card} and all(r["model_name"] and r["model_version"] for r in rows)
    assert {r["uncertain_below"] for r in rows} == {"0.6"}
    shown = set(at.dataframe(key="batch_table").value["path"][:24])  # the first gallery page
    with_cam = {r["path"] for r in rows if r["cam_method"]}
    assert with_cam == shown
    for r in rows:
        if r["cam_method"]:
            assert r["cam_method"] == at.selectbox(key="gal_method").value
            assert 0 <= float(r["cam_peak_x"]) <= 1 and 0 <= float(r["cam_peak_y"]) <= 1
        else:
            assert r["cam_peak_x"] == r["cam_peak_y"] == ""
    # the sidebar threshold decides "uncertain" and is written beside it
    strict = list(csv.DictReader(io.StringIO(export_csv(job, 1.0, [r["path"] for r in rows[:3]]))))
    assert len(strict) == 3 and {r["uncertain_below"] for r in strict} == {"1.0"}
    assert all(r["uncertain"] == "True" for r in strict)
    # the CAM method picker shows names, not identifiers
    labels = at.selectbox(key="gal_method").options
    assert "Grad-CAM" in labels and "gradcam" not in labels


def test_display_is_consistent_and_never_says_none(app_env):
    """Confidences are shown rounded down with one decimal everywhere on the page (a 59.5 % slice never reads
    as "60 %" beside a "< 60 %" rule); unreadable rows show "–" for their probabilities, not "None"."""
    from ui.charts import format_confidence

    make_labelled_folder(app_env.root / "set", per_class=1)
    at = run_folder(batch_page(), "set")
    metrics = {m.label: m.value for m in at.metric}
    assert "Uncertain (< 60.0%)" in metrics
    table = at.dataframe(key="batch_table").value
    bad = table[table["error"] != ""].iloc[0]
    assert all(bad[f"p_{c}"] == "–" for c in CLASSES)
    good = table[table["error"] == ""]
    assert all(len(v) == 5 and 0 <= float(v) <= 1 for c in CLASSES for v in good[f"p_{c}"])
    text = all_text(at)
    for conf in good["confidence"]:
        assert format_confidence(conf) in text  # gallery captions
    assert format_confidence(0.595) == "59.5%" and format_confidence(0.59999) == "59.9%"
    assert format_confidence(0.6) == "60.0%" and format_confidence(float("nan")) == "–"
    # every class stays visible as its own pill
    assert list(at.pills(key="flt_classes").options) == list(CLASSES)


def test_previous_and_next_scan_follow_the_filtered_table(app_env, monkeypatch):
    """``ui.state.neighbour_in_batch``: the single-scan view's previous / next scan, in the order of the batch
    table as last filtered; a file outside that view steps through all rows."""
    import streamlit as st

    from ui import state

    make_labelled_folder(app_env.root / "set", per_class=2)
    at = run_folder(batch_page(), "set")
    job = at.session_state["batch_job"]
    assert job.view_paths == list(at.dataframe(key="batch_table").value["path"]) and len(job.view_paths) == 9
    at.checkbox(key="flt_errors").check().run()
    assert job.view_paths == [f"glioma/{CORRUPT_NAME}"]
    monkeypatch.setattr(st, "session_state", {state.BATCH_KEY: job})
    assert state.neighbour_in_batch(f"glioma/{CORRUPT_NAME}", 1) is None  # the only row shown
    order = [r["path"] for r in job.rows]
    job.view_paths = order[::-1][:4]  # e.g. a sorted, filtered view
    view = job.view_paths
    assert state.neighbour_in_batch(view[0], 1) == (job.abs_path(view[1]), view[1])
    assert state.neighbour_in_batch(view[2], -1) == (job.abs_path(view[1]), view[1])
    assert state.neighbour_in_batch(view[0], -1) is None and state.neighbour_in_batch(view[-1], 1) is None
    assert state.neighbour_in_batch(order[0], 1) == (job.abs_path(order[1]), order[1])  # not in the view
    assert state.neighbour_in_batch("no/such.png", 1) is None


def test_folder_picker_lists_only_allowed_folders(app_env):
    make_labelled_folder(app_env.root / "set", per_class=1)
    (app_env.root / ".hidden").mkdir()
    at = batch_page()
    options = at.selectbox(key="batch_pick").options
    assert str(app_env.root / "set") in options and str(app_env.root / "set" / "glioma") in options
    assert not any(".hidden" in o for o in options)
    assert all(o.startswith(str(app_env.root)) for o in options)
    at.selectbox(key="batch_pick").set_value(str(app_env.root / "set")).run()
    assert at.text_input(key="batch_folder").value == str(app_env.root / "set")
    at.button(key="batch_start").click().run()
    finish(at)
    assert len(at.dataframe(key="batch_table").value) == 5


def test_a_folder_named_after_a_class_gives_ground_truth(app_env):
    """Reviewing set/meningioma (not set) still fills true_label and enables "Wrong only"."""
    make_labelled_folder(app_env.root / "set", per_class=2)
    at = batch_page()
    run_folder(at, "set/meningioma")
    assert not at.exception
    table = at.dataframe(key="batch_table").value
    assert len(table) == 2 and set(table["true_label"]) == {"meningioma"}
    assert not at.checkbox(key="flt_wrong").disabled
    assert "Accuracy (labelled rows)" in {m.label for m in at.metric}
