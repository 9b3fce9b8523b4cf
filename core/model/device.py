"""The one place that chooses a compute device. Everything else receives it explicitly."""
from __future__ import annotations

import torch


def select_device(preference: str = "auto") -> torch.device:
    """Return ``cuda`` if available, else ``mps``, else ``cpu``; or the device named.

    Args:
        preference: "auto", "cpu", "cuda", "cuda:N" or "mps".
    Raises:
        ValueError: when the name is not a device, or the named device is not available here.
    """
    pref = (preference or "auto").lower()
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(pref)
    except RuntimeError:  # torch's message lists every backend it knows; say what this project accepts
        raise ValueError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA GPU is available; use --device auto or cpu")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device 'mps' requested but Apple MPS is not available; use --device auto or cpu")
    return dev


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed-precision dtype for inference/training on ``device``; None means fp32."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return None
