"""Streaming batch review of a folder (or a list file) of JPG/PNG/TIFF/DICOM slices: one result row per file.

The library behind ``python -m core.batch`` (its command line is :mod:`core.batch`) and the dashboard's batch job
(``ui.batch_job``). A whole-series folder is :mod:`core.review.studies`' job.

A source is a folder, walked lazily (``core.io.files.iter_image_files``), or a text file listing one path or URI
(``file://``, ``s3://``…, read through fsspec) per line. Files go through the one pipeline
(:func:`core.inference.pipeline.stream`, or its two stages on Ray Data with ``core.review.ray_engine``), so memory
does not grow with the folder. Each row is appended to the CSV (:class:`core.review.results_csv.ResultsCsv`) and
flushed a chunk at a time: an interruption loses at most the chunk in flight, and ``resume`` skips every file
already in the CSV, whichever engine wrote it. A file that cannot be read becomes a row with the reason in
``error``; it never stops the run. Every row is also appended to the audit trail
(``core.review.audit_trail.prediction_record``, one transaction per chunk), by this process only.

Every row names the model (name, version, weights SHA-256) and the uncertainty threshold its
``uncertain`` flag used, as the dashboard's single-scan JSON does. ``cam_method`` and
``cam_peak_x``/``cam_peak_y`` are filled only for rows whose heatmap was computed (``--cam-method``
of ``python -m core.batch``; in the dashboard, the gallery pages shown with heatmaps on).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Iterator

from core.review.audit_trail import AuditTrail, prediction_record
from core.io.files import iter_image_files, iter_list_file, resolve_within
from core.io.types import DEFAULT_LIMITS, DecodeLimits
from core.inference.pipeline import Result, display_path, stream
from core.inference.predictor import Prediction, Predictor
from core.review.results_csv import ResultsCsv, done_paths
from core.review.shards import ParquetShards

DEFAULT_UNCERTAIN_BELOW = 0.6


MODEL_COLUMNS = ("model_name", "model_version", "model_sha256")


def csv_columns(class_names: list[str]) -> list[str]:
    """Column order of the results CSV: the one definition, used by the CLI, the dashboard's table and its
    CSV downloads."""
    return (["path", "predicted", "confidence"] + [f"p_{c}" for c in class_names]
            + ["ood", "ood_reason", "uncertain", "true_label", "correct", "cam_method", "cam_peak_x", "cam_peak_y",
               "file_sha256", "warnings", "error", *MODEL_COLUMNS, "uncertain_below"])


def model_fields(predictor: Predictor) -> dict[str, str]:
    """The model columns of a result row (:data:`MODEL_COLUMNS`) for the model ``predictor`` serves."""
    b = predictor.bundle
    return {"model_name": b.name, "model_version": b.version, "model_sha256": b.sha256}


def truth_from_path(rel: str, class_names: list[str], folder_truth: str | None = None) -> str | None:
    """Ground truth when the file sits under a folder named after a class (labelled tree): the innermost such
    folder of ``rel``, else ``folder_truth`` (the class the reviewed folder itself is named after, so reviewing
    ``Testing/meningioma`` still knows its files are meningiomas)."""
    lowered = {c.lower(): c for c in class_names}
    for part in reversed(Path(rel).parts[:-1]):
        if part.lower() in lowered:
            return lowered[part.lower()]
    return folder_truth


def make_row(rel: str, class_names: list[str], pred: Prediction | None = None, error: str = "",
             file_sha256: str = "", cam_method: str = "", peak: tuple[float, float] | None = None,
             uncertain_below: float = DEFAULT_UNCERTAIN_BELOW, folder_truth: str | None = None,
             model: dict[str, str] | None = None) -> dict:
    """One result row (all CSV columns present; empty strings where not applicable). ``model``: the
    :func:`model_fields` of the model that made ``pred`` (unreadable files name it too: the row says which
    run it belongs to)."""
    row = dict.fromkeys(csv_columns(class_names), "")
    truth = truth_from_path(rel, class_names, folder_truth)
    row.update(path=rel, file_sha256=file_sha256, error=error, true_label=truth or "",
               uncertain_below=uncertain_below, **(model or {}))
    if pred is not None:
        row.update(predicted=pred.label, confidence=round(pred.confidence, 6), ood=pred.ood,
                   ood_reason=pred.ood_reason or "", uncertain=pred.is_uncertain(uncertain_below),
                   warnings="; ".join(pred.warnings), cam_method=cam_method)
        row.update({f"p_{c}": round(p, 6) for c, p in pred.probabilities.items()})
        if truth is not None:
            row["correct"] = pred.label == truth
        if peak is not None:
            row.update(cam_peak_x=round(peak[0], 4), cam_peak_y=round(peak[1], 4))
    return row


Engine = Callable[..., Iterator[Result]]
"""Turns files into :class:`core.inference.pipeline.Result` s in input order: ``engine(predictor, files, *, root,
cam_method, batch_size, limits, cancel)``. The local engine is :func:`core.inference.pipeline.stream`; the Ray engine is
:class:`core.review.ray_engine.RayEngine`."""


def local_engine(num_workers: int | None = 0) -> Engine:
    """:func:`core.inference.pipeline.stream` in this process (0) or with ``num_workers`` decode processes; with
    ``cam_method``, through a :class:`core.explain.cam.Explainer` built once per run."""

    def engine(predictor: Predictor, files, *, cam_method: str | None = None, **kwargs) -> Iterator[Result]:
        from core.explain.cam import Explainer  # grad-cam is imported only when CAMs are asked for

        explainer = Explainer(predictor) if cam_method else None
        return stream(predictor, files, cam_method=cam_method, explainer=explainer, num_workers=num_workers,
                      **kwargs)

    return engine


def list_sources(source: str | Path, skipped: list[tuple[str, str]] | None = None) -> tuple[Path, Iterator[Path]]:
    """The files of a batch source: a folder (walked lazily, see :func:`core.io.files.iter_image_files`) or a
    list file with one path or URI per line (:func:`core.io.files.iter_list_file`: blank lines and ``#`` comments
    ignored; relative paths are taken against the list file's folder; ``file://``, ``s3://``… URIs are read
    through fsspec). Returns the root that row paths are relative to, and the files."""
    source = Path(source)
    if source.is_dir():
        return source, iter_image_files(source, skipped=skipped)
    if source.is_file():  # paths and URIs (read through fsspec), streamed line by line
        return source.parent, iter_list_file(source)
    raise ValueError(f"{source} is not a folder or a list file")


def _checked_root(root: str | Path, allowed_roots: list[str | Path] | None) -> Path:
    """``root`` as a Path, refused (ValueError, or :class:`core.io.files.PathNotAllowedError` outside
    ``allowed_roots``) before anything is read or written."""
    if allowed_roots is not None:
        root = resolve_within(root, allowed_roots)
        if not Path(root).is_dir():
            raise ValueError(f"{root} is not a folder")
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root} is not a folder")
    return root


def run_batch(predictor: Predictor, root: str | Path, out_csv: str | Path | None = None, *,
              cam_method: str | None = None, resume: bool = False, chunk_size: int = 16,
              cancel: threading.Event | None = None, audit: AuditTrail | None = None,
              uncertain_below: float = DEFAULT_UNCERTAIN_BELOW, limits: DecodeLimits = DEFAULT_LIMITS,
              skipped: list[tuple[str, str]] | None = None,
              allowed_roots: list[str | Path] | None = None, engine: Engine | None = None,
              parquet_dir: str | Path | None = None) -> Iterator[dict]:
    """Review every image below ``root`` (or every file a list file names), yielding one row per file as soon
    as it is done, in walk order.

    Rows are appended to ``out_csv`` (if given, flushed) and to ``audit`` (one transaction) a chunk of
    ``chunk_size`` at a time, before any of them is yielded: a consumer that stops (or a killed process) loses
    no row it was handed, and at most the chunk in flight. Setting ``cancel``
    stops reading files; the batch in hand is finished and kept. With ``allowed_roots``, a ``root`` outside
    them (``../``, absolute paths, symlinks) raises :class:`core.io.files.PathNotAllowedError` before anything
    is read or written. ``engine``: where the files are predicted (default :func:`local_engine`); rows,
    columns, resume and the audit trail are the same whichever engine runs, and only this (driver) process
    writes the CSV and the audit trail. ``parquet_dir``: also write the rows there as Parquet shards
    (:class:`core.review.shards.ParquetShards`; RuntimeError without pyarrow).
    """
    root = _checked_root(root, allowed_roots)
    base, files = list_sources(root, skipped)
    # A folder named after a class labels every file in it (resolve: "." or "x/.." have a real name).
    folder_truth = truth_from_path(f"{root.resolve().name}/file", predictor.class_names) if root.is_dir() else None
    columns = csv_columns(predictor.class_names)
    out_path = Path(out_csv) if out_csv else None
    skip = done_paths(out_path) if (out_path and resume) else set()
    # Opened first: a missing pyarrow or shards of other columns stop the run before anything is written.
    shards = ParquetShards(parquet_dir, columns, resume=resume) if parquet_dir else None
    table = ResultsCsv(out_path, columns, resume) if out_path else None
    if shards is not None and resume:  # rows a killed run had only in the CSV first; then skip what shards hold
        if out_path is not None and out_path.exists():
            shards.catch_up(out_path)
        skip |= shards.paths()
    model = model_fields(predictor)
    todo = (f for f in files if display_path(f, base) not in skip) if skip else files
    engine = engine or local_engine()
    done: list[tuple[dict, Result]] = []

    def flush() -> list[dict]:
        """Write the finished rows (CSV flushed, audit in one transaction) before handing them out."""
        rows = [row for row, _ in done]
        if table is not None:
            table.write(rows)
        if shards is not None:
            shards.add(rows)
        if audit is not None:
            audit.record_many([prediction_record(
                res, source="batch", model_sha256=predictor.bundle.sha256, model_version=predictor.bundle.version,
                uncertain_below=uncertain_below, cam_method=cam_method) for _, res in done])
        done.clear()
        return rows

    try:
        for res in engine(predictor, todo, root=base, cam_method=cam_method, batch_size=chunk_size, limits=limits,
                          cancel=cancel):
            done.append((make_row(res.path, predictor.class_names, res.prediction, error=res.error,
                                  file_sha256=res.sha256, cam_method=(cam_method or "") if res.cam is not None else "",
                                  peak=res.cam.peak if res.cam is not None else None,
                                  uncertain_below=uncertain_below, folder_truth=folder_truth, model=model), res))
            if len(done) >= chunk_size:
                yield from flush()
        yield from flush()
    finally:
        if table is not None:
            table.close()
        if shards is not None:
            shards.close()
