"""The results CSV of a batch run, written a chunk at a time and resumable: the one implementation behind
``core.review.folder.run_batch`` (a row per file) and ``core.review.studies.run_studies`` (a row per series, a
row per slice).

Resuming appends to the CSV only when its header is exactly the columns this version writes: appending under
another header (an older CSV, another model's classes) would shift every value into the wrong column.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable, Sequence


def done_paths(out_csv: Path) -> set[str]:
    """The ``path`` values already present in a results CSV (what ``resume`` skips); empty when it does not exist."""
    if not out_csv.exists():
        return set()
    with open(out_csv, newline="") as f:
        return {r["path"] for r in csv.DictReader(f) if r.get("path")}


class ResultsCsv:
    """A results CSV open for appending rows (dicts; keys outside ``columns`` are ignored).

    ``resume`` with an existing file: checked to have the header ``columns`` (else ValueError, before anything
    is written) and appended to. Otherwise the file is created (or truncated) and its header written and
    flushed at once, so even a run that finds nothing leaves a CSV with its columns.
    """

    def __init__(self, path: Path, columns: Sequence[str], resume: bool = False):
        self.path = path
        append = resume and path.exists()
        if append:
            self._check_header(list(columns))
        self._handle = open(path, "a" if append else "w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=list(columns), extrasaction="ignore")
        if not append:
            self._writer.writeheader()
            self._handle.flush()

    def _check_header(self, columns: list[str]) -> None:
        with open(self.path, newline="") as f:
            header = next(csv.reader(f), None)
        if header is not None and header != columns:
            raise ValueError(f"{self.path} has other columns than this version writes (an older CSV or another "
                             "model's classes); resume into a new file")

    def write(self, rows: Iterable[dict]) -> None:
        """Append ``rows`` and flush: a killed process keeps every row written before."""
        self._writer.writerows(rows)
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()
