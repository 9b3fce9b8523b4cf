"""Small image helpers for display and download (no streamlit, no model)."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image, ImageOps


def to_uint8(pixels01: np.ndarray) -> np.ndarray:
    """float image in [0, 1] (grey (H, W) or RGB (H, W, 3)) -> uint8."""
    return (np.clip(np.nan_to_num(pixels01), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def grey_to_rgb(grey_u8: np.ndarray) -> np.ndarray:
    return np.repeat(grey_u8[..., None], 3, axis=2) if grey_u8.ndim == 2 else grey_u8


def draw_peak_marker(rgb: np.ndarray, peak: tuple[float, float]) -> np.ndarray:
    """A copy of ``rgb`` with a ring and crosshair at ``peak`` = (x, y) as fractions of width/height."""
    out = np.ascontiguousarray(rgb.copy())
    h, w = out.shape[:2]
    x, y = int(round(peak[0] * w - 0.5)), int(round(peak[1] * h - 0.5))
    side = min(h, w)
    r = max(6, side // 18)
    t = max(1, side // 220)
    gap = r // 2
    for colour, thick in (((0, 0, 0), t + 2), ((255, 255, 255), t)):  # dark halo, then white
        cv2.circle(out, (x, y), r, colour, thick, cv2.LINE_AA)
        for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            cv2.line(out, (x + dx * gap, y + dy * gap), (x + dx * (r + gap), y + dy * (r + gap)), colour, thick,
                     cv2.LINE_AA)
    return out


def png_bytes(img: np.ndarray) -> bytes:
    """PNG encoding of a uint8 grey or RGB array."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def thumbnail(img: np.ndarray, max_side: int = 192) -> np.ndarray:
    """Downscale (never upscale) a uint8 image so its longer side is at most ``max_side``."""
    h, w = img.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return img
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def colour_original(data: bytes) -> np.ndarray | None:
    """The file as the colour picture it is: uint8 (H, W, 3) RGB, oriented as ``core.io.raster`` decodes it;
    None for grey files or what PIL cannot open (DICOM). Shown for colour images flagged as outside intended
    use, so the reader sees the photo that was refused rather than its grey conversion."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode in ("L", "LA", "1", "I", "F") or im.mode.startswith("I;16"):
                return None
            im.seek(getattr(im, "n_frames", 1) // 2)  # the frame the decoder used
            return np.array(ImageOps.exif_transpose(im).convert("RGB"))
    except Exception:  # noqa: BLE001 - display only: fall back to the grey image
        return None


def colour_lut(colormap: int) -> np.ndarray:
    """The OpenCV colour map as a uint8 (256, 3) RGB table (index = heatmap value x 255)."""
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    return cv2.cvtColor(cv2.applyColorMap(ramp, colormap), cv2.COLOR_BGR2RGB)[:, 0, :]


def colour_scale(colormap: int, stops: int = 11) -> list[list]:
    """A plotly colorscale identical to the OpenCV colour map the overlay used (for its colour bar)."""
    lut = colour_lut(colormap)
    return [[i / (stops - 1), "rgb({},{},{})".format(*lut[round(i * 255 / (stops - 1))])] for i in range(stops)]


_FONT = cv2.FONT_HERSHEY_SIMPLEX


def labelled_overlay(blend: np.ndarray, lines: list[str], colormap: int, scale_label: str,
                     min_width: int = 640) -> np.ndarray:
    """The overlay with a footer burned in: a colour bar (0 to 1, labelled ``scale_label``) and ``lines``
    of text (ASCII), so an exported image still says what it shows. uint8 (H', W', 3) RGB.

    The overlay is centred on a canvas at least ``min_width`` wide, so the text fits on small images.
    """
    h, w = blend.shape[:2]
    width = max(w, min_width)
    line_h, pad, bar_h = 22, 10, 14
    footer = pad + bar_h + line_h + len(lines) * line_h + pad
    canvas = np.full((h + footer, width, 3), 255, np.uint8)
    x0 = (width - w) // 2
    canvas[:h, x0:x0 + w] = blend
    y = h + pad
    bar = np.repeat(colour_lut(colormap)[None], bar_h, axis=0)
    bar = cv2.resize(bar, (width - 2 * pad, bar_h), interpolation=cv2.INTER_LINEAR)
    canvas[y:y + bar_h, pad:width - pad] = bar
    y += bar_h + 16
    cv2.putText(canvas, "0", (pad, y), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    (tw, _), _ = cv2.getTextSize(scale_label, _FONT, 0.45, 1)
    cv2.putText(canvas, scale_label, (max(pad, width - pad - tw), y), _FONT, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    for line in lines:
        y += line_h
        cv2.putText(canvas, line.encode("ascii", "replace").decode(), (pad, y), _FONT, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas
