"""AppTest: the Study review page (several series in one upload, verdicts, slice navigation, no patient tag)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, all_text, make_app_env
from tests.study_support import SECRETS, dicom_series, display_slices, nifti_bytes, synthetic_brain, zip_bytes

TIMEOUT = 180
PAGE = "pages/4_Study_review.py"


@pytest.fixture
def app_env(tiny_bundle_dir, tmp_path, monkeypatch):
    return make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)


def _upload():
    vol = synthetic_brain((64, 64, 14))
    slices = display_slices(vol)
    good = dicom_series(slices, uid="1.2.3.1", number=4, desc="AX T2")
    broken = [f for i, f in enumerate(dicom_series(slices, uid="1.2.3.2", number=5, desc="AX T1",
                                                   shuffle=False)) if i != 5]
    files = [("study.zip", zip_bytes([(f"a/{n}", d) for n, d in good] + [(f"b/{n}", d) for n, d in broken]),
              "application/zip"),
             ("head.nii.gz", nifti_bytes(vol, np.diag([1.0, 1.0, 2.0, 1.0]), ("L", "P", "S")), "application/gzip")]
    return files


def _start() -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def test_study_page_lists_series_with_verdicts_and_moves_between_slices(app_env):
    from core.review.audit_trail import AuditTrail

    at = _start()
    assert at.title[0].value == "Study review"
    assert "Research use only" in all_text(at)
    at.file_uploader(key="study_upload").set_value(_upload()).run()
    assert not at.exception, at.exception
    text = all_text(at)
    # Three series: two read (each with a verdict), one broken with its reason, and the page still works.
    table = at.dataframe[0].value
    assert len(table) == 3
    assert (table["verdict"] == "cannot be read").sum() == 1
    assert all(v.startswith(("Tumour", "No tumour", "Outside")) for v in table["verdict"] if v != "cannot be read")
    assert "missing slice" in text and "Series 5" in text
    assert "Series verdict" in text and "Rule:" in text and "contiguous slices" in text
    assert "The rule was not chosen for this model" in text  # the tiny test model is not the one it was chosen on
    assert at.selectbox(key="study_series").options and len(at.selectbox(key="study_series").options) == 2
    slider = next(w for w in at.slider if (w.key or "").startswith("study_slice_"))
    start = slider.value
    at.button(key="study_next" if start < 14 else "study_prev").click().run()
    assert not at.exception, at.exception
    moved = at.slider(key=slider.key).value
    assert moved != start
    assert f"Slice {moved} of 14" in all_text(at)
    # The viewer keeps each heatmap and computes the neighbours of the shown slice ahead (a slice change then
    # only draws): after a short wait the next slice's map is there before the reader steps to it.
    cams = next(iter(at.session_state["study_slice_cams"].values()))
    assert cams.wait(timeout=120) and cams.cached(moved - 1)
    assert all(cams.cached(j) for j in cams.neighbours(moved - 1, around=1))
    # The image / heatmap pair of the shown slice and the strip chart are drawn.
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    assert any(s["data"][0]["type"] == "image" for s in specs)
    strip = next(s for s in specs if s["data"][0]["type"] == "scatter")
    assert "tumour (1 − no tumour)" in [t.get("name") for t in strip["data"]]
    assert strip["layout"]["xaxis"]["range"] == [0.5, 14.5]
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Series result JSON", "Per-slice CSV", "PDF report"]
    # Review the other series too: each gets its own verdict in the table.
    at.selectbox(key="study_series").set_value(1).run()
    assert not at.exception, at.exception
    verdicts = at.dataframe[0].value["verdict"].tolist()
    assert sum(v != "cannot be read" for v in verdicts) == 2
    assert "AX T2 · DICOM series" in all_text(at)
    # No patient tag anywhere: page text, tables, the audit trail.
    text = all_text(at)
    assert "AX T2" in text
    assert not any(s in text for s in SECRETS)
    audit = AuditTrail(app_env.audit_path)
    assert audit.count() == 2
    assert not any(s in audit.export_csv() for s in SECRETS)


def test_downloads_carry_no_patient_tag(tiny_predictor):
    from core.io.read_series import read_series
    from core.inference.study import SeriesRule, review_series
    from ui.study_view import record_json, series_record, slices_csv

    s = read_series(dicom_series(display_slices(synthetic_brain((64, 64, 10)))))[0].series
    review = review_series(tiny_predictor, s, SeriesRule(2, 0.5))
    info = {"model_name": "m", "model_version": "1", "model_sha256": "0" * 64}
    blob = record_json(series_record(s, review, info)).decode() + slices_csv(review, s, info).decode()
    assert "AX FLAIR" in blob and "verdict" in blob
    assert not any(x in blob for x in SECRETS)


def test_study_page_waits_for_upload_and_reports_unreadable_files(app_env):
    at = _start()
    assert any("Waiting for a series" in i.value for i in at.info)
    at.file_uploader(key="study_upload").set_value([("x.dcm", b"not dicom at all", "application/dicom")]).run()
    assert not at.exception, at.exception
    assert any("cannot be reviewed" in e.value for e in at.error)
