"""Decode any supported input (JPG/PNG/TIFF/BMP/DICOM as path, bytes or array) to one grey image.

The one dispatcher over the image readers (the MONAI ``ImageReader`` pattern): each reader recognises its
own files by content (``core.io.dicom.looks_like_dicom``, ``core.io.raster.raster_format``), never by the
file extension, and this module routes the bytes to it. Every failure raises
:class:`core.errors.ImageLoadError` with a message that names the problem.

Output: :class:`core.io.types.DecodedImage`, pixels float32 (H, W) in [0, 1] (0 = black), finite.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import ImageLoadError
from core.io.dicom import decode_dicom, looks_like_dicom  # pydicom itself is imported only when a DICOM is read
from core.io.raster import decode_raster, describe_document, raster_format
from core.io.types import DEFAULT_LIMITS, DecodedImage, DecodeLimits, ImageSource, array_to_grey, format_mb, format_mpx


def read_source_bytes(source: ImageSource, limits: DecodeLimits = DEFAULT_LIMITS) -> tuple[bytes, str]:
    """Raw bytes and a display name of a path or bytes input; ImageLoadError if unreadable."""
    if isinstance(source, (bytes, bytearray)):
        data, name = bytes(source), "upload"
    else:
        path = Path(source)
        name = path.name
        try:
            if not path.is_file():
                raise ImageLoadError(f"{name}: file not found or not a regular file")
            size = path.stat().st_size
            if size > limits.max_bytes:
                raise ImageLoadError(f"{name}: file is {format_mb(size)}, over the {format_mb(limits.max_bytes)} "
                                     "size limit")
            data = path.read_bytes()
        except PermissionError:
            raise ImageLoadError(f"{name}: permission denied; the file cannot be read") from None
        except FileNotFoundError:
            raise ImageLoadError(f"{name}: file disappeared before it could be read") from None
        except IsADirectoryError:
            raise ImageLoadError(f"{name}: is a folder, not an image file") from None
        except OSError as exc:
            raise ImageLoadError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    if len(data) == 0:
        raise ImageLoadError(f"{name}: file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageLoadError(f"{name}: file is {format_mb(len(data))}, over the {format_mb(limits.max_bytes)} "
                             "size limit")
    return data, name


def decode_image(source: ImageSource, limits: DecodeLimits = DEFAULT_LIMITS,
                 include_identifying_tags: bool = False) -> DecodedImage:
    """Decode a path, raw bytes or array into a grey :class:`DecodedImage`.

    Args:
        source: file path, file bytes, or an (H, W[, C]) array of any integer/float dtype.
        limits: pixel/byte/side guards; the pixel limit is checked before decoding.
        include_identifying_tags: DICOM only; patient tags are returned only when True.

    Raises:
        ImageLoadError: with a user-facing reason, for every unreadable input.
    """
    if isinstance(source, np.ndarray):
        h, w = source.shape[:2] if source.ndim >= 2 else (0, 0)
        if source.ndim < 2 or min(h, w) < limits.min_side:
            raise ImageLoadError(f"array of shape {source.shape} is too small; "
                                 f"at least {limits.min_side} px per side is needed")
        if h * w > limits.max_pixels:
            raise ImageLoadError(f"array of {w}x{h} px is over the {format_mpx(limits.max_pixels)} limit")
        return array_to_grey(source)
    data, name = read_source_bytes(source, limits)
    return decode_bytes(data, name, limits, include_identifying_tags)


def decode_bytes(data: bytes, name: str = "upload", limits: DecodeLimits = DEFAULT_LIMITS,
                 include_identifying_tags: bool = False, with_display: bool = False) -> DecodedImage:
    """Decode file bytes; ``name`` is used in messages and as a DICOM hint (``.dcm``).
    ``with_display``: a grey DICOM also carries ``.display`` for window/level (see ``decode_dicom``)."""
    if not data:
        raise ImageLoadError(f"{name}: file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageLoadError(f"{name}: file is {format_mb(len(data))}, over the {format_mb(limits.max_bytes)} "
                             "size limit")
    # A ".dcm" name only matters for DICOM without the Part 10 preamble; a PNG/JPEG named
    # ".dcm" is still decoded as what it is.
    if looks_like_dicom(data) or (name.lower().endswith(".dcm") and raster_format(data) is None):
        if not looks_like_dicom(data) and (what := describe_document(data)):
            raise ImageLoadError(f"{name} {what}")
        return decode_dicom(data, name, limits, include_identifying_tags, with_display)
    return decode_raster(data, name, limits)
