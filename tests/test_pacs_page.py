"""AppTest: the PACS page. Signed out it shows nothing from the PACS; signed in it searches a REAL Orthanc, reviews
a series and sends the results back, and the audit trail records the user with each step.

The signed-in test is skipped, with the reason, when Orthanc is not installed (``.ci/run`` installs it)."""
from __future__ import annotations

import json
import sqlite3

import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, all_text, make_app_env
from tests.orthanc_support import (READER, READER_PASSWORD, OrthancServer, missing_reason, mr_series, pacs_env,
                                   to_bytes, write_auth_config)

TIMEOUT = 180
PAGE = "pages/5_PACS.py"
PATIENT_ID, PATIENT_NAME, BIRTH = "PID-SECRET-77", "Zyxwv^Quorra", "19511231"
needs_orthanc = pytest.mark.skipif(missing_reason() is not None, reason=str(missing_reason()))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    if missing_reason():
        pytest.skip(missing_reason())
    server = OrthancServer(tmp_path_factory.mktemp("orthanc-page")).start()
    for ds in mr_series(n_slices=12, size=128, patient_id=PATIENT_ID, patient_name=PATIENT_NAME, birth_date=BIRTH):
        server.upload(to_bytes(ds))
    yield server
    server.stop()


def _page(env: dict[str, str], monkeypatch) -> AppTest:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT).run()
    at.switch_page(PAGE).run()
    assert not at.exception, at.exception
    return at


def _sign_in(at: AppTest, user: str, password: str) -> AppTest:
    next(t for t in at.text_input if t.label == "Username").input(user)
    next(t for t in at.text_input if t.label == "Password").input(password)
    next(b for b in at.button if b.label == "Sign in").click()
    at.run()
    assert not at.exception, at.exception
    return at


def _table(at: AppTest, column: str):
    """The first table on the page with ``column`` (AppTest does not expose a dataframe's key)."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def _nothing_from_pacs(at: AppTest) -> None:
    text = all_text(at)
    for secret in (PATIENT_ID, "Zyxwv", "Quorra"):
        assert secret not in text
    assert not at.dataframe
    assert all(t.label not in ("Patient ID", "Accession number") for t in at.text_input)
    assert "Research use only" in text


def test_without_sign_in_config_the_page_explains_and_shows_nothing(tiny_bundle_dir, tmp_path, monkeypatch):
    env = make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)
    monkeypatch.delenv("MRI_AUTH_CONFIG", raising=False)
    at = _page({"MRI_PACS_URL": "http://127.0.0.1:9"}, monkeypatch)
    assert at.title[0].value == "PACS"
    assert "Sign-in is not set up" in all_text(at) and "MRI_AUTH_CONFIG" in all_text(at)
    assert not at.text_input  # no sign-in form either
    _nothing_from_pacs(at)
    assert env.audit_path.exists() is False or not sqlite3.connect(env.audit_path).execute(
        "SELECT COUNT(*) FROM pacs_events").fetchone()[0]


def test_plain_text_password_in_the_config_is_refused(tiny_bundle_dir, tmp_path, monkeypatch):
    make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)
    cfg = tmp_path / "auth.yaml"
    cfg.write_text("credentials:\n  usernames:\n    reader:\n      name: R\n      password: not-hashed-pw\n")
    at = _page({"MRI_AUTH_CONFIG": str(cfg), "MRI_PACS_URL": "http://127.0.0.1:9"}, monkeypatch)
    text = all_text(at)
    assert "no bcrypt-hashed password" in text and "not-hashed-pw" not in text
    _nothing_from_pacs(at)


def test_wrong_password_shows_nothing_from_the_pacs(tiny_bundle_dir, tmp_path, monkeypatch):
    make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)
    cfg = write_auth_config(tmp_path / "auth.yaml")
    at = _page({"MRI_AUTH_CONFIG": str(cfg), "MRI_PACS_URL": "http://127.0.0.1:9"}, monkeypatch)
    assert [t.label for t in at.text_input] == ["Username", "Password"]
    _sign_in(at, READER, "wrong-password")
    assert "Username or password is incorrect" in all_text(at)
    _nothing_from_pacs(at)


def test_signed_in_with_pacs_down_gives_a_message_and_the_page_keeps_working(tiny_bundle_dir, tmp_path, monkeypatch):
    make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)
    cfg = write_auth_config(tmp_path / "auth.yaml")
    at = _page({"MRI_AUTH_CONFIG": str(cfg), "MRI_PACS_URL": "http://127.0.0.1:9"}, monkeypatch)
    _sign_in(at, READER, READER_PASSWORD)
    assert "Signed in as" in all_text(at)
    at.button(key="pacs_search").click().run()
    assert not at.exception, at.exception
    assert "The search failed" in all_text(at) and "cannot reach the PACS" in all_text(at)
    at.button(key="pacs_search").click().run()  # and again: still a message, no traceback
    assert not at.exception and "The search failed" in all_text(at)


@needs_orthanc
def test_signed_in_search_review_send_and_audit(orthanc, tiny_bundle_dir, tmp_path, monkeypatch):
    import highdicom as hd
    import pydicom

    from core.pacs.client import PacsConfig, retrieve_series, search_series
    from core.pacs.workflow import study_key
    from core.report.sr import read_sr

    env = make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)
    cfg = write_auth_config(tmp_path / "auth.yaml")
    at = _page({"MRI_AUTH_CONFIG": str(cfg), **pacs_env(orthanc)}, monkeypatch)
    _nothing_from_pacs(at)  # signed out: a form, nothing from the PACS
    _sign_in(at, READER, READER_PASSWORD)
    at.text_input(key="pacs_patient_id").input(PATIENT_ID)
    at.button(key="pacs_search").click().run()
    assert not at.exception, at.exception
    results = _table(at, "patient ID")
    assert results["patient ID"].tolist() == [PATIENT_ID]  # the signed-in reader picks the study by patient
    assert results["status"].tolist() == ["not reviewed"]
    at.button(key="pacs_review_button").click().run()
    assert not at.exception, at.exception
    text = all_text(at)
    assert "Series verdict" in text and "Study Instance UID" in text
    assert _table(at, "patient ID")["status"].tolist() == ["reviewed"]
    assert [b.label for b in at.get("download_button")] == ["PDF report", "Series result JSON"]
    at.checkbox(key="pacs_send_pdf").check()
    at.button(key="pacs_send").click().run()
    assert not at.exception, at.exception
    sent = at.table[0].value.reset_index()
    assert sent["object"].tolist()[0] == "Structured report (SR)" and "PDF report" in sent["object"].tolist()
    assert _table(at, "patient ID")["status"].tolist() == ["sent"]

    # The SR is in Orthanc, in the same study, and parses.
    pacs = PacsConfig(url=orthanc.url, user=orthanc.user, password=orthanc.password)
    study_uid = at.session_state["pacs_review"].retrieved.study_uid
    sr_series = [s for s in search_series(pacs, study_uid) if s.modality == "SR"]
    assert len(sr_series) == 1
    sr_file = retrieve_series(pacs, study_uid, sr_series[0].series_uid, tmp_path / "sr")[0]
    assert isinstance(hd.sr.srread(sr_file), hd.sr.Comprehensive3DSR)
    result = read_sr(pydicom.dcmread(sr_file))
    assert result.study_uid == study_uid and result.verification == "UNVERIFIED"
    assert str(pydicom.dcmread(sr_file).SOPInstanceUID) in sent["SOP Instance UID"].tolist()

    # The audit trail: who queried, reviewed and sent what (SOP UIDs), and never the patient.
    con = sqlite3.connect(env.audit_path)
    events = con.execute("SELECT user, action, study_uid, study_key, sop_uids, detail FROM pacs_events "
                         "ORDER BY id").fetchall()
    assert [(e[0], e[1]) for e in events] == [(READER, "query"), (READER, "review"), (READER, "send")]
    assert events[1][2] == events[2][2] == study_uid and events[2][3] == study_key(study_uid)
    assert sorted(json.loads(events[2][4])) == sorted(sent["SOP Instance UID"].tolist())
    assert json.loads(events[0][5])["filters"] == ["patient_id"]
    con.close()
    raw = b"".join(p.read_bytes() for p in env.audit_path.parent.glob("audit.sqlite3*"))
    for secret in (PATIENT_ID, "Zyxwv", "Quorra", BIRTH):
        assert secret.encode() not in raw, secret


@needs_orthanc
def test_pacs_stopped_before_send_gives_a_message_and_the_review_stays(tiny_bundle_dir, tmp_path, monkeypatch):
    server = OrthancServer(tmp_path / "orthanc").start()
    try:
        for ds in mr_series(n_slices=8, size=128, patient_id="PID-STOP-1"):
            server.upload(to_bytes(ds))
        make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)
        cfg = write_auth_config(tmp_path / "auth.yaml")
        env = {"MRI_AUTH_CONFIG": str(cfg), **pacs_env(server)}
        at = _page(env, monkeypatch)
        _sign_in(at, READER, READER_PASSWORD)
        at.text_input(key="pacs_patient_id").input("PID-STOP-1")
        at.button(key="pacs_search").click().run()
        at.button(key="pacs_review_button").click().run()
        assert not at.exception, at.exception
        assert "Series verdict" in all_text(at)
    finally:
        server.stop()
    at.button(key="pacs_send").click().run()  # the PACS is gone now
    assert not at.exception, at.exception
    text = all_text(at)
    assert "The results were not sent" in text and "cannot reach the PACS" in text
    assert "Series verdict" in text and not at.table  # the review is still there; nothing listed as stored
    assert _table(at, "patient ID")["status"].tolist() == ["reviewed"]
