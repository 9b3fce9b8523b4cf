"""Checkpoint round trip, SHA-256 refusal and the model card contents."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from core.model.card import ModelCard
from core.model.checkpoint import CARD_FILE, WEIGHTS_FILE, load_bundle, save_bundle
from core.errors import CheckpointError, PretrainedUnavailableError
from core.model.architectures import build_model
from core.inference.ood import MahalanobisOOD


def test_round_trip(tmp_path):
    model = build_model("slimresnet", 1, 5).eval()
    feats = torch.randn(50, 256)
    ood = MahalanobisOOD.fit(feats.numpy(), (torch.arange(50) % 5).numpy(), 5)
    ood.threshold = 123.0
    card = {"name": "t", "version": "9.9", "class_names": list("abcde"), "architecture": {"name": "slimresnet"},
            "input_spec": {"image_size": 64, "channels": 1, "mean": 0.2, "std": 0.3},
            "calibration": {"temperature": 1.7}, "ood": {"threshold": 123.0}}
    written = save_bundle(tmp_path, model, ModelCard.from_dict(card), ood)
    assert len(written.weights.sha256) == 64
    b = load_bundle(tmp_path)
    assert b.class_names == list("abcde") and b.temperature == 1.7 and b.spec.image_size == 64
    assert b.ood is not None and b.ood.threshold == 123.0
    x = torch.randn(2, 1, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(model(x), b.model(x))
    assert torch.allclose(b.ood.precision, ood.precision)


def test_tampered_weights_refused(tiny_bundle_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_bundle_dir, d)
    data = bytearray((d / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (d / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="integrity check"):
        load_bundle(d)


def test_missing_card_and_weights(tmp_path, tiny_bundle_dir):
    with pytest.raises(CheckpointError, match="model card not found"):
        load_bundle(tmp_path)
    d = tmp_path / "m"
    shutil.copytree(tiny_bundle_dir, d)
    (d / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_bundle(d)


def test_card_test_time_augmentation_is_read_and_checked(tmp_path, tiny_bundle_dir):
    assert load_bundle(tiny_bundle_dir).tta == "none"  # train.py's default
    d = tmp_path / "m"
    shutil.copytree(tiny_bundle_dir, d)
    card = json.loads((d / CARD_FILE).read_text())
    del card["inference"]  # cards written before the field existed
    (d / CARD_FILE).write_text(json.dumps(card))
    assert load_bundle(d).tta == "none"
    card["inference"] = {"tta": "hflip"}
    (d / CARD_FILE).write_text(json.dumps(card))
    assert load_bundle(d).tta == "hflip"
    card["inference"] = {"tta": "rotate"}
    (d / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="unknown test-time augmentation 'rotate'"):
        load_bundle(d)


def test_card_head_search_is_read_and_checked(tmp_path, tiny_bundle_dir):
    assert load_bundle(tiny_bundle_dir).spec.head_search == "gamma_otsu"  # train.py's default
    d = tmp_path / "m"
    shutil.copytree(tiny_bundle_dir, d)
    card = json.loads((d / CARD_FILE).read_text())
    del card["input_spec"]["head_search"]  # cards written before the field existed: the plain Otsu crop
    (d / CARD_FILE).write_text(json.dumps(card))
    assert load_bundle(d).spec.head_search == "otsu"
    card["input_spec"]["head_search"] = "watershed"
    (d / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="unknown head_search 'watershed'"):
        load_bundle(d)


def test_card_carries_the_contract(tiny_bundle_dir):
    card = json.loads((tiny_bundle_dir / CARD_FILE).read_text())
    for key in ("class_names", "input_spec", "architecture", "calibration", "inference", "ood", "intended_use",
                "weights", "metrics", "version"):
        assert key in card, key
    assert "not for diagnosis" in card["intended_use"]
    tr = card["training"]
    assert tr["seed"] == 42 and "--dry-run" in tr["command"] and len(tr["data_fingerprint"]["synthetic/train"]) == 64
    assert card["calibration"]["temperature"] > 0


def test_pretrained_fails_clearly_offline(monkeypatch):
    import torchvision.models as tvm

    def offline(*a, **k):
        raise OSError("Network is unreachable")

    # Whatever the machine, simulate no network: the weights API must not be reachable.
    monkeypatch.setattr(tvm.ResNet18_Weights.DEFAULT, "get_state_dict", offline, raising=False)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedUnavailableError, match="internet"):
        build_model("resnet18", 1, 4, pretrained=True)
    with pytest.raises(PretrainedUnavailableError, match="no pretrained weights"):
        build_model("slimresnet", 1, 4, pretrained=True)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("vgg99", 1, 4)
