"""Dashboard helpers without Streamlit: config, charts, batch job, result records, image helpers."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from app_support import CLASSES, make_labelled_folder


# -- app config -------------------------------------------------------------------------------------
def test_config_defaults_and_env(tmp_path, monkeypatch):
    from app_config import load_config

    monkeypatch.chdir(tmp_path)
    cfg = load_config(env={}, config_file=tmp_path / "absent.toml")
    assert cfg.allowed_roots == (tmp_path,)  # the current directory by default
    assert cfg.weights_dir.name == "weights" and cfg.device == "auto"
    cfg = load_config(env={"MRI_ALLOWED_ROOTS": f"/data/a:{tmp_path}", "MRI_WEIGHTS_DIR": "/m",
                           "MRI_APP_DATA": "/d", "MRI_DEVICE": "CPU", "MRI_UNCERTAIN_BELOW": "0.7"})
    assert cfg.allowed_roots == (Path("/data/a"), tmp_path)
    assert cfg.weights_dir == Path("/m") and cfg.audit_path == Path("/d/audit.sqlite3")
    assert cfg.device == "cpu" and cfg.uncertain_below == 0.7
    assert cfg.max_batch_jobs == 2  # background batch reviews at once, whole server
    assert load_config(env={"MRI_MAX_BATCH_JOBS": "1"}).max_batch_jobs == 1


def test_config_file_and_errors(tmp_path):
    from app_config import ConfigError, load_config

    f = tmp_path / "mri_app.toml"
    f.write_text('allowed_roots = ["scans", "/abs/other"]\ngallery_page_size = 12\ndataset_root = "ds"\n')
    cfg = load_config(env={}, config_file=f)
    assert cfg.allowed_roots == (tmp_path / "scans", Path("/abs/other"))  # relative to the config file
    assert cfg.gallery_page_size == 12 and cfg.dataset_root == tmp_path / "ds"
    assert cfg.dataset_candidates()[0] == tmp_path / "ds"
    f.write_text("uncertain_below = 3\n")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        load_config(env={}, config_file=f)
    f.write_text("max_batch_jobs = 0\n")
    with pytest.raises(ConfigError, match="max_batch_jobs"):
        load_config(env={}, config_file=f)
    f.write_text("not toml [")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(env={}, config_file=f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(env={"MRI_APP_CONFIG": str(tmp_path / "missing.toml")})


def test_streamlit_server_config_is_deliberate():
    import tomllib

    from app_support import REPO

    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["address"] == "localhost"
    assert cfg["server"]["enableXsrfProtection"] is True and cfg["server"]["headless"] is True
    assert 1 <= cfg["server"]["maxUploadSize"] <= 200
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["client"]["showErrorDetails"] in ("none", "type", False)


# -- charts ---------------------------------------------------------------------------------------------
def test_chart_builders_return_figures(tiny_bundle_dir):
    from ui import charts

    m = json.loads((tiny_bundle_dir / "metrics.json").read_text())["sets"]["synthetic_test"]
    names = list(CLASSES)
    fig = charts.confusion_matrix_fig(m["confusion_matrix"], names, normalise=True)
    z = np.asarray(fig.data[0].z)
    rows = np.asarray(m["confusion_matrix"]).sum(1) > 0
    assert np.allclose(z[rows].sum(1), 1.0)
    counts = charts.confusion_matrix_fig(m["confusion_matrix"], names)
    assert np.asarray(counts.data[0].z).sum() == m["n"]
    roc = charts.roc_fig(m["roc_curves"], m["roc_auc"], names)
    assert len(roc.data) == 1 + len(m["roc_curves"]) and "AUC" in roc.data[1].name
    rel = charts.reliability_fig(m["calibration"], {"calibrated": m["ece"], "uncalibrated": m["ece_uncalibrated"]})
    assert [t.name.split(" —")[0] for t in rel.data] == ["perfect calibration", "before (T = 1)",
                                                        "after temperature scaling"]
    bar = charts.probability_bar({"a": 0.7, "b": 0.3}, "a", 0.6)
    assert isinstance(bar, go.Figure) and list(bar.data[0].x) == [0.7, 0.3]
    table = charts.per_class_table(m["per_class"], names)
    assert list(table.columns) == ["precision", "recall", "recall 95% CI", "f1", "support"] and table["support"].sum() == m["n"]


def test_batch_charts_count_errors():
    from ui import charts

    df = pd.DataFrame({"predicted": ["glioma", "glioma", "notumor", ""], "confidence": [0.9, 0.5, 0.7, np.nan],
                       "error": ["", "", "", "bad file"]})
    counts = charts.class_counts_fig(df, list(CLASSES))
    assert list(counts.data[0].x) == list(CLASSES) + ["unreadable"]
    assert list(counts.data[0].y) == [2, 0, 1, 0, 1]
    hist = charts.confidence_histogram(df, list(CLASSES), 0.6)
    assert sum(len(t.x) for t in hist.data) == 3


# -- batch job ---------------------------------------------------------------------------------------------
def test_batch_job_rows_frame_filters(tiny_predictor, tmp_path):
    from ui.batch_job import BatchJob, display_frame, filter_frame, with_threshold

    folder = make_labelled_folder(tmp_path / "set", per_class=2)
    job = BatchJob.start(tiny_predictor, folder, label="set", audit=None, uncertain_below=0.5, chunk_size=3)
    assert job.wait(120)  # the review runs in its own thread
    assert job.status == "done" and job.done == job.total == 9 and job.n_errors == 1 and not job.partial
    assert job.fraction == 1.0 and job.eta_seconds == 0.0 and "9 / 9 files" in job.progress_text()
    df = job.frame()
    assert df["confidence"].dtype == float and df["ood"].dtype == bool
    assert df["correct"].dtype == "boolean" and df["correct"].isna().sum() == 1
    assert job.labelled
    assert len(filter_frame(df, errors_only=True)) == 1
    assert len(filter_frame(df, classes=["notumor"])) == (df["predicted"] == "notumor").sum()
    assert len(filter_frame(df, confidence=(0.99, 1.0))) == (df["confidence"] >= 0.99).sum()
    assert filter_frame(df, wrong_only=True)["correct"].eq(False).all()
    strict = with_threshold(df, 1.01)
    assert strict["uncertain"].sum() == 8  # every readable row; the error row is never 'uncertain'
    assert len(filter_frame(strict, flagged_only=True)) >= 8
    assert "true_label" in display_frame(df, list(CLASSES), True).columns
    assert "true_label" not in display_frame(df, list(CLASSES), False).columns
    shown = display_frame(df, list(CLASSES), True)
    error_row = shown[df["error"] != ""].iloc[0]
    assert [error_row[f"p_{c}"] for c in CLASSES] == ["–"] * len(CLASSES)  # not "None"
    assert strict["uncertain_below"].eq(1.01).all() and df["model_sha256"].eq(tiny_predictor.bundle.sha256).all()


def test_batch_job_worker_thread_rows_stop_and_uploads(tmp_path):
    """The worker appends rows while readers copy them; Stop ends it after the row in flight with a final
    count; the elapsed time is the worker's wall time; a discarded job's upload folder is deleted when the
    worker ends, even if it is still running when discarded."""
    from ui.batch_job import CANCELLED, BatchJob, active_jobs

    gate, released = threading.Event(), threading.Event()

    def rows():
        for i in range(1000):
            if i == 50:
                gate.set()  # the reader below has rows to read while more arrive
            if i == 200:
                released.wait(30)
            yield {"path": f"f{i}.png", "error": ""}

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    job = BatchJob(root=tmp_path, label="t", class_names=list(CLASSES), model_sha256="x", total=1000,
                   uncertain_below=0.6, upload_dir=uploads)
    before = active_jobs()
    job.launch(rows(), max_jobs=before + 1)
    assert active_jobs() == before + 1
    assert gate.wait(30)
    for _ in range(20):  # copies are consistent while the worker appends
        snap = job.rows_snapshot()
        assert [r["path"] for r in snap] == [f"f{i}.png" for i in range(len(snap))]
    time.sleep(0.05)
    assert job.running and job.elapsed_seconds >= 0.05 and job.done == 200  # waiting before row 200
    job.discard(wait=0.2)  # still blocked: the worker deletes the uploads when it ends
    assert job.stopping and uploads.is_dir()
    released.set()
    assert job.wait(30) and job.status == CANCELLED and job.done == 201  # the row in flight is kept
    assert not uploads.exists() and active_jobs() == before
    elapsed = job.elapsed_seconds
    time.sleep(0.05)
    assert job.elapsed_seconds == elapsed  # the clock stops with the worker

def test_a_stop_before_the_first_row_is_a_stopped_review_not_a_finished_one(tmp_path):
    """An engine that honours Stop before yielding anything (a Ray cluster still starting its actors) ends the
    rows without one; the job says "stopped", so the page shows "Stopped after 0 of N", not "Reviewed 0"."""
    from ui.batch_job import CANCELLED, BatchJob

    started, stopped = threading.Event(), threading.Event()

    def rows():
        started.set()
        stopped.wait(30)  # the engine sees the Stop before its first result and returns
        yield from ()

    job = BatchJob(root=tmp_path, label="t", class_names=list(CLASSES), model_sha256="x", total=10,
                   uncertain_below=0.6)
    job.launch(rows())
    assert started.wait(30)
    job.cancel()
    stopped.set()
    assert job.wait(30) and job.status == CANCELLED and job.done == 0



def test_format_confidence_never_rounds_up_to_the_threshold():
    from ui.charts import confidence_histogram, format_confidence

    assert format_confidence(0.595) == "59.5%" and format_confidence(0.5999) == "59.9%"
    assert format_confidence(0.6) == "60.0%" and format_confidence(1.0) == "100.0%"
    assert format_confidence(None) == format_confidence(float("nan")) == "–"
    fig = confidence_histogram(pd.DataFrame({"predicted": ["glioma"], "confidence": [0.5]}), list(CLASSES), 0.6)
    assert "uncertain below 60.0%" in {a.text for a in fig.layout.annotations}


def test_save_uploads_sanitises_names(tmp_path):
    from ui.batch_job import save_uploads

    files = [SimpleNamespace(name=n, getvalue=lambda n=n: n.encode()) for n in
             ("../../etc/passwd.png", "a b.png", "a b.png", "ok.dcm", "")]
    folder = save_uploads(files, parent=tmp_path)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["a_b.png", "a_b_1.png", "ok.dcm", "passwd.png", "upload"]
    assert all(p.parent == folder for p in folder.iterdir())


# -- single-scan records + images ---------------------------------------------------------------------
def test_result_record_json_csv(tiny_predictor, tiny_explainer, scan_u8):
    from ui.results import analyse_bytes, explain, record_csv, record_json, result_record
    from ui.imaging import png_bytes

    data = png_bytes(scan_u8)
    a = analyse_bytes(tiny_predictor, data, "scan.png")
    cam = explain(tiny_explainer, a, "gradcam", 1)
    assert cam.target == tiny_predictor.class_names[1] and explain(tiny_explainer, a, "gradcam", 1) is cam
    b = tiny_predictor.bundle
    rec = result_record(a.prediction, file_name="scan.png", file_sha256=a.file_sha256, model_name=b.name,
                        model_version=b.version, model_sha256=b.sha256, uncertain_below=0.6, cam_method="gradcam",
                        cam_target=cam.target, cam_peak=cam.peak, dicom_tags={"Modality": "MR"})
    loaded = json.loads(record_json(rec))
    assert loaded["model_version"] == b.version and loaded["model_sha256"] == b.sha256
    assert len(loaded["file_sha256"]) == 64 and abs(sum(loaded["probabilities"].values()) - 1) < 1e-3
    header, row = record_csv(rec).strip().splitlines()
    assert "p_glioma" in header and "dicom_Modality" in header and "model_version" in header
    assert b.sha256 in row


def test_dicom_analysis_never_holds_patient_tags(tiny_predictor):
    from app_support import dicom_bytes
    from ui.results import analyse_bytes

    a = analyse_bytes(tiny_predictor, dicom_bytes(), "slice.dcm")
    assert a.is_dicom and a.decoded.dicom_tags["Modality"] == "MR"
    assert not {"PatientName", "PatientID", "InstitutionName"} & set(a.decoded.dicom_tags)
    assert a.window == {"Window centre": "2000", "Window width": "4000",
                        "Source": "window stored in the file (first one applied)"}


def test_image_helpers():
    from ui.imaging import draw_peak_marker, png_bytes, thumbnail, to_uint8

    img = np.zeros((100, 200, 3), np.uint8)
    marked = draw_peak_marker(img, (0.5, 0.5))
    assert marked.shape == img.shape and marked[50].max() >= 200 and img.max() == 0
    assert thumbnail(np.zeros((400, 800), np.uint8), 200).shape == (100, 200)
    assert thumbnail(np.zeros((50, 50), np.uint8), 200).shape == (50, 50)
    assert to_uint8(np.array([[0.0, 1.0, np.nan]])).tolist() == [[0, 255, 0]]
    assert png_bytes(np.zeros((4, 4), np.uint8)).startswith(b"\x89PNG")


def test_list_subfolders_stays_inside_roots(tmp_path):
    from ui.batch_job import list_subfolders

    root = tmp_path / "root"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (tmp_path / "outside").mkdir()
    (root / "escape").symlink_to(tmp_path / "outside")
    found = list_subfolders([root], depth=2)
    assert found == [str(root), str(root / "a"), str(root / "a" / "b")]
    assert len(list_subfolders([root], depth=5, limit=2)) == 2


def test_config_precision(tmp_path):
    from app_config import load_config

    assert load_config(env={}, config_file=tmp_path / "none.toml").precision == "auto"
    assert load_config(env={"MRI_PRECISION": "AUTO"}, config_file=tmp_path / "none.toml").precision == "auto"


def test_overlay_png_is_labelled_and_named_after_class_and_method():
    import cv2

    from ui.imaging import colour_lut, colour_scale, labelled_overlay
    from ui.results import overlay_file_name

    blend = np.full((120, 100, 3), 90, np.uint8)
    out = labelled_overlay(blend, ["Grad-CAM: evidence for glioma (p = 91.0%)", "RESEARCH USE ONLY"],
                           cv2.COLORMAP_JET, "1 = this map's peak")
    assert out.shape[1] >= 640 and out.shape[0] > 120 + 2 * 22  # a footer with the bar and the text lines
    x0 = (out.shape[1] - 100) // 2
    assert (out[:120, x0:x0 + 100] == blend).all()  # the overlay itself is untouched
    footer = out[120:]
    assert (footer.std(axis=2) > 30).any() and (footer < 100).any()  # a colour bar and dark text on white
    assert overlay_file_name("Te-gl_0010", "glioma", "gradcam++") == "Te-gl_0010_glioma_gradcam--.png"
    assert overlay_file_name("x", "other_lesion", "layercam") == "x_other_lesion_layercam.png"
    scale = colour_scale(cv2.COLORMAP_JET)
    assert scale[0][0] == 0.0 and scale[-1][0] == 1.0
    assert scale[-1][1] == "rgb({},{},{})".format(*colour_lut(cv2.COLORMAP_JET)[255])
