"""The CPU fast path and batched pipeline give the same answers as the plain path.

Correctness only: speed is measured by ``python -m bench``, never asserted here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.explain.cam import CAM_METHODS, Explainer
from core.model.checkpoint import load_bundle
from core.inference.predictor import Predictor
from core.preprocess import preprocess
from core.model.int8 import CALIBRATION_FILE, calibrate, int8_supported, load_calibration, save_calibration


@pytest.fixture(scope="module")
def items(tiny_predictor):
    from core.data.synthetic import fake_scan

    rng = np.random.default_rng(7)
    return [preprocess(fake_scan(rng, int(rng.integers(96, 220)), k % 4), tiny_predictor.spec) for k in range(6)]


@pytest.mark.parametrize("method", sorted(CAM_METHODS))
def test_native_batched_cam_equals_grad_cam_package(tiny_predictor, tiny_explainer, items, method):
    batch = tiny_predictor.batch_tensor(items)
    native, t_native = tiny_explainer.maps(batch, [0, 1, 2, 3, 0, 1], method, engine="native")
    library, t_library = tiny_explainer.maps(batch, [0, 1, 2, 3, 0, 1], method, engine="library")
    assert t_native == t_library
    assert native.shape == library.shape == (6, tiny_predictor.spec.image_size, tiny_predictor.spec.image_size)
    assert np.abs(native - library).max() < 1e-4
    assert all(p.grad is None for p in tiny_predictor.model.parameters())


def test_batched_cams_equal_one_at_a_time(tiny_explainer, items):
    together = tiny_explainer.compute(items, None, "gradcam")
    for item, c in zip(items, together):
        (alone,) = tiny_explainer.compute([item], None, "gradcam")
        assert alone.target == c.target
        assert np.abs(alone.heatmap - c.heatmap).max() < 1e-4


def test_pipeline_matches_serial_path_and_reports_bad_files(tiny_predictor, tiny_explainer, tmp_path):
    from core.inference.pipeline import stream
    from core.data.synthetic import fake_scan

    rng = np.random.default_rng(3)
    files = []
    for i in range(7):
        p = tmp_path / f"s{i}.jpg"
        Image.fromarray(fake_scan(rng, 150 + 10 * i, i % 4)).save(p)
        files.append(p)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    files.insert(3, bad)
    serial = tiny_predictor.predict_preprocessed([preprocess(f, tiny_predictor.spec) for f in files if f != bad])
    for workers in (0, 2):
        rows = list(stream(tiny_predictor, files, batch_size=3, num_workers=workers, root=tmp_path,
                           cam_method="gradcam", explainer=tiny_explainer))
        assert [r.path for r in rows] == [f.name for f in files]
        assert [r.index for r in rows] == list(range(len(files)))
        assert rows[3].prediction is None and "text file" in rows[3].error and rows[3].failed_at == "decode"
        good = [r for r in rows if r.prediction is not None]
        for r, s in zip(good, serial):
            p, c = r.prediction, r.cam
            assert p.label == s.label
            assert p.confidence == pytest.approx(s.confidence, abs=1e-5)
            assert c.target == p.label and 0 <= c.peak[0] <= 1
            assert r.item is None  # dropped once predicted: a consumer holding results holds no images
        assert all(len(r.sha256) == 64 for r in good)


@pytest.mark.skipif(not int8_supported(), reason="no x86 quantised kernels in this torch build")
def test_int8_path_is_keyed_to_its_weights(tiny_bundle_dir, tmp_path, items):
    bundle = load_bundle(tiny_bundle_dir)
    fp32 = Predictor(bundle, torch.device("cpu"), "fp32")
    batch = fp32.batch_tensor(items).contiguous()
    path = save_calibration(tmp_path, calibrate(bundle.model, [batch], bundle.spec.image_size), bundle.sha256)
    assert path.name == CALIBRATION_FILE and load_calibration(path, bundle.sha256) is not None
    assert load_calibration(path, "0" * 64) is None  # other weights: not used

    q = Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"), "int8", int8_calibration=path)
    assert q.precision == "int8" and q.describe()["int8_calibration"] == str(path)
    a, b = fp32.predict_preprocessed(items), q.predict_preprocessed(items)
    assert [x.label for x in a] == [x.label for x in b]
    assert max(abs(x.confidence - y.confidence) for x, y in zip(a, b)) < 0.05
    assert q.warmup() > 0
    explainer = Explainer(q)
    assert explainer.warmup() > 0
    (c,) = explainer.compute(items[:1], None, "gradcam")  # CAMs still differentiate the fp32 model
    assert c.heatmap.max() <= 1.0

    other = tmp_path / "other"
    other.mkdir()
    save_calibration(other, calibrate(bundle.model, [batch], bundle.spec.image_size), "f" * 64)
    with pytest.raises(ValueError, match="int8 calibration"):  # made for other weights: refused
        Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"), "int8", int8_calibration=other / CALIBRATION_FILE)
    # int8 is opt-in: "auto" never picks it, calibration or not
    assert Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"), int8_calibration=path).precision != "int8"


def test_precision_overrides(tiny_bundle_dir, items):
    from core.model.backends import cpu_has_native_bf16

    with pytest.raises(ValueError, match="precision must be one of"):
        Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"), "int4")
    fp32 = Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"), "fp32")
    assert fp32.describe()["precision"] == "fp32" and fp32.amp_dtype is None
    auto = Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"))
    assert auto.precision == ("bf16" if cpu_has_native_bf16() else "fp32")
    bf16 = Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"), "bf16")
    assert bf16.amp_dtype == torch.bfloat16
    a, b = fp32.predict_preprocessed(items), bf16.predict_preprocessed(items)
    assert max(abs(x.confidence - y.confidence) for x, y in zip(a, b)) < 0.05
