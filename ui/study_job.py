"""A batch review of a folder of studies running in the background (no streamlit).

The same job machinery as a folder of slices (:class:`ui.batch_job.BatchJob`: a worker thread, the server-wide
limit, Stop, progress polled by the page), over ``core.review.studies.run_studies``: one row per series, the
per-slice rows collected beside them. Progress counts study inputs (a NIfTI file, a DICOM folder, a zip), since
the number of series is known only once each input is read.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from core.review.audit_trail import AuditTrail
from core.inference.predictor import Predictor
from core.review.studies import SERIES_COLUMNS, count_study_inputs, run_studies, slice_columns
from ui.batch_job import CANCELLED, DEFAULT_MAX_JOBS, DONE, BatchJob, format_seconds


_INTS = ("n_slices", "positive_first", "positive_last", "n_positive_slices", "n_ood_slices")
_FLAGS = ("tumour", "uncertain", "outside_intended_use", "rule_chosen_for_model")


@dataclass(eq=False)
class StudyJob(BatchJob):
    """One run over a folder of studies; ``rows`` are ``core.review.studies`` series rows, ``slices`` their slices."""

    slices: list[dict] = field(default_factory=list)
    plane: str = "axial"
    # Stop ends the run between inputs, never between the series of one input (a zip or folder of several series
    # is kept whole, as its CSV rows are): the worker is not told to break, the reader of inputs is.
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @classmethod
    def start_studies(cls, predictor: Predictor, root: str | Path, *, label: str, audit: AuditTrail | None,
                      plane: str = "axial", max_jobs: int = DEFAULT_MAX_JOBS) -> "StudyJob":
        """Count the study inputs under ``root`` and start reviewing them in the background.

        Raises ``ui.batch_job.BatchLimitError`` when ``max_jobs`` reviews already run in this process."""
        root = Path(root)
        job = cls(root=root, label=label, class_names=list(predictor.class_names),
                  model_sha256=predictor.bundle.sha256, total=count_study_inputs(root), uncertain_below=0.0,
                  plane=plane)
        rows = run_studies(predictor, root, plane=plane, cancel=job._stop, audit=audit, skipped=job.skipped,
                           slice_sink=job.slices)
        job.launch(rows, max_jobs=max_jobs)
        return job

    def _work(self, rows) -> None:
        super()._work(rows)
        with self._lock:  # still in the worker thread: a Stop shows as such before wait() returns
            if self._stop.is_set() and self.status == DONE:
                self.status = CANCELLED

    def cancel(self, wait: float = 0.0) -> None:
        """Stop before the next study input; every series finished so far is kept."""
        self._stop.set()
        if wait > 0:
            self.wait(wait)

    @property
    def stopping(self) -> bool:
        return self.running and self._stop.is_set()

    @property
    def done(self) -> int:
        """Study inputs finished (every series of an input is written at once, so its path marks it done)."""
        return len(self._by_path)

    @property
    def n_series(self) -> int:
        return len(self.rows)

    def progress_text(self) -> str:
        done, elapsed = self.done, self.elapsed_seconds
        return (f"{done:,} / {self.total:,} studies · {self.n_series:,} series · {self.n_errors} unreadable · "
                f"elapsed {format_seconds(elapsed)} · ETA {format_seconds(self.eta_seconds if self.running else 0.0)}")

    def frame(self) -> pd.DataFrame:
        """The series rows as a typed DataFrame with the series CSV's columns (a copy taken under the lock);
        an error row's empty cells are missing values (written back as empty cells)."""
        df = pd.DataFrame(self.rows_snapshot(), columns=list(SERIES_COLUMNS))
        for c in _INTS:
            df[c] = pd.to_numeric(df[c].replace("", None), errors="coerce").astype("Int64")
        df["max_tumour_probability"] = pd.to_numeric(df["max_tumour_probability"].replace("", None), errors="coerce")
        for c in _FLAGS:
            df[c] = df[c].map(lambda v: pd.NA if v in ("", None) else str(v) == "True").astype("boolean")
        for c in set(SERIES_COLUMNS) - set(_INTS) - set(_FLAGS) - {"max_tumour_probability"}:
            df[c] = df[c].fillna("").astype(str)
        return df

    def series_csv(self) -> str:
        """Every series row, as ``python -m core.batch --studies`` writes its CSV."""
        buf = io.StringIO()
        self.frame().to_csv(buf, index=False)
        return buf.getvalue()

    def slices_csv(self) -> str:
        """Every per-slice row so far (the CLI's ``<out>_slices.csv``)."""
        with self._lock:
            rows = list(self.slices)
        buf = io.StringIO()
        pd.DataFrame(rows, columns=slice_columns(self.class_names)).to_csv(buf, index=False)
        return buf.getvalue()
