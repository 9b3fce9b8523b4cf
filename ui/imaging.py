"""Small image helpers for display and download (no streamlit, no model)."""
from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image


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
