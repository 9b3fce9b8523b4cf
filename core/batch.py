"""Streaming batch review of a folder of JPG/PNG/TIFF/DICOM slices.

    python -m core.batch FOLDER --out results.csv [--cam-method gradcam] [--device auto] [--resume]
                         [--audit-db PATH | --no-audit]

Files are walked lazily (``core.files.iter_image_files``) and processed in small
chunks, so memory does not grow with the folder. Each chunk's rows are appended to
the CSV and flushed before the next chunk starts: an interruption loses at most the
chunk in flight, and ``--resume`` skips every file already in the CSV. A file that
cannot be read becomes a row with the reason in ``error``; it never stops the run.
Every row is also appended to the audit trail (``core.audit_trail``; the CLI writes to
``$MRI_APP_DATA/audit.sqlite3`` unless told otherwise).

Every row names the model (name, version, weights SHA-256) and the uncertainty threshold its
``uncertain`` flag used, as the dashboard's single-scan JSON does. ``cam_method`` and
``cam_peak_x``/``cam_peak_y`` are filled only for rows whose heatmap was computed (``--cam-method``
here; in the dashboard, the gallery pages shown with heatmaps on).
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Iterator

from tqdm import tqdm

from core.audit_trail import AuditTrail, default_audit_path
from core.checkpoint import DEFAULT_MODEL_DIR, load_bundle
from core.device import select_device
from core.errors import CheckpointError, ImageLoadError
from core.files import count_image_files, iter_image_files, resolve_within
from core.image_io import DEFAULT_LIMITS, DecodeLimits, decode_bytes, read_source_bytes
from core.predictor import Prediction, Predictor
from core.preprocess import Preprocessed, preprocess_decoded

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


def run_batch(predictor: Predictor, root: str | Path, out_csv: str | Path | None = None, *,
              cam_method: str | None = None, resume: bool = False, chunk_size: int = 16,
              cancel: threading.Event | None = None, audit: AuditTrail | None = None,
              uncertain_below: float = DEFAULT_UNCERTAIN_BELOW, limits: DecodeLimits = DEFAULT_LIMITS,
              skipped: list[tuple[str, str]] | None = None,
              allowed_roots: list[str | Path] | None = None) -> Iterator[dict]:
    """Review every image below ``root``, yielding one row per file as soon as it is done.

    Rows are appended to ``out_csv`` (if given) chunk by chunk, each chunk flushed.
    Setting ``cancel`` stops after the current chunk; finished rows are kept.
    With ``allowed_roots``, a ``root`` outside them (``../``, absolute paths, symlinks)
    raises :class:`core.files.PathNotAllowedError` before anything is read or written.
    """
    if allowed_roots is not None:
        root = resolve_within(root, allowed_roots)
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    # A folder named after a class labels every file in it (resolve: "." or "x/.." have a real name).
    folder_truth = truth_from_path(f"{root.resolve().name}/file", predictor.class_names)
    names = predictor.class_names
    columns = csv_columns(names)
    out_path = Path(out_csv) if out_csv else None
    skip = done_paths(out_path) if (out_path and resume) else set()
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
    model_sha = predictor.bundle.sha256
    model = model_fields(predictor)
    pending: list[tuple[str, str, Preprocessed]] = []
    ready: list[dict] = []

    def finish(rows: list[dict]) -> Iterator[dict]:
        if writer is not None:
            writer.writerows(rows)
            handle.flush()
        for r in rows:
            if audit is not None:
                # The audit keeps no file names (they can name a patient): the error text
                # gets "<file>" in place of the name.
                error = r["error"].replace(Path(r["path"]).name, "<file>") if r["error"] else None
                audit.record(source="batch", file_sha256=r["file_sha256"], model_sha256=model_sha,
                             model_version=predictor.bundle.version,
                             predicted=r["predicted"] or None, confidence=r["confidence"] or None,
                             probabilities={c: r[f"p_{c}"] for c in names} if r["predicted"] else None,
                             ood=r["ood"] if r["predicted"] else None,
                             uncertain=r["uncertain"] if r["predicted"] else None,
                             cam_method=r["cam_method"] or None, error=error)
            yield r

    def flush_pending() -> list[dict]:
        if not pending:
            return []
        items = [p for _, _, p in pending]
        preds = predictor.predict_preprocessed(items)
        peaks: list = [None] * len(items)
        if cam_method:
            from core.cam import compute_cams  # grad-cam is only imported when CAMs are asked for

            peaks = [c.peak for c in compute_cams(predictor, items, [p.index for p in preds], cam_method)]
        rows = [make_row(rel, names, pr, file_sha256=sha, cam_method=cam_method or "", peak=pk,
                         uncertain_below=uncertain_below, folder_truth=folder_truth, model=model)
                for (rel, sha, _), pr, pk in zip(pending, preds, peaks)]
        pending.clear()
        return rows

    try:
        for path in iter_image_files(root, skipped=skipped):
            if cancel is not None and cancel.is_set():
                break
            rel = path.relative_to(root).as_posix()
            if rel in skip:
                continue
            sha = ""  # kept on error rows too when the bytes could be read (audit: which file failed)
            try:
                data, _ = read_source_bytes(path, limits)
                sha = hashlib.sha256(data).hexdigest()
                pre = preprocess_decoded(decode_bytes(data, path.name, limits), predictor.spec)
                pending.append((rel, sha, pre))
            except ImageLoadError as exc:
                ready.append(make_row(rel, names, error=str(exc), file_sha256=sha, folder_truth=folder_truth,
                                      uncertain_below=uncertain_below, model=model))
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop the batch
                ready.append(make_row(rel, names, file_sha256=sha, folder_truth=folder_truth,
                                      uncertain_below=uncertain_below, model=model,
                                      error=f"{path.name}: unexpected error ({type(exc).__name__}: {exc})"))
            if len(pending) >= chunk_size:
                ready.extend(flush_pending())
            if len(ready) >= chunk_size or (ready and not pending):
                yield from finish(ready)
                ready = []
        ready.extend(flush_pending())
        yield from finish(ready)
    finally:
        if handle is not None:
            handle.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Review a folder of brain MRI slices; one CSV row per file.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("folder", help="folder to walk recursively (JPG, PNG, TIFF, BMP, DICOM)")
    p.add_argument("--out", default="results.csv", help="CSV to write (rows are appended as they finish)")
    p.add_argument("--weights", default=str(DEFAULT_MODEL_DIR), help="model folder")
    p.add_argument("--cam-method", default=None, help="also compute Grad-CAM peaks: gradcam, gradcam++, eigencam, layercam")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda or mps")
    p.add_argument("--resume", action="store_true", help="skip files already in --out and append")
    p.add_argument("--chunk-size", type=int, default=16, help="images per forward pass")
    p.add_argument("--uncertain-below", type=float, default=DEFAULT_UNCERTAIN_BELOW, help="confidence under this is 'uncertain'")
    p.add_argument("--audit-db", default=None,
                   help="SQLite audit trail every prediction is appended to (default: $MRI_APP_DATA/audit.sqlite3, "
                        "MRI_APP_DATA defaulting to data/ in the repository)")
    p.add_argument("--no-audit", action="store_true", help="do not write the audit trail")
    args = p.parse_args(argv)
    try:
        predictor = Predictor(load_bundle(args.weights), select_device(args.device), batch_size=args.chunk_size)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"error: {folder} is not a folder", file=sys.stderr)
        return 2
    total = count_image_files(folder)
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
                                 skipped=skipped):
                counts["done"] += 1
                counts["errors"] += bool(row["error"])
                bar.update(1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {counts['done']} rows saved in {args.out}; rerun with --resume to continue",
              file=sys.stderr)
        return 130
    except ValueError as exc:  # e.g. --resume into a CSV with other columns
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(f"wrote {counts['done']} rows ({counts['errors']} unreadable) to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
