"""A resumable batch review job kept in the user's session (no streamlit).

The job wraps ``core.batch.run_batch`` (a generator). The page pulls rows one at a
time with :meth:`BatchJob.step` inside its script run and updates the progress bar
between rows. If the run is interrupted (the user presses *Stop*, changes a filter
or switches page) the generator simply stays suspended in the session: already
finished rows are kept, and the next run either continues or cancels it.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from core.audit_trail import AuditTrail
from core.batch import csv_columns, run_batch
from core.files import count_image_files
from core.image_io import DEFAULT_LIMITS, DecodeLimits
from core.predictor import Predictor

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"


def format_seconds(s: float | None) -> str:
    if s is None or not np.isfinite(s):
        return "–"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


@dataclass
class BatchJob:
    """One batch run over ``root``; ``rows`` are ``core.batch`` result rows."""

    root: Path
    label: str  # what the user chose, for display
    class_names: list[str]
    model_sha256: str
    total: int
    uncertain_below: float
    upload_dir: Path | None = None  # temporary folder holding uploaded files (deleted with the job)
    rows: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    status: str = RUNNING
    error: str = ""
    active_seconds: float = 0.0
    created: float = field(default_factory=time.time)
    _gen: object = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _stop_requested: bool = False
    _frame: pd.DataFrame | None = field(default=None, repr=False)
    _frame_len: int = -1

    @classmethod
    def start(cls, predictor: Predictor, root: str | Path, *, label: str, audit: AuditTrail | None,
              uncertain_below: float, limits: DecodeLimits = DEFAULT_LIMITS, upload_dir: Path | None = None,
              chunk_size: int = 8) -> "BatchJob":
        root = Path(root)
        job = cls(root=root, label=label, class_names=list(predictor.class_names),
                  model_sha256=predictor.bundle.sha256, total=count_image_files(root),
                  uncertain_below=uncertain_below, upload_dir=upload_dir)
        job._gen = run_batch(predictor, root, cam_method=None, chunk_size=chunk_size, audit=audit,
                             uncertain_below=uncertain_below, limits=limits, skipped=job.skipped)
        return job

    # -- running -----------------------------------------------------------------
    # With ``runner.fastReruns`` Streamlit starts the next script run while the previous
    # one is still finishing its current step, so two threads may touch a job at once:
    # the generator is only advanced under ``_lock``, and ``cancel`` never waits for it.
    @property
    def running(self) -> bool:
        return self.status == RUNNING

    def step(self) -> dict | None:
        """Process until the next row is ready and return it; None once finished or stopped."""
        with self._lock:
            if self._gen is None:
                return None
            if self.status != RUNNING or self._stop_requested:  # cancelled while this thread waited
                self._end(CANCELLED if self.status == RUNNING else self.status)
                return None
            t0 = time.monotonic()
            try:
                row = next(self._gen)  # type: ignore[call-overload]
            except StopIteration:
                self._end(DONE)
                return None
            except Exception as exc:  # noqa: BLE001 - e.g. the folder vanished; keep finished rows
                self.error = f"{type(exc).__name__}: {exc}"
                self._end(FAILED)
                return None
            finally:
                self.active_seconds += time.monotonic() - t0
            self.rows.append(row)  # finished (and audited) even if a stop arrived meanwhile
            if self._stop_requested:
                self._end(CANCELLED)
            return row

    def cancel(self, wait: float = 0.0) -> None:
        """Stop; rows finished so far are kept. Safe while another thread is in ``step``:
        waits up to ``wait`` seconds for that step's row, so the count shown is final."""
        self._stop_requested = True
        if self.status == RUNNING:
            self.status = CANCELLED
        if self._lock.acquire(timeout=wait) if wait > 0 else self._lock.acquire(blocking=False):
            try:
                self._end(self.status)
            finally:
                self._lock.release()

    def _end(self, status: str) -> None:
        if self.status in (RUNNING, CANCELLED):
            self.status = status
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()  # type: ignore[attr-defined]
            except Exception:  # noqa: BLE001
                pass

    def discard(self) -> None:
        """Cancel and delete the temporary upload folder, if any."""
        self.cancel()
        if self.upload_dir is not None:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    # -- progress ------------------------------------------------------------------
    @property
    def done(self) -> int:
        return len(self.rows)

    @property
    def n_errors(self) -> int:
        return sum(1 for r in self.rows if r.get("error"))

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)

    @property
    def eta_seconds(self) -> float | None:
        if self.done == 0 or self.active_seconds <= 0:
            return None
        return max(0.0, (self.total - self.done) * self.active_seconds / self.done)

    def progress_text(self) -> str:
        rate = self.done / self.active_seconds if self.active_seconds > 0 else 0.0
        return (f"{self.done:,} / {self.total:,} files · {self.n_errors} unreadable · "
                f"{rate:.1f} files/s · elapsed {format_seconds(self.active_seconds)} · "
                f"ETA {format_seconds(self.eta_seconds)}")

    # -- results -------------------------------------------------------------------
    @property
    def labelled(self) -> bool:
        return any(r.get("true_label") for r in self.rows)

    def frame(self) -> pd.DataFrame:
        """All rows as a typed DataFrame (cached until new rows arrive)."""
        if self._frame is None or self._frame_len != len(self.rows):
            self._frame = rows_to_frame(self.rows, self.class_names)
            self._frame_len = len(self.rows)
        return self._frame

    def abs_path(self, rel: str) -> Path:
        return self.root / rel


def rows_to_frame(rows: Iterable[dict], class_names: list[str]) -> pd.DataFrame:
    """``core.batch`` rows (strings for empty cells) -> typed DataFrame with the CSV columns."""
    cols = csv_columns(class_names)
    df = pd.DataFrame(list(rows), columns=cols)
    num = ["confidence"] + [f"p_{c}" for c in class_names] + ["cam_peak_x", "cam_peak_y"]
    for c in num:
        df[c] = pd.to_numeric(df[c].replace("", np.nan), errors="coerce").astype(float)
    for c in ("ood", "uncertain"):
        df[c] = df[c].map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else str(v).lower() == "true")
    df["correct"] = df["correct"].map(
        lambda v: pd.NA if v == "" or v is None else (bool(v) if isinstance(v, (bool, np.bool_))
                                                       else str(v).lower() == "true")).astype("boolean")
    for c in ("predicted", "true_label", "error", "ood_reason", "warnings", "path", "file_sha256", "cam_method"):
        df[c] = df[c].fillna("").astype(str)
    return df


def with_threshold(df: pd.DataFrame, uncertain_below: float) -> pd.DataFrame:
    """Recompute the 'uncertain' flag for the current sidebar threshold (error rows stay False)."""
    out = df.copy()
    out["uncertain"] = out["confidence"].lt(uncertain_below) & out["predicted"].ne("")
    return out


def filter_frame(df: pd.DataFrame, *, classes: list[str] | None = None, confidence: tuple[float, float] = (0.0, 1.0),
                 flagged_only: bool = False, errors_only: bool = False, wrong_only: bool = False) -> pd.DataFrame:
    """Rows matching every active filter. Unreadable files have no class or confidence, so a
    class or confidence filter that excludes anything also hides them."""
    mask = pd.Series(True, index=df.index)
    all_classes = classes is None or set(classes) >= set(df["predicted"][df["predicted"] != ""].unique())
    if not all_classes:
        mask &= df["predicted"].isin(classes or [])
    lo, hi = confidence
    if lo > 0.0 or hi < 1.0:
        mask &= df["confidence"].between(lo, hi)
    if flagged_only:
        mask &= df["ood"] | df["uncertain"]
    if errors_only:
        mask &= df["error"] != ""
    if wrong_only:
        mask &= df["correct"].eq(False).fillna(False).astype(bool)
    return df[mask]


def display_frame(df: pd.DataFrame, class_names: list[str], labelled: bool) -> pd.DataFrame:
    """The columns shown in the results table, in order."""
    cols = ["path", "predicted", "confidence"] + [f"p_{c}" for c in class_names] + ["ood", "uncertain"]
    if labelled:
        cols += ["true_label", "correct"]
    cols += ["error", "ood_reason", "warnings"]
    return df[cols]


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def save_uploads(files: Iterable, parent: str | Path | None = None) -> Path:
    """Write uploaded files (objects with ``.name`` and ``.getvalue()``) into a new temporary
    folder and return it. Names are reduced to a safe basename; duplicates get a suffix."""
    folder = Path(tempfile.mkdtemp(prefix="mri-upload-", dir=parent))
    used: set[str] = set()
    for f in files:
        name = _SAFE.sub("_", Path(str(f.name)).name).strip("._") or "upload"
        stem, suffix = Path(name).stem, Path(name).suffix
        candidate, i = name, 1
        while candidate.lower() in used:
            candidate = f"{stem}_{i}{suffix}"
            i += 1
        used.add(candidate.lower())
        (folder / candidate).write_bytes(f.getvalue())
    return folder


_SKIP_DIRS = {"__pycache__", "node_modules", "site-packages"}


def list_subfolders(roots: Iterable[str | Path], depth: int = 2, limit: int = 300) -> list[str]:
    """Folders below the allowed roots (roots included, hidden folders skipped) for a folder picker.

    Bounded: at most ``depth`` levels and ``limit`` entries; symlinks leading outside a root are left out.
    """
    from core.files import PathNotAllowedError, resolve_within

    roots = [Path(r) for r in roots]
    out: list[str] = []
    frontier = [(r, 0) for r in roots if r.is_dir()]
    while frontier and len(out) < limit:
        folder, level = frontier.pop(0)
        try:
            resolve_within(folder, roots)
        except PathNotAllowedError:
            continue
        out.append(str(folder))
        if level >= depth:
            continue
        try:
            with os.scandir(folder) as it:
                subs = sorted(e.name for e in it if e.is_dir() and not e.name.startswith(".")
                              and e.name not in _SKIP_DIRS)
        except OSError:
            continue
        frontier.extend((folder / n, level + 1) for n in subs)
    return out
