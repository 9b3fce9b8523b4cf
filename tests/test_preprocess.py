"""Preprocessing: every mode, size and channel count gives the same model tensor."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from core.io.decode import decode_image
from core.preprocess import PreprocessSpec, map_to_original, preprocess

SPEC = PreprocessSpec(image_size=96, mean=0.25, std=0.25)


def _png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def _variants(scan_u8: np.ndarray) -> dict[str, object]:
    rgb = np.repeat(scan_u8[..., None], 3, axis=2)
    rgba = np.dstack([rgb, np.full_like(scan_u8, 255)])
    return {
        "grey-array": scan_u8,
        "rgb-array": rgb,
        "rgba-array": rgba,
        "uint16-array": scan_u8.astype(np.uint16) * 257,
        "float-array": scan_u8.astype(np.float32) / 255.0,
        "png-L-bytes": _png_bytes(scan_u8),
        "png-RGB-bytes": _png_bytes(rgb),
        "png-RGBA-bytes": _png_bytes(rgba),
        "png-16bit-bytes": _png_bytes((scan_u8.astype(np.uint16) * 257)),
    }


def test_all_input_forms_give_the_same_tensor(scan_u8):
    ref = preprocess(scan_u8, SPEC).tensor(SPEC)
    assert ref.shape == (1, 96, 96) and ref.dtype == torch.float32
    for name, source in _variants(scan_u8).items():
        t = preprocess(source, SPEC).tensor(SPEC)
        assert t.shape == ref.shape, name
        assert torch.allclose(t, ref, atol=2e-3), f"{name}: max diff {float((t - ref).abs().max())}"


def test_path_input_and_jpeg(tmp_path, scan_u8):
    p = tmp_path / "slice.jpg"
    Image.fromarray(scan_u8).save(p, quality=95)
    pre = preprocess(p, SPEC)
    ref = preprocess(scan_u8, SPEC)
    assert pre.image.shape == (96, 96)
    assert np.abs(pre.image - ref.image).mean() < 0.02  # JPEG is lossy


@pytest.mark.parametrize("shape", [(40, 40), (150, 300), (512, 512), (700, 450), (1920, 1080)])
def test_any_size_gives_model_size(shape, rng):
    from core.data.synthetic import fake_scan

    img = np.array(Image.fromarray(fake_scan(rng, 256, 0)).resize(shape[::-1]))
    pre = preprocess(img, SPEC)
    assert pre.image.shape == (96, 96)
    assert 0.0 <= pre.image.min() and pre.image.max() <= 1.0
    assert pre.original_size == (shape[1], shape[0])


def test_crop_finds_head_and_ignores_padding(scan_u8):
    padded = np.zeros((600, 400), np.uint8)
    padded[100:356, 50:306] = scan_u8
    pre = preprocess(padded, SPEC)
    assert pre.crop_found
    x0, y0, x1, y1 = pre.crop_box
    # the head ellipse spans roughly the middle 80 % of the 256 px scan
    assert 50 <= x0 < 120 and 100 <= y0 < 170 and 240 < x1 <= 306 and 290 < y1 <= 356
    # same content, different framing -> nearly the same model input
    assert np.abs(pre.image - preprocess(scan_u8, SPEC).image).mean() < 0.03


def test_crop_falls_back_on_blank_and_noise(rng):
    blank = preprocess(np.zeros((128, 128), np.uint8), SPEC)
    assert blank.blank and not blank.crop_found and blank.crop_box == (0, 0, 128, 128)
    assert np.all(blank.image == 0)
    noise = preprocess(rng.integers(0, 256, (128, 128), dtype=np.uint8), SPEC)
    assert noise.image.shape == (96, 96)


def _graded_head(size: int = 256) -> np.ndarray:
    """float (size, size): a head whose brightness falls off smoothly towards a dim rim (0.2), like real
    scalp and cortex, on a black background with slight noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    r = np.sqrt((xx - 0.5) ** 2 / 0.16 + (yy - 0.5) ** 2 / 0.2)
    img = np.where(r < 1, 0.2 + 0.7 * np.sqrt(np.clip(1 - r, 0, 1)), 0.0)
    return np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return ix * iy / (area(a) + area(b) - ix * iy)


def test_head_crop_holds_when_mid_tones_are_darker_or_brighter():
    """Another scanner's contrast curve must not move the crop: the gamma-normalised search keeps the box."""
    head = _graded_head()
    to_u8 = lambda x: (x * 255 + 0.5).astype(np.uint8)  # noqa: E731
    steady, plain = PreprocessSpec(image_size=96), PreprocessSpec(image_size=96, head_search="otsu")
    assert steady.head_search == "gamma_otsu"
    ref = preprocess(to_u8(head), steady).crop_box
    for gamma in (0.5, 0.6, 1.6, 2.2):
        assert _iou(ref, preprocess(to_u8(head ** gamma), steady).crop_box) > 0.95, gamma
    # Why it exists: plain Otsu's threshold climbs above the dim rim of a darker scan, and the box shrinks.
    plain_ref = preprocess(to_u8(head), plain).crop_box
    assert _iou(plain_ref, preprocess(to_u8(head ** 2.2), plain).crop_box) < 0.8
    # Normalising must not invent a head in noise or a blank frame: same fallback as plain Otsu.
    for frame in (np.zeros((128, 128), np.uint8), np.random.default_rng(1).integers(0, 4, (128, 128), np.uint8)):
        a, b = preprocess(frame, steady), preprocess(frame, plain)
        assert (a.crop_found, a.crop_box) == (b.crop_found, b.crop_box)


def test_unknown_head_search_is_refused():
    from core.preprocess import find_head_box

    with pytest.raises(ValueError, match="unknown head_search"):
        PreprocessSpec(head_search="watershed")
    with pytest.raises(ValueError, match="unknown head_search"):
        find_head_box(_graded_head(), 0.08, "watershed")


def test_intensity_scaling_is_contrast_invariant(scan_u8):
    dim = (scan_u8.astype(np.float32) * 0.3).astype(np.uint8)
    a, b = preprocess(scan_u8, SPEC).image, preprocess(dim, SPEC).image
    assert np.abs(a - b).mean() < 0.02


def test_map_to_original_round_trip(scan_u8):
    padded = np.zeros((300, 500), np.uint8)
    padded[20:276, 200:456] = scan_u8
    pre = preprocess(padded, SPEC)
    hm = np.zeros((96, 96), np.float32)
    hm[48, 48] = 1.0
    full = map_to_original(hm, pre)
    assert full.shape == (300, 500)
    y, x = np.unravel_index(full.argmax(), full.shape)
    x0, y0, x1, y1 = pre.crop_box
    assert x0 <= x < x1 and y0 <= y < y1
    assert full[:, :x0].max() == 0  # outside the crop stays empty


def test_spec_round_trips_through_dict():
    spec = PreprocessSpec(image_size=128, mean=0.3, std=0.2)
    assert PreprocessSpec.from_dict(spec.to_dict() | {"unknown": 1}) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "head_search"}  # a card from before the field
    assert PreprocessSpec.from_dict(old).head_search == "otsu"


def test_decode_reports_colour(scan_u8):
    rgb = np.repeat(scan_u8[..., None], 3, axis=2)
    assert decode_image(rgb).colourfulness < 0.01
    rgb[..., 0] = 255
    assert decode_image(rgb).colourfulness > 0.1


def test_fast_head_search_holds_under_mid_tone_shifts_too():
    """The histogram search (head_search="gamma_hist", issue 22) keeps gamma_otsu's reason to exist."""
    head = _graded_head()
    to_u8 = lambda x: (x * 255 + 0.5).astype(np.uint8)  # noqa: E731
    fast, steady = PreprocessSpec(image_size=96, head_search="gamma_hist"), PreprocessSpec(image_size=96)
    ref = preprocess(to_u8(head), fast).crop_box
    assert _iou(ref, preprocess(to_u8(head), steady).crop_box) > 0.98
    for gamma in (0.5, 0.6, 1.6, 2.2):
        assert _iou(ref, preprocess(to_u8(head ** gamma), fast).crop_box) > 0.95, gamma
