"""Raster files (JPEG, PNG, TIFF, BMP, GIF) decoded with Pillow to one grey image; the reduced-size JPEG decode.

The file's signature decides the format, never its extension (:func:`raster_format`). Every failure raises
:class:`core.errors.ImageLoadError` with a message that names the problem; the pixel limit is checked from
the header before any pixel is decoded. Output: :class:`core.io.types.DecodedImage` (float32 (H, W) in [0, 1]).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import ImageLoadError
from core.io.types import DecodedImage, DecodeLimits, array_to_grey, format_mpx

# PIL's own bomb check warns at ~89 Mpx and raises at twice that; we apply our own,
# configurable limit from the header before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = None

# Signatures of the raster formats PIL decodes for us (content decides, not the extension).
_IMAGE_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
                b"BM": "BMP", b"GIF8": "GIF"}


def raster_format(data: bytes) -> str | None:
    """The raster format whose signature ``data`` starts with ("JPEG", "PNG", "TIFF", "BMP", "GIF"), or None."""
    return next((fmt for magic, fmt in _IMAGE_MAGIC.items() if data.startswith(magic)), None)


def describe_document(data: bytes) -> str | None:
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
    fmt = raster_format(data)
    if fmt is not None:  # the signature is there but PIL could not even read the header
        return f"is a truncated or corrupt {fmt} file (header incomplete, {len(data)} bytes)"
    return describe_document(data) or "is not a recognised image format (JPEG, PNG, TIFF, BMP or DICOM)"


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


def decode_raster(data: bytes, name: str, limits: DecodeLimits) -> DecodedImage:
    """Decode raster file bytes with Pillow (multi-frame: the middle frame, EXIF orientation applied) to grey;
    ``name`` is used in messages."""
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
            f"{name}: header says {w}x{h} px ({format_mpx(w * h)}), over the "
            f"{format_mpx(limits.max_pixels)} limit; refused before decoding (possible decompression bomb)")
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


@dataclass
class ReducedJpeg:
    """A JPEG decoded by libjpeg at 1/``factor`` scale (DCT scaling), straight to 8-bit grey.

    ``grey8``: uint8 (ceil(H / factor), ceil(W / factor)), 0 = black: the JPEG's own luma (Y) plane, which for
    an RGB scan equals the BT.601 luma :func:`core.io.types.array_to_grey` computes, without a float RGB copy.
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
    """:func:`core.io.types.colourfulness` of a uint8 (H, W, 3) YCbCr image, from every 4th pixel (a gate, not a
    measure)."""
    c = ycc[::4, ::4, 1:].reshape(-1, 2).astype(np.float32) - 128.0
    return float(np.abs(c @ _CHROMA_TO_DIFFS.T).sum(axis=1).mean() / 2.0 / 255.0)


def reduction_factor(width: int, height: int, min_long_side: int) -> int:
    """Largest JPEG DCT scale 1/f (f in 8, 4, 2, 1) that keeps the longer side at ``min_long_side`` px or more."""
    long_side = max(width, height)
    return next(f for f in (8, 4, 2, 1) if f == 1 or -(-long_side // f) >= min_long_side)


def decode_jpeg_reduced(data: bytes, name: str, limits: DecodeLimits, min_long_side: int) -> ReducedJpeg | None:
    """Decode a baseline/progressive grey or YCbCr JPEG at the smallest DCT scale that keeps ``min_long_side``.

    Returns None when ``data`` is not such a JPEG (PNG, DICOM, CMYK JPEG, ...): the caller then decodes fully
    with :func:`core.io.decode.decode_bytes`, which also produces the precise error for unreadable input.
    Pillow's ``Image.draft`` was chosen over OpenCV's ``IMREAD_REDUCED_*`` (``python -m bench.sections.input_paths``
    compares them): it reads the header first, so the pixel limits hold before any pixel is decoded, and it
    can return the chroma planes unconverted, which the colour gate needs.
    Raises ImageLoadError for a JPEG whose header passes but whose data is corrupt, or that breaks a limit.
    """
    if raster_format(data) != "JPEG":
        return None
    try:
        im = Image.open(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - let the full decoder word the error
        return None
    if im.format != "JPEG" or im.mode not in ("L", "RGB"):
        return None
    w, h = im.size
    if w * h > limits.max_pixels or min(w, h) < limits.min_side:
        return None  # core.io.decode.decode_bytes refuses it with the standard message
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
