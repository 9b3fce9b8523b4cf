"""Whole MRI series (NIfTI volumes, DICOM series, multi-frame DICOM) as a stack of 2-D slices (no streamlit).

Every reader ends in the same place: a voxel array with an affine to RAS+ millimetres, reoriented with nibabel
to the closest canonical (RAS+) orientation. The affine decides the anatomy, never the order of the axes in the
file, so the same brain stored as RAS, LPS or PSR gives the same slices. A slice of the chosen plane is then
put in the radiological display convention (``core.io.volumes`` for the axial plane: anterior up, the patient's
right on the image's left; sagittal: superior up, anterior left; coronal: superior up, right on the left).

Only the in-plane geometry is resampled (to square pixels); slices are never interpolated from their
neighbours. Readers follow a small base class + dispatcher (the MONAI ``ImageReader`` pattern): each reader
(:class:`SeriesReader`; ``core.io.series_nifti``, ``core.io.series_dicom``) says which inputs it accepts and
turns them into :class:`Series`; ``core.io.read_series.read_series`` routes an upload and returns one
:class:`SeriesLoad` per series found, so one broken series never stops the others.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from core.io.types import DecodedImage

PLANES = ("axial", "coronal", "sagittal")
# RAS+ axis that is constant along a slice of each plane: X (right) for sagittal, Y (anterior) for coronal,
# Z (superior) for axial.
_PLANE_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}


@dataclass
class Series:
    """One series, ready to be read slice by slice.

    Attributes:
        volume: float32 (X, Y, Z) in RAS+ (index grows towards Right, Anterior, Superior), stored values
            (DICOM modality units after rescale; NIfTI data as scaled by the header); finite.
        zooms: voxel size in mm along X, Y, Z.
        name: what the user sees: file or series description, never a patient tag.
        key: the SHA-256 (64 hex digits) of the series' files (sorted, so file order does not matter): a stable
            id, safe to show and log.
        source_format: "NIfTI", "DICOM series" or "DICOM multi-frame".
        tags: non-identifying acquisition tags only (``core.io.dicom.SAFE_TAGS``).
        warnings: what was done that the reader should know (a localiser dropped, irregular spacing, ...).
        acquired_plane: the plane the slices were acquired in ("axial", "coronal", "sagittal"), from geometry.
    """

    volume: np.ndarray
    zooms: tuple[float, float, float]
    name: str
    key: str
    source_format: str
    tags: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    acquired_plane: str = "axial"

    def n_slices(self, plane: str = "axial") -> int:
        return int(self.volume.shape[_PLANE_AXIS[_check_plane(plane)]])

    def slice_spacing(self, plane: str = "axial") -> float:
        """Distance between two neighbouring slices of ``plane`` in mm."""
        return float(self.zooms[_PLANE_AXIS[_check_plane(plane)]])

    def plane_image(self, k: int, plane: str = "axial") -> np.ndarray:
        """Slice ``k`` of ``plane`` (0 = most inferior / posterior / right) in display orientation:
        float32 (rows, cols) in stored units, square pixels."""
        axis = _PLANE_AXIS[_check_plane(plane)]
        n = self.volume.shape[axis]
        if not 0 <= k < n:
            raise IndexError(f"slice {k} is outside 0..{n - 1}")
        # Basic indexing is a view; np.take with an axis copies far more slowly (25 ms per slice here).
        plane2d = self.volume[(slice(None),) * axis + (k,)]
        z = [self.zooms[a] for a in range(3) if a != axis]  # zooms of the plane's (first, second) axes
        # Same mapping for the three planes: the plane's second RAS axis runs up the screen (flip + transpose),
        # its first runs to the screen's left (right/anterior on the left, as radiologists read).
        img = np.ascontiguousarray(plane2d[::-1, ::-1].T, dtype=np.float32)
        if abs(z[0] - z[1]) > 1e-3:  # columns follow the first axis, rows the second: make square pixels
            side = min(z)
            h, w = img.shape
            img = cv2.resize(img, (max(1, round(w * z[0] / side)), max(1, round(h * z[1] / side))),
                             interpolation=cv2.INTER_LINEAR)
        return img

    def intensity_scale(self) -> tuple[float, float]:
        """(low, high) mapping every slice to [0, 1]: one scale for the series (0.1st and 99.9th percentile of
        the non-zero voxels, as ``core.io.volumes.intensity_scale`` for the training slices), so slices keep their
        relative brightness."""
        v = self.volume
        sample = v[v > 0] if v.size <= 20_000_000 else v[::2, ::2][v[::2, ::2] > 0]
        if sample.size == 0:
            return 0.0, 1.0
        # sample is this call's own copy: partitioning it in place saves np.percentile a second one (a
        # volume-sized transient, the largest allocation of a series review).
        lo, hi = np.percentile(sample, [0.1, 99.9], overwrite_input=True)
        lo = min(float(lo), 0.0)
        return lo, float(hi) if hi > lo else lo + 1.0

    def decoded_slice(self, k: int, plane: str = "axial", scale: tuple[float, float] | None = None) -> DecodedImage:
        """Slice ``k`` as the decoder's output type (pixels float32 in [0, 1]), for ``preprocess_decoded``."""
        lo, hi = scale or self.intensity_scale()
        pix = np.clip((self.plane_image(k, plane) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        out = DecodedImage(pix, self.source_format, "F", 16)
        out.dicom_tags = dict(self.tags)
        return out


@dataclass
class SeriesLoad:
    """The outcome for one series of an upload: ``series`` or a user-facing ``error`` (never both)."""

    label: str
    series: Series | None = None
    error: str | None = None


def _check_plane(plane: str) -> str:
    if plane not in _PLANE_AXIS:
        raise ValueError(f"unknown plane {plane!r}; choose one of {PLANES}")
    return plane


def content_key(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def from_ras_voxels(data: np.ndarray, affine_ras: np.ndarray, name: str, key: str, source_format: str,
                    tags: dict[str, str] | None = None, warnings: list[str] | None = None) -> Series:
    """Reorient a voxel array with its RAS+ affine (any axis order) to the closest canonical RAS+ layout.

    Args:
        data: (I, J, K) voxels, any real dtype.
        affine_ras: float (4, 4) voxel index -> RAS+ mm.
    """
    import nibabel as nib

    img = nib.as_closest_canonical(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine_ras))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    if not np.isfinite(vol).all():
        vol = np.nan_to_num(vol, nan=0.0, posinf=0.0, neginf=0.0)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    acquired = _acquired_plane(affine_ras)
    return Series(vol, zooms, name, key, source_format, dict(tags or {}), list(warnings or []), acquired)


def _acquired_plane(affine: np.ndarray) -> str:
    """The plane of the file's own slices (its third voxel axis): the RAS axis that axis follows most."""
    direction = np.abs(np.asarray(affine, dtype=float)[:3, 2])
    return {0: "sagittal", 1: "coronal", 2: "axial"}[int(direction.argmax())]


# -- readers ----------------------------------------------------------------------------------------------

class SeriesReader:
    """Base class of the series readers: ``accepts`` names the inputs a reader takes; ``read`` turns them into series outcomes."""

    def accepts(self, name: str, data: bytes) -> bool:
        raise NotImplementedError

    def read(self, files: list[tuple[str, bytes]]) -> list[SeriesLoad]:
        raise NotImplementedError
