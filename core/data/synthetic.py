"""Synthetic images: non-MRI probes for the OOD measurement, and fake 'scans' for tests.

Nothing here resembles patient data; it is generated from a seed.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

NON_MRI_KINDS = ("noise", "blank", "gradient", "chart", "document", "shapes", "photo", "checker")


def non_mri_image(kind: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One uint8 image of a kind in :data:`NON_MRI_KINDS`: (H, W) grey or (H, W, 3) RGB."""
    s = size
    if kind == "noise":
        return rng.integers(0, 256, (s, s), dtype=np.uint8)
    if kind == "blank":
        return np.full((s, s), int(rng.choice([0, 255, rng.integers(0, 256)])), np.uint8)
    if kind == "gradient":
        ramp = np.linspace(0, 255, s)
        img = ramp[None, :] if rng.random() < 0.5 else ramp[:, None]
        return np.broadcast_to(img, (s, s)).astype(np.uint8).copy()
    im = Image.new("RGB", (s, s), tuple(int(v) for v in rng.integers(180, 256, 3)))
    d = ImageDraw.Draw(im)
    if kind == "chart":
        d.line([(20, s - 20), (s - 10, s - 20)], fill=(0, 0, 0), width=2)
        d.line([(20, 10), (20, s - 20)], fill=(0, 0, 0), width=2)
        n = int(rng.integers(3, 9))
        for i in range(n):
            x0 = 30 + i * (s - 50) // n
            top = int(rng.integers(20, s - 40))
            d.rectangle([x0, top, x0 + (s - 50) // n - 6, s - 21], fill=tuple(int(v) for v in rng.integers(0, 200, 3)))
    elif kind == "document":
        for y in range(12, s - 12, 14):
            d.line([(12, y), (int(rng.integers(s // 2, s - 12)), y)], fill=(30, 30, 30), width=3)
    elif kind == "shapes":
        for _ in range(int(rng.integers(3, 10))):
            x0, y0 = (int(v) for v in rng.integers(0, s - 40, 2))
            x1, y1 = x0 + int(rng.integers(20, s // 2)), y0 + int(rng.integers(20, s // 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, 3))
            (d.ellipse if rng.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=fill)
    elif kind == "photo":  # sky, horizon, ground and a few blurred objects
        arr = np.zeros((s, s, 3), np.float32)
        h = int(rng.integers(s // 3, 2 * s // 3))
        arr[:h] = np.linspace(0.4, 0.9, h)[:, None, None] * np.array([0.5, 0.7, 1.0])
        arr[h:] = np.array([0.3, 0.5, 0.2]) * rng.uniform(0.6, 1.2)
        arr += rng.normal(0, 0.05, arr.shape)
        return (np.clip(arr, 0, 1) * 255).astype(np.uint8)
    elif kind == "checker":
        k = int(rng.integers(8, 40))
        yy, xx = np.mgrid[0:s, 0:s]
        return (((yy // k + xx // k) % 2) * 255).astype(np.uint8)
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return np.asarray(im)


def fake_scan(rng: np.random.Generator, size: int = 256, label: int = 0) -> np.ndarray:
    """A grey uint8 (size, size) 'head': dark background, bright ellipse, a blob whose
    position depends on ``label`` so tiny models can learn something in tests."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    head = ((xx - 0.5) ** 2 / 0.16 + (yy - 0.5) ** 2 / 0.2) < 1
    img = np.where(head, 0.45, 0.0) + rng.normal(0, 0.03, (size, size))
    cx, cy = [(0.35, 0.35), (0.65, 0.35), (0.5, 0.5), (0.5, 0.68)][label % 4]
    blob = ((xx - cx) ** 2 + (yy - cy) ** 2) < 0.006
    img = np.where(blob & head, 0.95, img)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def fake_volume(rng: np.random.Generator, shape: tuple[int, int, int] = (48, 48, 24),
                tumour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic int16 'head' volume (X, Y, Z) and its uint8 tumour labels (a bright ball in some slices,
    or none), for tests of the volume readers and of multi-source training."""
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    head = (x ** 2 / 0.7 + y ** 2 / 0.8 + z ** 2 / 1.1) < 1
    vol = np.where(head, 800.0, 0.0) + rng.normal(0, 20, shape)
    labels = np.zeros(shape, np.uint8)
    if tumour:
        c = rng.uniform(-0.3, 0.3, 3)
        ball = ((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) < 0.08
        vol = np.where(ball & head, 2000.0, vol)
        labels[ball & head] = 1
    return np.clip(vol, 0, None).astype(np.int16), labels
