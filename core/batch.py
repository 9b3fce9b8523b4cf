"""``python -m core.batch``: review a folder (or list file) of slices, or a folder of studies: one CSV row per file
or series. The command line only; the work is in :mod:`core.review.folder` and :mod:`core.review.studies`.

    python -m core.batch SOURCE --out results.csv [--cam-method gradcam] [--device auto] [--resume]
                         [--audit-db PATH | --no-audit] [--num-workers N]
                         [--engine ray [--ray-address ADDR] [--gpus-per-worker G]] [--parquet-dir DIR]
    python -m core.batch FOLDER --studies --out series.csv [--slices-out slices.csv] [--resume] [--plane axial]

SOURCE is a folder or a text file listing one path or URI per line (:func:`core.review.folder.list_sources`).
With ``--studies`` (chosen automatically for a folder of NIfTI volumes or zips and no 2-D images,
:func:`core.review.studies.is_study_folder`) FOLDER holds whole series: one row per series plus a per-slice CSV.
Every row is also appended to the audit trail, ``$MRI_APP_DATA/audit.sqlite3`` unless told otherwise.
Exit codes: 0 done, 2 refused (bad model, source, options, audit trail or CSV to resume), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from tqdm import tqdm

from core.errors import CheckpointError
from core.inference.predictor import Predictor
from core.io.files import count_image_files
from core.model.checkpoint import load_bundle
from core.model.device import select_device
from core.model.registry import add_model_options, model_folder
from core.review.audit_trail import AuditTrail, default_audit_path
from core.review.folder import DEFAULT_UNCERTAIN_BELOW, Engine, local_engine, run_batch
from core.review.ray_engine import RayEngine  # imports no Ray until an engine is made
from core.review.studies import count_study_inputs, default_slices_path, is_study_folder, run_studies


class Refused(Exception):
    """A run refused before it starts: :func:`main` prints ``error: <message>`` to stderr and exits 2."""


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m core.batch``, the ``--studies`` ones included."""
    p = argparse.ArgumentParser(description="Review a folder of brain MRI slices; one CSV row per file.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", metavar="SOURCE",
                   help="folder to walk recursively (JPG, PNG, TIFF, BMP, DICOM), or a text file listing one path "
                        "(relative to the list file's folder) or URI (file://, s3://… through fsspec) per line")
    p.add_argument("--out", default="results.csv", help="CSV to write (rows are appended as they finish)")
    add_model_options(p)
    p.add_argument("--cam-method", default=None, help="also compute Grad-CAM peaks: gradcam, gradcam++, eigencam, layercam")
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
    add_study_arguments(p)
    return p


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--studies`` options (a folder of whole series, :mod:`core.review.studies`)."""
    p.add_argument("--studies", action="store_true",
                   help="SOURCE is a folder of studies (NIfTI volumes, DICOM series folders, zips of them): one row "
                        "per series in --out and one row per slice in --slices-out. Chosen automatically for a "
                        "folder with studies and no 2-D image files")
    p.add_argument("--slices-out", default=None, help="with --studies: the per-slice CSV (default <out>_slices.csv)")
    p.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"),
                   help="with --studies: the reading plane (the model and the series rule were chosen on axial)")


def load_predictor(args: argparse.Namespace) -> Predictor:
    """The predictor of ``--weights`` (``--model``: a model of that registry, whose folder then replaces
    ``args.weights``, as the Ray workers load it from there) on ``--device``."""
    try:
        args.weights = str(model_folder(args.weights, args.model))
        return Predictor(load_bundle(args.weights), select_device(args.device), batch_size=args.chunk_size)
    except (CheckpointError, ValueError) as exc:
        raise Refused(exc) from exc


def open_audit(args: argparse.Namespace) -> AuditTrail | None:
    """The audit trail every row is appended to (None with ``--no-audit``)."""
    try:
        return None if args.no_audit else AuditTrail(args.audit_db or default_audit_path())
    except (OSError, sqlite3.Error) as exc:
        raise Refused(f"cannot open the audit trail ({exc}); fix the path or pass --no-audit") from exc


def files_engine(args: argparse.Namespace) -> Engine:
    """Where the files are predicted: ``--engine ray`` (RuntimeError without Ray: refused) or this process."""
    if args.engine != "ray":
        return local_engine(args.num_workers or 0)
    try:
        return RayEngine(args.weights, address=args.ray_address, num_workers=args.num_workers,
                         gpus_per_worker=args.gpus_per_worker, device=args.device)
    except RuntimeError as exc:  # ray not installed
        raise Refused(exc) from exc


def review_files(args: argparse.Namespace, predictor: Predictor, folder: Path) -> int:
    """A row per file of SOURCE (:func:`core.review.folder.run_batch`) with a progress bar; the exit code."""
    engine = files_engine(args)
    total = count_image_files(folder) if folder.is_dir() else None
    if total == 0:
        print(f"no image files (jpg, png, tif, bmp, dcm) found under {folder}")
    audit = open_audit(args)
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


def review_studies(args: argparse.Namespace, predictor: Predictor) -> int:
    """``--studies``: a row per series (:func:`core.review.studies.run_studies`) with a progress bar; the exit code."""
    if args.engine != "local" or args.cam_method or args.parquet_dir:
        raise Refused("--studies runs on the local engine, without --cam-method or --parquet-dir (the Study review "
                      "page shows each slice's heatmap)")
    audit = open_audit(args)
    slices = args.slices_out or default_slices_path(args.out)
    skipped: list[tuple[str, str]] = []
    done = errors = 0
    seen: set[str] = set()
    try:
        with tqdm(total=count_study_inputs(args.folder), desc="reviewing studies", unit="study") as bar:
            for row in run_studies(predictor, args.folder, args.out, slices, plane=args.plane, resume=args.resume,
                                   audit=audit, skipped=skipped, chunk=max(1, args.chunk_size)):
                done, errors = done + 1, errors + bool(row["error"])
                if row["path"] not in seen:  # the bar counts inputs; an input may hold several series
                    seen.add(row["path"])
                    bar.update(1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {done} series rows saved in {args.out}; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    except ValueError as exc:  # e.g. --resume into a CSV with other columns
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"wrote {done} series rows ({errors} unreadable) to {args.out} and their slices to {slices}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m core.batch``; returns the exit code (see the module docstring)."""
    p = build_parser()
    args = p.parse_args(argv)
    if args.engine == "local" and (args.ray_address or args.gpus_per_worker):
        p.error("--ray-address and --gpus-per-worker need --engine ray")
    try:
        predictor = load_predictor(args)
        folder = Path(args.folder)
        if not folder.exists():
            raise Refused(f"{folder} is not a folder or a list file")
        if args.studies or is_study_folder(folder):  # NIfTI, DICOM series folders, zips: a row per series
            return review_studies(args, predictor)
        return review_files(args, predictor, folder)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
