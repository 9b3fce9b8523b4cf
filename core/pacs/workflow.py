"""A PACS study, end to end: retrieve one series, review it, build the results and send them back.

The steps the dashboard's PACS page and the bench run (no streamlit here):

1. :func:`retrieve_for_review` streams the series from the PACS into a folder (``core.pacs.client.retrieve_series``),
   reads it as a :class:`core.io.series.Series`, keeps only the filing headers of each instance
   (``core.report.sr.filing_header``) and **deletes the files**: the volume lives in memory, the disk stays bounded.
2. :func:`review` predicts every slice (``core.inference.study.review_series``, axial) and
   :func:`build_outputs` turns the result into the SR, one Secondary Capture per key slice and (optionally) the
   Encapsulated PDF.
3. :func:`send` stores them (``core.pacs.client.store``) and returns what was stored.

What identifies a study in the app is its Study Instance UID and :func:`study_key` (a hash of that UID); the patient
name, id and birth date stay in the filing headers, which go only into the objects written back to the PACS.
"""
from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.pacs.client import PacsConfig, PacsError, retrieve_series, store
from core.report.sr import TUMOUR_TYPES, ModelIdentity, SeriesFinding

MAX_KEY_SLICES = 3  # overlays stored per series (Secondary Capture): the top positive slices


def study_key(study_uid: str) -> str:
    """The app's own key of a study: SHA-256 of its Study Instance UID (64 hex digits; shown and logged
    instead of any patient identifier, and the same on every server)."""
    return hashlib.sha256(b"brain-mri-pacs-study\0" + study_uid.encode()).hexdigest()


class ReviewError(ValueError):
    """The retrieved series cannot be reviewed or reported. ``str(err)`` is user-facing."""


@dataclass
class RetrievedSeries:
    """A series read from the PACS (files already deleted).

    ``headers``: the filing header of each instance (``core.report.sr.filing_header``: the identifiers the results
    need to be filed in the study, nothing else), in axial slice order when ``slice_sops`` is known.
    ``slice_sops``: the SOP Instance UID of each axial slice (0 = most inferior), or None when the slices do not map
    one to one onto instances (another acquired plane, a dropped localiser, no geometry)."""

    study_uid: str
    series_uid: str
    series: object  # core.io.series.Series
    headers: list
    slice_sops: list[str] | None
    n_files: int
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return study_key(self.study_uid)


def _slice_order(headers: list, series) -> list[str] | None:
    """SOP Instance UIDs per axial slice (inferior first), when the slices are the instances one to one."""
    if series.acquired_plane != "axial" or len(headers) != series.n_slices("axial"):
        return None
    try:
        # DICOM patient space is LPS: the third coordinate grows towards the head, as the RAS slice index does.
        z = [float(h.ImagePositionPatient[2]) for h in headers]
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    if len(set(np.round(z, 3))) != len(z):
        return None
    return [str(headers[i].SOPInstanceUID) for i in np.argsort(z, kind="stable")]


def retrieve_for_review(config: PacsConfig, study_uid: str, series_uid: str,
                        workdir: str | Path | None = None) -> RetrievedSeries:
    """Retrieve one series and read it for review. Raises :class:`PacsError` (the PACS) or
    :class:`ReviewError` (the series cannot be read as one stack: the reader's reason)."""
    import time

    import pydicom

    from core.report.sr import filing_header
    from core.io.read_series import read_paths

    try:
        if workdir is not None:
            Path(workdir).mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="pacs-series-", dir=workdir))
    except OSError as exc:
        raise PacsError(f"Series retrieve: cannot make a temporary folder in {workdir or tempfile.gettempdir()} "
                        f"({exc.strerror or exc})", "io") from None
    try:
        t0 = time.perf_counter()
        files = retrieve_series(config, study_uid, series_uid, folder)
        t1 = time.perf_counter()
        loads = read_paths(files)
        readable = [load for load in loads if load.series is not None]
        if len(readable) != 1:
            reasons = "; ".join(load.error for load in loads if load.error) or "no image series found"
            raise ReviewError(f"The retrieved series cannot be reviewed: {reasons}")
        headers = []
        for p in files:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            header = filing_header(ds)
            if "ImagePositionPatient" in ds:  # kept only to order the slices; not identifying
                header.ImagePositionPatient = ds.ImagePositionPatient
            headers.append(header)
        series = readable[0].series
        if {str(h.StudyInstanceUID) for h in headers} != {study_uid}:
            raise ReviewError("The retrieved instances do not all belong to the chosen study.")
        slice_sops = _slice_order(headers, series)
        if slice_sops is not None:
            by_uid = {str(h.SOPInstanceUID): h for h in headers}
            headers = [by_uid[u] for u in slice_sops]
        return RetrievedSeries(study_uid, series_uid, series, headers, slice_sops, len(files),
                               {"retrieve": t1 - t0, "read": time.perf_counter() - t1})
    except ValueError as exc:  # filing_header on an instance without its UIDs
        if isinstance(exc, ReviewError):
            raise
        raise ReviewError(f"The retrieved series cannot be reviewed: {exc}") from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the volume is in memory now; nothing of the patient stays on disk


def review(predictor, retrieved: RetrievedSeries, rule=None, progress: Callable[[int, int], None] | None = None):
    """Every axial slice predicted and the series verdict (``core.inference.study.review_series``)."""
    from core.inference.study import review_series

    return review_series(predictor, retrieved.series, rule, "axial", progress=progress)


def finding(review_result, slice_sops: Sequence[str] | None) -> SeriesFinding:
    """The series finding to report. Raises :class:`ReviewError` for a series outside intended use: the model's
    "no tumour" there means nothing, so nothing is written back."""
    if review_result.series_ood:
        raise ReviewError("This series is outside the model's intended use (most slices do not look like the brain "
                          "MRI slices it was trained on); no result is sent for it.")
    verdict = bool(review_result.tumour)
    tumour_type = review_result.tumour_type if verdict and review_result.tumour_type in TUMOUR_TYPES else None
    positive = [slice_sops[int(k)] for k in np.flatnonzero(review_result.positive)] if verdict and slice_sops else []
    return SeriesFinding(verdict=verdict, tumour_type=tumour_type,
                         probability=float(np.clip(review_result.tumour_prob.max(initial=0.0), 0.0, 1.0)),
                         positive_slices=positive)


def key_slices(review_result, limit: int = MAX_KEY_SLICES) -> list[int]:
    """The slices shown in the overlays: the most likely positive ones, else the single most likely slice."""
    positive = [k for k in review_result.top_slices if review_result.positive[k]]
    return (positive or review_result.top_slices[:1])[:limit]


def overlays(explainer, retrieved: RetrievedSeries, review_result, method: str = "gradcam",
             limit: int = MAX_KEY_SLICES) -> list[tuple[int, np.ndarray]]:
    """(slice index, uint8 RGB heatmap overlay) of each key slice, as the model saw it. ``explainer``: the
    ``core.explain.cam.Explainer`` of the predictor that made ``review_result``."""
    from core.explain.cam import overlay
    from core.explain.study_cams import slice_cam

    out = []
    for k in key_slices(review_result, limit):
        cam, item = slice_cam(explainer, retrieved.series, review_result, k, method)
        out.append((k, overlay(item, cam.heatmap)))
    return out


@dataclass(frozen=True)
class Outputs:
    """What :func:`send` stores: the datasets, and a row per dataset for the page (kind, SOP Instance UID)."""

    datasets: list
    rows: list[dict]


def build_outputs(retrieved: RetrievedSeries, review_result, model: ModelIdentity,
                  key_overlays: Sequence[tuple[int, np.ndarray]] = (), pdf: bytes | None = None) -> Outputs:
    """The SR, a Secondary Capture per key-slice overlay (when slices map onto instances) and the optional PDF."""
    from core.report.sr import build_encapsulated_pdf, build_results

    result = finding(review_result, retrieved.slice_sops)
    pairs = [(rgb, retrieved.slice_sops[k]) for k, rgb in key_overlays] if retrieved.slice_sops else []
    try:
        datasets = build_results(result, retrieved.headers, model, overlays=pairs)
        if pdf is not None:
            datasets.append(build_encapsulated_pdf(pdf, retrieved.headers[0]))
    except ValueError as exc:
        raise ReviewError(f"The results cannot be written as DICOM: {exc}") from None
    kinds = {"SR": "Structured report (SR)", "OT": "Overlay (Secondary Capture)", "DOC": "PDF report"}
    rows = [{"object": kinds.get(str(ds.Modality), str(ds.Modality)), "series": int(ds.SeriesNumber),
             "SOP Instance UID": str(ds.SOPInstanceUID)} for ds in datasets]
    return Outputs(datasets, rows)


def send(config: PacsConfig, outputs: Outputs) -> list[str]:
    """STOW-RS the outputs; returns the SOP Instance UIDs the PACS accepted (:class:`PacsError` otherwise)."""
    return store(config, outputs.datasets)


__all__ = ["MAX_KEY_SLICES", "Outputs", "PacsError", "RetrievedSeries", "ReviewError", "build_outputs", "finding",
           "key_slices", "overlays", "retrieve_for_review", "review", "send", "study_key"]
