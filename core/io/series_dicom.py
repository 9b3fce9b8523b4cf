"""DICOM series (single-frame files, or one multi-frame Enhanced MR file) to :class:`core.io.series.Series`.

Files are grouped by SeriesInstanceUID. Within a series the slices are ordered by their position along the
slice normal (ImagePositionPatient projected on the cross product of the ImageOrientationPatient row and
column directions); InstanceNumber is used only when the geometry tags are missing. Before any pixel is
decoded the geometry is checked: one orientation and one size (a few images of another orientation or size,
as a localiser, are dropped with a warning; more make the series "mixed"), no duplicated position, no gap
larger than 1.5 slice spacings (a missing slice). Only non-identifying tags (``core.io.dicom.SAFE_TAGS``)
are kept: patient, institution and date tags are never copied out of the dataset.
"""
from __future__ import annotations

import io
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.io.dicom import SAFE_TAGS, looks_like_dicom, tag_text
from core.io.series import SeriesLoad, SeriesReader, content_key, from_ras_voxels

DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
MAX_LOCALISER_IMAGES = 3  # more off-geometry images than this is a mixed series, not a localiser
GAP_FACTOR = 1.5  # a step over 1.5 x the usual spacing means a slice is missing
DUPLICATE_MM = 0.01


@dataclass
class _Slice:
    """One 2-D image of a series (a file, or a frame of a multi-frame file), before its pixels are decoded."""

    name: str
    rows: int
    cols: int
    spacing: tuple[float, float] | None  # PixelSpacing: (between rows, between columns) in mm
    iop: np.ndarray | None  # float (6,): row direction, column direction (LPS)
    ipp: np.ndarray | None  # float (3,): centre of the first pixel (LPS mm)
    instance: int | None
    pixels: Callable[[], np.ndarray]  # -> float (rows, cols) in modality units

    def geometry_key(self) -> tuple:
        iop = tuple(np.round(self.iop, 3)) if self.iop is not None else None
        sp = tuple(np.round(self.spacing, 3)) if self.spacing is not None else None
        return iop, self.rows, self.cols, sp


def _floats(value, n: int) -> np.ndarray | None:
    try:
        arr = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return arr if arr.shape == (n,) and np.isfinite(arr).all() else None


def _int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _modality(arr: np.ndarray, slope: float, intercept: float, monochrome1: bool, bits_stored: int = 16) -> np.ndarray:
    """Stored pixels -> float64 modality units. MONOCHROME1 (low values bright) is flipped about the largest
    storable value, the same for every slice, so the slices of a series keep their relative brightness."""
    arr = arr.astype(np.float64)
    if monochrome1:
        arr = float(2 ** bits_stored - 1) - arr
    return arr * slope + intercept


def _single_frame_slice(name: str, ds) -> _Slice:
    def pixels() -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
        if arr.ndim != 2:
            raise ValueError(f"expected one grey frame, got pixel array of shape {arr.shape}")
        return _modality(arr, float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0),
                         str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1", int(ds.get("BitsStored", 16) or 16))

    return _Slice(name, int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
                  tuple(_floats(ds.get("PixelSpacing"), 2)) if _floats(ds.get("PixelSpacing"), 2) is not None else None,
                  _floats(ds.get("ImageOrientationPatient"), 6), _floats(ds.get("ImagePositionPatient"), 3),
                  _int(ds.get("InstanceNumber")), pixels)


def _group_item(ds, frame_groups, keyword: str):
    """The first item of functional group ``keyword`` for a frame: per-frame first, then shared."""
    for groups in (frame_groups, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        seq = getattr(groups, keyword, None) if groups is not None else None
        if seq:
            return seq[0]
    return None


def _multi_frame_slices(name: str, ds) -> list[_Slice]:
    """The frames of an Enhanced MR (or other multi-frame) file, each with its own position."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or [None] * n
    cache: dict[str, np.ndarray] = {}

    def frames() -> np.ndarray:
        if "all" not in cache:  # decode once for every frame; a frame that fails fails the series
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                arr = ds.pixel_array
            if arr.ndim != 3 or arr.shape[0] != n:
                raise ValueError(f"expected {n} grey frames, got pixel array of shape {arr.shape}")
            cache["all"] = arr
        return cache["all"]

    mono1 = str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    bits = int(ds.get("BitsStored", 16) or 16)
    out = []
    for i in range(n):
        fg = per_frame[i] if i < len(per_frame) else None
        pos = _group_item(ds, fg, "PlanePositionSequence")
        ori = _group_item(ds, fg, "PlaneOrientationSequence")
        meas = _group_item(ds, fg, "PixelMeasuresSequence")
        trans = _group_item(ds, fg, "PixelValueTransformationSequence")
        slope = float(trans.get("RescaleSlope", 1) or 1) if trans is not None else float(ds.get("RescaleSlope", 1) or 1)
        icpt = float(trans.get("RescaleIntercept", 0) or 0) if trans is not None else float(ds.get("RescaleIntercept", 0) or 0)
        spacing = _floats(meas.get("PixelSpacing"), 2) if meas is not None else _floats(ds.get("PixelSpacing"), 2)
        out.append(_Slice(
            f"{name} frame {i + 1}", int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0),
            tuple(spacing) if spacing is not None else None,
            _floats(ori.get("ImageOrientationPatient"), 6) if ori is not None else _floats(ds.get("ImageOrientationPatient"), 6),
            _floats(pos.get("ImagePositionPatient"), 3) if pos is not None else None,
            i + 1, lambda i=i, s=slope, c=icpt: _modality(frames()[i], s, c, mono1, bits)))
    return out


def _series_label(ds, fallback: str) -> str:
    """Series number and description (both non-identifying), else the file or folder name."""
    number, desc = ds.get("SeriesNumber"), ds.get("SeriesDescription")
    parts = [f"Series {number}" if number not in (None, "") else "", str(desc) if desc else ""]
    text = " · ".join(p for p in parts if p)
    return text or fallback


def _order(slices: list[_Slice], label: str) -> tuple[list[_Slice], np.ndarray, float, list[str]]:
    """Sort slices along the slice normal and check the spacing.

    Returns (sorted slices, normal (3,) LPS unit vector, slice spacing in mm, warnings).
    Raises ``ValueError`` with the user-facing reason (duplicated or missing slices, no usable order).
    """
    warns: list[str] = []
    if all(s.iop is not None and s.ipp is not None for s in slices):
        row, col = slices[0].iop[:3], slices[0].iop[3:]
        normal = np.cross(row, col)
        if np.linalg.norm(normal) < 1e-6:
            raise ValueError(f"{label}: ImageOrientationPatient is degenerate (row and column directions parallel)")
        normal /= np.linalg.norm(normal)
        pos = np.array([float(s.ipp @ normal) for s in slices])
        order = np.argsort(pos, kind="stable")
        slices, pos = [slices[i] for i in order], pos[order]
        steps = np.diff(pos)
        dup = np.flatnonzero(steps < DUPLICATE_MM)
        if len(dup):
            i = int(dup[0])
            raise ValueError(f"{label}: duplicated slice: {slices[i].name} and {slices[i + 1].name} are at the same "
                             f"position ({pos[i]:.2f} mm along the slice normal); {len(dup)} duplicate(s) in all")
        spacing = float(np.median(steps))
        gaps = np.flatnonzero(steps > GAP_FACTOR * spacing)
        if len(gaps):
            i = int(gaps[0])
            missing = int(round(steps[i] / spacing)) - 1
            raise ValueError(f"{label}: missing slice(s): a gap of {steps[i]:.2f} mm between {slices[i].name} and "
                             f"{slices[i + 1].name} where slices are {spacing:.2f} mm apart (about {missing} missing)")
        if steps.max() - steps.min() > 0.1 * spacing:
            warns.append(f"slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm; "
                         f"{spacing:.2f} mm (the median) is used")
        return slices, normal, spacing, warns
    if all(s.instance is not None for s in slices):
        slices = sorted(slices, key=lambda s: s.instance)
        numbers = np.array([s.instance for s in slices])
        if (np.diff(numbers) == 0).any():
            i = int(np.flatnonzero(np.diff(numbers) == 0)[0])
            raise ValueError(f"{label}: duplicated slice: {slices[i].name} and {slices[i + 1].name} have the same "
                             f"InstanceNumber ({numbers[i]}) and no position tags")
        if (np.diff(numbers) > 1).any():
            i = int(np.flatnonzero(np.diff(numbers) > 1)[0])
            raise ValueError(f"{label}: missing slice(s): InstanceNumber jumps from {numbers[i]} to {numbers[i + 1]}")
        warns.append("no ImagePositionPatient/ImageOrientationPatient: slices ordered by InstanceNumber, "
                     "orientation assumed axial, spacing taken from SliceThickness")
        return slices, np.array([0.0, 0.0, 1.0]), 0.0, warns
    raise ValueError(f"{label}: the slices carry neither ImagePositionPatient nor InstanceNumber, so their order "
                     "is unknown")


def build_series(slices: list[_Slice], label: str, tags: dict[str, str], thickness: float | None,
                 source_format: str, key_parts: list[bytes]) -> SeriesLoad:
    """Check geometry, order, decode and assemble one series. Never raises for bad input."""
    warns: list[str] = []
    counts = Counter(s.geometry_key() for s in slices)
    main, n_main = counts.most_common(1)[0]
    off = [s for s in slices if s.geometry_key() != main]
    if off:
        if len(off) <= MAX_LOCALISER_IMAGES and n_main >= 2 * len(off):
            warns.append(f"{len(off)} image(s) of another orientation or size dropped as a localiser: "
                         + ", ".join(s.name for s in off[:3]))
            slices = [s for s in slices if s.geometry_key() == main]
        else:
            kinds = "orientation" if len({k[0] for k in counts}) > 1 else "size or pixel spacing"
            return SeriesLoad(label, error=f"{label}: mixed {kinds}: {len(counts)} different geometries among "
                                           f"{len(slices)} images ({n_main} share the most common one); cannot be "
                                           "read as one stack")
    if len(slices) < 2:
        return SeriesLoad(label, error=f"{label}: only one slice; open it on the Single scan page")
    try:
        slices, normal, spacing, order_warns = _order(slices, label)
    except ValueError as exc:
        return SeriesLoad(label, error=str(exc))
    warns.extend(order_warns)
    if spacing <= 0:
        spacing = thickness if thickness and thickness > 0 else 1.0
    rows, cols = slices[0].rows, slices[0].cols
    if min(rows, cols) < 32:
        return SeriesLoad(label, error=f"{label}: images are only {cols}x{rows} px; at least 32 px per side is needed")
    stack = np.empty((cols, rows, len(slices)), np.float32)  # (J columns, I rows, K slices)
    for k, s in enumerate(slices):
        try:
            px = s.pixels()
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this slice's, reported per series
            msg = " ".join(str(exc).split())
            return SeriesLoad(label, error=f"{label}: slice {k + 1} of {len(slices)} ({s.name}) will not decode "
                                           f"({type(exc).__name__}: {msg[:200]})")
        if px.shape != (rows, cols):
            return SeriesLoad(label, error=f"{label}: slice {k + 1} ({s.name}) decodes to {px.shape[1]}x{px.shape[0]} px "
                                           f"where its header says {cols}x{rows}")
        stack[:, :, k] = px.T
    iop = slices[0].iop if slices[0].iop is not None else np.array([1.0, 0, 0, 0, 1.0, 0])
    row_sp, col_sp = slices[0].spacing or (1.0, 1.0)
    if slices[0].spacing is None:
        warns.append("no PixelSpacing: 1 mm pixels assumed")
    origin = slices[0].ipp if slices[0].ipp is not None else np.zeros(3)
    lps = np.eye(4)
    lps[:3, 0] = iop[:3] * col_sp  # along a row: the next column
    lps[:3, 1] = iop[3:] * row_sp  # down a column: the next row
    lps[:3, 2] = normal * spacing
    lps[:3, 3] = origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM patient space is LPS; nibabel's is RAS
    series = from_ras_voxels(stack, ras, label, content_key(*key_parts), source_format, tags, warns)
    return SeriesLoad(label, series)


class DicomSeriesReader(SeriesReader):
    """DICOM files of any number of series (in any order), and multi-frame files (each its own series)."""

    def accepts(self, name: str, data: bytes) -> bool:
        return name.lower().endswith(DICOM_SUFFIXES) or looks_like_dicom(data)

    def read(self, files: list[tuple[str, bytes]]) -> list[SeriesLoad]:
        import pydicom
        from pydicom.errors import InvalidDicomError

        out: list[SeriesLoad] = []
        groups: dict[str, list] = defaultdict(list)
        for name, data in files:
            short = Path(name).name
            try:
                ds = pydicom.dcmread(io.BytesIO(data), force=True)
                if "PixelData" not in ds and "FloatPixelData" not in ds:
                    raise ValueError("no pixel data")
            except (InvalidDicomError, EOFError, ValueError, OSError, KeyError, TypeError, AttributeError) as exc:
                out.append(SeriesLoad(short, error=f"{short}: not a readable DICOM image ({exc}); skipped"))
                continue
            uid = str(ds.get("SeriesInstanceUID", "") or "")
            groups[uid or f"no-uid:{Path(name).parent}"].append((short, ds, data))
        for number, (uid, members) in enumerate(groups.items(), start=1):
            members.sort(key=lambda m: m[0])
            first = members[0][1]
            label = _series_label(first, f"Series {number} ({members[0][0]})")
            tags = {k: v for k in SAFE_TAGS if (v := tag_text(first, k)) is not None}
            if first.get("SeriesNumber") not in (None, ""):
                tags["SeriesNumber"] = str(first.get("SeriesNumber"))
            try:
                thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 0) or None
            except (TypeError, ValueError):
                thickness = None
            multi = [m for m in members if int(m[1].get("NumberOfFrames", 1) or 1) > 1]
            if multi:
                if len(members) > 1:
                    out.append(SeriesLoad(label, error=f"{label}: a multi-frame file mixed with {len(members) - 1} other "
                                                       "file(s) in one series; upload it on its own"))
                    continue
                short, ds, data = members[0]
                meas = _group_item(ds, None, "PixelMeasuresSequence")
                if meas is not None and meas.get("SliceThickness") and not thickness:
                    thickness = float(meas.get("SliceThickness"))
                try:
                    slices = _multi_frame_slices(short, ds)
                except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
                    out.append(SeriesLoad(label, error=f"{label}: multi-frame geometry cannot be read ({exc})"))
                    continue
                out.append(build_series(slices, label, tags, thickness, "DICOM multi-frame", [data]))
                continue
            slices = [_single_frame_slice(short, ds) for short, ds, _ in members]
            key_parts = [d for _, _, d in sorted(members, key=lambda m: m[2])]
            out.append(build_series(slices, label, tags, thickness, "DICOM series", key_parts))
        return out
