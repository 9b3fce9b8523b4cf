"""AppTest: the single-scan page (and the shared sidebar / model loading)."""
from __future__ import annotations

import base64
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from app_support import APP, all_text, always_no_tumour_bundle, dicom_bytes, make_app_env, make_labelled_folder, photo_png, scan_png

TIMEOUT = 180


@pytest.fixture
def app_env(tiny_bundle_dir, tmp_path, monkeypatch):
    return make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)


def start() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def image_pair_spec(at: AppTest) -> dict:
    """The plotly figure of the original / heatmap pair."""
    chart = next(c for c in at.get("plotly_chart") if json.loads(c.proto.spec)["data"][0]["type"] == "image")
    return json.loads(chart.proto.spec)


def shown_image(spec: dict, panel: int) -> np.ndarray:
    """The pixels of one panel of the pair (0: original, 1: heatmap overlay), as the browser gets them."""
    uri = spec["data"][panel]["source"]
    return np.array(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def audit_count(env) -> int:
    from core.review.audit_trail import AuditTrail

    return AuditTrail(env.audit_path).count()


def test_page_loads_with_sidebar_model_facts(app_env):
    from core.model.checkpoint import load_bundle

    bundle = load_bundle(app_env.weights)
    at = start()
    assert at.title[0].value == "Single scan"
    side = "\n".join(str(e.value) for e in at.sidebar.markdown) + "\n".join(str(w.value) for w in at.sidebar.warning)
    assert bundle.name in side and bundle.version in side
    assert bundle.sha256[:12] in side
    assert "device **cpu**" in side
    assert "Research use only" in side and "not for diagnosis" in side
    assert at.sidebar.slider(key="uncertain_below").value == pytest.approx(0.6)
    assert len(at.file_uploader) == 1 and not at.error


def test_upload_gives_prediction_heatmap_and_downloads(app_env):
    at = start()
    before = audit_count(app_env)
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    predicted = metrics["Predicted class"].split(" ")[0]
    assert predicted in ("glioma", "meningioma", "notumor", "pituitary")
    assert metrics["Calibrated confidence"].endswith("%")
    spec = image_pair_spec(at)  # original + Grad-CAM overlay (with the peak ring), one figure
    assert [t["type"] for t in spec["data"][:2]] == ["image", "image"]
    # zoom/pan kept in step: the heatmap panel's axes follow the original's
    assert spec["layout"]["xaxis2"]["matches"] == "x" and spec["layout"]["yaxis2"]["matches"] == "y"
    bar = spec["data"][2]["marker"]
    assert bar["showscale"] and (bar["cmin"], bar["cmax"]) == (0, 1)  # the heatmap's colour bar
    assert "heatmap peak at x=" in all_text(at) and "px of the 192×192 original" in all_text(at)
    assert len(at.get("plotly_chart")) == 2  # + probabilities for all classes
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Overlay PNG", "Result JSON", "Result CSV", "PDF report"]
    assert audit_count(app_env) == before + 1
    assert any(f"{before + 1} prediction" in c.value for c in at.sidebar.caption)  # sidebar line is current
    # changing only the view (opacity, CAM method, target class) re-explains but does not re-predict or re-log
    at.slider(key="cam_opacity").set_value(0.8).run()
    at.selectbox(key="cam_method").set_value("gradcam++").run()
    at.selectbox(key="cam_target").set_value(2).run()
    assert not at.exception and not at.error
    assert "evidence for **notumor**" in all_text(at)
    assert audit_count(app_env) == before + 1


def test_explain_class_matches_the_heatmap_and_resets_for_a_new_scan(app_env):
    at = start()
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    predicted = at.metric[0].value.split(" ")[0]
    assert at.selectbox(key="cam_target").value == -1  # the "predicted" option, never "Choose an option"
    assert at.selectbox(key="cam_target").options[0] == f"predicted ({predicted})"
    assert f"evidence for **{predicted}**" in all_text(at)
    other = next(i for i, c in enumerate(("glioma", "meningioma", "notumor", "pituitary")) if c != predicted)
    at.selectbox(key="cam_target").set_value(other).run()
    at.file_uploader(key="single_upload").set_value(("other.png", scan_png(seed=5, label=3), "image/png")).run()
    assert not at.exception and not at.error
    new_predicted = at.metric[0].value.split(" ")[0]
    assert at.selectbox(key="cam_target").value == -1  # back to "predicted" for the new scan
    assert f"evidence for **{new_predicted}**" in all_text(at)
    assert image_pair_spec(at)["layout"]["annotations"][1]["text"].endswith(new_predicted)


def test_low_range_16_bit_png_is_shown_as_analysed_with_window_level(app_env):
    """12-bit data in a 16-bit PNG decodes to [0, 0.06]: it must not display almost black."""
    from core.data.synthetic import fake_scan

    twelve_bit = fake_scan(np.random.default_rng(4), 192, 0).astype(np.uint16) * 8  # 0..2040
    twelve_bit[90:92, 90:93] = 4095  # a few hot pixels above the 99.5th percentile the model's window ends at
    buf = io.BytesIO()
    Image.fromarray(twelve_bit).save(buf, format="PNG")
    at = start()
    at.file_uploader(key="single_upload").set_value(("twelve.png", buf.getvalue(), "image/png")).run()
    assert not at.exception and not at.error
    original = shown_image(image_pair_spec(at), 0)
    assert original.mean() > 40 and original.max() == 255  # as analysed, not the raw 16-bit scale (mean ~3)
    centre = next(s for s in at.slider if s.label.startswith("Window centre"))
    width = next(s for s in at.slider if s.label == "Window width")
    assert width.value < 5000  # starts at the analysed window, in the file's 16-bit grey levels
    next(b for b in at.button if b.label == "Full range").click().run()
    assert shown_image(image_pair_spec(at), 0).mean() < original.mean()
    next(b for b in at.button if b.label == "As analysed").click().run()
    assert np.abs(shown_image(image_pair_spec(at), 0).astype(int) - original).max() <= 1
    assert at.metric[0].value  # the prediction is unchanged by the display window


def test_reader_feedback_is_stored_beside_the_prediction(app_env):
    from core.review.audit_trail import AuditTrail
    from ui.feedback import form_key

    at = start()
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    predicted = at.metric[0].value.split(" ")[0]
    audit = AuditTrail(app_env.audit_path)
    logged = audit.recent(1)[0]
    k = form_key("single_feedback", logged["file_sha256"], logged["model_sha256"])
    other = next(c for c in ("glioma", "meningioma", "notumor", "pituitary") if c != predicted)
    at.segmented_control(key=f"{k}_verdict").set_value("disagree").run()
    at.selectbox(key=f"{k}_class").set_value(other).run()
    at.text_area(key=f"{k}_note").input("mass in the left temporal lobe").run()
    at.button(key=f"{k}_save").click().run()
    assert not at.exception and not at.error
    row = audit.feedback_for(logged["file_sha256"], logged["model_sha256"])[0]
    assert (row["prediction_id"], row["verdict"], row["reader_class"], row["predicted"]) == \
        (logged["id"], "disagree", other, predicted)
    assert audit.count() == 1  # feedback is not a new prediction
    assert "feedback_verdict" in audit.export_csv().splitlines()[0]


def test_uncertain_state_follows_sidebar_threshold(app_env):
    at = start()
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    at.sidebar.slider(key="uncertain_below").set_value(1.0).run()
    assert any("Uncertain." in w.value for w in at.warning)
    assert {m.label: m.value for m in at.metric}["Status"] == "Uncertain (< 100%)"
    at.sidebar.slider(key="uncertain_below").set_value(0.2).run()
    assert {m.label: m.value for m in at.metric}["Status"] == "Confident (≥ 20%)"  # the yardstick is shown
    at.sidebar.slider(key="uncertain_below").set_value(0.0).run()
    assert not any("Uncertain." in w.value for w in at.warning)


def test_non_mri_picture_headline_is_outside_intended_use_not_a_class(app_env):
    at = start()
    at.file_uploader(key="single_upload").set_value(("holiday.png", photo_png(), "image/png")).run()
    assert not at.exception
    headline = at.error[0].value
    assert headline.startswith("### Outside intended use") and "Colour image" in headline
    assert "MRI slices are greyscale. The model" in headline  # the reason ends with a full stop
    assert not at.metric and not at.get("plotly_chart")  # no class, probabilities or heatmap
    assert len(at.image) == 1 and "shown in colour" in all_text(at)
    assert [b.label for b in at.get("download_button")] == ["Result JSON", "Result CSV", "PDF report"]
    at.toggle[0].set_value(True).run()  # "show anyway": the output, marked as not a reading
    assert not at.exception
    assert "Model output, not a reading" in all_text(at)
    assert image_pair_spec(at) and not at.metric
    assert len(at.error) == 1  # the headline stays


@pytest.mark.parametrize("name,data,expected", [
    ("broken.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "broken.jpg"),
    ("notes.png", b"just some text, not an image at all\n" * 10, "text file"),
    ("empty.png", b"", "empty"),
])
def test_bad_upload_shows_clear_error_not_traceback(app_env, name, data, expected):
    at = start()
    at.file_uploader(key="single_upload").set_value((name, data, "image/png")).run()
    assert not at.exception
    assert len(at.error) == 1 and expected in at.error[0].value
    assert "cannot be analysed" in at.error[0].value
    assert not at.image


def test_dicom_shows_acquisition_tags_and_window_but_never_patient_tags(app_env):
    at = start()
    at.file_uploader(key="single_upload").set_value(("slice.dcm", dicom_bytes(), "application/dicom")).run()
    assert not at.exception and not at.error
    text = all_text(at)
    for shown in ("Modality", "MR", "SeriesDescription", "T1 AX POST", "SliceThickness", "5 mm", "PixelSpacing",
                  "Window centre", "2000", "Window width", "4000"):
        assert shown in text, shown
    for hidden in ("Doe", "Jane", "SECRET-ID-123", "General Hospital"):
        assert hidden not in text, hidden
    csv_download = next(b for b in at.get("download_button") if b.label == "Result CSV")
    assert csv_download  # the record is built from core's non-identifying tags only (see test_app_units)


def test_dicom_window_level_changes_the_display_not_the_prediction(app_env):
    at = start()
    at.file_uploader(key="single_upload").set_value(("slice.dcm", dicom_bytes(), "application/dicom")).run()
    before = (at.metric[0].value, at.metric[1].value)
    centre = next(s for s in at.slider if s.label.startswith("Window centre"))
    width = next(s for s in at.slider if s.label == "Window width")
    analysed = (centre.value, width.value)  # starts at what the model saw: inside the file's window
    assert analysed != (2000.0, 4000.0) and 0 < analysed[1] < 4000
    centre.set_value(800.0).run()
    at.slider(key=width.key).set_value(300.0).run()
    assert not at.exception and not at.error
    assert "window 800 / 300" in all_text(at)
    assert (at.metric[0].value, at.metric[1].value) == before
    next(b for b in at.button if b.label == "File window").click().run()
    assert "window 2000 / 4000" in all_text(at)
    next(b for b in at.button if b.label == "As analysed").click().run()
    assert f"window {analysed[0]:g} / {analysed[1]:g}" in all_text(at)


def test_pick_file_from_last_batch(app_env):
    folder = make_labelled_folder(app_env.root / "set", per_class=1)
    at = start()
    at.switch_page("pages/2_Batch_review.py").run()
    at.text_input(key="batch_folder").input(str(folder)).run()
    at.button(key="batch_start").click().run()
    assert at.session_state["batch_job"].wait(TIMEOUT)  # the review runs in the background
    at.switch_page("pages/1_Single_scan.py").run()
    at.segmented_control(key="single_source").set_value("From the last batch review").run()
    at.selectbox(key="single_batch_file").set_value("notumor/notumor_0.png").run()
    assert not at.exception and not at.error
    assert "notumor/notumor_0.png" in all_text(at)
    assert image_pair_spec(at)
    # previous / next through the batch's files (buttons with the arrow keys as shortcuts)
    assert "keys ← →" in all_text(at)
    at.button(key="single_next").click().run()
    assert at.selectbox(key="single_batch_file").value != "notumor/notumor_0.png" and not at.exception
    at.button(key="single_prev").click().run()
    assert at.selectbox(key="single_batch_file").value == "notumor/notumor_0.png"
    at.selectbox(key="single_batch_file").set_value("glioma/corrupt.jpg").run()
    assert not at.exception and any("corrupt.jpg" in e.value for e in at.error)


def test_model_is_loaded_once_per_process(app_env):
    a, b = start(), start()
    assert a.session_state["_app_ctx"].predictor is b.session_state["_app_ctx"].predictor


def test_tampered_weights_show_refusal_message(app_env, tmp_path, monkeypatch):
    bad = tmp_path / "tampered"
    shutil.copytree(app_env.weights, bad)
    with open(bad / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00tamper!")
    monkeypatch.setenv("MRI_WEIGHTS_DIR", str(bad))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert len(at.main.error) == 1
    assert "No model loaded" in at.sidebar.error[0].value
    msg = at.main.error[0].value
    assert "could not be loaded" in msg and "integrity check" in msg and "refusing to load" in msg
    assert not at.file_uploader  # the page stops: nothing to predict with
    assert any("Research use only" in w.value for w in at.sidebar.warning)
    # fixing the folder works on the next rerun: failures are not cached
    (bad / "model.safetensors").write_bytes((app_env.weights / "model.safetensors").read_bytes())
    at.run()
    assert not at.error and at.title[0].value == "Single scan"


def test_missing_weights_folder_shows_message(app_env, tmp_path, monkeypatch):
    monkeypatch.setenv("MRI_WEIGHTS_DIR", str(tmp_path / "nowhere"))
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    assert not at.exception
    assert "model card not found" in at.main.error[0].value


def test_oversize_upload_is_refused_with_the_limit(app_env, monkeypatch):
    import ui.state

    monkeypatch.setattr(ui.state, "upload_limit_mb", lambda: 1)
    at = start()
    assert "up to **1 MB**" in all_text(at)
    at.file_uploader(key="single_upload").set_value(("huge.png", b"\x89PNG" + b"\0" * (2 * 1024 * 1024), "image/png"))
    at.run()
    assert not at.exception
    assert any("upload limit is 1 MB" in e.value for e in at.error)


def test_no_tumour_result_warns_it_is_not_a_negative_read(tiny_bundle_dir, tmp_path, monkeypatch):
    make_app_env(tmp_path, always_no_tumour_bundle(tiny_bundle_dir, tmp_path / "model"), monkeypatch)
    at = start()
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["Predicted class"] == "notumor"
    caution = next(str(i.value) for i in at.info if "not a negative read" in str(i.value))
    # The shipped model's own Testing figures (MISSED_TESTING), at the sidebar threshold.
    assert "read as no tumour: 2 of 10" in caution and "1 of them at or above the 60%" in caution
    assert "up to 97.0%" in caution and "given a tumour class: 1 of 3" in caution
    at.sidebar.slider(key="uncertain_below").set_value(0.4).run()
    assert "2 of them at or above the 40%" in next(str(i.value) for i in at.info if "negative read" in str(i.value))
    # Figures measured for another model are not quoted; the caution itself stays.
    metrics_file = tmp_path / "model" / "metrics.json"
    metrics_file.write_text(metrics_file.read_text().replace('"version": "', '"version": "other-'))
    at.run()
    caution = next(str(i.value) for i in at.info if "not a negative read" in str(i.value))
    assert "read the whole slice" in caution and "Testing split" not in caution
