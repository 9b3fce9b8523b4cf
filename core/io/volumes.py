"""NIfTI volumes cut into 2-D slices in the radiological display convention.

The voxel axes of a NIfTI file may be stored in any order (the IXI scans here are (P, S, R); BraTS and
NiChart are (L, P, S)). The affine decides the anatomy, never the position of an axis: every volume is first
reoriented to RAS+ with nibabel (``as_closest_canonical``), so axis 2 runs inferior -> superior and an axial
slice is ``data[:, :, k]``. It is then displayed as radiologists read it: anterior at the top and the
patient's right on the image's left.

Only in-plane geometry is resampled (to square pixels when the voxels are not square in-plane); slices are
never interpolated from their neighbours.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.errors import ImageLoadError
from core.io.types import DecodedImage

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


@dataclass
class AxialVolume:
    """A volume in RAS+ orientation.

    ``data``: float32 (X, Y, Z) in nibabel's RAS+ (an index grows towards the patient's Right, Anterior,
    Superior); ``zooms``: voxel size in mm along those axes.
    """

    data: np.ndarray
    zooms: tuple[float, float, float]
    name: str

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[2])

    @property
    def pixel_area_mm2(self) -> float:
        """Area of one display pixel of an axial slice (after in-plane resampling to square pixels)."""
        side = min(self.zooms[0], self.zooms[1])
        return float(side * side)

    def axial(self, k: int) -> np.ndarray:
        """Axial slice ``k`` (0 = most inferior) as float32 (rows, cols): anterior up, patient's right left."""
        return self.display(self.data[:, :, k])

    def display(self, plane: np.ndarray) -> np.ndarray:
        """Map an (X, Y) plane of this volume to display orientation, with square pixels."""
        img = np.ascontiguousarray(plane[::-1, ::-1].T, dtype=np.float32)
        zx, zy = self.zooms[0], self.zooms[1]
        if abs(zx - zy) > 1e-3:  # columns are X, rows are Y: resample the coarser axis to the finer spacing
            side = min(zx, zy)
            h, w = img.shape
            img = cv2.resize(img, (max(1, round(w * zx / side)), max(1, round(h * zy / side))),
                             interpolation=cv2.INTER_LINEAR)
        return img


def load_volume(path: str | Path) -> AxialVolume:
    """Read a NIfTI file and reorient it to RAS+. Raises ``ImageLoadError`` with the reason."""
    import nibabel as nib  # optional at import time of core: only volume readers need it

    path = Path(path)
    try:
        img = nib.as_closest_canonical(nib.load(str(path)))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
        raise ImageLoadError(f"{path.name}: not a readable NIfTI volume ({exc})") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ImageLoadError(f"{path.name}: expected a 3-D volume, got shape {data.shape}")
    if not np.isfinite(data).all():
        data = np.nan_to_num(data, nan=0.0, posinf=0.0, neginf=0.0)
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return AxialVolume(data, zooms, path.name)


def intensity_scale(volume: AxialVolume) -> tuple[float, float]:
    """(low, high) used to map every slice of a volume to [0, 1]: one scale for the whole volume, so the
    slices of a series keep their relative brightness (0.1st and 99.9th percentile of non-zero voxels)."""
    nz = volume.data[volume.data > 0]
    if nz.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(nz, [0.1, 99.9])
    lo = min(float(lo), 0.0)
    return lo, float(hi) if hi > lo else lo + 1.0


def slice_image(volume: AxialVolume, k: int, scale: tuple[float, float]) -> DecodedImage:
    """Axial slice ``k`` as the decoder's output type, so it runs through the one preprocessing path."""
    lo, hi = scale
    pix = np.clip((volume.axial(k) - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    return DecodedImage(pix, "NIfTI", "F", 16)


def foreground_areas(volume: AxialVolume) -> np.ndarray:
    """Foreground pixels per axial slice, int (Z,): voxels above an Otsu threshold of the whole volume
    (skull-stripped volumes: the brain; others: the head)."""
    d = volume.data
    lo, hi = intensity_scale(volume)
    v8 = (np.clip((d - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)
    thr, _ = cv2.threshold(v8[v8 > 0].reshape(-1, 1) if (v8 > 0).any() else v8.reshape(-1, 1), 0, 255,
                           cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return (v8 > max(thr * 0.5, 1)).sum(axis=(0, 1))


def brain_slices(volume: AxialVolume, min_fraction: float, max_depth_mm: float | None = None) -> list[int]:
    """Axial slice indices with brain in them.

    Kept: slices whose foreground is at least ``min_fraction`` of the largest slice's (the slices with almost
    no brain or head in them are left out) and, with ``max_depth_mm``, no deeper than that below the vertex
    (the highest slice with any foreground): in a scan with skull and neck the wide slices through the face
    and neck hold little or no brain.
    """
    areas = foreground_areas(volume)
    if areas.max(initial=0) == 0:
        return []
    keep = areas >= min_fraction * areas.max()
    if max_depth_mm is not None:
        vertex = int(np.flatnonzero(areas >= 0.05 * areas.max()).max())
        depth = (vertex - np.arange(len(areas))) * volume.zooms[2]
        keep &= depth <= max_depth_mm
    return [int(k) for k in np.flatnonzero(keep)]


def tumour_areas_mm2(labels: AxialVolume, values: tuple[int, ...] | None = None) -> np.ndarray:
    """Labelled tumour area per axial slice in mm^2, float (Z,): any label > 0, or only the label ``values``."""
    inside = labels.data > 0 if not values else np.isin(labels.data, values)
    return inside.sum(axis=(0, 1)).astype(np.float64) * labels.zooms[0] * labels.zooms[1]
