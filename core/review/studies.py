"""Batch review of a folder of studies: one CSV row per series plus a per-slice CSV (no streamlit).

The library behind ``python -m core.batch FOLDER --studies`` (its command line is :mod:`core.batch`) and the
dashboard's study job (``ui.study_job``). A *study input* is what :func:`iter_study_inputs` finds under the
folder, walked lazily in sorted order: a NIfTI file (``.nii``, ``.nii.gz``), a ``.zip`` (of DICOM files and/or
NIfTI volumes) or a folder holding DICOM files directly (its own files only: each sub-folder is an input of its
own). An input may hold several series (a folder or zip of several DICOM series): each becomes a row. Every
series is reviewed by :func:`core.inference.study.review_series` (the one pipeline's stages), so the rows say
what the Study review page says.

As ``core.review.folder.run_batch`` does for files (the same :class:`core.review.results_csv.ResultsCsv`): rows
are appended and flushed one input at a time (an interruption loses at most the input in flight) and ``resume``
skips every input already in the CSV; a series or an input that cannot be read becomes a row with the reason in
``error`` and the run goes on; ``cancel`` stops before the next input; every row is appended to the audit trail,
identified by the series' content hash only. No DICOM patient tag is ever read out of the files
(``core.io.series_dicom`` keeps only ``core.io.dicom.SAFE_TAGS``).
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from core.review.audit_trail import AuditTrail
from core.review.folder import MODEL_COLUMNS, model_fields  # the same model columns as the rows of single slices
from core.io.files import IMAGE_EXTENSIONS, iter_image_files, resolve_within
from core.io.dicom import looks_like_dicom
from core.inference.predictor import Predictor
from core.io.read_series import read_series
from core.io.series import SeriesLoad, content_key
from core.io.series_dicom import DICOM_SUFFIXES
from core.io.volumes import NIFTI_SUFFIXES
from core.review.results_csv import ResultsCsv, done_paths
from core.inference.study import SeriesReview, load_rule, review_series, rule_model_sha256

SERIES_COLUMNS = ("path", "series", "series_sha256", "format", "plane", "n_slices", "verdict", "tumour",
                  "tumour_type", "positive_first", "positive_last", "n_positive_slices", "max_tumour_probability",
                  "top_slices", "uncertain", "outside_intended_use", "n_ood_slices", "rule", "rule_chosen_for_model",
                  "warnings", "error", *MODEL_COLUMNS)
_SNIFF_BYTES = 132  # "DICM" sits at offset 128 of a DICOM Part 10 file
_FILE_NAME = re.compile(r"[^\s/()]+\.(?:dcm|dicom|ima|nii\.gz|nii|zip)\b", re.IGNORECASE)


def slice_columns(class_names: list[str]) -> list[str]:
    """Columns of the per-slice CSV (slices numbered from 1, inferior first, as on the Study review page)."""
    return (["path", "series", "series_sha256", "slice"] + [f"p_{c}" for c in class_names]
            + ["tumour_probability", "positive", "outside_intended_use", "blank", "ood_reason", *MODEL_COLUMNS])


@dataclass(frozen=True)
class StudyInput:
    """One study input: ``path`` (a NIfTI file, a zip, or a folder of DICOM files) and the files it reads."""

    path: Path
    files: tuple[Path, ...]


def _is_dicom_file(path: Path) -> bool:
    if path.name.lower().endswith(DICOM_SUFFIXES):
        return True
    if path.suffix:  # another known extension (a JPEG, a text file): not a DICOM file without a suffix
        return False
    try:
        with open(path, "rb") as f:
            return looks_like_dicom(f.read(_SNIFF_BYTES))
    except OSError:
        return False


def _inside(path: Path, real_root: Path) -> bool:
    try:
        path.resolve().relative_to(real_root)
        return True
    except (OSError, ValueError):
        return False


def iter_study_inputs(root: str | Path, skipped: list[tuple[str, str]] | None = None) -> Iterator[StudyInput]:
    """The study inputs below ``root`` in sorted walk order, found lazily (see the module docstring).

    Hidden files and folders are left out; a folder that cannot be listed is reported in ``skipped``."""
    root = Path(root)
    real_root = root.resolve()

    def walk(folder: Path) -> Iterator[StudyInput]:
        try:
            with os.scandir(folder) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            if skipped is not None:
                skipped.append((str(folder), f"cannot be listed ({exc.strerror or exc})"))
            return
        files = []
        for e in entries:
            if e.is_file() and not (e.is_symlink() and not _inside(Path(e.path), real_root)):
                files.append(Path(e.path))
            elif e.is_file() and skipped is not None:  # as core.io.files: a link may not lead out of the folder
                skipped.append((e.path, "symlink to a file outside the folder"))
        dicom = [f for f in files if _is_dicom_file(f)]
        if dicom:
            yield StudyInput(folder, tuple(dicom))
        for f in files:
            if f.name.lower().endswith(NIFTI_SUFFIXES + (".zip",)):
                yield StudyInput(f, (f,))
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                yield from walk(Path(e.path))

    if root.is_file():
        yield StudyInput(root, (root,))
    else:
        yield from walk(root)


def count_study_inputs(root: str | Path) -> int:
    """How many study inputs :func:`iter_study_inputs` finds (a progress bar's total)."""
    return sum(1 for _ in iter_study_inputs(root))


def has_studies(root: str | Path) -> bool:
    """Whether at least one study input lies below ``root``."""
    return next(iter_study_inputs(root), None) is not None


def is_study_folder(root: str | Path) -> bool:
    """A folder ``python -m core.batch`` reviews as studies without ``--studies``: it holds NIfTI volumes or zips
    and no 2-D image file (JPG, PNG, TIFF, BMP). DICOM files alone stay one row per file, as before, unless
    ``--studies`` is given: a folder of single DICOM slices is a valid 2-D batch."""
    root = Path(root)
    if not root.is_dir():
        return False
    if next(iter(iter_image_files(root, IMAGE_EXTENSIONS - {".dcm"})), None) is not None:
        return False
    return any(i.path.name.lower().endswith(NIFTI_SUFFIXES + (".zip",)) for i in iter_study_inputs(root))


def series_row(rel: str, load: SeriesLoad, review: SeriesReview | None, model: dict[str, str],
               error: str = "", rule_for_model: bool | None = None) -> dict:
    """One row of the series CSV (every column present; empty strings where not applicable)."""
    row = dict.fromkeys(SERIES_COLUMNS, "")
    row.update(path=rel, series=load.label, error=error, **model)
    if load.series is not None:
        s = load.series
        row.update(series_sha256=s.key, format=s.source_format, warnings="; ".join(s.warnings))
    if review is not None:
        summary = review.summary()
        first, last = summary["positive_range"] or ("", "")
        row.update(plane=review.plane, n_slices=review.n_slices, verdict=review.verdict_text(),
                   tumour=bool(review.tumour and not review.series_ood), tumour_type=review.tumour_type or "",
                   positive_first=first, positive_last=last, n_positive_slices=summary["n_positive_slices"],
                   max_tumour_probability=round(summary["max_tumour_probability"], 6),
                   top_slices=";".join(map(str, summary["top_slices"])), uncertain=summary["uncertain"],
                   outside_intended_use=summary["outside_intended_use"], n_ood_slices=summary["n_ood_slices"],
                   rule=review.rule.describe(), rule_chosen_for_model=bool(rule_for_model))
    return row


def slice_rows(rel: str, load: SeriesLoad, review: SeriesReview, model: dict[str, str]) -> list[dict]:
    """The per-slice rows of one reviewed series (probabilities empty for a blank, unpredicted slice)."""
    out = []
    for k in range(review.n_slices):
        p = review.probabilities[k]
        row = {"path": rel, "series": load.label, "series_sha256": load.series.key, "slice": k + 1,
               "tumour_probability": round(float(review.tumour_prob[k]), 6), "positive": bool(review.positive[k]),
               "outside_intended_use": bool(review.ood[k]), "blank": bool(review.blank[k]),
               "ood_reason": review.ood_reasons[k] or "", **model}
        row.update({f"p_{c}": "" if p[i] != p[i] else round(float(p[i]), 6)  # NaN (blank slice): empty
                    for i, c in enumerate(review.class_names)})
        out.append(row)
    return out


def audit_error(error: str, rel: str) -> str:
    """An error text fit for the audit trail: the input's path and every file name replaced (a NIfTI or folder
    name can name the patient); the reason itself is kept."""
    text = error.replace(rel, "<study>").replace(Path(rel).name, "<study>")
    return _FILE_NAME.sub("<file>", text)


def _read_input(inp: StudyInput, rel: str) -> tuple[list[SeriesLoad], str]:
    """The series of one input and the input's content hash; never raises for bad input."""
    try:
        if inp.path.is_dir():
            files = [(str(f.relative_to(inp.path)), f.read_bytes()) for f in inp.files]
        else:
            files = [(inp.path.name, inp.path.read_bytes())]
    except OSError as exc:
        return [SeriesLoad(Path(rel).name, error=f"{rel}: cannot be read ({exc.strerror or exc})")], ""
    key = content_key(*sorted(d for _, d in files))
    try:
        loads = read_series(files)
    except Exception as exc:  # noqa: BLE001 - a reader bug must cost one input, never the batch
        loads = [SeriesLoad(Path(rel).name, error=f"{rel}: unexpected error ({type(exc).__name__}: {exc})")]
    if not loads:
        loads = [SeriesLoad(Path(rel).name, error=f"{rel}: no NIfTI volume or DICOM series found")]
    return loads, key


def default_slices_path(out_csv: str | Path) -> Path:
    """Where the per-slice CSV goes when not named: next to the series CSV, ``<stem>_slices.csv``."""
    out = Path(out_csv)
    return out.with_name(f"{out.stem}_slices.csv")


def run_studies(predictor: Predictor, root: str | Path, out_csv: str | Path | None = None,
                slices_csv: str | Path | None = None, *, plane: str = "axial", resume: bool = False,
                cancel: threading.Event | None = None, audit: AuditTrail | None = None,
                skipped: list[tuple[str, str]] | None = None, allowed_roots: list[str | Path] | None = None,
                chunk: int = 32, slice_sink: list[dict] | None = None) -> Iterator[dict]:
    """Review every study input below ``root``, yielding one row per series as soon as its input is done.

    The rows of an input are written to ``out_csv`` (and its slices to ``slices_csv``; default next to
    ``out_csv``, ``<stem>_slices.csv``), flushed, and appended to ``audit`` (one transaction) before any of
    them is yielded. ``slice_sink``: also collect the per-slice rows there (the dashboard's job). With
    ``allowed_roots``, a ``root`` outside them raises :class:`core.io.files.PathNotAllowedError` first.
    """
    if allowed_roots is not None:
        root = resolve_within(root, allowed_roots)
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root} is not a folder")
    base = root if root.is_dir() else root.parent
    model, rule = model_fields(predictor), load_rule()
    rule_for_model = rule_model_sha256() == predictor.bundle.sha256
    out_path = Path(out_csv) if out_csv else None
    slices_path = Path(slices_csv) if slices_csv else (default_slices_path(out_path) if out_path else None)
    skip = done_paths(out_path) if (out_path and resume) else set()
    # Each header is checked before its file is opened for writing; a refused slices CSV closes the series one.
    series_table = ResultsCsv(out_path, SERIES_COLUMNS, resume) if out_path else None
    try:
        slice_table = ResultsCsv(slices_path, slice_columns(predictor.class_names), resume) if slices_path else None
    except BaseException:
        if series_table is not None:
            series_table.close()
        raise
    try:
        for inp in iter_study_inputs(root, skipped):
            if cancel is not None and cancel.is_set():
                break
            rel = inp.path.relative_to(base).as_posix() if inp.path != base else inp.path.name
            if rel in skip:
                continue
            loads, input_key = _read_input(inp, rel)
            rows, slices, records = [], [], []
            for load in loads:
                review, error = None, load.error or ""
                if load.series is not None:
                    try:
                        review = review_series(predictor, load.series, rule, plane, chunk)
                    except Exception as exc:  # noqa: BLE001 - one series must never stop the batch
                        error = f"{load.label}: the series could not be reviewed ({type(exc).__name__}: {exc})"
                rows.append(series_row(rel, load, review, model, error, rule_for_model))
                if review is not None:
                    slices.extend(slice_rows(rel, load, review, model))
                records.append(dict(
                    source="study-batch", file_sha256=load.series.key if load.series is not None else input_key,
                    model_sha256=model["model_sha256"], model_version=model["model_version"],
                    predicted=review.verdict_text() if review else None,
                    confidence=float(review.tumour_prob.max(initial=0.0)) if review else None,
                    ood=review.series_ood if review else None, uncertain=review.uncertain if review else None,
                    error=audit_error(error, rel) if error else None))
            # Slices first: a crash between the two writes re-reviews the input on resume rather than leaving
            # a series row whose slices are missing.
            if slice_table is not None:
                slice_table.write(slices)
            if series_table is not None:
                series_table.write(rows)
            if audit is not None:
                audit.record_many(records)
            if slice_sink is not None:
                slice_sink.extend(slices)
            yield from rows
    finally:
        for table in (series_table, slice_table):
            if table is not None:
                table.close()
