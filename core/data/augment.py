"""Training-time augmentation on batches of preprocessed images, vectorised in torch.

Chosen for robustness to scans from other sites and archives, not to squeeze one test split. The
multi-source model was trained with the ``scanner`` set (``AugmentConfig.scanner()``), which aims at the cues
that gave the Kaggle archives away (README "What the model was trained on"):

* geometry: rotation, scale, shift, left-right flip (tumours occur on either side);
* contrast: gamma, gain and bias, and a random monotone contrast curve (other sequences' windowing,
  other scanners' and archives' tone curves);
* local contrast: CLAHE (local histogram equalisation, which re-saved archive slices often carry) and a
  smooth multiplicative bias field (coil inhomogeneity);
* sharpness and resolution: Gaussian blur, unsharp masking, downsampling, JPEG re-encoding, noise;
* skull stripping (``scanner_strip``): research archives such as BraTS publish brains with the skull and scalp
  removed, and in the multi-source data only BraTS looks like that. ``python -m tools.skull_strip_check``
  measures on validation how much a model's tumour calls depend on the skull (``reports/skull_strip_check.json``:
  the shipped model calls fewer validation tumours a tumour once the skull is cut away with
  :func:`strip_skull`). So slices of sources with a skull are stripped at random, and sources declared
  ``skull_stripped`` are left alone (eroding a stripped brain again would cut away peripheral tumours).

CLAHE and JPEG have no torch implementation: they run per image in OpenCV on the CPU (a 160 px slice takes
about 0.1 ms), wherever the batch lives.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.85, 1.15)
    max_shift: float = 0.08  # fraction of the image side
    hflip_p: float = 0.5
    gamma_range: tuple[float, float] = (0.7, 1.5)
    gain_range: tuple[float, float] = (0.8, 1.2)
    bias_range: tuple[float, float] = (-0.08, 0.08)
    lowres_p: float = 0.25  # downsample x0.35-0.7 then back up
    noise_p: float = 0.3
    noise_sigma: float = 0.03
    # The "scanner" set (off by default: models trained before it existed keep their recipe)
    curve_p: float = 0.0  # random monotone contrast curve
    bias_field_p: float = 0.0  # smooth multiplicative field, up to exp(+-bias_field_strength)
    bias_field_strength: float = 0.35
    clahe_p: float = 0.0
    blur_sharpen_p: float = 0.0  # half blur (sigma 0.5-1.5 px), half unsharp mask (amount 0.5-1.5)
    jpeg_p: float = 0.0  # re-encoded at quality 25-90
    skull_strip_p: float = 0.0  # of the images that show a skull: skull and scalp cut away (strip_skull)
    skull_strip_depth: tuple[float, float] = (0.03, 0.08)  # erosion of the head mask, fraction of the side

    @classmethod
    def scanner(cls, **overrides) -> "AugmentConfig":
        """The set the multi-source model is trained with (module docstring)."""
        return replace(cls(gamma_range=(0.5, 2.0), curve_p=0.4, bias_field_p=0.3, clahe_p=0.25,
                           blur_sharpen_p=0.3, jpeg_p=0.2), **overrides)

    @classmethod
    def scanner_strip(cls, **overrides) -> "AugmentConfig":
        """``scanner`` plus random skull stripping (module docstring)."""
        return cls.scanner(**{"skull_strip_p": 0.3, **overrides})

    def to_dict(self) -> dict:
        return asdict(self)


def _monotone_curves(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Apply a random monotone piecewise-linear tone curve (6 knots) to the images selected by ``mask``."""
    n = x.shape[0]
    steps = torch.rand(n, 6, device=x.device, generator=generator) + 0.15  # strictly increasing curve
    knots = torch.cat([torch.zeros(n, 1, device=x.device), steps.cumsum(1)], 1)
    knots = knots / knots[:, -1:]  # (N, 7), 0 -> 0 and 1 -> 1
    pos = x.clamp(0, 1) * 6
    seg = pos.floor().clamp(max=5).long()
    frac = pos - seg
    flat = seg.flatten(1)
    lo = knots.gather(1, flat).view_as(x)
    hi = knots.gather(1, flat + 1).view_as(x)
    curved = lo + frac * (hi - lo)
    return torch.where(mask.view(n, 1, 1, 1), curved, x)


def _bias_field(x: torch.Tensor, mask: torch.Tensor, strength: float,
                generator: torch.Generator | None) -> torch.Tensor:
    n, _, s, _ = x.shape
    coarse = torch.randn(n, 1, 4, 4, device=x.device, generator=generator)
    field = F.interpolate(coarse, size=(s, s), mode="bicubic", align_corners=False)
    field = field / field.flatten(1).abs().amax(1).clamp(min=1e-6).view(n, 1, 1, 1)
    amount = torch.rand(n, 1, 1, 1, device=x.device, generator=generator) * strength
    return torch.where(mask.view(n, 1, 1, 1), x * torch.exp(field * amount), x)


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-r, r + 1, device=device, dtype=torch.float32)
    k = torch.exp(-(t ** 2) / (2 * sigma ** 2))
    k = k / k.sum()
    return (k[:, None] * k[None, :])[None, None]


def _blur_sharpen(x: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    if not mask.any():
        return x
    sigma = float(torch.rand(1, generator=generator) * 1.0 + 0.5)
    k = _gaussian_kernel(sigma, x.device)
    blurred = F.conv2d(F.pad(x, [k.shape[-1] // 2] * 4, mode="replicate"), k)
    n = x.shape[0]
    sharpen = torch.rand(n, device=x.device, generator=generator) < 0.5
    amount = (torch.rand(n, device=x.device, generator=generator) + 0.5).view(n, 1, 1, 1)
    sharpened = x + amount * (x - blurred)
    out = torch.where(sharpen.view(n, 1, 1, 1), sharpened, blurred)
    return torch.where(mask.view(n, 1, 1, 1), out, x)


def _per_image_cpu(x: torch.Tensor, mask: torch.Tensor, fn) -> torch.Tensor:
    """Run ``fn(uint8 (S, S)) -> uint8 (S, S)`` on the masked images in OpenCV, wherever the batch lives."""
    idx = torch.nonzero(mask).flatten().tolist()
    if not idx:
        return x
    sub = (x[idx, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    done = torch.from_numpy(np.stack([fn(im) for im in sub])).to(x.device, torch.float32) / 255
    out = x.clone()
    out[idx, 0] = done
    return out


def strip_skull(image: np.ndarray, depth: float, margin: float = 0.03) -> np.ndarray:
    """An approximate skull strip of a preprocessed head crop, framed again as the preprocessing frames a head.

    The head is the largest bright region (Otsu on a blurred copy, holes filled); eroding it by ``depth`` x
    the side takes off the scalp and the skull (their thickness is a few percent of a head's width). What is
    left is re-windowed to its own 99.5th percentile, as ``core.preprocess`` windows inside the head, and
    cropped to its box with ``margin``, padded square and resized back.

    Args:
        image: uint8 (S, S), a preprocessed slice (head crop, dark background).
        depth: erosion as a fraction of S, e.g. 0.03-0.08.
    Returns:
        uint8 (S, S); the input itself when no head is found or the erosion would leave too little of it.
    """
    s = image.shape[0]
    _, fg = cv2.threshold(cv2.GaussianBlur(image, (5, 5), 0), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return image
    head = np.zeros_like(fg)
    cv2.drawContours(head, [max(contours, key=cv2.contourArea)], -1, 255, -1)
    r = max(1, int(round(depth * s)))
    brain = cv2.erode(head, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0
    if brain.sum() < 0.1 * s * s:
        return image
    kept = image.astype(np.float32) * brain
    top = float(np.percentile(kept[brain], 99.5))
    kept = np.clip(kept * (255.0 / max(top, 1.0)), 0, 255).astype(np.uint8)
    ys, xs = np.nonzero(brain)
    pad = int(round(margin * max(np.ptp(ys), np.ptp(xs))))
    y0, y1 = max(ys.min() - pad, 0), min(ys.max() + pad + 1, s)
    x0, x1 = max(xs.min() - pad, 0), min(xs.max() + pad + 1, s)
    box = kept[y0:y1, x0:x1]
    h, w = box.shape
    side = max(h, w)
    square = np.zeros((side, side), np.uint8)
    square[(side - h) // 2:(side - h) // 2 + h, (side - w) // 2:(side - w) // 2 + w] = box
    return cv2.resize(square, (s, s), interpolation=cv2.INTER_AREA)


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None,
                  has_skull: torch.Tensor | None = None) -> torch.Tensor:
    """Augment a batch of images in [0, 1].

    Args:
        images: float32 (N, 1, S, S) in [0, 1].
        generator: torch generator for the random draws (OpenCV steps draw from it too, via a seed).
        has_skull: bool (N,), which images show a skull and may be skull-stripped (default: all of them).
    Returns:
        float32 (N, 1, S, S) in [0, 1]; every sample gets its own random parameters.
    """
    n, _, s, _ = images.shape
    dev = images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) * (hi - lo) + lo

    def chance(p: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) < p

    if cfg.skull_strip_p > 0:
        # First, as it stands for another archive's preprocessing; geometry and contrast then vary it.
        strip = chance(cfg.skull_strip_p)
        if has_skull is not None:
            strip &= has_skull.to(dev)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng_s = np.random.default_rng(seed)
        images = _per_image_cpu(images, strip, lambda im: strip_skull(im, float(rng_s.uniform(*cfg.skull_strip_depth))))

    angle = uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg) * math.pi / 180
    scale = uniform(*cfg.scale_range)
    flip = torch.where(torch.rand(n, device=dev, generator=generator) < cfg.hflip_p, -1.0, 1.0)
    tx, ty = uniform(-cfg.max_shift, cfg.max_shift) * 2, uniform(-cfg.max_shift, cfg.max_shift) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    low = torch.rand(n, device=dev, generator=generator) < cfg.lowres_p
    if low.any():
        factor = float(uniform(0.35, 0.7)[0])
        small = F.interpolate(out[low], scale_factor=factor, mode="bilinear", antialias=True, align_corners=False)
        out[low] = F.interpolate(small, size=(s, s), mode="bilinear", align_corners=False)

    gamma = uniform(*cfg.gamma_range).view(n, 1, 1, 1)
    gain = uniform(*cfg.gain_range).view(n, 1, 1, 1)
    bias = uniform(*cfg.bias_range).view(n, 1, 1, 1)
    out = out.clamp(0, 1).pow(gamma)
    if cfg.curve_p > 0:
        out = _monotone_curves(out, chance(cfg.curve_p), generator)
    if cfg.bias_field_p > 0:
        out = _bias_field(out, chance(cfg.bias_field_p), cfg.bias_field_strength, generator)
    out = (out * gain + bias).clamp(0, 1)
    if cfg.clahe_p > 0:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng = np.random.default_rng(seed)

        def clahe(im: np.ndarray) -> np.ndarray:
            tiles = int(rng.integers(4, 9))
            return cv2.createCLAHE(clipLimit=float(rng.uniform(1.5, 4.0)), tileGridSize=(tiles, tiles)).apply(im)

        out = _per_image_cpu(out, chance(cfg.clahe_p), clahe)
    if cfg.blur_sharpen_p > 0:
        out = _blur_sharpen(out, chance(cfg.blur_sharpen_p), generator).clamp(0, 1)
    if cfg.jpeg_p > 0:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        rng_j = np.random.default_rng(seed)

        def jpeg(im: np.ndarray) -> np.ndarray:
            ok, buf = cv2.imencode(".jpg", im, [cv2.IMWRITE_JPEG_QUALITY, int(rng_j.integers(25, 91))])
            return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE) if ok else im

        out = _per_image_cpu(out, chance(cfg.jpeg_p), jpeg)
    noisy = (torch.rand(n, device=dev, generator=generator) < cfg.noise_p).view(n, 1, 1, 1)
    sigma = uniform(0, cfg.noise_sigma).view(n, 1, 1, 1)
    noise = torch.randn(out.shape, device=dev, generator=generator) * sigma
    out = torch.where(noisy, out + noise, out)
    return out.clamp(0, 1)
