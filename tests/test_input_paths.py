"""The fast input paths (issue 22) against the one definition in core/preprocess.py.

* CPU: ``head_search="gamma_hist"`` (reduced JPEG decode, histogram head search, 8-bit crop) must give the crop
  box of the current search (IoU >= 0.98 on >= 99 % of slices); old specs keep their code path.
* Tensor path (``core.gpu_preprocess``), run here on CPU with the same ops it runs on a GPU: the same box within
  2 px on >= 99 % of slices and the same prediction on >= 99.5 % as the CPU definition of the same spec.
Real-data parts skip with the reason when /work/shared/data is absent. Correctness only; speed is ``python -m bench``.
"""
from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from core.errors import ImageLoadError
from core.io.decode import decode_bytes
from core.io.raster import ReducedJpeg, decode_jpeg_reduced
from core.io.types import DecodedImage, DEFAULT_LIMITS, DecodeLimits
from core.inference.ood import COLOUR_LIMIT
from core.preprocess import (PreprocessSpec, decode_for, hist8, otsu_threshold, preprocess_decoded,
                             window_from_hist, _intensity_window)
from core.data.synthetic import fake_scan
from tests.conftest import require_real_data, require_shipped_weights
from tools.input_path_equivalence import box_iou

CPU = torch.device("cpu")
FAST = PreprocessSpec(image_size=96, head_search="gamma_hist")
CURRENT = PreprocessSpec(image_size=96)  # gamma_otsu, the shipped model's search


def _jpeg(arr: np.ndarray, quality: int = 92, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality, **kw)
    return buf.getvalue()


def _synthetic_slices(n: int, seed: int = 5) -> list[bytes]:
    """JPEG bytes of fake heads: sizes 150-700 px, some framed off-centre and non-square, darker/brighter mid-tones,
    every 3rd stored as RGB (the Kaggle set mixes both)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        scan = fake_scan(rng, int(rng.integers(150, 520)), k % 4).astype(np.float32) / 255
        scan = scan ** float(rng.choice([0.6, 1.0, 1.6, 2.2]))
        h, w = scan.shape
        canvas = np.zeros((h + int(rng.integers(0, 180)), w + int(rng.integers(0, 180))), np.float32)
        y, x = int(rng.integers(0, canvas.shape[0] - h + 1)), int(rng.integers(0, canvas.shape[1] - w + 1))
        canvas[y:y + h, x:x + w] = scan
        u8 = (canvas * 255 + 0.5).astype(np.uint8)
        out.append(_jpeg(np.repeat(u8[..., None], 3, 2) if k % 3 == 0 else u8))
    return out


# --------------------------------------------------------------------------- histogram maths = OpenCV / numpy

def test_histogram_otsu_and_window_equal_opencv_and_numpy():
    from core.gpu_preprocess import otsu_thresholds, windows

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (48, 64), dtype=np.uint8)] + [
        (rng.random((48, 64)) ** rng.uniform(0.3, 3) * rng.uniform(10, 255)).astype(np.uint8) for _ in range(60)]
    imgs.append(np.full((48, 64), 7, np.uint8))  # one level: no threshold, window falls back to the max
    hists = np.stack([hist8(im) for im in imgs])
    t_gpu = otsu_thresholds(torch.from_numpy(hists).double()).tolist()
    lo_gpu, hi_gpu = windows(torch.from_numpy(hists).double(), 99.5)
    for im, h, tg, lg, hg in zip(imgs, hists, t_gpu, lo_gpu.tolist(), hi_gpu.tolist()):
        t_cv, _ = cv2.threshold(im, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        assert otsu_threshold(h) == int(t_cv) == tg
        ref = _intensity_window(im.astype(np.float32) / 255, 99.5)
        assert window_from_hist(h, 99.5) == pytest.approx(ref, abs=1e-6)
        assert (lg, hg) == pytest.approx(ref, abs=1e-6)


def test_tensor_filters_equal_opencv():
    from core.gpu_preprocess import _area, blur5, close5

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (37, 53), dtype=np.uint8)
    t = torch.from_numpy(img).float()[None]
    assert np.array_equal(blur5(t)[0].numpy(), cv2.GaussianBlur(img, (5, 5), 0).astype(np.float32))
    mask = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    closed = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    assert np.array_equal(close5(torch.from_numpy(mask).float()[None])[0].numpy(), closed.astype(np.float32))
    big = rng.integers(0, 256, (410, 304), dtype=np.uint8)
    for h, w in ((256, 190), (205, 152), (137, 101)):  # integer and fractional ratios
        ref = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
        assert np.abs(_area(torch.from_numpy(big).float(), h, w).numpy() - ref).max() <= 1


# --------------------------------------------------------------------------- the CPU fast path

def test_spec_records_the_path_and_old_cards_keep_theirs():
    card = {"image_size": 160, "mean": 0.5, "std": 0.5, "head_search": "gamma_otsu", "version": 3}
    assert PreprocessSpec.from_dict(card).head_search == "gamma_otsu"
    assert PreprocessSpec.from_dict({"image_size": 160}).head_search == "otsu"
    fast = PreprocessSpec(head_search="gamma_hist")
    assert PreprocessSpec.from_dict(fast.to_dict()) == fast
    # No new field: an old spec's dict (card text, the data caches' keys) is unchanged.
    assert set(PreprocessSpec().to_dict()) == {"image_size", "channels", "intensity_percentile", "crop_margin",
                                               "min_head_fraction", "mean", "std", "head_search", "version"}


def test_old_specs_decode_and_preprocess_as_before(scan_u8):
    data = _jpeg(scan_u8)
    for spec in (CURRENT, PreprocessSpec(image_size=96, head_search="otsu")):
        d = decode_for(data, "x.jpg", spec)
        assert isinstance(d, DecodedImage) and np.array_equal(d.pixels, decode_bytes(data).pixels)
        a, b = preprocess_decoded(d, spec), preprocess_decoded(decode_bytes(data), spec)
        assert a.crop_box == b.crop_box and np.array_equal(a.image, b.image)


def test_reduced_decode_size_orientation_and_colour():
    rng = np.random.default_rng(2)
    grey = fake_scan(rng, 512, 1)
    r = decode_jpeg_reduced(_jpeg(grey), "a.jpg", DEFAULT_LIMITS, 256)
    assert isinstance(r, ReducedJpeg) and r.factor == 2 and r.grey8.shape == (256, 256) and r.full_size == (512, 512)
    assert r.grey8.dtype == np.uint8 and r.colourfulness == 0.0
    full = (decode_bytes(_jpeg(grey)).pixels * 255).astype(np.float32)
    assert np.abs(cv2.resize(full, (256, 256), interpolation=cv2.INTER_AREA) - r.grey8).mean() < 2
    assert decode_jpeg_reduced(_jpeg(grey[:300, :200]), "b.jpg", DEFAULT_LIMITS, 256).factor == 1  # 1/2 would be < 256
    # EXIF orientation 6 (rotate 90 degrees): same frame as the full decoder
    exif = Image.Exif()
    exif[0x0112] = 6
    tall = np.ascontiguousarray(grey[:, :384])
    rot = decode_jpeg_reduced(_jpeg(tall, exif=exif.tobytes()), "c.jpg", DEFAULT_LIMITS, 256)
    ref = decode_bytes(_jpeg(tall, exif=exif.tobytes()))
    assert rot.full_size == ref.size == (512, 384)
    assert rot.grey8.shape == (192, 256)
    # colour: the gate still sees it; grey stored as RGB stays grey
    rgb = np.repeat(grey[..., None], 3, 2)
    assert decode_jpeg_reduced(_jpeg(rgb), "d.jpg", DEFAULT_LIMITS, 256).colourfulness < 0.01
    rgb[..., 0] = 255
    assert decode_jpeg_reduced(_jpeg(rgb), "e.jpg", DEFAULT_LIMITS, 256).colourfulness > COLOUR_LIMIT


def test_reduced_decode_leaves_other_inputs_to_the_full_decoder(scan_u8):
    buf = io.BytesIO()
    Image.fromarray(scan_u8).save(buf, format="PNG")
    cmyk = io.BytesIO()
    Image.fromarray(scan_u8).convert("CMYK").save(cmyk, format="JPEG")
    for data in (buf.getvalue(), cmyk.getvalue(), b"not an image at all"):
        assert decode_jpeg_reduced(data, "x", DEFAULT_LIMITS, 256) is None
    assert isinstance(decode_for(buf.getvalue(), "x.png", FAST), DecodedImage)
    # limits and bad data: the full decoder's messages, never a traceback
    with pytest.raises(ImageLoadError, match="limit"):
        decode_for(_jpeg(scan_u8), "big.jpg", FAST, DecodeLimits(max_pixels=1000))
    with pytest.raises(ImageLoadError, match="text file"):
        decode_for(b"hello, this is text", "notes.jpg", FAST)
    with pytest.raises(ImageLoadError):
        decode_for(_jpeg(scan_u8)[:300], "cut.jpg", FAST)


def test_fast_search_gives_the_current_box_on_synthetic_slices():
    ious = []
    for data in _synthetic_slices(60):
        a = preprocess_decoded(decode_for(data, "s.jpg", CURRENT), CURRENT)
        b = preprocess_decoded(decode_for(data, "s.jpg", FAST), FAST)
        assert isinstance(decode_for(data, "s.jpg", FAST), ReducedJpeg)
        assert b.image.shape == (96, 96) and b.image.dtype == np.float32 and 0 <= b.image.min() <= b.image.max() <= 1
        assert b.original_size == a.original_size and a.crop_found == b.crop_found
        ious.append(box_iou(a.crop_box, b.crop_box))
        assert np.abs(a.image - b.image).mean() < 0.03
    assert np.mean(np.array(ious) >= 0.98) >= 0.99, sorted(ious)[:5]


def test_fast_search_falls_back_like_the_current_one():
    rng = np.random.default_rng(3)
    for frame in (np.zeros((128, 128), np.uint8), rng.integers(0, 4, (128, 128), np.uint8)):
        a = preprocess_decoded(decode_bytes(_jpeg(frame)), CURRENT)
        b = preprocess_decoded(decode_for(_jpeg(frame), "f.jpg", FAST), FAST)
        assert (a.crop_found, a.crop_box, a.blank) == (b.crop_found, b.crop_box, b.blank)
    # a 16-bit scan takes the float route with the same search
    pixels = (fake_scan(rng, 256, 2).astype(np.uint16) * 257 / 65535.0).astype(np.float32)
    a = preprocess_decoded(DecodedImage(pixels, "PNG", "I;16", 16), CURRENT)
    b = preprocess_decoded(DecodedImage(pixels, "PNG", "I;16", 16), FAST)
    assert box_iou(a.crop_box, b.crop_box) >= 0.98


def test_pipeline_takes_the_reduced_decode_unless_pixels_are_kept(tmp_path):
    from core.inference.pipeline import load_file

    data = _synthetic_slices(1, seed=9)[0]
    p = tmp_path / "s.jpg"
    p.write_bytes(data)
    fast = load_file(p, FAST)
    kept = load_file(p, FAST, keep_pixels=True)
    assert fast.error == "" and kept.item.decoded.pixels.shape == kept.item.original_size[::-1]
    assert box_iou(fast.item.crop_box, kept.item.crop_box) >= 0.98
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(data[:200])
    r = load_file(bad, FAST)
    assert r.item is None and r.error and r.failed_at == "decode"


# --------------------------------------------------------------------------- the tensor (GPU) path, on CPU

def _tensor_vs_cpu(datas: list[bytes], spec: PreprocessSpec):
    """(tensor batch, CPU reference items) for the same bytes; the reference decodes fully, as the GPU does."""
    from core.gpu_preprocess import load_batch

    tb = load_batch(datas, [f"f{i}.jpg" for i in range(len(datas))], spec, CPU)
    ref = [preprocess_decoded(decode_bytes(d), spec) for d in datas]
    return tb, ref


def _box_dev(a: tuple, b: tuple) -> int:
    return max(abs(x - y) for x, y in zip(a, b))


def test_tensor_path_gives_the_cpu_box_and_prediction(tiny_predictor):
    spec = tiny_predictor.spec.__class__(**{**tiny_predictor.spec.to_dict(), "head_search": "gamma_hist"})
    datas = _synthetic_slices(40, seed=11)
    tb, ref = _tensor_vs_cpu(datas, spec)
    assert tb.errors == [""] * len(datas) and tb.images01.shape == (40, spec.image_size, spec.image_size)
    assert tb.images01.dtype == torch.float32 and tb.images01.device == CPU
    devs = [_box_dev(r.crop_box, b) for r, b in zip(ref, tb.boxes)]
    assert np.mean(np.array(devs) <= 2) >= 0.99, sorted(devs)[-5:]
    assert tb.found == [r.crop_found for r in ref]
    assert float((tb.images01 - torch.from_numpy(np.stack([r.image for r in ref]))).abs().max()) < 0.02
    a = tiny_predictor.predict_preprocessed(ref)
    b = tiny_predictor.predict_preprocessed(tb.items())
    assert np.mean([x.index == y.index for x, y in zip(a, b)]) >= 0.995


def test_tensor_path_reports_bad_files_and_routes_other_formats(scan_u8, tmp_path):
    from core.gpu_preprocess import load_batch, stream_batches

    png = io.BytesIO()
    Image.fromarray(scan_u8).save(png, format="PNG")
    good = _jpeg(scan_u8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the GPU decoder ignores EXIF, so this takes the CPU route
    rotated = _jpeg(np.ascontiguousarray(scan_u8[:, :200]), exif=exif.tobytes())
    datas = [good, b"plain text, not an image", good[:400], png.getvalue(), "x.jpg: file not found", good, rotated]
    tb = load_batch(datas, [f"f{i}" for i in range(len(datas))], FAST, CPU)
    assert [bool(e) for e in tb.errors] == [False, True, True, False, True, False, False]
    assert "text file" in tb.errors[1] and tb.images01.shape[0] == 4
    assert tb.boxes[3] == preprocess_decoded(decode_bytes(png.getvalue()), FAST).crop_box  # PNG: the CPU route
    assert tb.sizes[6] == decode_bytes(rotated).size == (256, 200)
    paths = []
    for i, d in enumerate([good, b"junk", good]):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(d)
    paths.append(tmp_path / "missing.jpg")
    got = list(stream_batches(paths, FAST, CPU, batch_size=3, readers=2))
    assert [p.name for chunk, _ in got for p in chunk] == [p.name for p in paths]
    assert [bool(e) for _, b in got for e in b.errors] == [False, True, False, True]


def _real_files(n: int) -> list:
    root = require_real_data()
    files = sorted((root / "Testing").rglob("*.jpg"))
    return files[:: max(1, len(files) // n)][:n]


def test_real_slices_fast_cpu_box_and_tensor_box():
    files = _real_files(48)
    spec_fast, spec_cur = PreprocessSpec(head_search="gamma_hist"), PreprocessSpec()
    datas = [f.read_bytes() for f in files]
    ious = [box_iou(preprocess_decoded(decode_for(d, "r.jpg", spec_cur), spec_cur).crop_box,
                    preprocess_decoded(decode_for(d, "r.jpg", spec_fast), spec_fast).crop_box) for d in datas]
    assert np.mean(np.array(ious) >= 0.98) >= 0.99, sorted(ious)[:5]
    tb, ref = _tensor_vs_cpu(datas, spec_fast)
    devs = [_box_dev(r.crop_box, b) for r, b in zip(ref, tb.boxes)]
    assert np.mean(np.array(devs) <= 2) >= 0.99, sorted(devs)[-5:]


def test_real_slices_tensor_path_predicts_as_the_cpu_definition():
    from core.model.checkpoint import load_bundle
    from core.inference.predictor import Predictor

    weights = require_shipped_weights()
    files = _real_files(32)
    bundle = load_bundle(weights)
    spec = PreprocessSpec(**{**bundle.spec.to_dict(), "head_search": "gamma_hist"})
    tb, ref = _tensor_vs_cpu([f.read_bytes() for f in files], spec)
    predictor = Predictor(bundle, CPU, "fp32", tta="none")
    a, b = predictor.predict_preprocessed(ref), predictor.predict_preprocessed(tb.items())
    assert np.mean([x.index == y.index for x, y in zip(a, b)]) >= 0.995
