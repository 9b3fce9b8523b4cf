"""Result rows as Parquet shards, for runs too large for one CSV to be handy (``python -m core.batch --parquet-dir``).

The shards hold the CSV's columns (:func:`core.review.folder.csv_columns`), in its order, typed: probabilities,
confidence and CAM peaks as float64 (null on error rows), ``ood``/``uncertain``/``correct`` as bool (null where
the CSV cell is empty), the rest as strings. Files are ``part-00000.parquet``, ``part-00001.parquet``… of at
most ``rows_per_shard`` rows each, in the order the rows were made; read them all with
``pyarrow.parquet.read_table(DIR)`` or ``pandas.read_parquet(DIR)``.

The driver writes them, as it writes the CSV and the audit trail (one writer whatever the engine; Ray workers
only predict). A shard is written to a temporary name and renamed, so a killed run never leaves half a shard;
the rows it still buffered are in the CSV, and ``--resume`` copies them from there into the next shard
(:meth:`ParquetShards.catch_up`), so CSV and shards hold the same rows again.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable

PYARROW_HINT = "writing Parquet shards needs pyarrow (.venv/bin/pip install pyarrow; ray[data] installs it)"
FLOAT_PREFIXES = ("p_",)
FLOAT_COLUMNS = frozenset({"confidence", "cam_peak_x", "cam_peak_y", "uncertain_below"})
BOOL_COLUMNS = frozenset({"ood", "uncertain", "correct"})


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise RuntimeError(PYARROW_HINT) from None
    return pyarrow


def _kind(column: str) -> str:
    if column in FLOAT_COLUMNS or column.startswith(FLOAT_PREFIXES):
        return "float"
    return "bool" if column in BOOL_COLUMNS else "str"


def _value(kind: str, v):
    """A row cell (as ``make_row`` makes it, or as read back from the CSV: strings) as its Parquet value."""
    if v == "" or v is None:
        return None if kind != "str" else ""
    if kind == "float":
        return float(v)
    if kind == "bool":
        return v if isinstance(v, bool) else str(v).strip().lower() == "true"
    return str(v)


class ParquetShards:
    """Appends result rows to ``folder`` as Parquet shards (see the module docstring).

    Args:
        folder: created if missing. Without ``resume``, shards already there are deleted (a new run, as the
            CSV is overwritten); with it, new shards follow the last one, and shards with other columns are
            refused (ValueError), as the CSV's header is.
        columns: the CSV's columns (:func:`core.review.folder.csv_columns`).
        rows_per_shard: rows per file; the driver holds at most this many rows before writing them.

    Raises RuntimeError with an install hint when pyarrow is missing.
    """

    def __init__(self, folder: str | Path, columns: list[str], *, resume: bool = False,
                 rows_per_shard: int = 10_000):
        pa = _pyarrow()
        self.pa, self.pq = pa, pa.parquet
        types = {"float": pa.float64(), "bool": pa.bool_(), "str": pa.string()}
        self.columns = list(columns)
        self.kinds = [_kind(c) for c in self.columns]
        self.schema = pa.schema([(c, types[k]) for c, k in zip(self.columns, self.kinds)])
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows_per_shard = max(1, int(rows_per_shard))
        self._buffer: list[dict] = []
        for tmp in self.folder.glob(".part-*.tmp"):  # a shard a killed run was writing: its rows are in the CSV
            tmp.unlink()
        existing = self.shards()
        if not resume:
            for f in existing:
                f.unlink()
            existing = []
        for f in existing:
            if self.pq.read_schema(f).names != self.columns:
                raise ValueError(f"{f} has other columns than this version writes (another model's classes?); "
                                 "write the shards of this run to a new folder")
        self._next = 1 + max((int(f.stem.split("-")[1]) for f in existing), default=-1)

    def shards(self) -> list[Path]:
        """The shard files in the folder, in order."""
        return sorted(self.folder.glob("part-*.parquet"))

    def paths(self) -> set[str]:
        """Row paths already in the shards (for ``--resume``)."""
        out: set[str] = set()
        for f in self.shards():
            out.update(self.pq.read_table(f, columns=["path"]).column("path").to_pylist())
        return out

    def catch_up(self, csv_path: str | Path) -> int:
        """Add the rows of ``csv_path`` that no shard holds (a killed run's buffered rows); returns how many."""
        have, n = self.paths(), 0
        with open(csv_path, newline="") as f:
            for row in csv.DictReader(f):
                if row.get("path") and row["path"] not in have:
                    self.add([row])
                    n += 1
        return n

    def add(self, rows: Iterable[dict]) -> None:
        """Buffer rows; a full shard is written as soon as there is one."""
        self._buffer.extend(rows)
        while len(self._buffer) >= self.rows_per_shard:
            self._write(self._buffer[:self.rows_per_shard])
            del self._buffer[:self.rows_per_shard]

    def close(self) -> None:
        """Write the rows still buffered (a last, shorter shard)."""
        if self._buffer:
            self._write(self._buffer)
            self._buffer = []

    def _write(self, rows: list[dict]) -> None:
        data = {c: [_value(k, r.get(c, "")) for r in rows] for c, k in zip(self.columns, self.kinds)}
        table = self.pa.table(data, schema=self.schema)
        final = self.folder / f"part-{self._next:05d}.parquet"
        tmp = self.folder / f".part-{self._next:05d}.tmp"
        self.pq.write_table(table, tmp)
        os.replace(tmp, final)  # atomic: a reader or a resumed run sees a whole shard or none
        self._next += 1
