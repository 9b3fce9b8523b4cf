"""The fast input path (``head_search="gamma_hist"``, ``core.preprocess.preprocess_8bit``) as batched tensor ops.

Same decisions as the CPU definition in ``core.preprocess`` (that stays the one definition; this is an engine
for it, checked against it by tests/test_input_paths.py): decode (``torchvision.io.decode_jpeg`` on the device,
in batches), an area-reduced copy of at most 256 px, window and head search from per-image 256-bin histograms
(Otsu from the histogram, the gamma search on the histogram, one real pass at the gamma found), a 5x5 closing,
the bounding box of the largest component (labels propagated on a half-resolution mask), and crop + square pad +
resize with ``F.interpolate`` from the copy reduced as a JPEG's DCT-scaled decode would be.

Every op takes its device from its inputs or an explicit ``device`` argument (``core.model.device.select_device``
chooses it; nothing here does), so the same code runs on CPU in the tests. Files stream from disk in reader
threads into pinned buffers on CUDA (:func:`stream_batches`). Inputs the tensor path does not take (PNG, DICOM,
CMYK or oversized JPEGs) go through the CPU definition; unreadable ones come back with their error, never a
traceback.
"""
from __future__ import annotations

import io
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.errors import ImageLoadError
from core.io.decode import read_source_bytes
from core.io.raster import reduction_factor
from core.io.types import DEFAULT_LIMITS, DecodeLimits
from core.preprocess import (_GAMMA_OTSU_STEPS, _GAMMA_OTSU_TARGET, _SEARCH_SIDE, PreprocessSpec, Preprocessed,
                             _needed_side, decode_for, preprocess_decoded)



@dataclass
class TensorBatch:
    """Output of :func:`preprocess_batch` for N inputs, in input order.

    ``images01``: float32 (n_ok, S, S) in [0, 1] on the device, rows of the readable inputs (``ok`` True);
    ``boxes``: (x0, y0, x1, y1) per input in full-size pixels; ``found``/``blank``/``windows``/``colourfulness``
    as in :class:`core.preprocess.Preprocessed`; ``errors``: message per input ("" when readable).
    """

    images01: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    sizes: list[tuple[int, int]]
    found: list[bool]
    blank: list[bool]
    windows: list[tuple[float, float]]
    colourfulness: list[float]
    errors: list[str]
    seconds: dict = field(default_factory=dict)

    @property
    def ok(self) -> list[bool]:
        return [not e for e in self.errors]

    def items(self) -> list[Preprocessed | None]:
        """Host copies as :class:`Preprocessed` (square side and pad computed as the CPU path does)."""
        out: list[Preprocessed | None] = []
        rows = iter(self.images01.float().cpu().numpy())
        for box, size, found, blank, win, err in zip(self.boxes, self.sizes, self.found, self.blank, self.windows,
                                                    self.errors):
            if err:
                out.append(None)
                continue
            x0, y0, x1, y1 = box
            side = max(x1 - x0, y1 - y0)
            out.append(Preprocessed(next(rows), box, side, ((side - (x1 - x0)) // 2, (side - (y1 - y0)) // 2), size,
                                    blank, found, None, win))
        return out


# --------------------------------------------------------------------------- histogram maths, batched (B, 256)

def histograms(img8: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """float64 (B, 256) counts of integer-valued (B, H, W) images in 0..255 (``weights``: (B, H, W) 0/1)."""
    b = img8.shape[0]
    idx = img8.reshape(b, -1).long()
    w = torch.ones_like(idx, dtype=torch.float64) if weights is None else weights.reshape(b, -1).double()
    return torch.zeros(b, 256, dtype=torch.float64, device=img8.device).scatter_add_(1, idx, w)


def otsu_thresholds(hist: torch.Tensor) -> torch.Tensor:
    """int64 (B,) Otsu threshold per row of a (B, 256) histogram: ``core.preprocess.otsu_threshold``, batched."""
    p = hist / hist.sum(1, keepdim=True).clamp_min(1.0)
    i = torch.arange(256, dtype=torch.float64, device=hist.device)
    q1 = p.cumsum(1)
    q2 = 1.0 - q1
    m1 = (p * i).cumsum(1)
    eps = float(np.finfo(np.float32).eps)
    valid = (torch.minimum(q1, q2) >= eps) & (torch.maximum(q1, q2) <= 1.0 - eps)
    sigma = q1 * q2 * (m1 / q1.clamp_min(1e-300) - (m1[:, -1:] - m1) / q2.clamp_min(1e-300)) ** 2
    sigma = torch.where(valid, sigma, torch.zeros_like(sigma))
    best = sigma.max(1)
    return torch.where(best.values > 0, best.indices, torch.zeros_like(best.indices))


def windows(hist: torch.Tensor, percentile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) float64 (B,) in [0, 1]: ``core.preprocess.window_from_hist`` per row (rows must be non-empty)."""
    cum = hist.cumsum(1)
    n = cum[:, -1]
    levels = torch.arange(256, device=hist.device)
    nz = hist > 0
    lo = torch.where(nz, levels, 256).min(1).values.double()
    top = torch.where(nz, levels, -1).max(1).values.double()
    rank = percentile / 100 * (n - 1)
    k = rank.floor()
    a = torch.searchsorted(cum, (k + 1).unsqueeze(1)).squeeze(1).double()
    b = torch.searchsorted(cum, torch.minimum(k + 2, n).unsqueeze(1)).squeeze(1).double()
    hi = a + (rank - k) * (b - a)
    hi = torch.where((hi - lo) / 255 < 1e-3, top, hi)
    return lo / 255, hi / 255


def gamma_luts(gamma: torch.Tensor) -> torch.Tensor:
    """uint8-valued int64 (B, 256): ``core.preprocess.gamma_lut`` per row (float32 maths, as there)."""
    levels = torch.arange(256, dtype=torch.float32, device=gamma.device) / 255
    return (levels.unsqueeze(0) ** gamma.float().unsqueeze(1) * 255).to(torch.uint8).long()


def gamma_search(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(separable bool (B,), gamma float64 (B,)): ``core.preprocess.hist_gamma_cut`` on every row at once."""
    thr = otsu_thresholds(hist).double()
    separable = thr > 2
    gamma = torch.ones_like(thr)
    for _ in range(_GAMMA_OTSU_STEPS):
        level = thr.clamp(1.0, 254.0) / 255
        gamma = (gamma * np.log(_GAMMA_OTSU_TARGET) / level.log()).clamp(0.2, 5.0)
        remapped = torch.zeros_like(hist).scatter_add_(1, gamma_luts(gamma), hist)
        thr = otsu_thresholds(remapped).double()
    return separable, gamma


# --------------------------------------------------------------------------- image ops, batched (B, H, W)

def blur5(img8: torch.Tensor) -> torch.Tensor:
    """OpenCV ``GaussianBlur(img, (5, 5), 0)`` of integer-valued (B, H, W) float images: reflect-101 border,
    rounded half up (OpenCV's fixed-point result; the float sums here are exact). Shifted adds, not conv2d:
    a one-channel 5-tap filter is memory-bound either way, and this is several times faster on CPU."""
    h, w = img8.shape[1:]
    x = F.pad(img8.unsqueeze(1), (2, 2, 2, 2), mode="reflect").squeeze(1)
    x = x[:, :, 0:w] + 4 * x[:, :, 1:w + 1] + 6 * x[:, :, 2:w + 2] + 4 * x[:, :, 3:w + 3] + x[:, :, 4:w + 4]
    x = x[:, 0:h] + 4 * x[:, 1:h + 1] + 6 * x[:, 2:h + 2] + 4 * x[:, 3:h + 3] + x[:, 4:h + 4]
    return torch.floor(x / 256 + 0.5)


def max_filter(x: torch.Tensor, k: int, outside: float) -> torch.Tensor:
    """k x k maximum filter of (B, H, W) ``x`` (k odd), values beyond the border taken as ``outside``.
    Separable shifted maxima: on CPU several times faster than ``max_pool2d`` on one-channel images."""
    r = k // 2
    h, w = x.shape[1:]
    y = F.pad(x, (r, r, 0, 0), value=outside)
    out = y[:, :, 0:w]
    for d in range(1, k):
        out = torch.maximum(out, y[:, :, d:d + w])
    y = F.pad(out, (0, 0, r, r), value=outside)
    out = y[:, 0:h]
    for d in range(1, k):
        out = torch.maximum(out, y[:, d:d + h])
    return out


def close5(mask: torch.Tensor) -> torch.Tensor:
    """5x5 morphological closing of a float 0/1 (B, H, W) mask; outside the image counts as background for the
    dilation and foreground for the erosion, as OpenCV's default border does."""
    return -max_filter(-max_filter(mask, 5, 0.0), 5, -1.0)


def largest_component_boxes(mask: torch.Tensor, max_iters: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes int64 (B, 4) as x0, y0, x1, y1, any bool (B,)): the box of the largest 8-connected component.

    Why half resolution: labels spread one pixel per max-pool step, so the number of steps is the component's
    longest path; on a 2x2-pooled mask it halves and each step costs a quarter. Components whose pixels lie in
    neighbouring 2x2 cells merge, which after the 5x5 closing only joins what is at most 2-3 px apart. The box
    is then taken at full resolution from the mask pixels inside the chosen component's cells.
    """
    b, h, w = mask.shape
    low = F.max_pool2d(mask.unsqueeze(1), 2, 2, ceil_mode=True).squeeze(1)
    lh, lw = low.shape[1:]
    ids = torch.arange(1, lh * lw + 1, dtype=torch.float32, device=mask.device).view(1, lh, lw)
    labels = (ids * low).reshape(b, -1)
    fg = low.reshape(b, -1) > 0
    for step in range(max_iters):
        grown = max_filter(labels.view(b, lh, lw), 3, 0.0).reshape(b, -1) * fg
        # Pointer jumping: a pixel labelled k takes the label pixel k now holds (same component, never smaller),
        # so a label crosses a long component in a few dozen steps instead of one pixel per step.
        for _ in range(2):
            grown = torch.where(fg, grown.gather(1, (grown.long() - 1).clamp_min(0)), grown)
        done = step % 4 == 3 and torch.equal(grown, labels)
        labels = grown
        if done:
            break
    labels = labels.view(b, lh, lw)
    counts = torch.zeros(b, lh * lw + 1, device=mask.device).scatter_add_(
        1, labels.reshape(b, -1).long(), torch.ones(b, lh * lw, device=mask.device))
    counts[:, 0] = 0
    best = counts.argmax(1)
    chosen = (labels == best.view(b, 1, 1).float()) & (low > 0)
    full = chosen.repeat_interleave(2, 1).repeat_interleave(2, 2)[:, :h, :w] & (mask > 0)
    rows, cols = full.any(2), full.any(1)
    anyfg = rows.any(1)
    ar_h, ar_w = torch.arange(h, device=mask.device), torch.arange(w, device=mask.device)
    y0 = torch.where(rows, ar_h, h).min(1).values
    y1 = torch.where(rows, ar_h, -1).max(1).values + 1
    x0 = torch.where(cols, ar_w, w).min(1).values
    x1 = torch.where(cols, ar_w, -1).max(1).values + 1
    return torch.stack([x0, y0, x1, y1], 1), anyfg


def search_boxes(small: torch.Tensor, spec: PreprocessSpec) -> dict[str, torch.Tensor]:
    """The head search on a group of same-size copies: ``small`` integer-valued float32 (B, h, w) in 0..255.

    Returns boxes int64 (B, 4) in ``small``'s pixels, found bool (B,), and the final window lo/hi float64 (B,)
    in [0, 1] (inside the box where found, else over the whole copy), blank bool (B,).
    """
    b, h, w = small.shape
    lo, hi = windows(histograms(small), spec.intensity_percentile)
    blank = (hi - lo) < 1e-3
    levels = torch.arange(256, dtype=torch.float32, device=small.device) / 255
    span = (hi - lo).float().clamp_min(1e-6).unsqueeze(1)
    lut = ((levels.unsqueeze(0) - lo.float().unsqueeze(1)) / span).clamp(0, 1).mul(255).to(torch.uint8).long()
    norm8 = lut.gather(1, small.reshape(b, -1).long()).view(b, h, w).float()
    separable, gamma = gamma_search(histograms(blur5(norm8)))
    bent = gamma_luts(gamma).gather(1, norm8.reshape(b, -1).long()).view(b, h, w).float()
    blurred = blur5(bent)
    cut = otsu_thresholds(histograms(blurred))
    mask = (blurred > cut.view(b, 1, 1)).float()
    boxes, anyfg = largest_component_boxes(close5(mask))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    found = separable & anyfg & ~blank & (area >= spec.min_head_fraction * h * w)
    yy = torch.arange(h, device=small.device).view(1, h, 1)
    xx = torch.arange(w, device=small.device).view(1, 1, w)
    inside = ((yy >= boxes[:, 1].view(b, 1, 1)) & (yy < boxes[:, 3].view(b, 1, 1))
              & (xx >= boxes[:, 0].view(b, 1, 1)) & (xx < boxes[:, 2].view(b, 1, 1)))
    weights = torch.where(found.view(b, 1, 1), inside, torch.ones_like(inside)).float()  # no head: whole copy
    blo, bhi = windows(histograms(small, weights), spec.intensity_percentile)
    lo, hi = torch.where(found, blo, lo), torch.where(found, bhi, hi)
    return {"boxes": boxes, "found": found, "lo": lo, "hi": hi, "blank": (hi - lo) < 1e-3}


# --------------------------------------------------------------------------- decode, crop, stream

@lru_cache(maxsize=256)
def _area_weights(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """float64 (n_out, n_in): OpenCV INTER_AREA's weights for shrinking n_in -> n_out samples (each output
    averages the input span it covers, partial pixels by their covered fraction)."""
    s = n_in / n_out
    edges = torch.arange(n_out + 1, dtype=torch.float64) * s
    j = torch.arange(n_in, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:, None], j + 1) - torch.maximum(edges[:-1, None], j)).clamp_min(0)
    return (overlap / s).to(device)


def _area(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(H, W) integer-valued float -> (h, w), as OpenCV's ``resize(..., INTER_AREA)`` of a uint8 image gives it:
    exact coverage weights, and its rounding (half up on its integer-ratio fast path, half to even otherwise)."""
    if img.shape == (h, w):
        return img
    hi, wi = img.shape
    if h > hi or w > wi:  # never for the copies made here (they only shrink); kept total for odd callers
        return F.interpolate(img[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].round()
    out = _area_weights(hi, h, img.device) @ img.double() @ _area_weights(wi, w, img.device).T
    if hi % h == 0 and wi % w == 0:
        return torch.floor(out + 0.5).float()
    return out.round().float()


def _tensor_route(data: bytes, limits: DecodeLimits) -> bool:
    """True for a grey or YCbCr JPEG within the limits and without an EXIF rotation (header only): the inputs
    :func:`decode_batch` takes. Why not rotated ones: torchvision's CUDA decoder ignores EXIF orientation."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        upright = im.getexif().get(0x0112, 1) in (1, None)
    except Exception:  # noqa: BLE001 - the CPU route words the error
        return False
    return (im.format == "JPEG" and im.mode in ("L", "RGB") and upright and w * h <= limits.max_pixels
            and min(w, h) >= limits.min_side)


def prepare(data: bytes, limits: DecodeLimits = DEFAULT_LIMITS, pin: bool = False) -> torch.Tensor | None:
    """The decoder's input for file bytes: a uint8 1-D CPU tensor (pinned when ``pin``), or None when the tensor
    route does not take the file (:func:`_tensor_route`). Reader threads call it, so pinning overlaps the GPU."""
    if not _tensor_route(data, limits):
        return None
    t = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return t.pin_memory() if pin else t


def decode_batch(datas: list[torch.Tensor], device: torch.device) -> list[tuple[torch.Tensor | None, float, str]]:
    """Decode JPEG bytes (uint8 1-D CPU tensors, pinned on CUDA) on ``device``: (grey float32 (H, W) in 0..255
    on the device, colourfulness, error) per input. One batched call; if it fails (one corrupt file fails the
    whole call), each file is decoded alone so only the bad one carries the error."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated in favour of torchcodec
        try:
            decoded = decode_jpeg(datas, mode=ImageReadMode.UNCHANGED, device=device)
        except RuntimeError:
            decoded = []
            for d in datas:
                try:
                    decoded.append(decode_jpeg(d, mode=ImageReadMode.UNCHANGED, device=device))
                except RuntimeError as exc:
                    decoded.append(f"cannot decode JPEG data ({str(exc).splitlines()[0][:120]})")
    out: list[tuple[torch.Tensor | None, float, str]] = []
    for img in decoded:
        if isinstance(img, str):
            out.append((None, 0.0, img))
        elif img.shape[0] == 1:
            out.append((img[0].float(), 0.0, ""))
        else:  # BT.601 luma, rounded as a JPEG's Y plane is; chroma from every 4th pixel, as the CPU estimate
            rgb = img[:3].float()
            grey = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).round()
            sub = rgb[:, ::4, ::4]
            chroma = ((sub[0] - sub[1]).abs() + (sub[1] - sub[2]).abs() + (sub[2] - sub[0]).abs()).mean() / 2 / 255
            out.append((grey, float(chroma), ""))
    return out


def preprocess_batch(greys: list[torch.Tensor], spec: PreprocessSpec) -> TensorBatch:
    """Head search, window, crop and resize of decoded grey images (float32 (H, W) in 0..255, on one device).

    Returns a :class:`TensorBatch` with ``images01`` (N, S, S) on that device; geometry as
    ``core.preprocess.preprocess_8bit`` reports it (full-size pixels).
    """
    device = greys[0].device if greys else torch.device("cpu")
    smalls, reduced, sizes = [], [], []
    for g in greys:
        h, w = g.shape
        scale = min(1.0, _SEARCH_SIDE / max(h, w))
        f = reduction_factor(w, h, _needed_side(spec))
        red = _area(g, -(-h // f), -(-w // f))
        smalls.append(_area(red, max(1, round(h * scale)), max(1, round(w * scale))))
        reduced.append(red)
        sizes.append((w, h, scale))
    found = [False] * len(greys)
    boxes_small: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * len(greys)
    wins: list[tuple[float, float]] = [(0.0, 1.0)] * len(greys)
    blank = [True] * len(greys)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(smalls):
        groups.setdefault(tuple(s.shape), []).append(i)
    for idx in groups.values():  # one batched search per copy size (most slices share one)
        r = search_boxes(torch.stack([smalls[i] for i in idx]), spec)
        host = {k: v.tolist() for k, v in r.items()}  # the one device -> host sync of the group
        for j, i in enumerate(idx):
            found[i], blank[i] = bool(host["found"][j]), bool(host["blank"][j])
            boxes_small[i] = tuple(int(v) for v in host["boxes"][j])
            wins[i] = (float(host["lo"][j]), float(host["hi"][j]))
    images, boxes = [], []
    s_out = spec.image_size
    for i, red in enumerate(reduced):
        w, h, scale = sizes[i]
        if found[i]:
            bx0, by0, bx1, by1 = (int(round(v / scale)) for v in boxes_small[i])
            m = int(round(spec.crop_margin * max(bx1 - bx0, by1 - by0)))
            x0, y0, x1, y1 = max(0, bx0 - m), max(0, by0 - m), min(w, bx1 + m), min(h, by1 + m)
        else:
            x0, y0, x1, y1 = 0, 0, w, h
        boxes.append((x0, y0, x1, y1))
        rh, rw = red.shape
        fx, fy = rw / w, rh / h
        rx0, ry0 = min(rw - 1, int(round(x0 * fx))), min(rh - 1, int(round(y0 * fy)))
        rx1, ry1 = max(rx0 + 1, min(rw, int(round(x1 * fx)))), max(ry0 + 1, min(rh, int(round(y1 * fy))))
        lo, hi = wins[i]
        crop = red[ry0:ry1, rx0:rx1]
        crop = torch.zeros_like(crop) if blank[i] else ((crop / 255 - lo) / (hi - lo)).clamp(0, 1)
        ch, cw = crop.shape
        side = max(ch, cw)
        top, left = (side - ch) // 2, (side - cw) // 2
        square = F.pad(crop, (left, side - cw - left, top, side - ch - top))
        if side > s_out:  # INTER_AREA's weights, as the CPU path resizes
            wts = _area_weights(side, s_out, square.device).float()
            images.append((wts @ square @ wts.T).clamp(0, 1))
        else:  # INTER_LINEAR (half-pixel centres) for a crop smaller than the model input
            images.append(F.interpolate(square[None, None], size=(s_out, s_out), mode="bilinear",
                                        align_corners=False)[0, 0].clamp(0, 1))
    stacked = torch.stack(images) if images else torch.zeros(0, s_out, s_out, device=device)
    return TensorBatch(stacked, boxes, [(w, h) for w, h, _ in sizes], found, blank, wins, [0.0] * len(greys),
                       [""] * len(greys))


def load_batch(datas: list[bytes | str], names: list[str], spec: PreprocessSpec, device: torch.device,
               limits: DecodeLimits = DEFAULT_LIMITS, pin: bool = False,
               prepared: list[torch.Tensor | None] | None = None) -> TensorBatch:
    """File bytes (or an error string from reading) -> :class:`TensorBatch` on ``device``, in input order.

    JPEGs the tensor route takes are decoded on ``device`` in one call; other inputs go through the CPU
    definition (``core.preprocess.decode_for`` + ``preprocess_decoded``) and join the batch; unreadable ones
    keep their error. ``pin``: pin the byte buffers first (CUDA: the decoder's host-to-device copy is async);
    ``prepared``: :func:`prepare`'s output per input when the readers already made it.
    """
    n = len(datas)
    errors, colour = [""] * n, [0.0] * n
    cpu_items: dict[int, Preprocessed] = {}
    tensor_idx, tensors = [], []
    for i, d in enumerate(datas):
        t = None if isinstance(d, str) else prepared[i] if prepared is not None else prepare(d, limits, pin)
        if isinstance(d, str):
            errors[i] = d
        elif t is not None:
            tensors.append(t)
            tensor_idx.append(i)
        else:
            try:
                cpu_items[i] = preprocess_decoded(decode_for(d, names[i], spec, limits), spec)
            except ImageLoadError as exc:
                errors[i] = str(exc)
            except Exception as exc:  # noqa: BLE001 - one bad file must never stop the batch
                errors[i] = f"{names[i]}: unexpected error ({type(exc).__name__}: {exc})"
    greys, grey_idx = [], []
    for i, (grey, chroma, err) in zip(tensor_idx, decode_batch(tensors, device) if tensors else []):
        if err:
            errors[i] = f"{names[i]}: {err}"
        else:
            greys.append(grey)
            grey_idx.append(i)
            colour[i] = chroma
    tb = preprocess_batch(greys, spec)
    out = TensorBatch(torch.zeros(0), [(0, 0, 0, 0)] * n, [(0, 0)] * n, [False] * n, [True] * n, [(0.0, 1.0)] * n,
                      colour, errors)
    rows: dict[int, torch.Tensor] = {}
    for j, i in enumerate(grey_idx):
        out.boxes[i], out.sizes[i], out.found[i] = tb.boxes[j], tb.sizes[j], tb.found[j]
        out.blank[i], out.windows[i] = tb.blank[j], tb.windows[j]
        rows[i] = tb.images01[j]
    for i, item in cpu_items.items():
        out.boxes[i], out.sizes[i], out.found[i] = item.crop_box, item.original_size, item.crop_found
        out.blank[i], out.windows[i] = item.blank, item.window
        out.colourfulness[i] = item.decoded.colourfulness if item.decoded is not None else 0.0
        rows[i] = torch.from_numpy(item.image).to(device)
    s = spec.image_size
    out.images01 = torch.stack([rows[i] for i in range(n) if i in rows]) if rows else torch.zeros(0, s, s, device=device)
    return out


def _read(path: Path, limits: DecodeLimits, pin: bool) -> tuple[bytes | str, torch.Tensor | None]:
    """(file bytes or the read error, :func:`prepare`'s tensor): one reader thread's job."""
    try:
        data = read_source_bytes(path, limits)[0]
    except ImageLoadError as exc:
        return str(exc), None
    return data, prepare(data, limits, pin)


def stream_batches(paths: Iterable[str | Path], spec: PreprocessSpec, device: torch.device, batch_size: int = 256,
                   readers: int = 8, limits: DecodeLimits = DEFAULT_LIMITS,
                   ahead: int = 2) -> Iterator[tuple[list[Path], TensorBatch]]:
    """(paths, :class:`TensorBatch`) per batch of files, in input order, read by ``readers`` threads.

    Reading (and, on CUDA, pinning the bytes in page-locked buffers) runs in the reader threads ``ahead`` batches
    in front of the decode, so the device never waits for the disk. Memory: about ``ahead + 1`` batches of file bytes.
    """
    paths = [Path(p) for p in paths]
    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    pin = device.type == "cuda"
    with ThreadPoolExecutor(max_workers=max(1, readers)) as pool:
        def submit(c: list[Path]):
            return pool.map(_read, c, [limits] * len(c), [pin] * len(c))

        pending = [submit(c) for c in chunks[:ahead]]
        for k, chunk in enumerate(chunks):
            got = list(pending.pop(0))
            if k + ahead < len(chunks):
                pending.append(submit(chunks[k + ahead]))
            yield chunk, load_batch([g[0] for g in got], [p.name for p in chunk], spec, device, limits, pin,
                                    [g[1] for g in got])
