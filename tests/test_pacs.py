"""core.pacs.client and core.report.sr against a REAL Orthanc (Debian packages), started by the tests.

Skipped, with the reason, when Orthanc or its DICOMweb plugin is not installed (``.ci/run`` installs both).
"""
from __future__ import annotations

import base64
import logging
import socket
import threading
import time

import numpy as np
import pydicom
import pytest

from core.model.card import ModelCard
from core.pacs.client import PacsConfig, PacsError, retrieve_series, search_series, search_studies, store
from core.report.sr import NOTICE, ModelIdentity, ReportedResult, SeriesFinding, build_overlay_sc, build_sr, read_sr
from tests.orthanc_support import CuttingProxy, OrthancServer, missing_reason, mr_series, to_bytes

# Tests that need the real server skip with the reason; the others (config, stall) always run.
needs_orthanc = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))

MODEL = ModelIdentity.from_card(ModelCard.from_dict({"name": "brain-mri-slice-classifier", "version": "2.0.0",
                                                     "weights": {"sha256": "f66abe6a" + "0" * 56},
                                                     "inference": {"tta": "hflip"}}))


def _config(server: OrthancServer, **kw) -> PacsConfig:
    base = {"url": server.url, "user": server.user, "password": server.password, "connect_timeout": 2,
            "read_timeout": 5, "retries": 1, "retry_backoff": 0.1}
    base.update(kw)
    return PacsConfig(**base)


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def uploaded(orthanc):
    """One synthetic MR series of 4 slices (patient tags set), uploaded through Orthanc's own REST API."""
    series = mr_series(n_slices=4, size=64, patient_id="PACS-TEST-1")
    for ds in series:
        orthanc.upload(to_bytes(ds))
    return series


@needs_orthanc
def test_search_finds_study_by_patient_modality_date_accession(orthanc, uploaded):
    cfg = _config(orthanc)
    hits = search_studies(cfg, patient_id="PACS-TEST-1", modality="MR")
    assert [h.study_uid for h in hits] == [uploaded[0].StudyInstanceUID]
    hit = hits[0]
    assert hit.patient_id == "PACS-TEST-1" and hit.accession == "ACC-0001" and hit.study_date == "20261130"
    assert "MR" in hit.modalities
    assert search_studies(cfg, patient_id="PACS-TEST-1", date_from="2026-11-01", date_to="2026-11-30")
    assert search_studies(cfg, accession="ACC-0001", patient_id="PACS-TEST-1")
    assert search_studies(cfg, patient_id="PACS-TEST-1", date_from="2027-01-01") == []
    assert search_studies(cfg, patient_id="NOBODY") == []
    series = search_series(cfg, hit.study_uid, modality="MR")  # the round trip adds SR and OT series later
    assert [(s.series_uid, s.modality) for s in series] == [(uploaded[0].SeriesInstanceUID, "MR")]


@needs_orthanc
def test_round_trip_retrieve_build_store_query_parse(orthanc, uploaded, tmp_path):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    cfg = _config(orthanc)
    study_uid, series_uid = uploaded[0].StudyInstanceUID, uploaded[0].SeriesInstanceUID
    files = retrieve_series(cfg, study_uid, series_uid, tmp_path / "in")
    assert len(files) == 4 and all(p.is_file() and p.suffix == ".dcm" for p in files)
    assert not list((tmp_path / "in").glob("*.part"))
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
    assert {h.SOPInstanceUID for h in headers} == {d.SOPInstanceUID for d in uploaded}
    first = pydicom.dcmread(files[0])
    assert first.pixel_array.shape == (64, 64)

    headers.sort(key=lambda h: int(h.InstanceNumber))
    positive = [headers[1].SOPInstanceUID, headers[2].SOPInstanceUID]
    sr = build_sr(SeriesFinding(True, "glioma", 0.97, positive), headers, MODEL)
    overlay = np.zeros((64, 64, 3), np.uint8)
    overlay[20:40, 20:40, 0] = 255
    sc = build_overlay_sc(overlay, headers[1], MODEL)
    stored = store(cfg, [sr, sc])
    assert sorted(stored) == sorted([sr.SOPInstanceUID, sc.SOPInstanceUID])

    # The results are filed in the same study: the study now has the MR, SR and OT/SC series.
    found = {s.modality: s for s in search_series(cfg, study_uid)}
    assert {"MR", "SR"} <= set(found) and len(found) == 3
    sr_files = retrieve_series(cfg, study_uid, found["SR"].series_uid, tmp_path / "sr")
    back = hd.sr.srread(sr_files[0])
    assert isinstance(back, hd.sr.Comprehensive3DSR)
    assert back.VerificationFlag == "UNVERIFIED" and back.CompletionFlag == "COMPLETE"
    assert back.StudyInstanceUID == study_uid and back.PatientID == "PACS-TEST-1"

    groups = back.content.get_image_measurement_groups()
    assert len(groups) == 1
    group = groups[0]
    evals = {str(e.name.meaning): e.value for e in group.get_qualitative_evaluations()}
    assert evals["Brain tumour or lesion"] == codes.SCT.Present
    assert set(evals) == {"Brain tumour or lesion"}
    assert group.finding_type.value == "GLIOMA" and group.finding_type.scheme_designator == "99BRAINMRI"
    (prob,) = group.get_measurements()
    assert prob.value == pytest.approx(0.97)
    assert [s.referenced_sop_instance_uid for s in group.source_images] == positive

    result = read_sr(pydicom.dcmread(sr_files[0]))  # the module's own reader agrees field by field
    assert result == ReportedResult(
        study_uid=study_uid, verdict=True, tumour_type="glioma", probability=pytest.approx(0.97), model=MODEL,
        source_instances=positive, evidence_instances=result.evidence_instances, verification="UNVERIFIED",
        notices=[NOTICE])
    assert sorted(result.evidence_instances) == sorted(h.SOPInstanceUID for h in headers)
    texts = [item.TextValue for item in _walk(back.ContentSequence) if getattr(item, "ValueType", "") == "TEXT"]
    assert NOTICE in texts and f"weights_sha256={MODEL.weights_sha256}" in texts and MODEL.name in texts
    assert "tta=hflip" in texts

    # The overlay comes back in the same study, with the notice and nothing identifying beyond the filing set.
    sc_back = pydicom.dcmread(retrieve_series(cfg, study_uid, found["OT"].series_uid, tmp_path / "sc")[0])
    assert sc_back.StudyInstanceUID == study_uid and sc_back.BurnedInAnnotation == "YES"
    assert NOTICE in sc_back.ImageComments and sc_back.pixel_array.shape[1] == 64
    assert sc_back.SourceImageSequence[0].ReferencedSOPInstanceUID == headers[1].SOPInstanceUID
    for ds in (back, sc_back):
        for kw in ("PatientAge", "PatientWeight", "OtherPatientIDs", "InstitutionName", "OperatorsName"):
            assert kw not in ds, kw
        assert not ds.get("PatientBirthDate") and not ds.get("PatientSex")


def _walk(seq):
    for item in seq:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def test_negative_verdict_references_every_slice():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    uploaded = mr_series(n_slices=3)
    sr = build_sr(SeriesFinding(False, None, 0.12, []), uploaded, MODEL)
    back = hd.sr.Comprehensive3DSR.from_dataset(pydicom.dcmread(_roundtrip(sr)))
    group = back.content.get_image_measurement_groups()[0]
    names = {str(e.name.meaning) for e in group.get_qualitative_evaluations()}
    assert names == {"Brain tumour or lesion"} and group.finding_type is None
    assert group.get_qualitative_evaluations()[0].value == codes.SCT.Absent
    assert len(group.source_images) == len(uploaded)


def _roundtrip(ds):
    import io

    return io.BytesIO(to_bytes(ds))


@needs_orthanc
def test_wrong_credentials_fail_fast_with_clear_message(orthanc, uploaded, caplog):
    caplog.set_level(logging.DEBUG)  # dicomweb-client and urllib3 log every request at DEBUG
    cfg = _config(orthanc, password="wrong-password-xyz")
    t0 = time.monotonic()
    with pytest.raises(PacsError) as err:
        search_studies(cfg, patient_id="PACS-TEST-1")
    assert time.monotonic() - t0 < 3
    assert err.value.kind == "auth" and "401" in str(err.value) and "credentials" in str(err.value)
    assert "wrong-password-xyz" not in str(err.value) and "wrong-password-xyz" not in repr(cfg)
    basic = base64.b64encode(f"{orthanc.user}:wrong-password-xyz".encode()).decode()  # the header's value
    assert caplog.text and "wrong-password-xyz" not in caplog.text and basic not in caplog.text
    with pytest.raises(PacsError, match="refused the credentials"):
        store(cfg, [uploaded[0]])


@needs_orthanc
def test_series_deleted_between_query_and_retrieve(orthanc, tmp_path):
    cfg = _config(orthanc)
    series = mr_series(n_slices=2, patient_id="PACS-TEST-DEL")
    for ds in series:
        orthanc.upload(to_bytes(ds))
    (hit,) = search_studies(cfg, patient_id="PACS-TEST-DEL")
    (ser,) = search_series(cfg, hit.study_uid)
    orthanc.delete_series(ser.series_uid)
    t0 = time.monotonic()
    with pytest.raises(PacsError) as err:
        retrieve_series(cfg, hit.study_uid, ser.series_uid, tmp_path / "gone")
    assert time.monotonic() - t0 < 5
    assert err.value.kind == "not_found" and "deleted" in str(err.value)
    assert not list((tmp_path / "gone").glob("*"))


@needs_orthanc
def test_connection_dropped_mid_retrieve_keeps_nothing(orthanc, tmp_path):
    """The PACS stops half-way through a series (simulated by a proxy that cuts every connection after
    100 kB): an error after the bounded retry, and no partial series on disk."""
    series = mr_series(n_slices=6, size=128, patient_id="PACS-TEST-CUT")
    for ds in series:
        orthanc.upload(to_bytes(ds))
    proxy = CuttingProxy(orthanc.port, limit=100_000)
    try:
        cfg = _config(orthanc, url=f"http://127.0.0.1:{proxy.port}")
        with pytest.raises(PacsError) as err:
            retrieve_series(cfg, series[0].StudyInstanceUID, series[0].SeriesInstanceUID, tmp_path / "cut")
        assert "dropped the connection before the series was complete" in str(err.value)
        assert proxy.connections == 2  # first try and one retry, as configured
        assert not list((tmp_path / "cut").iterdir())
    finally:
        proxy.close()
    # Straight to Orthanc the same series arrives whole (the completeness check passes a complete body).
    assert len(retrieve_series(_config(orthanc), series[0].StudyInstanceUID, series[0].SeriesInstanceUID,
                               tmp_path / "whole")) == 6


@needs_orthanc
def test_retrieve_memory_stays_bounded(orthanc, tmp_path):
    """Streamed to disk: the peak of Python allocations stays well under the series' size."""
    import tracemalloc

    series = mr_series(n_slices=80, size=256, patient_id="PACS-TEST-MEM")
    total = 0
    for ds in series:
        data = to_bytes(ds)
        total += len(data)
        orthanc.upload(data)
    study_uid, series_uid = series[0].StudyInstanceUID, series[0].SeriesInstanceUID
    del series, data, ds
    tracemalloc.start()
    try:
        files = retrieve_series(_config(orthanc), study_uid, series_uid, tmp_path / "mem")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(files) == 80 and total > 10e6
    assert peak < 0.6 * total, (peak, total)  # about 4.6 MB whatever the series' size (1 MB network chunks)


@needs_orthanc
def test_stopped_pacs_gives_error_within_timeout(tmp_path):
    server = OrthancServer(tmp_path / "o").start()
    cfg = _config(server, retries=1, retry_backoff=0.1)
    assert search_studies(cfg) == []
    server.stop()
    t0 = time.monotonic()
    with pytest.raises(PacsError) as err:
        search_studies(cfg, patient_id="X")
    assert time.monotonic() - t0 < 2 * cfg.connect_timeout + 1
    assert err.value.kind == "unreachable" and "cannot reach" in str(err.value) and "2 tries" in str(err.value)
    assert server.password not in str(err.value)


@needs_orthanc
def test_frozen_orthanc_times_out_then_recovers(orthanc, uploaded):
    """The real server stalls (SIGSTOP: connections are accepted by the kernel, nothing answers)."""
    import os
    import signal

    cfg = _config(orthanc, read_timeout=0.5, retries=1, retry_backoff=0.1)
    os.kill(orthanc.proc.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(PacsError) as err:
            search_studies(cfg, patient_id="PACS-TEST-1")
        assert time.monotonic() - t0 < 3
        assert err.value.kind == "timeout" and "2 tries" in str(err.value)
    finally:
        os.kill(orthanc.proc.pid, signal.SIGCONT)
    assert search_studies(_config(orthanc), patient_id="PACS-TEST-1")  # the app keeps working afterwards


@pytest.fixture
def stalled_port():
    """A server that accepts connections and never answers (a hung PACS)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    conns, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join(2)
    for c in conns:
        c.close()
    sock.close()


def test_stalled_pacs_times_out_with_bounded_retry(stalled_port, tmp_path):
    cfg = PacsConfig(url=f"http://127.0.0.1:{stalled_port}", user="u", password="secret-pw", connect_timeout=1,
                     read_timeout=0.5, retries=1, retry_backoff=0.1)
    t0 = time.monotonic()
    with pytest.raises(PacsError) as err:
        retrieve_series(cfg, "1.2.3", "1.2.3.4", tmp_path / "x")
    elapsed = time.monotonic() - t0
    assert elapsed < 3, elapsed
    assert err.value.kind == "timeout" and "did not answer in time" in str(err.value)
    assert "2 tries" in str(err.value) and "secret-pw" not in str(err.value)


def test_config_from_app_config_hides_secrets(tmp_path):
    from app_config import ConfigError, load_config

    env = {"MRI_PACS_URL": "https://pacs.example.org:8443", "MRI_PACS_USER": "reader",
           "MRI_PACS_PASSWORD": "pw-123", "MRI_APP_CONFIG": ""}
    app = load_config(env=env, config_file=tmp_path / "none.toml")
    cfg = PacsConfig.from_app_config(app)
    assert cfg.endpoint == "https://pacs.example.org:8443/dicom-web" and cfg.auth_kind == "basic"
    assert "pw-123" not in repr(app) and "pw-123" not in repr(cfg)
    assert PacsConfig.from_app_config(load_config(env={}, config_file=tmp_path / "none.toml")) is None
    token = PacsConfig.from_app_config(load_config(env={**env, "MRI_PACS_TOKEN": "tok"},
                                                   config_file=tmp_path / "none.toml"))
    assert token.auth_kind == "bearer token" and "tok" not in repr(token)
    toml = tmp_path / "app.toml"
    toml.write_text('pacs_url = "http://pacs:8042"\npacs_dicomweb_root = "/wado"\npacs_read_timeout = 7\n'
                    'pacs_retries = 0\n')
    cfg = PacsConfig.from_app_config(load_config(env={}, config_file=toml))
    assert cfg.endpoint == "http://pacs:8042/wado" and cfg.read_timeout == 7 and cfg.retries == 0
    toml.write_text('pacs_url = "http://pacs:8042"\npacs_retries = 99\n')
    with pytest.raises(ConfigError):
        load_config(env={}, config_file=toml)
    with pytest.raises(PacsError, match="not in the URL"):
        PacsConfig(url="https://user:pw@pacs.example.org")


def test_bearer_token_is_sent_by_the_auth_hook_not_the_session_headers():
    import requests

    from core.pacs.client import _client

    cfg = PacsConfig(url="http://pacs.example.org", token="tok-secret-1")
    session = _client(cfg)._session
    assert "Authorization" not in session.headers and "tok-secret-1" not in repr(session.auth)
    prepared = session.prepare_request(requests.Request("GET", cfg.endpoint + "/studies"))
    assert prepared.headers["Authorization"] == "Bearer tok-secret-1"
    basic = _client(PacsConfig(url="http://pacs.example.org", user="u", password="p"))._session
    assert basic.prepare_request(requests.Request("GET", "http://pacs.example.org/x")).headers["Authorization"] \
        .startswith("Basic ")


def test_build_results_sr_then_one_capture_series_per_result():
    from core.report.sr import build_results

    series = mr_series(n_slices=3)
    rgb = np.zeros((32, 48, 3), np.uint8)
    out = build_results(SeriesFinding(True, "meningioma", 0.9, [series[2].SOPInstanceUID]), series, MODEL,
                        overlays=[(rgb, series[2].SOPInstanceUID), (rgb, series[1].SOPInstanceUID)])
    assert [ds.Modality for ds in out] == ["SR", "OT", "OT"]
    assert out[1].SeriesInstanceUID == out[2].SeriesInstanceUID != out[0].SeriesInstanceUID
    assert [ds.InstanceNumber for ds in out[1:]] == [1, 2] and out[1].Columns == 48 and out[1].Rows > 32
    assert {ds.StudyInstanceUID for ds in out} == {series[0].StudyInstanceUID}
    assert read_sr(out[0]).tumour_type == "meningioma"
    with pytest.raises(ValueError, match="not among the evaluated"):
        build_results(SeriesFinding(True, "glioma", 0.9, ["1.2.3"]), series, MODEL)
    with pytest.raises(ValueError, match="unknown tumour type"):
        build_results(SeriesFinding(True, "astrocytoma", 0.9, []), series, MODEL)


def test_missing_orthanc_is_a_skip_reason_not_an_error(monkeypatch):
    import tests.orthanc_support as support

    monkeypatch.setattr(support, "BINARY_CANDIDATES", ("/nonexistent/Orthanc",))
    assert "apt-get install orthanc orthanc-dicomweb" in support.missing_reason()
    monkeypatch.setattr(support, "BINARY_CANDIDATES", ("/bin/sh",))
    monkeypatch.setattr(support, "PLUGIN_CANDIDATES", ("/nonexistent/libOrthancDicomWeb.so",))
    assert "DICOMweb plugin" in support.missing_reason()
