"""Audit trail: every prediction appended to a local SQLite database (WAL), safe with
concurrent sessions (threads and processes), exportable, and free of identifying tags."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from core.review.audit_trail import COLUMNS, EXPORT_COLUMNS, FEEDBACK_COLUMNS, MAX_NOTE_CHARS, AuditTrail, default_audit_path
from core.batch import main as batch_main
from core.review.folder import run_batch
from core.data.synthetic import fake_scan
from tests.conftest import REPO
from tests.factories import FAKE_PATIENT, dicom_bytes, encode

SHA_A, SHA_M = "a" * 64, "m" * 64


def _rec(audit: AuditTrail, i: int = 0, **kw) -> int:
    fields = dict(source="test", file_sha256=f"{i:064x}", model_sha256=SHA_M, predicted="glioma", confidence=0.9,
                  probabilities={"glioma": 0.9, "notumor": 0.1}, ood=False, uncertain=False, cam_method="gradcam")
    fields.update(kw)
    return audit.record(**fields)


def _db_bytes(path: Path) -> bytes:
    """The database and its WAL/SHM side files, as raw bytes (what a forensic grep would see)."""
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


def test_record_holds_every_field_and_exports_csv(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    audit.record(source="dashboard", file_sha256=SHA_A, model_sha256=SHA_M, model_version="1.2.0",
                 predicted="meningioma", confidence=0.71,
                 probabilities={"glioma": 0.2, "meningioma": 0.71, "notumor": 0.05, "pituitary": 0.04},
                 ood=True, uncertain=False, cam_method="gradcam++")
    audit.record(source="batch", file_sha256=SHA_A, model_sha256=SHA_M, error="<file>: file is empty (0 bytes)")
    assert audit.count() == 2
    newest, first = audit.recent(10)
    assert set(first) == set(COLUMNS)
    assert first["timestamp"].endswith("Z") and first["timestamp"][:2] == "20"
    assert (first["source"], first["file_sha256"], first["model_sha256"], first["model_version"]) == (
        "dashboard", SHA_A, SHA_M, "1.2.0")
    assert (first["predicted"], first["confidence"], first["ood"], first["uncertain"], first["cam_method"]) == (
        "meningioma", 0.71, 1, 0, "gradcam++")
    assert json.loads(first["probabilities"])["meningioma"] == 0.71
    assert newest["predicted"] is None and newest["error"].startswith("<file>")
    assert [r["id"] for r in audit.recent(1)] == [newest["id"]]
    rows = list(csv.DictReader(io.StringIO(audit.export_csv())))
    assert [r["source"] for r in rows] == ["batch", "dashboard"]
    assert list(rows[0]) == list(COLUMNS) + ["feedback_verdict", "feedback_class", "feedback_note", "feedback_time"]
    assert len(list(csv.DictReader(io.StringIO(audit.export_csv(limit=1))))) == 1


def test_a_trail_from_before_model_version_gains_the_column_and_keeps_its_rows(tmp_path):
    import sqlite3
    from contextlib import closing

    path = tmp_path / "old.sqlite3"
    old_columns = [c for c in COLUMNS if c != "model_version"]
    with closing(sqlite3.connect(path)) as con, con:
        con.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                    + ", ".join(f"{c} TEXT" for c in old_columns[1:]) + ")")
        con.execute("INSERT INTO predictions (timestamp, source, file_sha256, model_sha256, predicted) "
                    "VALUES ('2026-01-01T00:00:00Z', 'single', ?, ?, 'glioma')", (SHA_A, SHA_M))
    audit = AuditTrail(path)
    _rec(audit, 1, model_version="1.2.0")
    newest, old = audit.recent(10)
    assert (old["predicted"], old["model_version"]) == ("glioma", None)
    assert newest["model_version"] == "1.2.0" and list(newest) == list(COLUMNS)
    assert AuditTrail(path).count() == 2  # opening it again migrates nothing twice


def test_wal_mode_and_transactional_writes(tmp_path):
    path = tmp_path / "audit.sqlite3"
    audit = AuditTrail(path)
    _rec(audit)
    with sqlite3.connect(path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # A write that fails (NOT NULL file_sha256) leaves nothing behind and the next write works.
    with pytest.raises(sqlite3.IntegrityError):
        _rec(audit, file_sha256=None)
    assert audit.count() == 1
    # A reader holding an open transaction does not block writers (WAL).
    reader = sqlite3.connect(path)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM predictions").fetchone()[0] == 1
    _rec(audit, 2)
    assert audit.count() == 2
    reader.close()


def test_default_location_is_the_app_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("MRI_APP_DATA", str(tmp_path / "appdata"))
    assert default_audit_path() == tmp_path / "appdata" / "audit.sqlite3"
    audit = AuditTrail()
    assert audit.path == tmp_path / "appdata" / "audit.sqlite3" and audit.path.is_file()
    monkeypatch.delenv("MRI_APP_DATA")
    assert default_audit_path() == REPO / "data" / "audit.sqlite3"
    try:
        from app_config import load_config
    except ImportError:  # the dashboard's settings module is optional for the engine
        return
    assert load_config(env={}, config_file=tmp_path / "none.toml").audit_path == default_audit_path()
    assert (load_config(env={"MRI_APP_DATA": str(tmp_path / "x")}, config_file=tmp_path / "none.toml").audit_path
            == tmp_path / "x" / "audit.sqlite3")


def test_concurrent_writers_threads(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    n_threads, per_thread = 8, 40
    errors: list[BaseException] = []
    start = threading.Barrier(n_threads)

    def writer(t: int) -> None:
        try:
            other = AuditTrail(audit.path)  # one object per session, as the dashboard has
            start.wait()
            for i in range(per_thread):
                _rec(other if i % 2 else audit, t * 1000 + i, source=f"thread{t}")
                if i % 10 == 0:
                    audit.recent(5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert audit.count() == n_threads * per_thread
    shas = {r["file_sha256"] for r in audit.recent(-1)}
    assert len(shas) == n_threads * per_thread


_WRITER = """
import sys
from core.review.audit_trail import AuditTrail
audit = AuditTrail(sys.argv[1])
tag = sys.argv[2]
for i in range(int(sys.argv[3])):
    audit.record(source=tag, file_sha256=f"{tag}-{i}", model_sha256="m", predicted="notumor", confidence=0.5,
                 probabilities={"notumor": 0.5}, ood=False, uncertain=True, cam_method=None)
print("done", tag)
"""


def test_concurrent_writers_two_processes(tmp_path):
    path = tmp_path / "shared" / "audit.sqlite3"
    n = 150
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"proc{k}", str(n)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for k in range(2)]
    here = AuditTrail(path)  # and this process writes at the same time
    for i in range(n):
        _rec(here, i, source="main")
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert out.startswith("done")
    assert here.count() == 3 * n
    by_source: dict[str, int] = {}
    for r in here.recent(-1):
        by_source[r["source"]] = by_source.get(r["source"], 0) + 1
    assert by_source == {"main": n, "proc0": n, "proc1": n}


def test_batch_audit_has_every_row_and_never_identifying_tags(tmp_path, tiny_predictor):
    rng = np.random.default_rng(8)
    root = tmp_path / "in"
    root.mkdir()
    scan16 = fake_scan(rng, 128, 2).astype(np.uint16) * 16
    dcm = dicom_bytes(scan16)  # carries FAKE_PATIENT: name, ID, birth date, institution, ...
    (root / "slice1.dcm").write_bytes(dcm)
    # File names can identify a patient too: they must not reach the audit either.
    (root / "Zqxwv_Jolyon_report.dcm").write_bytes(dicom_bytes(None))  # an error row (no pixel data)
    (root / "Zqxwv_Jolyon_empty.png").write_bytes(b"")  # an error row (unreadable)
    (root / "plain.png").write_bytes(encode(fake_scan(rng, 128, 1), "PNG"))
    audit = AuditTrail(tmp_path / "db" / "audit.sqlite3")
    rows = list(run_batch(tiny_predictor, root, tmp_path / "r.csv", cam_method="gradcam", audit=audit))
    assert len(rows) == 4 and audit.count() == 4
    records = audit.recent(-1)
    by_sha = {r["file_sha256"]: r for r in records}
    ok = by_sha[hashlib.sha256(dcm).hexdigest()]
    assert ok["predicted"] in tiny_predictor.class_names and ok["cam_method"] == "gradcam" and ok["error"] is None
    assert ok["model_sha256"] == tiny_predictor.bundle.sha256 and ok["model_version"] == tiny_predictor.bundle.version
    assert set(json.loads(ok["probabilities"])) == set(tiny_predictor.class_names)
    errors = [r for r in records if r["error"]]
    assert len(errors) == 2 and all("<file>" in r["error"] for r in errors)
    assert any("no pixel data" in r["error"] for r in errors)
    report_sha = hashlib.sha256((root / "Zqxwv_Jolyon_report.dcm").read_bytes()).hexdigest()
    assert {r["file_sha256"] for r in errors} == {report_sha, ""}  # "": the empty file has no bytes to hash
    blob = _db_bytes(audit.path) + audit.export_csv().encode()
    needles = [v for v in FAKE_PATIENT.values()] + [part for v in FAKE_PATIENT.values() for part in v.split("^")]
    needles += ["Zqxwv", "Jolyon", "slice1", "plain.png", str(root)]
    for needle in needles:
        assert needle.encode() not in blob, f"{needle!r} found in the audit database"
    # ... while the decoder itself did see them (the test would be vacuous otherwise).
    from core.io.decode import decode_bytes

    assert decode_bytes(dcm, "x.dcm", include_identifying_tags=True).dicom_tags["PatientName"] == "Zqxwv^Jolyon"
    assert "PatientName" not in decode_bytes(dcm, "x.dcm").dicom_tags


def test_error_rows_keep_the_file_hash_when_bytes_were_read(tmp_path, tiny_predictor):
    root = tmp_path / "in"
    root.mkdir()
    bad = b"%PDF-1.4 not an image" * 10
    (root / "doc.jpg").write_bytes(bad)
    (root / "empty.png").write_bytes(b"")
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    rows = {r["path"]: r for r in run_batch(tiny_predictor, root, audit=audit)}
    assert rows["doc.jpg"]["file_sha256"] == hashlib.sha256(bad).hexdigest()
    assert rows["empty.png"]["file_sha256"] == ""
    assert {r["file_sha256"] for r in audit.recent(-1)} == {hashlib.sha256(bad).hexdigest(), ""}


def test_batch_cli_audits_by_default_and_can_opt_out(tmp_path, tiny_bundle_dir, monkeypatch, capsys):
    root = tmp_path / "in"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        (root / f"s{i}.png").write_bytes(encode(fake_scan(rng, 100, i), "PNG"))
    monkeypatch.setenv("MRI_APP_DATA", str(tmp_path / "appdata"))
    assert batch_main([str(root), "--out", str(tmp_path / "r.csv"), "--weights", str(tiny_bundle_dir)]) == 0
    default_db = tmp_path / "appdata" / "audit.sqlite3"
    assert AuditTrail(default_db).count() == 3
    custom = tmp_path / "custom" / "a.sqlite3"
    assert batch_main([str(root), "--out", str(tmp_path / "r2.csv"), "--weights", str(tiny_bundle_dir),
                       "--audit-db", str(custom)]) == 0
    assert AuditTrail(custom).count() == 3 and AuditTrail(default_db).count() == 3
    assert batch_main([str(root), "--out", str(tmp_path / "r3.csv"), "--weights", str(tiny_bundle_dir),
                       "--no-audit"]) == 0
    assert AuditTrail(default_db).count() == 3
    (tmp_path / "blocker").write_text("a file where the audit folder should be")
    rc = batch_main([str(root), "--out", str(tmp_path / "r4.csv"), "--weights", str(tiny_bundle_dir),
                     "--audit-db", str(tmp_path / "blocker" / "a.sqlite3")])
    assert rc == 2 and "cannot open the audit trail" in capsys.readouterr().err


# ---- reader feedback ---------------------------------------------------------------------------------------------

CLASSES = ["glioma", "meningioma", "notumor", "other_lesion", "pituitary"]
SHA_F, SHA_G, MODEL = "f" * 64, "0123456789abcdef" * 4, "e" * 64


def _pred(audit: AuditTrail, sha: str = SHA_F, predicted: str = "glioma", version: str = "2.0.0", **kw) -> int:
    return audit.record(source="single", file_sha256=sha, model_sha256=MODEL, model_version=version,
                        predicted=predicted, confidence=0.8, probabilities={c: 0.2 for c in CLASSES}, ood=False,
                        uncertain=False, cam_method="gradcam", **kw)


def test_record_returns_the_row_id(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    first, second = _pred(audit), _pred(audit, SHA_G)
    assert second == first + 1 and [r["id"] for r in audit.recent(2)] == [second, first]


def test_feedback_round_trip_latest_first_and_linked_to_the_prediction(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    pid = _pred(audit)
    saved = audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, model_version="2.0.0", predicted="glioma",
                                  verdict="disagree", reader_class="meningioma", note="  dural tail\r\nsee T1C+ \x00",
                                  reader="Dr A", prediction_id=pid, class_names=CLASSES)
    assert list(saved) == list(FEEDBACK_COLUMNS) and saved["id"] == 1
    assert (saved["prediction_id"], saved["verdict"], saved["reader_class"], saved["note"], saved["reader"]) == (
        pid, "disagree", "meningioma", "dural tail\nsee T1C+", "Dr A")
    # Without prediction_id, the newest prediction of the same file by the same model is the one referenced,
    # and its version and predicted class are filled in.
    again = _pred(audit)
    agree = audit.record_feedback(file_sha256=SHA_F.upper(), model_sha256=MODEL, verdict="Agree ")
    assert (agree["prediction_id"], agree["model_version"], agree["predicted"], agree["verdict"]) == (
        again, "2.0.0", "glioma", "agree")
    rows = audit.feedback_for(SHA_F, MODEL)
    assert [r["id"] for r in rows] == [agree["id"], saved["id"]] and rows[0] == agree
    assert audit.feedback_for(SHA_F, MODEL, "9.9.9") == [] and audit.feedback_for(SHA_G, MODEL) == []
    # Feedback on a file the trail never saw is kept, unlinked.
    loose = audit.record_feedback(file_sha256=SHA_G, model_sha256=MODEL, predicted="notumor", verdict="disagree",
                                  reader_class="unsure")
    assert loose["prediction_id"] is None and loose["model_version"] is None
    assert audit.count() == 2  # feedback is not a prediction


def test_latest_feedback_wins_and_disagreements_are_the_site_error_cases(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    a, b = _pred(audit, SHA_F), _pred(audit, SHA_G, predicted="notumor")
    audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="disagree", reader_class="pituitary",
                          prediction_id=a, class_names=CLASSES)
    audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="agree", prediction_id=a)  # changed mind
    audit.record_feedback(file_sha256=SHA_G, model_sha256=MODEL, verdict="disagree", reader_class="other_lesion",
                          note="=HYPERLINK(\"http://x\")", prediction_id=b, class_names=CLASSES)
    assert audit.feedback_counts() == {"agree": 1, "disagree": 1, "rows": 3}
    cases = audit.error_cases()
    assert [(c["file_sha256"], c["predicted"], c["reader_class"]) for c in cases] == [
        (SHA_G, "notumor", "other_lesion")]
    assert [r["verdict"] for r in audit.feedback()] == ["disagree", "agree", "disagree"]  # nothing is overwritten
    # The audit export keeps its columns and adds the newest feedback on each prediction.
    rows = {int(r["id"]): r for r in csv.DictReader(io.StringIO(audit.export_csv()))}
    assert list(next(iter(rows.values()))) == list(EXPORT_COLUMNS)
    assert (rows[a]["feedback_verdict"], rows[a]["feedback_class"]) == ("agree", "")
    assert (rows[b]["feedback_verdict"], rows[b]["feedback_class"]) == ("disagree", "other_lesion")
    assert rows[b]["feedback_note"] == "'=HYPERLINK(\"http://x\")"  # never run as a spreadsheet formula
    assert rows[b]["feedback_time"].endswith("Z")
    c = _pred(audit, "1" * 64)
    assert csv.DictReader(io.StringIO(audit.export_csv(limit=1))).__next__()["feedback_verdict"] == ""
    assert int(next(csv.DictReader(io.StringIO(audit.export_csv(limit=1))))["id"]) == c
    every = list(csv.DictReader(io.StringIO(audit.export_feedback_csv())))
    assert len(every) == 3 and list(every[0]) == list(FEEDBACK_COLUMNS) and every[0]["verdict"] == "disagree"
    errors = list(csv.DictReader(io.StringIO(audit.export_error_cases_csv())))
    assert [e["file_sha256"] for e in errors] == [SHA_G]


@pytest.mark.parametrize("kw,message", [
    (dict(verdict="maybe"), "verdict must be 'agree' or 'disagree'"),
    (dict(verdict=None), "verdict must be"),
    (dict(verdict="disagree", reader_class="astrocytoma"), "unknown class 'astrocytoma'"),
    (dict(verdict="disagree", reader_class="glioma"), "cannot name the predicted class"),
    (dict(verdict="agree", reader_class="meningioma"), "an 'agree' verdict keeps the predicted class"),
    (dict(verdict="agree", note="x" * (MAX_NOTE_CHARS + 1)), "at most 1,000"),
    (dict(verdict="agree", reader="r" * 101), "at most 100"),
    (dict(verdict="agree", file_sha256="scan_of_Jolyon.png"), "64 hex digits"),
    (dict(verdict="agree", model_sha256=""), "model_sha256 is required"),
    (dict(verdict="agree", prediction_id=999), "no prediction 999"),
    (dict(verdict="agree", prediction_id="1"), "must be a row id"),
])
def test_feedback_validation_errors(tmp_path, kw, message):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    _pred(audit)
    _pred(audit, SHA_G)
    fields = dict(file_sha256=SHA_F, model_sha256=MODEL, predicted="glioma", class_names=CLASSES)
    fields.update(kw)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        audit.record_feedback(**fields)
    with pytest.raises(ValueError, match="another file or model"):
        audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="agree", prediction_id=2)
    assert audit.feedback() == []
    # The class list comes from the prediction's probabilities when the caller gives none.
    with pytest.raises(ValueError, match="unknown class"):
        audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="disagree", reader_class="schwannoma")
    assert audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="disagree",
                                 reader_class="unsure")["reader_class"] == "unsure"


def test_feedback_is_append_only_in_the_database(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="agree")
    with sqlite3.connect(audit.path) as con:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute("UPDATE feedback SET verdict = 'disagree'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            con.execute("DELETE FROM feedback")
        with pytest.raises(sqlite3.IntegrityError):
            con.execute("INSERT INTO feedback (timestamp, file_sha256, model_sha256, verdict) "
                        "VALUES ('t', 'x', 'm', 'perhaps')")
    assert [r["verdict"] for r in audit.feedback()] == ["agree"]


def test_a_trail_from_before_feedback_gains_the_table_in_place(tmp_path):
    from contextlib import closing

    path = tmp_path / "old.sqlite3"
    with closing(sqlite3.connect(path)) as con, con:  # the schema as it was before reader feedback
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE predictions (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp TEXT NOT NULL, "
                    "source TEXT NOT NULL, file_sha256 TEXT NOT NULL, model_sha256 TEXT NOT NULL, model_version TEXT, "
                    "predicted TEXT, confidence REAL, probabilities TEXT, ood INTEGER, uncertain INTEGER, "
                    "cam_method TEXT, error TEXT)")
        con.execute("INSERT INTO predictions (timestamp, source, file_sha256, model_sha256, model_version, predicted, "
                    "probabilities) VALUES ('2026-01-01T00:00:00Z', 'single', ?, ?, '1.0.0', 'glioma', ?)",
                    (SHA_F, MODEL, json.dumps({c: 0.2 for c in CLASSES})))
    audit = AuditTrail(path)
    assert audit.count() == 1 and audit.feedback() == []
    saved = audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="disagree", reader_class="notumor")
    assert saved["prediction_id"] == 1 and saved["model_version"] == "1.0.0"
    reopened = AuditTrail(path)  # opening again changes nothing
    assert reopened.count() == 1 and len(reopened.feedback()) == 1
    rows = list(csv.DictReader(io.StringIO(reopened.export_csv())))
    assert rows[0]["feedback_verdict"] == "disagree" and rows[0]["feedback_class"] == "notumor"


def test_feedback_stores_no_identifying_text_but_the_readers_own(tmp_path):
    """Only the file's hash identifies the scan; control and bidi characters are stripped from free text."""
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    saved = audit.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict="disagree",
                                  note="\u202egnp.lanigiro\u202c\x1b[31m red\x07", reader=" Dr\nB\t ")
    assert saved["note"] == "gnp.lanigiro[31m red" and saved["reader"] == "Dr B"
    assert "file_name" not in saved and "path" not in saved


def test_concurrent_feedback_from_threads(tmp_path):
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    pid = _pred(audit)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            other = AuditTrail(audit.path)
            for i in range(10):
                other.record_feedback(file_sha256=SHA_F, model_sha256=MODEL, verdict=("agree", "disagree")[i % 2],
                                      note=f"t{t} n{i}", prediction_id=pid)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert audit.feedback_counts()["rows"] == 40 and len(audit.feedback_for(SHA_F, MODEL)) == 40
