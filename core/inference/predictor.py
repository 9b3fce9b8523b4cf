"""Batched, calibrated prediction with an out-of-distribution flag.

The predictor owns the model on one device, chosen by the caller (see
``core.model.device.select_device``), and runs it at the precision ``core.model.backends`` resolves. It is
shared across threads: prediction runs under ``inference_mode`` and mutates nothing. Heatmaps are
``core.explain.cam.Explainer``'s job (it holds its own lock and, where needed, its own copy of the model).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.model.backends import build_backend, check_precision
from core.model.checkpoint import ModelBundle
from core.inference.ood import ood_reason
from core.preprocess import Preprocessed, preprocess, to_model_tensor
from core.model.tta import check_tta, with_tta


@dataclass
class Prediction:
    """One image's result. ``probabilities`` are temperature-calibrated and sum to 1."""

    label: str
    index: int
    confidence: float
    probabilities: dict[str, float]
    ood: bool
    ood_score: float
    ood_reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    logits: np.ndarray | None = field(default=None, repr=False)  # float (K,), before temperature

    def is_uncertain(self, threshold: float) -> bool:
        return self.confidence < threshold


def make_prediction(item: Preprocessed, probs: np.ndarray, score: float, logits: np.ndarray,
                    class_names: list[str], threshold: float) -> Prediction:
    """One image's :class:`Prediction` from its calibrated probabilities float (K,), OOD score (the model's
    float32), raw logits float (K,) and the OOD threshold (inf without an OOD head)."""
    k = int(probs.argmax())
    reason = ood_reason(item, score, threshold)
    decoded = item.decoded
    return Prediction(
        label=class_names[k], index=k, confidence=float(probs[k]),
        probabilities={n: float(v) for n, v in zip(class_names, probs)},
        ood=reason is not None, ood_score=float(score), ood_reason=reason,
        warnings=list(decoded.warnings) if decoded else [], logits=logits,
    )


class Predictor:
    """Serve a :class:`ModelBundle` on ``device``.

    Args:
        bundle: loaded model and card.
        device: where to run; passed in, never guessed here.
        precision: "auto" (see ``core.model.backends.PRECISIONS``: mixed precision on GPU, bf16 on a
            CPU with native bf16, else fp32), or an override: "fp32", "amp" (the
            device's autocast dtype; fp32 on CPU), "bf16", "fp16" or "int8" (CPU only,
            opt-in; needs an int8 calibration, see ``core.model.int8``).
        batch_size: images per forward pass for callers that chunk (``core.inference.pipeline``, the dashboard).
        compile: wrap the inference module in ``torch.compile`` (off by default: on the
            CPU it was slower and costs ~30 s of compilation; bench reports it on GPU).
        int8_calibration: with precision "int8": path of an ``int8_calibration.safetensors``;
            default: the one beside the shipped weights, used only if made for these weights.
        tta: test-time augmentation (``core.model.tta``): None uses the card's, the mode the
            temperature and the reported metrics were fitted with; "none" or "hflip" override it
            (e.g. "none" halves the cost of a prediction, at the accuracy of a single view).

    ``model`` stays the fp32 eager network (Grad-CAM differentiates it); predictions
    run through :attr:`infer`, which maps a standardised batch to (logits, features).
    """

    def __init__(self, bundle: ModelBundle, device: torch.device, precision: str = "auto", batch_size: int = 32,
                 *, compile: bool = False, int8_calibration: str | Path | None = None, tta: str | None = None):
        self.requested_precision = check_precision(precision)
        self.tta = check_tta(bundle.tta if tta is None else tta)
        self.bundle = bundle
        self.device = device
        self.spec = bundle.spec
        self.class_names = bundle.class_names
        self.temperature = bundle.temperature
        self.batch_size = batch_size
        # NHWC suits oneDNN on x86 CPUs and tensor cores on CUDA; MPS keeps NCHW.
        self.memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        self.model = bundle.model.to(device).eval().to(memory_format=self.memory_format)
        self.ood = bundle.ood.to(device) if bundle.ood is not None else None
        backend = build_backend(self.model, bundle, device, precision, compile=compile,
                                int8_calibration=int8_calibration)
        self.precision, self.amp_dtype, self.infer = backend.precision, backend.amp_dtype, backend.infer
        self.compiled, self.int8_calibration_path = backend.compiled, backend.int8_calibration_path

    def warmup(self) -> float:
        """One dummy batch-1 prediction so the first real scan does not pay the one-time kernel setup
        (oneDNN primitives, int8 weight packing, CUDA context). Heatmaps warm up separately
        (``core.explain.cam.Explainer.warmup``).

        For servers: call once after loading. Returns the seconds it took.
        """
        t0 = time.perf_counter()
        s, c = self.spec.image_size, self.spec.channels
        self.logits_and_scores(self.to_device(torch.zeros(1, c, s, s)))
        return time.perf_counter() - t0

    def describe(self) -> dict:
        """What runs where: for logs, the dashboard and the benchmark."""
        return {"device": str(self.device), "precision": self.precision, "requested": self.requested_precision,
                "compiled": self.compiled, "tta": self.tta,
                "memory_format": str(self.memory_format).replace("torch.", ""),
                "int8_calibration": self.int8_calibration_path}

    def _on_device(self, t: torch.Tensor) -> bool:
        return t.device.type == self.device.type and (self.device.index is None or t.device.index == self.device.index)

    def _move(self, t: torch.Tensor) -> torch.Tensor:
        if self._on_device(t):
            return t
        if self.device.type == "cuda":  # asynchronous copy from pinned memory
            return (t if t.is_pinned() else t.pin_memory()).to(self.device, non_blocking=True)
        return t.to(self.device)

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """A standardised (N, C, S, S) batch moved to the device in the model's memory format.

        On CUDA the copy is asynchronous from pinned memory (already pinned batches,
        e.g. from :mod:`core.inference.pipeline`, are not copied twice).
        """
        return self._move(batch).contiguous(memory_format=self.memory_format)

    def standardise(self, images01: torch.Tensor) -> torch.Tensor:
        """(N, S, S) images in [0, 1] (CPU, possibly pinned) -> standardised model input on the device.

        The standardisation runs on the device after the copy (on a GPU, not on the CPU).
        """
        return to_model_tensor(self._move(images01), self.spec).contiguous(memory_format=self.memory_format)

    def batch_tensor(self, items: list[Preprocessed]) -> torch.Tensor:
        """Stack preprocessed images into a standardised float32 (N, C, S, S) tensor on the device."""
        return self.to_device(to_model_tensor(np.stack([it.image for it in items]), self.spec))

    def logits_and_scores(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits float (N, K) and OOD scores float (N,) for a standardised batch.

        With test-time augmentation the logits are those of ``core.model.tta.with_tta``.
        """
        batch = self.to_device(batch)
        with torch.inference_mode():
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                logits, feats = with_tta(lambda b: self.infer(b.contiguous(memory_format=self.memory_format)),
                                         batch, self.tta)
            # The Mahalanobis quadratic form stays fp32, outside autocast: in bf16 its
            # 256-d matmuls lose enough precision to move scores across the threshold.
            scores = self.ood.score(feats.float()) if self.ood is not None else torch.zeros(len(batch))
        return logits.float().cpu().numpy(), scores.float().cpu().numpy()

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Temperature-scaled softmax, float (N, K), rows sum to 1."""
        z = torch.as_tensor(logits, dtype=torch.float64) / self.temperature
        return torch.softmax(z, dim=1).numpy()

    def predict_preprocessed(self, items: list[Preprocessed], batch: torch.Tensor | None = None) -> list[Prediction]:
        """Predict a list of preprocessed images in one forward pass.

        ``batch``: their standardised (N, C, S, S) tensor when the caller already has it
        (``core.inference.pipeline`` stacks it in its workers); built from ``items`` otherwise.
        """
        if not items:
            return []
        logits, scores = self.logits_and_scores(self.batch_tensor(items) if batch is None else batch)
        probs = self.calibrated(logits)
        threshold = self.ood.threshold if self.ood is not None else float("inf")
        return [make_prediction(item, p, s, lg, self.class_names, threshold)
                for item, p, s, lg in zip(items, probs, scores, logits)]

    def predict(self, source) -> tuple[Prediction, Preprocessed]:
        """Decode, preprocess and predict one input (path, bytes, array or DecodedImage).

        Raises ``ImageLoadError`` for unreadable input.
        """
        pre = preprocess(source, self.spec)
        return self.predict_preprocessed([pre])[0], pre
