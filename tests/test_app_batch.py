"""AppTest: the batch review page."""
from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from app_support import (APP, CLASSES, CORRUPT_BYTES, CORRUPT_NAME, all_text, always_no_tumour_bundle, make_app_env,
                         make_labelled_folder, scan_png)

TIMEOUT = 180
PAGE = "pages/2_Batch_review.py"


@pytest.fixture
def app_env(tiny_bundle_dir, tmp_path, monkeypatch):
    return make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)


def batch_page() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(PAGE).run()
    assert not at.exception and at.title[0].value == "Batch review"
    return at


def run_folder(at: AppTest, folder: str) -> AppTest:
    at.text_input(key="batch_folder").input(folder).run()
    return at.button(key="batch_start").click().run()


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
    from core.audit_trail import AuditTrail

    rows = AuditTrail(app_env.audit_path).recent(50)
    assert len(rows) == 9 and sum(1 for r in rows if r["error"]) == 1 and all(r["source"] == "batch" for r in rows)


def test_no_tumour_rows_are_not_called_negative_reads(tiny_bundle_dir, tmp_path, monkeypatch):
    env = make_app_env(tmp_path, always_no_tumour_bundle(tiny_bundle_dir, tmp_path / "model"), monkeypatch)
    make_labelled_folder(env.root / "set", per_class=1, corrupt=False)
    at = run_folder(batch_page(), "set")
    assert (at.dataframe(key="batch_table").value["predicted"] == "notumor").all()
    assert "rows are not negative reads" in all_text(at)
    at.multiselect(key="flt_classes").set_value(["glioma"]).run()  # no "no tumour" row shown: no caution
    assert "rows are not negative reads" not in all_text(at)


def test_filters_and_exports(app_env):
    make_labelled_folder(app_env.root / "set", per_class=2)
    at = batch_page()
    run_folder(at, "set")
    at.checkbox(key="flt_errors").check().run()
    assert len(at.dataframe(key="batch_table").value) == 1
    at.checkbox(key="flt_errors").uncheck().run()
    at.multiselect(key="flt_classes").set_value([]).run()
    assert len(at.dataframe(key="batch_table").value) == 0
    at.multiselect(key="flt_classes").set_value(list(CLASSES)).run()
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
    assert not at.exception
    table = at.dataframe(key="batch_table").value
    assert len(table) == 3
    assert set(table["path"]) == {"a.png", "b.png", "evil.jpg"}  # names reduced to a safe basename
    assert table.set_index("path").loc["evil.jpg", "error"] != ""
    assert "true_label" not in table.columns  # no class folders: no ground-truth columns


def test_choosing_a_row_opens_single_scan(app_env):
    make_labelled_folder(app_env.root / "set", per_class=1)
    at = batch_page()
    run_folder(at, "set")
    table = at.dataframe(key="batch_table").value
    row = int(table.index[table["path"] == "pituitary/pituitary_0.png"][0])
    at.session_state["batch_table"] = {"selection": {"rows": [row], "columns": []}}
    at.run()
    at.button(key="batch_open_selected").click().run()
    assert not at.exception
    assert at.title[0].value == "Single scan"
    assert "pituitary/pituitary_0.png" in all_text(at)
    assert len(at.image) == 2 and {m.label for m in at.metric} >= {"Predicted class", "Calibrated confidence"}


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


def test_cancelled_job_keeps_finished_rows(app_env, tiny_predictor):
    from ui.batch_job import BatchJob

    folder = make_labelled_folder(app_env.root / "set", per_class=3, corrupt=False)
    job = BatchJob.start(tiny_predictor, folder, label="set", audit=None, uncertain_below=0.5, chunk_size=2)
    assert job.total == 12
    for _ in range(3):
        assert job.step() is not None
    job.cancel()
    assert job.status == "cancelled" and job.done == 3 and job.step() is None
    at = batch_page()
    at.session_state["batch_job"] = job
    at.run()
    assert any("Stopped after **3** of 12" in w.value for w in at.warning)
    assert len(at.dataframe(key="batch_table").value) == 3


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
