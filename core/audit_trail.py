"""Append-only audit trail of every prediction, in a local SQLite database (WAL mode).

Each record holds the time, the file's SHA-256 (never the image, never patient tags),
the model's SHA-256 and version, the predicted class, the probabilities, the flags and the CAM
method. Each write is its own transaction; WAL lets many sessions write and read at once.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

AUDIT_DB_NAME = "audit.sqlite3"
DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent / "data"  # the app's data folder (app_config.py)


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

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("PRAGMA busy_timeout=30000")
        return con

    def record(self, *, source: str, file_sha256: str, model_sha256: str, model_version: str | None = None,
               predicted: str | None = None, confidence: float | None = None,
               probabilities: dict[str, float] | None = None,
               ood: bool | None = None, uncertain: bool | None = None, cam_method: str | None = None,
               error: str | None = None) -> None:
        """Append one record in its own transaction."""
        row = (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), source, file_sha256, model_sha256, model_version,
               predicted, confidence, json.dumps(probabilities) if probabilities is not None else None,
               None if ood is None else int(ood), None if uncertain is None else int(uncertain), cam_method, error)
        with self._lock, closing(self._connect()) as con, con:  # "with con" commits or rolls back
            con.execute("INSERT INTO predictions (timestamp, source, file_sha256, model_sha256, model_version, "
                        "predicted, confidence, probabilities, ood, uncertain, cam_method, error) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)

    def recent(self, limit: int = 100) -> list[dict]:
        """Newest records first."""
        with closing(self._connect()) as con:
            cur = con.execute(f"SELECT {', '.join(COLUMNS)} FROM predictions ORDER BY id DESC LIMIT ?", (limit,))
            return [dict(zip(COLUMNS, r)) for r in cur.fetchall()]

    def count(self) -> int:
        with closing(self._connect()) as con:
            return int(con.execute("SELECT COUNT(*) FROM predictions").fetchone()[0])

    def export_csv(self, limit: int | None = None) -> str:
        """All (or the newest ``limit``) records as CSV text."""
        rows = self.recent(limit if limit is not None else -1)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
