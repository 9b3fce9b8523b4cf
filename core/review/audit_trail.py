"""Append-only audit trail of every prediction, in a local SQLite database (WAL mode).

Each record holds the time, the file's SHA-256 (never the image, never patient tags),
the model's SHA-256 and version, the predicted class, the probabilities, the flags and the CAM
method. Each write is its own transaction; WAL lets many sessions write and read at once.

Reader feedback lives beside the predictions, in a ``feedback`` table: a reader agrees or disagrees
with a result, may name the class they read (or "unsure") and may add a short note. Feedback is
append-only too (a trigger refuses updates and deletes): a changed mind is a new row, and the newest
row for a result is the one every view and export shows. Disagreements are the site's own error cases
(:meth:`AuditTrail.error_cases`). A trail written before the table existed gains it when opened.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import sqlite3
import threading
import time
import unicodedata
from contextlib import closing
from pathlib import Path

from core.paths import APP_DATA_DIR

AUDIT_DB_NAME = "audit.sqlite3"
DEFAULT_DATA_DIR = APP_DATA_DIR


def default_audit_path() -> Path:
    """``$MRI_APP_DATA/audit.sqlite3``; ``data/`` in the repository when the variable is unset.

    Read at call time, so the dashboard, the batch CLI and tests agree on one place.
    """
    return Path(os.environ.get("MRI_APP_DATA") or DEFAULT_DATA_DIR) / AUDIT_DB_NAME


DEFAULT_AUDIT_PATH = default_audit_path()  # as seen at import time; prefer default_audit_path()

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    source TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_version TEXT,
    predicted TEXT,
    confidence REAL,
    probabilities TEXT,
    ood INTEGER,
    uncertain INTEGER,
    cam_method TEXT,
    error TEXT
)
"""
COLUMNS = ("id", "timestamp", "source", "file_sha256", "model_sha256", "model_version", "predicted", "confidence",
           "probabilities", "ood", "uncertain", "cam_method", "error")

# Reader feedback. prediction_id points at predictions.id when the result's row is known (SQLite does not enforce
# the reference; record_feedback checks it). Append-only: the triggers refuse UPDATE and DELETE.
_FEEDBACK_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    prediction_id INTEGER REFERENCES predictions(id),
    file_sha256 TEXT NOT NULL,
    model_sha256 TEXT NOT NULL,
    model_version TEXT,
    predicted TEXT,
    verdict TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree')),
    reader_class TEXT,
    note TEXT NOT NULL DEFAULT '',
    reader TEXT NOT NULL DEFAULT ''
)""",
    "CREATE INDEX IF NOT EXISTS feedback_by_prediction ON feedback (prediction_id)",
    "CREATE INDEX IF NOT EXISTS feedback_by_result ON feedback (file_sha256, model_sha256)",
    ("CREATE TRIGGER IF NOT EXISTS feedback_no_update BEFORE UPDATE ON feedback "
     "BEGIN SELECT RAISE(ABORT, 'reader feedback is append-only'); END"),
    ("CREATE TRIGGER IF NOT EXISTS feedback_no_delete BEFORE DELETE ON feedback "
     "BEGIN SELECT RAISE(ABORT, 'reader feedback is append-only'); END"),
)
# PACS events (the dashboard's PACS page): who searched, reviewed and sent what, append-only like feedback.
# Study/series UIDs, the app's hashed study key and the SOP Instance UIDs written only: never a patient name, id
# or birth date (search filters are recorded by name, not by value). Trails from before this table gain it.
_PACS_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS pacs_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL,
    user TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('query', 'review', 'send')),
    study_uid TEXT,
    series_uid TEXT,
    study_key TEXT,
    sop_uids TEXT,
    detail TEXT
)""",
    "CREATE INDEX IF NOT EXISTS pacs_events_by_study ON pacs_events (study_uid)",
    ("CREATE TRIGGER IF NOT EXISTS pacs_events_no_update BEFORE UPDATE ON pacs_events "
     "BEGIN SELECT RAISE(ABORT, 'PACS events are append-only'); END"),
    ("CREATE TRIGGER IF NOT EXISTS pacs_events_no_delete BEFORE DELETE ON pacs_events "
     "BEGIN SELECT RAISE(ABORT, 'PACS events are append-only'); END"),
)
PACS_EVENT_COLUMNS = ("id", "timestamp", "user", "action", "study_uid", "series_uid", "study_key", "sop_uids", "detail")
PACS_ACTIONS = ("query", "review", "send")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
FEEDBACK_COLUMNS = ("id", "timestamp", "prediction_id", "file_sha256", "model_sha256", "model_version", "predicted",
                    "verdict", "reader_class", "note", "reader")
# What export_csv adds to each prediction: its newest feedback row, if any.
EXPORT_FEEDBACK_COLUMNS = ("feedback_verdict", "feedback_class", "feedback_note", "feedback_time")
EXPORT_COLUMNS = COLUMNS + EXPORT_FEEDBACK_COLUMNS
VERDICTS = ("agree", "disagree")
UNSURE = "unsure"  # a reader who disagrees without naming the right class
MAX_NOTE_CHARS = 1000
MAX_READER_CHARS = 100
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CLASS_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_ .+-]{0,63}")
_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # spreadsheet formula triggers (CSV injection)


def clean_text(text: str | None, *, max_chars: int, field: str, multiline: bool = True) -> str:
    """Free text as stored: control and bidi-format characters removed (newlines and tabs kept in notes),
    line ends unified, surrounding blanks stripped. Longer than ``max_chars`` after that: ``ValueError``."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{field} must be text, not {type(text).__name__}")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    keep = {"\n", "\t"} if multiline else set()
    text = "".join(ch if ch in keep or not _unwanted(ch) else (" " if ch in "\n\t" else "") for ch in text).strip()
    if len(text) > max_chars:
        raise ValueError(f"{field} is {len(text):,} characters long; at most {max_chars:,} are kept")
    return text


def _unwanted(ch: str) -> bool:
    """Control characters, lone surrogates and the bidi controls that can make a note read backwards."""
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in _BIDI_CONTROLS


def _csv_safe(value):
    """Free text that a spreadsheet would run as a formula gets a leading apostrophe in CSV exports."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class AuditTrail:
    """Thread-safe writer/reader for one SQLite file. Connections are per call: cheap, and
    safe across threads and processes."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path) if path is not None else default_audit_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with closing(self._connect()) as con, con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(_SCHEMA)
            # Trails written before model_version existed gain the column (empty for their old rows):
            # the version tells apart re-fits of the same weights (train.py --epochs 0).
            if "model_version" not in {r[1] for r in con.execute("PRAGMA table_info(predictions)")}:
                con.execute("ALTER TABLE predictions ADD COLUMN model_version TEXT")
            for statement in _FEEDBACK_SCHEMA:  # trails from before reader feedback gain the table
                con.execute(statement)
            for statement in _PACS_SCHEMA:  # trails from before the PACS page gain its table
                con.execute(statement)

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def record(self, *, source: str, file_sha256: str, model_sha256: str, model_version: str | None = None,
               predicted: str | None = None, confidence: float | None = None,
               probabilities: dict[str, float] | None = None,
               ood: bool | None = None, uncertain: bool | None = None, cam_method: str | None = None,
               error: str | None = None) -> int:
        """Append one record in its own transaction; returns its row id (for :meth:`record_feedback`)."""
        return self.record_many([dict(
            source=source, file_sha256=file_sha256, model_sha256=model_sha256, model_version=model_version,
            predicted=predicted, confidence=confidence, probabilities=probabilities, ood=ood, uncertain=uncertain,
            cam_method=cam_method, error=error)])[0]

    def record_many(self, records: list[dict]) -> list[int]:
        """Append records (the keyword arguments of :meth:`record`) in ONE transaction; returns their row ids.

        A batch runner writes a chunk at once: a commit costs a disk sync, so one per row capped the writer
        at well under a hundred rows a second."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows = [(stamp, r["source"], r["file_sha256"], r["model_sha256"], r.get("model_version"), r.get("predicted"),
                 r.get("confidence"), json.dumps(r["probabilities"]) if r.get("probabilities") is not None else None,
                 None if r.get("ood") is None else int(r["ood"]),
                 None if r.get("uncertain") is None else int(r["uncertain"]), r.get("cam_method"), r.get("error"))
                for r in records]
        ids = []
        with self._lock, closing(self._connect()) as con, con:  # "with con" commits or rolls back
            for row in rows:
                cur = con.execute("INSERT INTO predictions (timestamp, source, file_sha256, model_sha256, "
                                  "model_version, predicted, confidence, probabilities, ood, uncertain, cam_method, "
                                  "error) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
                ids.append(int(cur.lastrowid))
        return ids

    def recent(self, limit: int = 100) -> list[dict]:
        """Newest records first."""
        with closing(self._connect()) as con:
            cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM predictions ORDER BY id DESC LIMIT ?", (limit,))
            return [dict(zip(COLUMNS, r)) for r in cur.fetchall()]

    def count(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def export_csv(self, limit: int | None = None) -> str:
        """All (or the newest ``limit``) records as CSV text, newest first: the prediction columns, then the
        newest reader feedback on each (``feedback_verdict``, ``feedback_class``, ``feedback_note``,
        ``feedback_time``; empty where there is none)."""
        sql = (f"SELECT {', '.join('p.' + c for c in COLUMNS)}, f.verdict, f.reader_class, f.note, f.timestamp "
               "FROM predictions p LEFT JOIN feedback f "
               "ON f.id = (SELECT MAX(id) FROM feedback WHERE prediction_id = p.id) ORDER BY p.id DESC LIMIT ?")
        with closing(self._connect()) as con:
            rows = con.execute(sql, (limit if limit is not None else -1,)).fetchall()
        return _csv_text(EXPORT_COLUMNS, (dict(zip(EXPORT_COLUMNS, r)) for r in rows), free_text=("feedback_note",))

    # ---- reader feedback -------------------------------------------------------------------------------------

    def record_feedback(self, *, file_sha256: str, model_sha256: str, verdict: str,
                        model_version: str | None = None, predicted: str | None = None,
                        reader_class: str | None = None, note: str | None = "", reader: str | None = "",
                        prediction_id: int | None = None, class_names: list[str] | tuple[str, ...] | None = None
                        ) -> dict:
        """Append one reader's verdict on a result and return the stored row (a dict of ``FEEDBACK_COLUMNS``).

        ``verdict`` is "agree" or "disagree". ``reader_class`` is the class the reader reads instead (one of
        ``class_names``, or "unsure"); only a disagreement names one, and not the predicted class. The note
        (at most 1,000 characters) and the reader's name are stripped of control characters. Without
        ``prediction_id`` the feedback is attached to the newest prediction of the same file by the same model
        (and version, when given), if there is one; ``model_version`` and ``predicted`` default to that row's.
        Anything invalid raises ``ValueError`` with a message meant for the reader.
        """
        verdict = (verdict or "").strip().lower() if isinstance(verdict, str) else verdict
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be 'agree' or 'disagree', not {verdict!r}")
        file_sha256 = (file_sha256 or "").strip().lower() if isinstance(file_sha256, str) else ""
        if not _SHA256.fullmatch(file_sha256):
            raise ValueError("file_sha256 must be the file's SHA-256 (64 hex digits); file names are never stored")
        model_sha256 = clean_text(model_sha256, max_chars=128, field="model_sha256", multiline=False)
        if not model_sha256:
            raise ValueError("model_sha256 is required: feedback is about one model's result")
        note = clean_text(note, max_chars=MAX_NOTE_CHARS, field="The note")
        reader = clean_text(reader, max_chars=MAX_READER_CHARS, field="The reader's name", multiline=False)
        if reader_class is not None:
            reader_class = clean_text(reader_class, max_chars=64, field="reader_class", multiline=False) or None
        with self._lock, closing(self._connect()) as con, con:
            if prediction_id is not None:
                if isinstance(prediction_id, bool) or not isinstance(prediction_id, int):
                    raise ValueError(f"prediction_id must be a row id, not {prediction_id!r}")
                row = con.execute("SELECT id, file_sha256, model_sha256, model_version, predicted, probabilities "
                                  "FROM predictions WHERE id = ?", (prediction_id,)).fetchone()
                if row is None:
                    raise ValueError(f"there is no prediction {prediction_id} in the audit trail")
                if (row[1], row[2]) != (file_sha256, model_sha256) or (
                        model_version is not None and row[3] is not None and row[3] != model_version):
                    raise ValueError(f"prediction {prediction_id} is about another file or model")
            else:
                sql = ("SELECT id, file_sha256, model_sha256, model_version, predicted, probabilities FROM predictions "
                       "WHERE file_sha256 = ? AND model_sha256 = ? AND error IS NULL")
                args: tuple = (file_sha256, model_sha256)
                if model_version is not None:
                    sql, args = sql + " AND model_version IS ?", args + (model_version,)
                row = con.execute(sql + " ORDER BY id DESC LIMIT 1", args).fetchone()
            if row is not None:
                prediction_id = int(row[0])
                model_version = model_version if model_version is not None else row[3]
                predicted = predicted if predicted is not None else row[4]
                if class_names is None and row[5]:
                    try:
                        class_names = list(json.loads(row[5]))
                    except (ValueError, TypeError):
                        class_names = None
            _check_reader_class(verdict, reader_class, predicted, class_names)
            stored = dict(zip(FEEDBACK_COLUMNS, (
                None, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), prediction_id, file_sha256, model_sha256,
                model_version, predicted, verdict, reader_class, note, reader)))
            cur = con.execute(f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS[1:])}) "
                              f"VALUES ({', '.join('?' * (len(FEEDBACK_COLUMNS) - 1))})",
                              tuple(stored[c] for c in FEEDBACK_COLUMNS[1:]))
            stored["id"] = int(cur.lastrowid)
        return stored

    def feedback_for(self, file_sha256: str, model_sha256: str, model_version: str | None = None,
                     limit: int = -1) -> list[dict]:
        """Every feedback row on one file's result from one model (and version, when given), newest first:
        the first row is the one that counts."""
        sql = "SELECT " + ", ".join(FEEDBACK_COLUMNS) + " FROM feedback WHERE file_sha256 = ? AND model_sha256 = ?"
        args: tuple = ((file_sha256 or "").lower(), model_sha256)
        if model_version is not None:
            sql, args = sql + " AND model_version IS ?", args + (model_version,)
        with closing(self._connect()) as con:
            rows = con.execute(sql + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        return [dict(zip(FEEDBACK_COLUMNS, r)) for r in rows]

    def feedback(self, limit: int = -1) -> list[dict]:
        """All feedback rows, newest first."""
        with closing(self._connect()) as con:
            rows = con.execute(f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback ORDER BY id DESC LIMIT ?",
                               (limit,)).fetchall()
        return [dict(zip(FEEDBACK_COLUMNS, r)) for r in rows]

    def latest_feedback(self, limit: int = -1) -> list[dict]:
        """The newest feedback row of each result (file, model, model version), newest first: the current
        verdicts, with earlier changes of mind left out."""
        sql = (f"SELECT {', '.join(FEEDBACK_COLUMNS)} FROM feedback WHERE id IN (SELECT MAX(id) FROM feedback "
               "GROUP BY file_sha256, model_sha256, COALESCE(model_version, '')) ORDER BY id DESC LIMIT ?")
        with closing(self._connect()) as con:
            rows = con.execute(sql, (limit,)).fetchall()
        return [dict(zip(FEEDBACK_COLUMNS, r)) for r in rows]

    def feedback_counts(self) -> dict[str, int]:
        """Current verdicts (the newest per result) by kind, and ``rows``: every feedback row ever written."""
        out = {v: 0 for v in VERDICTS}
        for r in self.latest_feedback():
            out[r["verdict"]] += 1
        with closing(self._connect()) as con:
            out["rows"] = int(con.execute("SELECT COUNT(*) FROM feedback").fetchone()[0])
        return out

    def error_cases(self, limit: int = -1) -> list[dict]:
        """The site's own error cases: results whose newest feedback is a disagreement, newest first."""
        return [r for r in self.latest_feedback() if r["verdict"] == "disagree"][:limit if limit >= 0 else None]

    def export_feedback_csv(self) -> str:
        """Every feedback row, newest first, as CSV text (``FEEDBACK_COLUMNS``)."""
        return _csv_text(FEEDBACK_COLUMNS, self.feedback())

    def export_error_cases_csv(self) -> str:
        """:meth:`error_cases` as CSV text (``FEEDBACK_COLUMNS``)."""
        return _csv_text(FEEDBACK_COLUMNS, self.error_cases())

    # ---- PACS events -----------------------------------------------------------------------------------------

    def record_pacs_event(self, *, user: str, action: str, study_uid: str | None = None,
                          series_uid: str | None = None, study_key: str | None = None,
                          sop_uids: list[str] | None = None, detail: dict | None = None) -> int:
        """Append one PACS query, review or send by ``user``; returns its row id.

        UIDs must be DICOM UIDs (digits and dots), so no free text (a name) can slip into those columns;
        ``detail`` is stored as JSON and must hold no patient data (the caller's contract)."""
        user = clean_text(user, max_chars=MAX_READER_CHARS, field="The user", multiline=False)
        if not user:
            raise ValueError("a PACS event needs the signed-in user")
        if action not in PACS_ACTIONS:
            raise ValueError(f"action must be one of {', '.join(PACS_ACTIONS)}, not {action!r}")
        for uid in [study_uid, series_uid, *(sop_uids or [])]:
            if uid is not None and not (len(uid) <= 64 and _UID.fullmatch(uid)):
                raise ValueError(f"{uid!r} is not a DICOM UID")
        row = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), user, action, study_uid, series_uid, study_key,
               json.dumps(list(sop_uids)) if sop_uids is not None else None,
               json.dumps(detail, sort_keys=True) if detail is not None else None)
        with self._lock, closing(self._connect()) as con, con:
            cur = con.execute(f"INSERT INTO pacs_events ({', '.join(PACS_EVENT_COLUMNS[1:])}) "
                              f"VALUES ({', '.join('?' * (len(PACS_EVENT_COLUMNS) - 1))})", row)
            return int(cur.lastrowid)

    def pacs_events(self, limit: int = -1, study_uid: str | None = None) -> list[dict]:
        """PACS events, newest first (``sop_uids`` and ``detail`` decoded from JSON)."""
        sql, args = f"SELECT {', '.join(PACS_EVENT_COLUMNS)} FROM pacs_events", ()
        if study_uid is not None:
            sql, args = sql + " WHERE study_uid = ?", (study_uid,)
        with closing(self._connect()) as con:
            rows = con.execute(sql + " ORDER BY id DESC LIMIT ?", args + (limit,)).fetchall()
        out = [dict(zip(PACS_EVENT_COLUMNS, r)) for r in rows]
        for r in out:
            r["sop_uids"] = json.loads(r["sop_uids"]) if r["sop_uids"] else []
            r["detail"] = json.loads(r["detail"]) if r["detail"] else {}
        return out

    def pacs_status(self, study_uids: list[str]) -> dict[str, str]:
        """"sent" or "reviewed" for each study that has such an event (studies without one are left out)."""
        if not study_uids:
            return {}
        marks = ", ".join("?" * len(study_uids))
        with closing(self._connect()) as con:
            rows = con.execute(f"SELECT study_uid, action FROM pacs_events WHERE action IN ('review', 'send') "
                               f"AND study_uid IN ({marks})", list(study_uids)).fetchall()
        out: dict[str, str] = {}
        for uid, action in rows:
            out[uid] = "sent" if action == "send" or out.get(uid) == "sent" else "reviewed"
        return out


def _check_reader_class(verdict: str, reader_class: str | None, predicted: str | None,
                        class_names: list[str] | tuple[str, ...] | None) -> None:
    if reader_class is None:
        return
    if verdict == "agree":
        if reader_class != predicted:
            raise ValueError("an 'agree' verdict keeps the predicted class: leave the reader's class empty, or "
                             "choose 'disagree'")
        return
    if reader_class == UNSURE:
        return
    if class_names:
        if reader_class not in class_names:
            raise ValueError(f"unknown class {reader_class!r}: choose one of "
                             f"{', '.join(list(class_names) + [UNSURE])}")
    elif not _CLASS_NAME.fullmatch(reader_class):
        raise ValueError(f"{reader_class!r} is not a class name")
    if reader_class == predicted:
        raise ValueError(f"a disagreement cannot name the predicted class ({predicted}): choose another class "
                         f"or '{UNSURE}'")


def _csv_text(columns: tuple[str, ...], rows, free_text: tuple[str, ...] = ("note", "reader")) -> str:
    """CSV text; the readers' free text is kept from being run as a spreadsheet formula."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns))
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv_safe(v) if k in free_text else v for k, v in r.items()})
    return buf.getvalue()


def prediction_record(result, *, source: str, model_sha256: str, model_version: str | None,
                      uncertain_below: float | None = None, cam_method: str | None = None) -> dict:
    """The audit record (keyword arguments of :meth:`AuditTrail.record`) of one :class:`core.inference.pipeline.Result`.

    Only the file's SHA-256 identifies the input: never its name or path (they can name a patient), so an
    error text gets ``<file>`` in place of the name. ``uncertain_below``: the threshold the caller's
    ``uncertain`` flag used (None: not recorded). ``cam_method`` is recorded only when a CAM was computed.
    """
    pred = result.prediction
    error = result.error.replace(Path(result.path).name, "<file>") if result.error else None
    return dict(
        source=source, file_sha256=result.sha256, model_sha256=model_sha256, model_version=model_version,
        predicted=pred.label if pred else None, confidence=pred.confidence if pred else None,
        probabilities=pred.probabilities if pred else None, ood=pred.ood if pred else None,
        uncertain=pred.is_uncertain(uncertain_below) if pred and uncertain_below is not None else None,
        cam_method=cam_method if pred and result.cam is not None else None, error=error)


def record_prediction(audit: AuditTrail, result, **kw) -> int:
    """Append one :class:`core.inference.pipeline.Result` to ``audit`` (see :func:`prediction_record` for the fields and
    keyword arguments): the one way every engine writes a prediction. Returns the record's row id."""
    return audit.record(**prediction_record(result, **kw))
