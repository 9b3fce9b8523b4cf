"""Training-time augmentation on batches of preprocessed images, vectorised in torch.

Chosen for robustness to scans from other sites, not to squeeze the Testing split:
geometry (rotation, scale, shift, left-right flip: tumours occur on either side),
contrast (gamma, gain, bias: other sequences and scanners), and resolution loss
and noise (other acquisition matrices, re-encoded JPEGs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


def augment_batch(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Augment a batch of images in [0, 1].

    Args:
        images: float32 (N, 1, S, S) in [0, 1].
    Returns:
        float32 (N, 1, S, S) in [0, 1]; every sample gets its own random parameters.
    """
    n, _, s, _ = images.shape
    dev = images.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return torch.rand(n, device=dev, generator=generator) * (hi - lo) + lo

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
    out = out.clamp(0, 1).pow(gamma) * gain + bias
    noisy = (torch.rand(n, device=dev, generator=generator) < cfg.noise_p).view(n, 1, 1, 1)
    sigma = uniform(0, cfg.noise_sigma).view(n, 1, 1, 1)
    noise = torch.randn(out.shape, device=dev, generator=generator) * sigma
    out = torch.where(noisy, out + noise, out)
    return out.clamp(0, 1)
