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


def _viewer_data(at: AppTest) -> dict:
    """The data the page last sent the browser-side slice viewer (ui.slice_stack)."""
    el = at.get("bidi_component")
    assert el, [type(e).__name__ for e in at.main]
    return json.loads(el[-1].proto.json)


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
    goto = next(w for w in at.number_input if (w.key or "").startswith("study_goto_"))
    start = int(next(t for t in all_text(at).split("\n") if t.startswith("Slice ")).split()[1])
    moved = 3 if start != 3 else 4
    goto.set_value(moved).run()
    assert not at.exception, at.exception
    assert f"Slice {moved} of 14 (calibrated)" in all_text(at)
    assert at.number_input(key=goto.key).value is None  # the box empties itself once it has jumped
    # The viewer in the browser is sent the shown slice, its heatmap and a caption per slice, and told to jump.
    data = _viewer_data(at)
    assert data["n"] == 14 and data["k"] == moved - 1 and data["goto"]["k"] == moved - 1
    assert str(moved - 1) in data["greys"] and data["greys"][str(moved - 1)].startswith("data:image/png;base64,")
    assert data["blends"][str(moved - 1)]["src"].startswith("data:image/jpeg;base64,")
    assert len(data["captions"]) == 14 and data["pending"] in (True, False)
    # The viewer reports what it shows and holds: the page follows it and sends the slices it lacks.
    view = {"k": 9, "grey_id": data["grey_id"], "blend_id": data["blend_id"], "greys": "1" * 14,
            "blends": "0" * 14, "goto": data["goto"]["nonce"], "tick": 5}
    at.session_state[goto.key.replace("study_goto_", "study_stack_")] = {"view": view}
    at.run()
    assert not at.exception, at.exception
    assert "Slice 10 of 14 (calibrated)" in all_text(at)
    data = _viewer_data(at)
    assert data["greys"] == {} and "9" in data["blends"]  # nothing it holds is sent again
    # The viewer keeps each heatmap and computes the neighbours of the shown slice ahead (a slice change then
    # only draws): after a short wait the next slice's map is there before the reader steps to it.
    cams = next(iter(at.session_state["study_slice_cams"].values()))
    assert cams.wait(timeout=120) and cams.cached(9)
    assert all(cams.cached(j) for j in cams.neighbours(9, around=1))
    # The strip chart is drawn.
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    strip = next(s for s in specs if "tumour (1 − no tumour)" in [t.get("name") for t in s["data"]])
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
