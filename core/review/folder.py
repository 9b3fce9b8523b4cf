"""Streaming batch review of a folder (or a list file) of JPG/PNG/TIFF/DICOM slices.

    python -m core.batch SOURCE --out results.csv [--cam-method gradcam] [--device auto] [--resume]
                         [--audit-db PATH | --no-audit] [--num-workers N]
                         [--engine ray [--ray-address ADDR] [--gpus-per-worker G]] [--parquet-dir DIR]
    python -m core.batch FOLDER --studies --out series.csv [--slices-out slices.csv] [--resume]

With ``--studies`` (chosen automatically for a folder of NIfTI volumes or zips and no 2-D images) FOLDER holds
whole series: one row per series plus a per-slice CSV (``core.review.studies``).

SOURCE is a folder, walked lazily (``core.io.files.iter_image_files``), or a text file listing one path or URI
(``file://``, ``s3://``…, read through fsspec) per line. Files go through the one pipeline (:func:`core.inference.pipeline.stream`, or its two stages on Ray Data with
``--engine ray``, see ``core.review.ray_engine``), so memory does not grow with the folder. Each row is appended
to the CSV and flushed a chunk at a time: an interruption loses at most the chunk in flight, and ``--resume``
skips every file already in the CSV, whichever engine wrote it. A file that cannot be read becomes a row
with the reason in ``error``; it never stops the run. Every row is also appended to the audit trail
(``core.review.audit_trail.prediction_record``, one transaction per chunk; the CLI writes to
``$MRI_APP_DATA/audit.sqlite3`` unless told otherwise), by this process only.

Every row names the model (name, version, weights SHA-256) and the uncertainty threshold its
``uncertain`` flag used, as the dashboard's single-scan JSON does. ``cam_method`` and
``cam_peak_x``/``cam_peak_y`` are filled only for rows whose heatmap was computed (``--cam-method``
here; in the dashboard, the gallery pages shown with heatmaps on).
"""
from __future__ import annotations

import argparse
import csv
import sqlite3
import sys
import threading
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from core.review.audit_trail import AuditTrail, default_audit_path, prediction_record
from core.model.checkpoint import DEFAULT_MODEL_DIR, load_bundle
from core.model.device import select_device
from core.errors import CheckpointError
from core.io.files import count_image_files, iter_image_files, iter_list_file, resolve_within
from core.io.image import DEFAULT_LIMITS, DecodeLimits
from core.inference.pipeline import Result, display_path, stream
from core.inference.predictor import Prediction, Predictor
from core.model.registry import find_model
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


def done_paths(out_csv: Path) -> set[str]:
    """Relative paths already present in a results CSV (for ``--resume``)."""
    if not out_csv.exists():
        return set()
    with open(out_csv, newline="") as f:
        return {r["path"] for r in csv.DictReader(f) if r.get("path")}


Engine = Callable[..., Iterator[Result]]
"""Turns files into :class:`core.inference.pipeline.Result` s in input order: ``engine(predictor, files, *, root,
cam_method, batch_size, limits, cancel)``. The local engine is :func:`core.inference.pipeline.stream`; the Ray engine is
:class:`core.review.ray_engine.RayEngine`."""


def local_engine(num_workers: int | None = 0) -> Engine:
    """:func:`core.inference.pipeline.stream` in this process (0) or with ``num_workers`` decode processes."""
    return partial(stream, num_workers=num_workers)


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
    if allowed_roots is not None:
        root = resolve_within(root, allowed_roots)
        if not Path(root).is_dir():
            raise ValueError(f"{root} is not a folder")
    root = Path(root)
    if not root.exists():
        raise ValueError(f"{root} is not a folder")
    base, files = list_sources(root, skipped)
    # A folder named after a class labels every file in it (resolve: "." or "x/.." have a real name).
    folder_truth = truth_from_path(f"{root.resolve().name}/file", predictor.class_names) if root.is_dir() else None
    columns = csv_columns(predictor.class_names)
    out_path = Path(out_csv) if out_csv else None
    skip = done_paths(out_path) if (out_path and resume) else set()
    # Opened first: a missing pyarrow or shards of other columns stop the run before anything is written.
    shards = ParquetShards(parquet_dir, columns, resume=resume) if parquet_dir else None
    writer = handle = None
    if out_path:
        new_file = not (resume and out_path.exists())
        if not new_file:
            with open(out_path, newline="") as f:
                header = next(csv.reader(f), None)
            if header is not None and header != columns:
                # Appending rows under another header would shift every value into the wrong column.
                raise ValueError(f"{out_path} has other columns than this version writes (an older CSV or another "
                                 "model's classes); resume into a new file")
        handle = open(out_path, "w" if new_file else "a", newline="")
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        if new_file:
            writer.writeheader()
            handle.flush()
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
        if writer is not None:
            writer.writerows(rows)
            handle.flush()
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
        if handle is not None:
            handle.close()
        if shards is not None:
            shards.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Review a folder of brain MRI slices; one CSV row per file.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", metavar="SOURCE",
                   help="folder to walk recursively (JPG, PNG, TIFF, BMP, DICOM), or a text file listing one path "
                        "(relative to the list file's folder) or URI (file://, s3://… through fsspec) per line")
    p.add_argument("--out", default="results.csv", help="CSV to write (rows are appended as they finish)")
    p.add_argument("--weights", default=str(DEFAULT_MODEL_DIR), help="model folder, or with --model the registry "
                                                                      "folder holding it (core.model.registry)")
    p.add_argument("--model", default=None, help="a model of the registry --weights by name (card name or folder "
                                                 "name, e.g. brain-mri-feltrin44); default: the folder's own bundle")
    p.add_argument("--cam-method", default=None, help="also compute Grad-CAM peaks: gradcam, gradcam++, eigencam, layercam")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--resume", action="store_true", help="skip files already in --out and append")
    p.add_argument("--chunk-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--uncertain-below", type=float, default=DEFAULT_UNCERTAIN_BELOW, help="confidence under this is 'uncertain'")
    p.add_argument("--audit-db", default=None,
                   help="SQLite audit trail every prediction is appended to (default: $MRI_APP_DATA/audit.sqlite3, "
                        "MRI_APP_DATA defaulting to data/ in the repository)")
    p.add_argument("--no-audit", action="store_true", help="do not write the audit trail")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process (with --num-workers decode processes); ray: a Ray Data pipeline "
                        "(needs ray[data]; see README 'Scaling out')")
    p.add_argument("--num-workers", type=int, default=None,
                   help="local: decode processes (0: decode in this process; default 0); ray: model actors "
                        "(default: one per CPU of the cluster, or per GPU with --gpus-per-worker)")
    p.add_argument("--ray-address", default=None,
                   help="with --engine ray: join this cluster (e.g. 10.0.0.1:6379 or 'auto'); default: start Ray "
                        "on this machine")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="with --engine ray: GPUs per model actor")
    p.add_argument("--parquet-dir", default=None,
                   help="also write the rows (the CSV's columns, typed) as Parquet shards part-NNNNN.parquet in this "
                        "folder, for very large runs (needs pyarrow; --resume continues them)")
    from core.review.studies import add_study_arguments, is_study_folder, run_cli  # whole series: core/review/studies.py

    add_study_arguments(p)
    args = p.parse_args(argv)
    if args.engine == "local" and (args.ray_address or args.gpus_per_worker):
        p.error("--ray-address and --gpus-per-worker need --engine ray")
    try:
        args.weights = str(find_model(args.weights, args.model)) if args.model else args.weights
        predictor = Predictor(load_bundle(args.weights), select_device(args.device), batch_size=args.chunk_size)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = Path(args.folder)
    if not folder.exists():
        print(f"error: {folder} is not a folder or a list file", file=sys.stderr)
        return 2
    if args.studies or is_study_folder(folder):
        return run_cli(args, predictor)  # a folder of studies (NIfTI, DICOM series folders, zips): a row per series
    if args.engine == "ray":
        from core.review.ray_engine import RayEngine  # Ray is optional: imported only when asked for

        try:
            engine = RayEngine(args.weights, address=args.ray_address, num_workers=args.num_workers,
                               gpus_per_worker=args.gpus_per_worker, device=args.device)
        except RuntimeError as exc:  # ray not installed
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        engine = local_engine(args.num_workers or 0)
    total = count_image_files(folder) if folder.is_dir() else None
    if total == 0:
        print(f"no image files (jpg, png, tif, bmp, dcm) found under {folder}")
    try:
        audit = None if args.no_audit else AuditTrail(args.audit_db or default_audit_path())
    except (OSError, sqlite3.Error) as exc:
        print(f"error: cannot open the audit trail ({exc}); fix the path or pass --no-audit", file=sys.stderr)
        return 2
    skipped: list[tuple[str, str]] = []
    counts = {"done": 0, "errors": 0}
    try:
        with tqdm(total=total, desc="reviewing", unit="img") as bar:
            for row in run_batch(predictor, folder, args.out, cam_method=args.cam_method, resume=args.resume,
                                 chunk_size=args.chunk_size, audit=audit, uncertain_below=args.uncertain_below,
                                 skipped=skipped, engine=engine, parquet_dir=args.parquet_dir):
                counts["done"] += 1
                counts["errors"] += bool(row["error"])
                bar.update(1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {counts['done']} rows saved in {args.out}; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    except (ValueError, RuntimeError) as exc:  # --resume into other columns; no pyarrow; Ray cluster unreachable
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        getattr(engine, "close", lambda: None)()  # stops a local Ray the engine started
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"wrote {counts['done']} rows ({counts['errors']} unreadable) to {args.out}"
          + (f" and Parquet shards in {args.parquet_dir}" if args.parquet_dir else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
