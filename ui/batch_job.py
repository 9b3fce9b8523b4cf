"""A batch review running as a background job owned by the user's session (no streamlit).

:meth:`BatchJob.start` runs ``core.review.folder.run_batch`` (a generator) in a worker thread owned by
the job. The thread keeps going while the user is on another page, reruns the script or changes
a filter: the job object lives in the session state, and pages only read it (rows, progress) and
call :meth:`BatchJob.cancel`. The worker never calls streamlit. It appends each finished row under
the job's lock; readers copy under the same lock (:meth:`BatchJob.rows_snapshot`,
:meth:`BatchJob.frame`). Each row is written to the audit trail by ``run_batch`` (``AuditTrail`` is
thread-safe) before the worker receives it.

At most ``max_jobs`` jobs run at once in the server process (all sessions together): each one
takes the model's compute, so more would only slow every reader down. A start over the limit
raises :class:`BatchLimitError` with a message for the user.
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
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd

from core.review.audit_trail import AuditTrail
from core.review.folder import MODEL_COLUMNS, Engine, csv_columns, run_batch
from core.io.files import count_image_files
from core.io.types import DEFAULT_LIMITS, DecodeLimits
from core.inference.predictor import Predictor

RUNNING, DONE, CANCELLED, FAILED = "running", "done", "cancelled", "failed"
DEFAULT_MAX_JOBS = 2  # app_config.AppConfig.max_batch_jobs
STOP_WAIT_S = 30.0  # how long Stop waits for the chunk in flight, so the count shown is final


class BatchLimitError(RuntimeError):
    """The server already runs its maximum number of batch reviews. ``str(err)`` is user-facing."""


# Jobs whose worker thread is alive, across every session of this server process.
_ACTIVE: set["BatchJob"] = set()
_ACTIVE_LOCK = threading.Lock()


def active_jobs() -> int:
    """How many batch reviews are running in this server process (all sessions)."""
    with _ACTIVE_LOCK:
        return len(_ACTIVE)


def cancel_all(wait: float = STOP_WAIT_S) -> None:
    """Stop every running batch review of this process (tests, shutdown); finished rows are kept."""
    with _ACTIVE_LOCK:
        jobs = list(_ACTIVE)
    for job in jobs:
        job.cancel(wait=wait)


def format_seconds(s: float | None) -> str:
    """``m:ss`` or ``h:mm:ss``; "–" when unknown."""
    if s is None or not np.isfinite(s):
        return "–"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def neighbour(paths: Sequence[str], label: str, step: int = 1) -> str | None:
    """The path ``step`` rows after ``label`` in ``paths`` (negative: before); None past either end or when
    ``label`` is not listed."""
    try:
        i = list(paths).index(label) + int(step)
    except ValueError:
        return None
    return paths[i] if 0 <= i < len(paths) else None


@dataclass(eq=False)  # identity, not field equality: jobs are kept in a set
class BatchJob:
    """One batch run over ``root``; ``rows`` are ``core.review.folder`` result rows, appended by the worker thread.

    Read ``rows`` through :meth:`rows_snapshot` or :meth:`frame` (copies taken under the lock)."""

    root: Path
    label: str  # what the user chose, for display
    class_names: list[str]
    model_sha256: str
    total: int
    uncertain_below: float
    upload_dir: Path | None = None  # temporary folder holding uploaded files (deleted with the job)
    engine_label: str = ""  # where the files are predicted, for display ("" : this server, the local engine)
    rows: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    status: str = RUNNING
    error: str = ""
    created: float = field(default_factory=time.time)
    view_paths: list[str] | None = None  # row paths of the batch table as last filtered (previous/next scan)
    _started: float | None = field(default=None, repr=False)  # time.monotonic() when the worker started
    _ended: float | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _by_path: dict[str, dict] = field(default_factory=dict, repr=False)
    _version: int = 0  # bumped on every change to rows: the frame cache key
    _frame: pd.DataFrame | None = field(default=None, repr=False)
    _frame_version: int = -1
    _discarded: bool = False

    @classmethod
    def start(cls, predictor: Predictor, root: str | Path, *, label: str, audit: AuditTrail | None,
              uncertain_below: float, limits: DecodeLimits = DEFAULT_LIMITS, upload_dir: Path | None = None,
              chunk_size: int = 8, max_jobs: int = DEFAULT_MAX_JOBS, engine: Engine | None = None,
              engine_label: str = "") -> "BatchJob":
        """Count the files under ``root`` and start reviewing them in the background.

        ``engine``: where the files are predicted (``core.review.folder.run_batch``'s; default the local engine, e.g. a
        connected ``core.review.ray_engine.RayEngine``); rows, progress, Stop and the audit trail are the same.
        Raises :class:`BatchLimitError` when ``max_jobs`` reviews already run in this process."""
        root = Path(root)
        job = cls(root=root, label=label, class_names=list(predictor.class_names),
                  model_sha256=predictor.bundle.sha256, total=count_image_files(root),
                  uncertain_below=uncertain_below, upload_dir=upload_dir, engine_label=engine_label)
        rows = run_batch(predictor, root, cam_method=None, chunk_size=chunk_size, audit=audit,
                         uncertain_below=uncertain_below, limits=limits, skipped=job.skipped, cancel=job._cancel,
                         engine=engine)
        job.launch(rows, max_jobs=max_jobs)
        return job

    def launch(self, rows: Iterator[dict], max_jobs: int = DEFAULT_MAX_JOBS) -> None:
        """Consume ``rows`` (result rows, e.g. a ``run_batch`` generator) in a new worker thread.

        Raises :class:`BatchLimitError` (and closes ``rows``) when ``max_jobs`` jobs already run."""
        with _ACTIVE_LOCK:
            if len(_ACTIVE) >= max_jobs:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
                raise BatchLimitError(
                    f"The server is already running {len(_ACTIVE)} batch review(s), its limit (`max_batch_jobs` "
                    f"in the app config is {max_jobs}). Start again when one has finished.")
            _ACTIVE.add(self)
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._work, args=(rows,), name=f"batch-review-{id(self):x}",
                                        daemon=True)
        try:
            self._thread.start()
        except BaseException:  # e.g. no thread can be started: give the slot back
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self)
            raise

    def _work(self, rows: Iterator[dict]) -> None:
        status, error = DONE, ""
        try:
            for row in rows:
                with self._lock:
                    self.rows.append(row)  # finished and audited: kept even if a stop arrived meanwhile
                    self._by_path[row["path"]] = row
                    self._version += 1
                if self._cancel.is_set():
                    status = CANCELLED
                    break
            else:
                # A Stop that lands before the first row (e.g. while a Ray cluster is still starting its actors)
                # ends the engine without a row: still a stopped review, not a finished one.
                if self._cancel.is_set():
                    status = CANCELLED
        except Exception as exc:  # noqa: BLE001 - e.g. the folder vanished; keep finished rows
            status, error = FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            close = getattr(rows, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001
                    pass
            with self._lock:
                self._ended = time.monotonic()
                self.status, self.error = status, error
                self._version += 1
                remove_uploads = self._discarded
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self)
            if remove_uploads:
                self._remove_uploads()

    # -- control -------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """The worker is still reviewing files (also while a requested stop is being honoured)."""
        return self.status == RUNNING

    @property
    def stopping(self) -> bool:
        """Stop was requested and the worker is finishing the chunk in flight."""
        return self.running and self._cancel.is_set()

    def cancel(self, wait: float = 0.0) -> None:
        """Stop after the row in flight; rows finished so far are kept. With ``wait`` > 0, wait up to that
        many seconds for the worker to end, so the count shown afterwards is final."""
        self._cancel.set()
        if wait > 0:
            self.wait(wait)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the worker has ended (or ``timeout`` seconds passed); True when it has ended."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.running

    def discard(self, wait: float = STOP_WAIT_S) -> None:
        """Cancel and delete the temporary upload folder, if any (by the worker as it ends, if it is still
        running after ``wait`` seconds)."""
        with self._lock:
            self._discarded = True
        self.cancel(wait=wait)
        with self._lock:
            ended = not self.running
        if ended:
            self._remove_uploads()

    def _remove_uploads(self) -> None:
        if self.upload_dir is not None:
            shutil.rmtree(self.upload_dir, ignore_errors=True)

    # -- progress ------------------------------------------------------------------
    @property
    def done(self) -> int:
        """Files finished (rows), unreadable ones included."""
        return len(self.rows)

    @property
    def n_errors(self) -> int:
        """Unreadable files so far."""
        with self._lock:
            return sum(1 for r in self.rows if r.get("error"))

    @property
    def fraction(self) -> float:
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)

    @property
    def elapsed_seconds(self) -> float:
        """Wall time of the worker: it keeps counting while the user is on another page."""
        if self._started is None:
            return 0.0
        return (self._ended if self._ended is not None else time.monotonic()) - self._started

    @property
    def active_seconds(self) -> float:
        """Alias of :attr:`elapsed_seconds` (the name used before the job ran in a thread)."""
        return self.elapsed_seconds

    @property
    def eta_seconds(self) -> float | None:
        done, elapsed = self.done, self.elapsed_seconds
        if done == 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total - done) * elapsed / done)

    def progress_text(self) -> str:
        """One line: files done of total, unreadable, speed, elapsed wall time and ETA."""
        done, elapsed = self.done, self.elapsed_seconds
        rate = done / elapsed if elapsed > 0 else 0.0
        return (f"{done:,} / {self.total:,} files · {self.n_errors} unreadable · "
                f"{rate:.1f} files/s · elapsed {format_seconds(elapsed)} · "
                f"ETA {format_seconds(self.eta_seconds if self.running else 0.0)}")

    @property
    def partial(self) -> bool:
        """Not every file was read (running, stopped or failed): figures over the rows would be biased."""
        return self.status != DONE

    # -- results -------------------------------------------------------------------
    def rows_snapshot(self) -> list[dict]:
        """A copy of the rows (each row copied too), consistent at one moment."""
        with self._lock:
            return [dict(r) for r in self.rows]

    @property
    def labelled(self) -> bool:
        """Some row has a ground truth (a labelled tree, or a folder named after a class)."""
        with self._lock:
            return any(r.get("true_label") for r in self.rows)

    def record_cams(self, method: str, peaks: dict[str, tuple[float, float] | None]) -> None:
        """Record heatmaps computed for some rows (the gallery's page): the method and each peak (x, y as
        fractions of the original image), so CSV downloads carry them. ``peaks``: row path -> peak."""
        with self._lock:
            changed = False
            for rel, peak in peaks.items():
                row = self._by_path.get(rel)
                if row is None or peak is None or row.get("error"):
                    continue
                new = {"cam_method": method, "cam_peak_x": round(float(peak[0]), 4),
                       "cam_peak_y": round(float(peak[1]), 4)}
                if any(row.get(k) != v for k, v in new.items()):
                    row.update(new)
                    changed = True
            if changed:
                self._version += 1

    def frame(self) -> pd.DataFrame:
        """All rows as a typed DataFrame (cached until the rows change)."""
        with self._lock:
            version = self._version
            if self._frame is not None and self._frame_version == version:
                return self._frame
            rows = [dict(r) for r in self.rows]
        frame = rows_to_frame(rows, self.class_names)
        with self._lock:
            self._frame, self._frame_version = frame, version
        return frame

    def abs_path(self, rel: str) -> Path:
        return self.root / rel


def rows_to_frame(rows: Iterable[dict], class_names: list[str]) -> pd.DataFrame:
    """``core.review.folder`` rows (strings for empty cells) -> typed DataFrame with the CSV columns."""
    cols = csv_columns(class_names)
    df = pd.DataFrame(list(rows), columns=cols)
    num = ["confidence"] + [f"p_{c}" for c in class_names] + ["cam_peak_x", "cam_peak_y", "uncertain_below"]
    for c in num:
        df[c] = pd.to_numeric(df[c].replace("", np.nan), errors="coerce").astype(float)
    for c in ("ood", "uncertain"):
        df[c] = df[c].map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) else str(v).lower() == "true")
    df["correct"] = df["correct"].map(
        lambda v: pd.NA if v == "" or v is None else (bool(v) if isinstance(v, (bool, np.bool_))
                                                       else str(v).lower() == "true")).astype("boolean")
    for c in ("predicted", "true_label", "error", "ood_reason", "warnings", "path", "file_sha256", "cam_method",
              *MODEL_COLUMNS):
        df[c] = df[c].fillna("").astype(str)
    return df


def with_threshold(df: pd.DataFrame, uncertain_below: float) -> pd.DataFrame:
    """Recompute the 'uncertain' flag for the current sidebar threshold (error rows stay False); the
    ``uncertain_below`` column then says which threshold the flag used, in the table and in its CSV."""
    out = df.copy()
    out["uncertain"] = out["confidence"].lt(uncertain_below) & out["predicted"].ne("")
    out["uncertain_below"] = float(uncertain_below)
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


def export_csv(job: BatchJob, uncertain_below: float, paths: Sequence[str] | None = None) -> str:
    """The results CSV of ``job`` (columns: ``core.review.folder.csv_columns``), read at call time, so heatmap peaks
    recorded by the gallery until now are in it; ``uncertain`` and ``uncertain_below`` follow the threshold
    given. ``paths``: only these rows, in the job's order (None: all)."""
    df = with_threshold(job.frame(), uncertain_below)
    if paths is not None:
        df = df[df["path"].isin(set(paths))]
    return df[csv_columns(job.class_names)].to_csv(index=False)


MISSING = "–"  # shown in a cell with no value (an unreadable file has no probabilities)


def display_frame(df: pd.DataFrame, class_names: list[str], labelled: bool) -> pd.DataFrame:
    """The columns shown in the results table, in order. Class probabilities become fixed-width text
    ("0.123"; :data:`MISSING` for an unreadable file): the table would otherwise print "None" in those
    cells, and fixed-width text in [0, 1] still sorts in numeric order."""
    probs = [f"p_{c}" for c in class_names]
    cols = ["path", "predicted", "confidence"] + probs + ["ood", "uncertain"]
    if labelled:
        cols += ["true_label", "correct"]
    cols += ["error", "ood_reason", "warnings"]
    out = df[cols].copy()
    for c in probs:
        out[c] = [MISSING if not np.isfinite(v) else f"{v:.3f}" for v in out[c].astype(float)]
    return out


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
    from core.io.files import PathNotAllowedError, resolve_within

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
