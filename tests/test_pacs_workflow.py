"""core.pacs.workflow (retrieve -> review -> build -> send) against a REAL Orthanc, the Encapsulated PDF writer and
the audit trail's PACS events (including a trail written before they existed)."""
from __future__ import annotations

import sqlite3

import numpy as np
import pydicom
import pytest

from core.pacs import workflow as wf
from core.pacs.client import PacsConfig, PacsError, search_series
from core.report.sr import ModelIdentity, build_encapsulated_pdf, read_sr
from tests.orthanc_support import OrthancServer, missing_reason, mr_series, to_bytes

needs_orthanc = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))
MODEL = ModelIdentity("tiny", "0.1", "ab" * 32)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if missing_reason():
        pytest.skip(missing_reason())
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-wf")).start()
    yield server
    server.stop()


def _cfg(server) -> PacsConfig:
    return PacsConfig(url=server.url, user=server.user, password=server.password, connect_timeout=2,
                      read_timeout=10, retries=1, retry_backoff=0.1)


@needs_orthanc
def test_retrieve_maps_slices_to_instances_and_leaves_no_files(orthanc, tiny_predictor, tiny_explainer, tmp_path):
    series = mr_series(n_slices=10, size=128, patient_id="WF-1")
    for ds in reversed(series):  # uploaded out of order: the slice order comes from the geometry
        orthanc.upload(to_bytes(ds))
    got = wf.retrieve_for_review(_cfg(orthanc), series[0].StudyInstanceUID, series[0].SeriesInstanceUID, tmp_path)
    assert got.slice_sops == [str(ds.SOPInstanceUID) for ds in series]  # inferior (z = 0) first
    assert [str(h.SOPInstanceUID) for h in got.headers] == got.slice_sops
    assert not list(tmp_path.iterdir())  # the retrieved files are gone once the series is in memory
    assert got.key == wf.study_key(series[0].StudyInstanceUID) and len(got.key) == 64
    for h in got.headers:  # the filing headers carry no more than the filing attributes
        assert "PatientBirthDate" not in h or not h.PatientBirthDate
        assert "InstitutionName" not in h and "OperatorsName" not in h

    review = wf.review(tiny_predictor, got)
    assert review.n_slices == 10
    assert not review.series_ood  # synthetic heads are inside the test model's intended use
    overlays = wf.overlays(tiny_explainer, got, review)
    assert 1 <= len(overlays) <= wf.MAX_KEY_SLICES and all(rgb.dtype == np.uint8 for _, rgb in overlays)
    outputs = wf.build_outputs(got, review, MODEL, overlays, pdf=b"%PDF-1.4\n%%EOF\n")
    stored = wf.send(_cfg(orthanc), outputs)
    assert sorted(stored) == sorted(r["SOP Instance UID"] for r in outputs.rows)
    kinds = {s.modality for s in search_series(_cfg(orthanc), series[0].StudyInstanceUID)}
    assert kinds == {"MR", "SR", "OT", "DOC"}
    result = read_sr(outputs.datasets[0])
    assert result.verdict == bool(review.tumour) and sorted(result.evidence_instances) == sorted(got.slice_sops)
    if review.tumour:
        positive = {got.slice_sops[k] for k in np.flatnonzero(review.positive)}
        assert set(result.source_instances) == positive


def test_outside_intended_use_is_not_sent():
    class Review:
        series_ood, tumour, tumour_type = True, False, None

    with pytest.raises(wf.ReviewError, match="no result is sent"):
        wf.finding(Review(), None)


@needs_orthanc
def test_stopped_pacs_during_retrieve_is_a_clear_error(tmp_path):
    server = OrthancServer(tmp_path / "o").start()
    series = mr_series(n_slices=3, patient_id="WF-STOP")
    for ds in series:
        server.upload(to_bytes(ds))
    cfg = _cfg(server)
    server.stop()
    with pytest.raises(PacsError, match="cannot reach the PACS"):
        wf.retrieve_for_review(cfg, series[0].StudyInstanceUID, series[0].SeriesInstanceUID, tmp_path / "w")


def test_encapsulated_pdf_carries_the_filing_attributes_only():
    src = mr_series(n_slices=1)[0]
    ds = build_encapsulated_pdf(b"%PDF-1.4 x", src)
    back = pydicom.dcmread(__import__("io").BytesIO(to_bytes(ds)))
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and back.Modality == "DOC"
    assert back.StudyInstanceUID == src.StudyInstanceUID and back.PatientID == src.PatientID
    assert back.EncapsulatedDocument.rstrip(b"\0") == b"%PDF-1.4 x"
    assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    for kw in ("PatientAge", "PatientWeight", "OtherPatientIDs", "InstitutionName", "OperatorsName"):
        assert kw not in back
    assert not back.PatientBirthDate
    with pytest.raises(ValueError, match="not a PDF"):
        build_encapsulated_pdf(b"hello", src)


def test_audit_trail_pacs_events_and_an_old_trail_still_opens(tmp_path):
    from core.review.audit_trail import AuditTrail

    old = tmp_path / "old.sqlite3"
    con = sqlite3.connect(old)  # a trail from before model_version, feedback and PACS events
    con.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, source TEXT "
                "NOT NULL, file_sha256 TEXT NOT NULL, model_sha256 TEXT NOT NULL, predicted TEXT, confidence REAL, "
                "probabilities TEXT, ood INTEGER, uncertain INTEGER, cam_method TEXT, error TEXT)")
    con.execute("INSERT INTO predictions (timestamp, source, file_sha256, model_sha256) VALUES ('t', 's', 'f', 'm')")
    con.commit()
    con.close()
    audit = AuditTrail(old)
    assert audit.count() == 1 and audit.pacs_events() == []
    audit.record_pacs_event(user="reader", action="query", detail={"filters": ["patient_id"], "hits": 1})
    audit.record_pacs_event(user="reader", action="review", study_uid="1.2.3", series_uid="1.2.3.4",
                            study_key=wf.study_key("1.2.3"))
    audit.record_pacs_event(user="reader", action="send", study_uid="1.2.3", sop_uids=["1.2.3.9", "1.2.3.10"])
    events = audit.pacs_events()
    assert [e["action"] for e in events] == ["send", "review", "query"] and {e["user"] for e in events} == {"reader"}
    assert events[0]["sop_uids"] == ["1.2.3.9", "1.2.3.10"]
    assert audit.pacs_status(["1.2.3", "9.9"]) == {"1.2.3": "sent"}
    with pytest.raises(ValueError, match="signed-in user"):
        audit.record_pacs_event(user=" ", action="query")
    with pytest.raises(ValueError, match="not a DICOM UID"):
        audit.record_pacs_event(user="reader", action="send", study_uid="Doe^Jane")
    with pytest.raises(ValueError, match="action"):
        audit.record_pacs_event(user="reader", action="delete")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        with sqlite3.connect(old) as c:
            c.execute("DELETE FROM pacs_events")


@needs_orthanc
def test_debug_logs_of_a_search_hold_no_patient_id(orthanc, caplog):
    import logging

    from core.pacs.client import search_studies

    caplog.set_level(logging.DEBUG)  # the HTTP stack logs every URL at DEBUG
    search_studies(_cfg(orthanc), patient_id="LOG-SECRET-42", modality="MR")
    assert "/dicom-web/studies" in caplog.text and "LOG-SECRET-42" not in caplog.text
