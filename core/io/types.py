"""What every image reader produces and shares: the input type, the decode limits and the decoded grey image.

Output contract (:class:`DecodedImage`):
    ``pixels``: ``np.ndarray`` float32, shape (H, W), values in [0, 1] (0 = black),
    finite. Colour inputs are converted to luminance; how colourful they were is
    kept in ``colourfulness`` because a colour photo is not an MRI slice.

The readers (``core.io.raster``, ``core.io.dicom``) build on this module and the dispatcher
(``core.io.decode``) routes to them; this module imports neither, so they never import each other.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

from core.errors import ImageLoadError

ImageSource = Union[str, os.PathLike, bytes, bytearray, np.ndarray]


@dataclass(frozen=True)
class DecodeLimits:
    """Input guards. ``max_pixels`` is checked from the header before allocation."""

    max_pixels: int = 40_000_000
    min_side: int = 32
    max_bytes: int = 200 * 1024 * 1024


DEFAULT_LIMITS = DecodeLimits()


@dataclass
class DecodedImage:
    """A decoded 2-D grey image plus what we learned while decoding it."""

    pixels: np.ndarray  # float32 (H, W) in [0, 1]
    source_format: str  # "JPEG", "PNG", "DICOM", "array", ...
    original_mode: str  # PIL mode or DICOM photometric interpretation
    bit_depth: int
    colourfulness: float = 0.0  # mean chroma in [0, 1]; ~0 for grey images
    warnings: list[str] = field(default_factory=list)
    dicom_tags: dict[str, str] = field(default_factory=dict)  # non-identifying only
    display: Any = None  # core.io.dicom.DicomDisplay of a grey DICOM, only when decoded with_display

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, as PIL reports sizes."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])


def format_mb(n: float) -> str:
    """Bytes as MB for messages; MB = 2**20 bytes, as Streamlit's ``server.maxUploadSize`` counts."""
    mb = n / 2**20
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


def format_mpx(n: float) -> str:
    """Pixels as megapixels for messages: "2,500 Mpx", "40 Mpx", "0.01 Mpx"."""
    v = n / 1e6
    return f"{v:,.0f} Mpx" if v >= 100 else f"{v:.3g} Mpx"


def to_unit_range(arr: np.ndarray) -> np.ndarray:
    """Scale an integer or float array to float32 in [0, 1].

    Integers are divided by their dtype's maximum, so an 8-bit image and its
    16-bit copy (x257) give the same values. Floats are min-max scaled.
    """
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        if info.min < 0:  # signed: shift to non-negative first
            arr = arr.astype(np.float64) - info.min
            return (arr / (info.max - info.min)).astype(np.float32)
        return (arr.astype(np.float64) / info.max).astype(np.float32)
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        raise ImageLoadError("image contains no finite pixel values (all NaN/inf)")
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    arr = np.where(finite, arr, lo)
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def colourfulness(rgb01: np.ndarray) -> float:
    """Mean absolute chroma of an (H, W, 3) image in [0, 1]; 0 for grey."""
    r, g, b = rgb01[..., 0], rgb01[..., 1], rgb01[..., 2]
    return float((np.abs(r - g) + np.abs(g - b) + np.abs(b - r)).mean() / 2.0)


def array_to_grey(arr: np.ndarray, fmt: str = "array", mode: str = "array") -> DecodedImage:
    """Turn an (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array into a :class:`DecodedImage`.

    RGBA is composited over black (MRI background) using its alpha channel.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageLoadError(f"unsupported array shape {arr.shape}; expected (H, W), (H, W, 3) or (H, W, 4)")
    bit_depth = arr.dtype.itemsize * 8
    unit = to_unit_range(arr)
    chroma = 0.0
    if unit.ndim == 3:
        if unit.shape[2] == 4:
            unit = unit[..., :3] * unit[..., 3:4]
        chroma = colourfulness(unit)
        # ITU-R BT.601 luma, the same weights PIL uses for "L".
        unit = unit[..., 0] * 0.299 + unit[..., 1] * 0.587 + unit[..., 2] * 0.114
    return DecodedImage(np.ascontiguousarray(unit, np.float32), fmt, mode, bit_depth, chroma)
