"""Int8 CPU path: static post-training quantisation (PyTorch FX, x86 backend). Opt-in.

``Predictor(..., precision="int8")`` runs the forward pass ~1.5-2x faster than bf16 and
~3-4x faster than fp32 on an AVX-512/VNNI CPU, and Testing accuracy stays within 0.2
points of fp32 (README "Benchmarks"). It is NOT the default: int8 features move the
Mahalanobis out-of-distribution scores (on Testing the OOD flag fires several times
more often than with fp32 features), and the OOD flag is a safety feature. The
default CPU path is bf16 where the CPU has native bf16 (see ``core.inference.predictor``).

Activation ranges come from a calibration pass over real training slices. Only the
observer statistics are stored (``int8_calibration.safetensors`` beside the weights,
tensors only, no pickle) together with the SHA-256 of the weights they were measured
on; at load time the fp32 model is re-prepared and converted, so a calibration file
can never be applied to other weights.

    python -m core.model.int8 calibrate --weights weights --data ../shared/data/brain-tumor-mri/Training
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.model.features import FeaturesAndLogits

CALIBRATION_FILE = "int8_calibration.safetensors"
QUANT_ENGINE = "x86"
_QUANT_LOCK = threading.Lock()  # prepare/convert set the process-wide quantized engine


def int8_supported() -> bool:
    """True when this torch build has the x86 quantised kernels (fbgemm/oneDNN)."""
    return QUANT_ENGINE in torch.backends.quantized.supported_engines


def _cpu_flags() -> set[str]:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def full_range_activations() -> bool:
    """8-bit (not 7-bit) activations: safe only with VNNI/AMX int8 dot products.

    Without VNNI, fbgemm's AVX2/AVX-512 kernels can saturate on full-range inputs,
    which is why PyTorch's x86 default keeps ``reduce_range=True``. With it the
    pooled features are twice as precise (measured: feature error 4.4 % -> 2.6 %).
    """
    return bool(_cpu_flags() & {"avx512_vnni", "avx_vnni", "amx_int8"})


def qconfig_mapping():
    from torch.ao.quantization import QConfig, QConfigMapping, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, default_per_channel_weight_observer

    if not full_range_activations():
        return get_default_qconfig_mapping(QUANT_ENGINE)
    qc = QConfig(activation=HistogramObserver.with_args(reduce_range=False),
                 weight=default_per_channel_weight_observer)
    return QConfigMapping().set_global(qc)


def _prepare(model: nn.Module, example: torch.Tensor):
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = QUANT_ENGINE
    wrapped = FeaturesAndLogits(copy.deepcopy(model).cpu().eval()).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX quantisation prints deprecation notices in recent torch
        return prepare_fx(wrapped, qconfig_mapping(), (example,))


def _observer_state(prepared: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in prepared.state_dict().items()
            if "activation_post_process" in k}


def calibrate(model: nn.Module, batches, image_size: int, channels: int = 1) -> dict[str, torch.Tensor]:
    """Observer statistics from standardised fp32 CPU batches (N, C, S, S)."""
    example = torch.zeros(2, channels, image_size, image_size)
    with _QUANT_LOCK:
        prepared = _prepare(model, example)
        with torch.inference_mode():
            for b in batches:
                prepared(b.float().cpu())
        return _observer_state(prepared)


def quantize(model: nn.Module, observer_state: dict[str, torch.Tensor], image_size: int,
             channels: int = 1) -> nn.Module:
    """Int8 module mapping a standardised fp32 batch to (logits, features), both fp32."""
    from torch.ao.quantization.quantize_fx import convert_fx

    example = torch.zeros(2, channels, image_size, image_size)
    with _QUANT_LOCK:
        prepared = _prepare(model, example)
        missing = set(_observer_state(prepared)) - set(observer_state)
        if missing:
            raise ValueError(f"calibration does not match this model ({len(missing)} observers missing)")
        prepared.load_state_dict(observer_state, strict=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = convert_fx(prepared)
    return q.eval()


def calibrate_uint8(model: nn.Module, images_u8: np.ndarray, spec, n: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Observer statistics from cached uint8 (N, S, S) training images (``train.py``'s cache).

    For train.py, right after ``save_weights``::

        state = calibrate_uint8(model, tr_images[train_idx], spec)
        save_calibration(out, state, weights.sha256)
    """
    from core.preprocess import to_model_tensor

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images_u8), size=min(n, len(images_u8)), replace=False))
    t = to_model_tensor(torch.from_numpy(images_u8[pick]).float() / 255, spec)
    return calibrate(model, t.split(32), spec.image_size, spec.channels)


def save_calibration(folder: str | Path, observer_state: dict[str, torch.Tensor], model_sha256: str,
                     meta: dict | None = None) -> Path:
    """Write the observer statistics beside the weights, keyed to the weights' SHA-256."""
    path = Path(folder) / CALIBRATION_FILE
    md = {"model_sha256": model_sha256, "engine": QUANT_ENGINE, "torch": torch.__version__}
    md.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in (meta or {}).items()})
    save_file(observer_state, str(path), metadata=md)
    return path


def load_calibration(path: str | Path, model_sha256: str) -> dict[str, torch.Tensor] | None:
    """Observer statistics for the weights with ``model_sha256``; None if absent or for other weights."""
    path = Path(path)
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        if md.get("model_sha256") != model_sha256:
            return None
        return load_file(str(path))
    except Exception:  # noqa: BLE001 - a damaged optional file only disables the fast path
        return None


def calibration_images(data_root: str | Path, class_names: list[str], spec, n: int = 256, seed: int = 0) -> np.ndarray:
    """``n`` preprocessed float32 (S, S) images in [0, 1], sampled evenly over the classes."""
    from core.data.dataset import list_labelled_files
    from core.errors import ImageLoadError
    from core.preprocess import preprocess

    files = list_labelled_files(data_root, class_names)
    if not files:
        raise ValueError(f"no labelled images under {data_root}")
    rng = random.Random(seed)
    by_class: dict[int, list[str]] = {}
    for rel, lab in files:
        by_class.setdefault(lab, []).append(rel)
    picked: list[str] = []
    per = max(1, n // max(1, len(by_class)))
    for lab in sorted(by_class):
        picked += rng.sample(by_class[lab], min(per, len(by_class[lab])))
    out = []
    for rel in picked:
        try:
            out.append(preprocess(Path(data_root) / rel, spec).image)
        except ImageLoadError:
            continue
    return np.stack(out)


def main(argv: list[str] | None = None) -> int:
    from core.model.checkpoint import DEFAULT_MODEL_DIR, load_bundle
    from core.preprocess import to_model_tensor

    p = argparse.ArgumentParser(description="Calibrate the int8 CPU fast path on training slices.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("calibrate", help="measure activation ranges and write " + CALIBRATION_FILE)
    c.add_argument("--weights", default=str(DEFAULT_MODEL_DIR), help="model folder")
    c.add_argument("--data", required=True, help="labelled TRAINING tree ROOT/<class>/<images> (never Testing)")
    c.add_argument("--images", type=int, default=256, help="calibration images, spread over the classes")
    c.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    bundle = load_bundle(args.weights)
    imgs = calibration_images(args.data, bundle.class_names, bundle.spec, args.images, args.seed)
    t = to_model_tensor(imgs, bundle.spec)
    state = calibrate(bundle.model, t.split(32), bundle.spec.image_size, bundle.spec.channels)
    path = save_calibration(args.weights, state, bundle.sha256,
                            {"images": len(imgs), "data": str(args.data), "seed": args.seed})
    print(f"wrote {path} ({len(imgs)} calibration images, {len(state)} observer tensors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
