"""Decode any supported input (JPG/PNG/TIFF/BMP/DICOM as path, bytes or array) to one grey image.

The content decides the format, never the file extension. Every failure raises
:class:`core.errors.ImageLoadError` with a message that names the problem.

Output contract (:class:`DecodedImage`):
    ``pixels``: ``np.ndarray`` float32, shape (H, W), values in [0, 1] (0 = black),
    finite. Colour inputs are converted to luminance; how colourful they were is
    kept in ``colourfulness`` because a colour photo is not an MRI slice.
"""
from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageLoadError

ImageSource = Union[str, os.PathLike, bytes, bytearray, np.ndarray]

# PIL's own bomb check warns at ~89 Mpx and raises at twice that; we apply our own,
# configurable limit from the header before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None


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


def _mb(n: float) -> str:
    """Bytes as MB for messages; MB = 2**20 bytes, as Streamlit's ``server.maxUploadSize`` counts."""
    mb = n / 2**20
    return f"{mb:.0f} MB" if mb >= 10 else f"{mb:.2g} MB"


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
                raise ImageLoadError(f"{name}: file is {_mb(size)}, over the {_mb(limits.max_bytes)} size limit")
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
        raise ImageLoadError(f"{name}: file is {_mb(len(data))}, over the {_mb(limits.max_bytes)} size limit")
    return data, name


def looks_like_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


# Signatures of the raster formats PIL decodes for us (content decides, not the extension).
_IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                b"BM": "BMP", b"GIF8": "GIF"}


def _image_magic(data: bytes) -> str | None:
    return next((fmt for magic, fmt in _IMAGE_MAGIC.items() if data.startswith(magic)), None)


def _describe_document(data: bytes) -> str | None:
    """What a clearly non-image file is (PDF, archive, text), or None."""
    head = data[:8]
    if head.startswith(b"%PDF"):
        return "is a PDF document, not an image"
    if head.startswith(b"PK"):
        return "is a ZIP/Office archive, not an image"
    sample = data[:512]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "is a text file, not an image"
    return None


def _describe_non_image(data: bytes) -> str:
    fmt = _image_magic(data)
    if fmt is not None:  # the signature is there but PIL could not even read the header
        return f"is a truncated or corrupt {fmt} file (header incomplete, {len(data)} bytes)"
    return _describe_document(data) or "is not a recognised image format (JPEG, PNG, TIFF, BMP or DICOM)"


def _mpx(n: float) -> str:
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


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    elif mode == "CMYK" or mode == "YCbCr" or mode == "LAB" or mode == "HSV":
        im = im.convert("RGB")
    elif mode == "LA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode.startswith("I;16"):
        return np.array(im, dtype=np.uint16)
    return np.array(im)


def _decode_pil(data: bytes, name: str, limits: DecodeLimits) -> DecodedImage:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageLoadError(f"{name} {_describe_non_image(data)}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for corrupt headers
        if "truncated" in str(exc).lower():
            raise ImageLoadError(f"{name}: image file is truncated ({exc})") from None
        raise ImageLoadError(f"{name}: corrupt image header ({exc})") from None
    w, h = im.size
    if w * h > limits.max_pixels:
        raise ImageLoadError(
            f"{name}: header says {w}x{h} px ({_mpx(w * h)}), over the "
            f"{_mpx(limits.max_pixels)} limit; refused before decoding (possible decompression bomb)")
    if min(w, h) < limits.min_side:
        raise ImageLoadError(f"{name}: image is only {w}x{h} px; at least {limits.min_side} px per side is needed")
    warns: list[str] = []
    fmt = im.format or "image"  # exif_transpose returns a copy without .format
    n_frames = getattr(im, "n_frames", 1)
    try:
        if n_frames > 1:
            mid = n_frames // 2
            im.seek(mid)
            warns.append(f"multi-frame image: used the middle frame ({mid + 1} of {n_frames})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
            im = ImageOps.exif_transpose(im)
        arr = _pil_to_array(im)
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg or "broken data stream" in msg or "unrecognized data stream" in msg:
            raise ImageLoadError(f"{name}: {fmt} file is truncated or corrupt ({msg})") from None
        raise ImageLoadError(f"{name}: cannot decode {fmt} data ({msg})") from None
    except (ValueError, SyntaxError, EOFError) as exc:
        raise ImageLoadError(f"{name}: cannot decode {fmt} data ({exc})") from None
    out = array_to_grey(arr, fmt=fmt, mode=im.mode)
    out.warnings.extend(warns)
    return out


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
            raise ImageLoadError(f"array of {w}x{h} px is over the {_mpx(limits.max_pixels)} limit")
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
        raise ImageLoadError(f"{name}: file is {_mb(len(data))}, over the {_mb(limits.max_bytes)} size limit")
    # A ".dcm" name only matters for DICOM without the Part 10 preamble; a PNG/JPEG named
    # ".dcm" is still decoded as what it is.
    if looks_like_dicom(data) or (name.lower().endswith(".dcm") and _image_magic(data) is None):
        if not looks_like_dicom(data) and (what := _describe_document(data)):
            raise ImageLoadError(f"{name} {what}")
        from core.io.dicom import decode_dicom  # pydicom is only imported when needed

        return decode_dicom(data, name, limits, include_identifying_tags, with_display)
    return _decode_pil(data, name, limits)


@dataclass
class ReducedJpeg:
    """A JPEG decoded by libjpeg at 1/``factor`` scale (DCT scaling), straight to 8-bit grey.

    ``grey8``: uint8 (ceil(H / factor), ceil(W / factor)), 0 = black: the JPEG's own luma (Y) plane, which for
    an RGB scan equals the BT.601 luma :func:`array_to_grey` computes, without a float RGB copy.
    ``full_size``: (width, height) of the full image, as :attr:`DecodedImage.size`; geometry is reported in it.
    ``colourfulness``: estimated from every 4th pixel of the decoded chroma planes (0 for a grey JPEG).
    """

    grey8: np.ndarray
    full_size: tuple[int, int]
    factor: int
    source_format: str = "JPEG"
    original_mode: str = "L"
    bit_depth: int = 8
    colourfulness: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def metadata(self) -> DecodedImage:
        """What the decode learned, as a :class:`DecodedImage` without pixels (shape (0, 0)): the colour gate
        and the result rows read it; a consumer that needs full-resolution pixels decodes fully instead."""
        return DecodedImage(np.zeros((0, 0), np.float32), self.source_format, self.original_mode, self.bit_depth,
                            self.colourfulness, list(self.warnings))


# BT.601 YCbCr -> RGB: the channel differences depend on chroma only, so chroma gives colourfulness directly.
_CHROMA_TO_DIFFS = np.array([[0.344136, 2.116136], [-2.116136, -0.714136], [1.772, -1.402]], np.float32)


def _chroma_colourfulness(ycc: np.ndarray) -> float:
    """:func:`colourfulness` of a uint8 (H, W, 3) YCbCr image, from every 4th pixel (a gate, not a measure)."""
    c = ycc[::4, ::4, 1:].reshape(-1, 2).astype(np.float32) - 128.0
    return float(np.abs(c @ _CHROMA_TO_DIFFS.T).sum(axis=1).mean() / 2.0 / 255.0)


def reduction_factor(width: int, height: int, min_long_side: int) -> int:
    """Largest JPEG DCT scale 1/f (f in 8, 4, 2, 1) that keeps the longer side at ``min_long_side`` px or more."""
    long_side = max(width, height)
    return next(f for f in (8, 4, 2, 1) if f == 1 or -(-long_side // f) >= min_long_side)


def decode_jpeg_reduced(data: bytes, name: str, limits: DecodeLimits, min_long_side: int) -> ReducedJpeg | None:
    """Decode a baseline/progressive grey or YCbCr JPEG at the smallest DCT scale that keeps ``min_long_side``.

    Returns None when ``data`` is not such a JPEG (PNG, DICOM, CMYK JPEG, ...): the caller then decodes fully
    with :func:`decode_bytes`, which also produces the precise error for unreadable input. Pillow's
    ``Image.draft`` was chosen over OpenCV's ``IMREAD_REDUCED_*`` (``python -m bench.input_path_section``
    compares them): it reads the header first, so the pixel limits hold before any pixel is decoded, and it
    can return the chroma planes unconverted, which the colour gate needs.
    Raises ImageLoadError for a JPEG whose header passes but whose data is corrupt, or that breaks a limit.
    """
    if _image_magic(data) != "JPEG":
        return None
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - let the full decoder word the error
        return None
    if im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return None
    w, h = im.size
    if w * h > limits.max_pixels or min(w, h) < limits.min_side:
        return None  # decode_bytes refuses it with the standard message
    factor = reduction_factor(w, h, min_long_side)
    colour = im.mode == "RGB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Pillow picks the largest scale 1/s with s <= min(w // req_w, h // req_h), hence floor sizes here.
            drafted = im.draft("YCbCr" if colour else "L", (max(1, w // factor), max(1, h // factor)))
            factor = int(round(w / drafted[1][2])) if drafted else 1
            im.load()
            orientation = im.getexif().get(0x0112, 1)
            if orientation not in (1, None):  # rare: only then pay for the transpose
                im = ImageOps.exif_transpose(im)
                w, h = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc)
        if "truncated" in msg or "broken data stream" in msg:
            raise ImageLoadError(f"{name}: JPEG file is truncated or corrupt ({msg})") from None
        raise ImageLoadError(f"{name}: cannot decode JPEG data ({msg})") from None
    if im.mode != ("YCbCr" if colour else "L"):  # Pillow declined the raw colour space: decode fully instead
        return None
    if colour:
        grey8 = np.ascontiguousarray(arr[..., 0])
        return ReducedJpeg(grey8, (w, h), factor, "JPEG", "RGB", 8, _chroma_colourfulness(arr))
    return ReducedJpeg(np.ascontiguousarray(arr), (w, h), factor, "JPEG", "L", 8)
