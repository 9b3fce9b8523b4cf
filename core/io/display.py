"""Window/level for any grey image, starting where the model's preprocessing looked (no streamlit).

A viewer shows a grey slice through a window (centre, width) over its stored values: DICOM modality units,
or a PNG/JPEG's own grey levels. The window that reproduces what the model analysed is the preprocessing's
intensity window (``Preprocessed.window``, in decoded [0, 1] units) carried back into those stored units.
"""
from __future__ import annotations

import numpy as np

from core.io.dicom import DicomDisplay
from core.io.types import DecodedImage
from core.inference.ood import COLOUR_LIMIT


def grey_display(decoded: DecodedImage) -> DicomDisplay | None:
    """The stored values a reader windows: a DICOM's modality units (``decoded.display``), else the file's grey
    levels (``pixels`` x 255 for 8-bit, else x 65535). None for a colour image,
    whose window is not a grey-level question."""
    if decoded.display is not None:
        return decoded.display
    if decoded.colourfulness > COLOUR_LIMIT:
        return None
    full = 255.0 if decoded.bit_depth <= 8 else 65535.0  # float arrays too: the window width is at least 1
    return DicomDisplay(values=(decoded.pixels * full).astype(np.float32), monochrome1=False, file_window=None,
                        voi_lut_sequence=False)


def analysed_window(display: DicomDisplay, pixels: np.ndarray, window: tuple[float, float]) -> tuple[float, float]:
    """(centre, width) in ``display`` units that shows the slice as the model saw it.

    Args:
        display: the stored values (from :func:`grey_display`).
        pixels: float32 (H, W) in [0, 1], the decoded image the preprocessing read (a DICOM's file window,
            or VOI LUT, already applied; MONOCHROME1 already inverted).
        window: the preprocessing's (lo, hi) in ``pixels`` units.

    ``pixels`` is a monotone function of the stored values (a linear or sigmoid window, a VOI LUT, or plain
    scaling), so the values where it crosses ``lo`` and ``hi`` bound the window. Exact for linear mappings;
    the closest linear window otherwise.
    """
    v = display.values.ravel().astype(np.float64)
    p = pixels.ravel().astype(np.float64)
    order = np.argsort(v, kind="stable")
    v, p = v[order], p[order]
    if p[-1] < p[0]:  # MONOCHROME1: bright pixels hold low values
        v, p = v[::-1], p[::-1]
    p = np.maximum.accumulate(p)  # guard against rounding noise; the mapping is monotone
    lo, hi = window
    i_lo = int(np.clip(np.searchsorted(p, lo, side="right") - 1, 0, len(p) - 1))
    i_hi = int(np.clip(np.searchsorted(p, hi, side="left"), 0, len(p) - 1))
    a, b = sorted((float(v[i_lo]), float(v[i_hi])))
    if b - a <= 0:
        lo_v, hi_v = display.value_range
        return (lo_v + hi_v) / 2, max(hi_v - lo_v, 1e-6)
    return (a + b) / 2, b - a
