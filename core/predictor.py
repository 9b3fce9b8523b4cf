"""Batched, calibrated prediction with an out-of-distribution flag.

The predictor owns the model on one device, chosen by the caller (see
``core.device.select_device``). It is shared across threads: plain prediction runs
under ``inference_mode`` and mutates nothing; Grad-CAM (hooks + backward) must hold
:attr:`Predictor.lock` (``core.cam`` does).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from core.checkpoint import ModelBundle
from core.device import autocast_dtype
from core.ood import image_gate
from core.preprocess import Preprocessed, preprocess

# CPU fast path: measured by bench (see README "Benchmarks"); "channels_last" helps
# this network's 3x3 convolutions on x86 CPUs with oneDNN.
PRECISIONS = ("auto", "fp32", "amp")


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


class Predictor:
    """Serve a :class:`ModelBundle` on ``device``.

    Args:
        bundle: loaded model and card.
        device: where to run; passed in, never guessed here.
        precision: "auto" (mixed precision on GPU, fp32 on CPU), "fp32" or "amp".
        batch_size: images per forward pass in :meth:`predict_many`.
    """

    def __init__(self, bundle: ModelBundle, device: torch.device, precision: str = "auto", batch_size: int = 32):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")
        self.bundle = bundle
        self.device = device
        self.spec = bundle.spec
        self.class_names = bundle.class_names
        self.temperature = bundle.temperature
        self.batch_size = batch_size
        self.amp_dtype = autocast_dtype(device) if precision in ("auto", "amp") else None
        self.model = bundle.model.to(device).eval()
        if device.type == "cpu":
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ood = bundle.ood.to(device) if bundle.ood is not None else None
        self.lock = threading.Lock()  # guards Grad-CAM: hooks and backward on the shared model

    def batch_tensor(self, items: list[Preprocessed]) -> torch.Tensor:
        """Stack preprocessed images into a standardised float32 (N, C, S, S) tensor on the device."""
        batch = torch.stack([it.tensor(self.spec) for it in items])
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        else:
            batch = batch.to(self.device)
        if self.device.type == "cpu":
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch

    def logits_and_scores(self, batch: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Raw logits float (N, K) and OOD scores float (N,) for a standardised batch."""
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.amp_dtype,
                                                     enabled=self.amp_dtype is not None):
            feats = self.model.forward_features(batch)
            logits = self.model.head(feats)
            scores = self.ood.score(feats) if self.ood is not None else torch.zeros(len(batch))
        return logits.float().cpu().numpy(), scores.float().cpu().numpy()

    def calibrated(self, logits: np.ndarray) -> np.ndarray:
        """Temperature-scaled softmax, float (N, K), rows sum to 1."""
        z = torch.as_tensor(logits, dtype=torch.float64) / self.temperature
        return torch.softmax(z, dim=1).numpy()

    def predict_preprocessed(self, items: list[Preprocessed]) -> list[Prediction]:
        """Predict a list of preprocessed images in one forward pass."""
        if not items:
            return []
        logits, scores = self.logits_and_scores(self.batch_tensor(items))
        probs = self.calibrated(logits)
        out = []
        threshold = self.ood.threshold if self.ood is not None else float("inf")
        for item, p, s, lg in zip(items, probs, scores, logits):
            k = int(p.argmax())
            decoded = item.decoded
            reason = image_gate(decoded.colourfulness if decoded else 0.0, item.blank)
            if reason is None and s > threshold:
                reason = f"image features are unlike the training MRI slices (score {s:.0f} > {threshold:.0f})"
            out.append(Prediction(
                label=self.class_names[k], index=k, confidence=float(p[k]),
                probabilities={n: float(v) for n, v in zip(self.class_names, p)},
                ood=reason is not None, ood_score=float(s), ood_reason=reason,
                warnings=list(decoded.warnings) if decoded else [], logits=lg,
            ))
        return out

    def predict(self, source) -> tuple[Prediction, Preprocessed]:
        """Decode, preprocess and predict one input (path, bytes, array or DecodedImage).

        Raises ``ImageLoadError`` for unreadable input.
        """
        pre = preprocess(source, self.spec)
        return self.predict_preprocessed([pre])[0], pre
