"""The skull-strip augmentation (``--augment scanner_strip``): what it removes, and which sources it leaves alone."""
from __future__ import annotations

import numpy as np
import torch

import train
from core.data.augment import AugmentConfig, augment_batch, strip_skull
from core.data.spec import DataSpec
from core.model.architectures import build_model
from core.preprocess import PreprocessSpec
from tests.conftest import REPO

S = 96


def _head() -> np.ndarray:
    """uint8 (S, S): a bright skull ring around a grey brain with a brighter lesion, on black."""
    yy, xx = np.mgrid[:S, :S]
    r = np.hypot(yy - S / 2, xx - S / 2)
    img = np.zeros((S, S), np.uint8)
    img[r < 44] = 240  # skull and scalp
    img[r < 39] = 110  # brain
    img[np.hypot(yy - 40, xx - 55) < 8] = 200  # lesion, well inside the brain
    return img


def _no_other_changes(**kw) -> AugmentConfig:
    return AugmentConfig(max_rotation_deg=0, scale_range=(1, 1), max_shift=0, hflip_p=0, gamma_range=(1, 1),
                         gain_range=(1, 1), bias_range=(0, 0), lowres_p=0, noise_p=0, **kw)


def test_strip_skull_removes_the_ring_and_keeps_the_lesion():
    head = _head()
    out = strip_skull(head, depth=0.08)
    assert out.shape == head.shape and out.dtype == np.uint8
    # Reframed to the brain's box: the brain now reaches the frame (as a skull-stripped archive's crop does),
    # and no pixel as bright as the skull is left outside the lesion.
    yy, xx = np.mgrid[:S, :S]
    centre = np.hypot(yy - S / 2, xx - S / 2)
    assert out[S // 2, 3] > 0 and out[3, S // 2] > 0
    ring_like = (out > 0.9 * out.max()) & (centre > 0.8 * S / 2)
    assert not ring_like.any()
    assert out.max() >= 200  # the lesion is re-windowed to the top of the range, not cut away


def test_strip_skull_leaves_an_image_without_a_head_unchanged():
    blank = np.zeros((S, S), np.uint8)
    assert np.array_equal(strip_skull(blank, 0.05), blank)


def test_images_declared_without_a_skull_are_never_stripped():
    x = torch.from_numpy(np.stack([_head(), _head()])).float().unsqueeze(1) / 255
    cfg = _no_other_changes(skull_strip_p=1.0)
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0), has_skull=torch.tensor([True, False]))
    assert torch.allclose(out[1], x[1], atol=1e-5)  # left alone
    assert (out[0] - x[0]).abs().max() > 0.3  # stripped and reframed


def test_the_data_spec_declares_brats_skull_stripped_and_training_passes_it_on(monkeypatch):
    spec = DataSpec.load(REPO / "data_specs" / "multisource.json")
    assert {s.name: s.skull_stripped for s in spec.sources} == {
        "kaggle": False, "feltrin": False, "brats": True, "healthy": False}
    assert train.augment_config(train.parse_args(["--augment", "scanner_strip"])).skull_strip_p > 0
    assert train.augment_config(train.parse_args(["--augment", "scanner"])).skull_strip_p == 0

    seen = []

    def spy(images, cfg, generator=None, has_skull=None):
        seen.append(has_skull.tolist())
        return images

    monkeypatch.setattr(train, "augment_batch", spy)
    args = train.parse_args(["--batch-size", "4", "--epochs", "1", "--max-steps", "1", "--augment", "scanner_strip"])
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8))
    labels = np.arange(4) % 2
    flags = np.array([True, False, True, False])
    train.train_model(build_model("slimresnet", 1, 2), images, torch.from_numpy(labels), images, labels,
                      PreprocessSpec(image_size=32), args, torch.device("cpu"), train.seed_everything(0),
                      has_skull=flags)
    assert len(seen) == 1 and sorted(seen[0]) == sorted(flags.tolist())


def test_the_check_tool_reports_each_model_as_stored_and_stripped(tmp_path, tiny_bundle_dir):
    """``tools.skull_strip_check`` on a real (tiny) bundle and its rebuilt validation part; the README block
    renders it, leaving out the sources declared skull-stripped."""
    import json

    from tools.readme_sections import render_skull_strip
    from tools.skull_strip_check import DEPTHS, main

    out = tmp_path / "check.json"
    assert main(["--weights", str(tiny_bundle_dir), "--out", str(out), "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    assert report["part"] == "val" and len(report["models"]) == 1
    rows = report["models"][0]["rows"]
    assert list(rows) == ["as stored"] + [f"skull stripped, depth {d:g}" for d in DEPTHS]
    for per in rows.values():
        for r in per.values():
            assert r["slices"] > 0 and 0 <= r["accuracy"] <= 1
    report["models"][0]["sources_left_alone"] = [next(iter(rows["as stored"]))]
    out.write_text(json.dumps(report))
    text = render_skull_strip(out)
    left_alone = report["models"][0]["sources_left_alone"][0]
    assert "| as stored |" in text and f"| {left_alone} " not in text.split("| slices |")[1].split("\n")[0]
    assert main(["--weights", str(tmp_path / "nothing-here"), "--device", "cpu"]) == 2  # a clear error, no traceback
