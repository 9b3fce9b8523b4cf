"""NIfTI volumes (``.nii`` / ``.nii.gz``) to :class:`core.io.series.Series`, one series per file, through nibabel."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from core.io.series import SeriesLoad, SeriesReader, content_key, from_ras_voxels
from core.io.volumes import NIFTI_SUFFIXES


class NiftiReader(SeriesReader):
    """``.nii`` / ``.nii.gz`` files, one series each, through nibabel (header scaling applied)."""

    def accepts(self, name: str, data: bytes) -> bool:
        return name.lower().endswith(NIFTI_SUFFIXES)

    def read(self, files: list[tuple[str, bytes]]) -> list[SeriesLoad]:
        return [self._one(name, data) for name, data in files]

    @staticmethod
    def _one(name: str, data: bytes) -> SeriesLoad:
        import nibabel as nib

        label = Path(name).name
        try:
            # nibabel reads from a path; a temporary file keeps .gz detection and header checks as for a file.
            suffix = ".nii.gz" if label.lower().endswith(".gz") else ".nii"
            with tempfile.TemporaryDirectory() as tmp:
                p = Path(tmp) / f"upload{suffix}"
                p.write_bytes(data)
                img = nib.load(str(p))
                arr = np.asarray(img.dataobj, dtype=np.float32)
                affine = np.asarray(img.affine, dtype=float)
        except (OSError, ValueError, EOFError, nib.filebasedimages.ImageFileError) as exc:
            return SeriesLoad(label, error=f"{label}: not a readable NIfTI volume ({exc})")
        if arr.ndim == 4 and arr.shape[3] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            return SeriesLoad(label, error=f"{label}: expected a 3-D volume, got shape {arr.shape}")
        if min(arr.shape) < 2:
            return SeriesLoad(label, error=f"{label}: a volume needs at least 2 slices on every axis, got {arr.shape}")
        if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
            return SeriesLoad(label, error=f"{label}: the NIfTI affine is missing or degenerate, so the orientation "
                                           "of the slices is unknown")
        return SeriesLoad(label, from_ras_voxels(arr, affine, label, content_key(data), "NIfTI"))
