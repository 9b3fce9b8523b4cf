"""How the predictor runs its network: the precision policy and the inference module built for it.

:func:`build_backend` turns a requested precision ("auto", "fp32", "amp", "bf16", "fp16" or "int8") into what
runs: the autocast dtype, and the module mapping a standardised float32 (N, C, S, S) batch to
(logits (N, K), pooled features (N, F)) -- the eager network, its int8 conversion (``core.model.int8``) or
either wrapped in ``torch.compile``. ``core.inference.predictor.Predictor`` holds the result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.model.checkpoint import DEFAULT_MODEL_DIR, ModelBundle
from core.model.device import autocast_dtype
from core.model.features import FeaturesAndLogits
from core.model.int8 import CALIBRATION_FILE, int8_supported, load_calibration, quantize

# What ``precision`` may be. "auto" resolves per device: cuda/mps -> mixed precision
# (bf16 where supported, else fp16); cpu -> bf16 autocast where the CPU computes bf16
# natively (AVX-512 BF16 / AMX), else fp32. Measured by ``python -m bench`` (README
# "Benchmarks"): on the 2-core AVX-512 BF16 CPU bf16 runs the forward pass ~2x faster
# than fp32 with identical Testing accuracy and OOD flags. "int8" (``core.model.int8``)
# is faster still but shifts the OOD scores, so it is an explicit opt-in only.
PRECISIONS = ("auto", "fp32", "amp", "bf16", "fp16", "int8")


@dataclass(frozen=True)
class Backend:
    """What runs a prediction.

    ``precision``: what actually runs ("fp32", "bf16", "fp16" or "int8"); ``amp_dtype``: the autocast dtype
    (None: no autocast); ``infer``: standardised batch -> (logits, features), both float; ``compiled``: wrapped
    in ``torch.compile``; ``int8_calibration_path``: the calibration file used (int8 only, else None).
    """

    precision: str
    amp_dtype: torch.dtype | None
    infer: nn.Module
    compiled: bool
    int8_calibration_path: str | None = None


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}")
    return precision


def cpu_has_native_bf16() -> bool:
    """bf16 convolutions in hardware (AVX-512 BF16 or AMX) and in this torch's oneDNN.

    oneDNN also "supports" bf16 on plain AVX-512 by emulation, which is slower than
    fp32, so the CPU flags decide (Linux /proc/cpuinfo; elsewhere: False -> fp32).
    """
    try:
        if not torch.backends.mkldnn.is_available() or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return bool(set(line.split(":", 1)[1].split()) & {"avx512_bf16", "amx_bf16"})
    except (OSError, AttributeError, RuntimeError):
        pass
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """"auto" -> "amp" on cuda/mps, "bf16" on a CPU with native bf16, else "fp32"; any other value as given."""
    if precision == "auto":
        return "amp" if device.type in ("cuda", "mps") else ("bf16" if cpu_has_native_bf16() else "fp32")
    return precision


def find_int8_calibration(bundle: ModelBundle,
                          explicit: str | Path | None) -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """(observer statistics, their file) of the int8 calibration for ``bundle``'s weights, or (None, None).

    ``explicit``: that file only; otherwise the one in the bundle's ``folder`` (where a bundle carries that
    attribute), then the one beside the shipped weights. A file made for other weights is skipped
    (``core.model.int8.load_calibration``).
    """
    candidates = [Path(explicit)] if explicit else [
        Path(folder) / CALIBRATION_FILE for folder in (getattr(bundle, "folder", None), DEFAULT_MODEL_DIR)
        if folder is not None]
    for path in candidates:
        state = load_calibration(path, bundle.sha256)
        if state is not None:
            return state, str(path)
    return None, None


def build_backend(model: nn.Module, bundle: ModelBundle, device: torch.device, precision: str, *,
                  compile: bool = False, int8_calibration: str | Path | None = None) -> Backend:
    """The inference module for ``model`` (the bundle's fp32 eager network, already on ``device``).

    ``precision``: one of :data:`PRECISIONS` ("auto" resolved by :func:`resolve_precision`); "int8" runs on the
    CPU only and needs a calibration for these weights (:func:`find_int8_calibration`), else ValueError.
    """
    calibration, calibration_path = None, None
    if precision == "int8" and device.type == "cpu" and int8_supported():
        calibration, calibration_path = find_int8_calibration(bundle, int8_calibration)
    precision = resolve_precision(precision, device)
    if precision == "int8":
        if device.type != "cpu":
            raise ValueError("precision 'int8' runs on the CPU only; use 'auto', 'amp' or 'fp32' on a GPU")
        if calibration is None:
            raise ValueError("precision 'int8' needs an int8 calibration for these weights; create one with "
                             "`python -m core.model.int8 calibrate --weights DIR --data TRAINING_DIR`")
    amp_dtype = {"amp": autocast_dtype(device), "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    if precision == "int8":
        spec = bundle.spec
        infer, runs = quantize(model, calibration, spec.image_size, spec.channels), "int8"
    else:
        infer = FeaturesAndLogits(model).eval()
        runs = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")
    if compile:
        infer = torch.compile(infer)
    return Backend(runs, amp_dtype, infer, bool(compile), calibration_path)
