"""Out-of-distribution ("outside intended use") detection.

Two layers, cheapest first:
  * image gates: a blank frame or a clearly coloured image is not a brain MRI slice;
  * feature distance: the Mahalanobis distance (Lee et al., 2018) of the penultimate
    features to the nearest class mean, with one shared covariance fitted on the
    training set. The threshold is a high percentile of the validation scores, so
    about 1 % of in-distribution slices are flagged by design.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

COLOUR_LIMIT = 0.06  # mean chroma; grey MRI JPEGs measure < 0.01


@dataclass
class MahalanobisOOD:
    """Class means (K, F) and shared precision (F, F) of training features, plus a threshold."""

    means: torch.Tensor
    precision: torch.Tensor
    threshold: float = float("inf")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, num_classes: int, shrinkage: float = 1e-3) -> "MahalanobisOOD":
        """Fit on float (N, F) training features and int (N,) labels."""
        x = torch.as_tensor(features, dtype=torch.float64)
        y = torch.as_tensor(labels, dtype=torch.long)
        overall = x.mean(0)
        means = torch.stack([x[y == k].mean(0) if (y == k).any() else overall for k in range(num_classes)])
        centred = x - means[y]
        cov = centred.T @ centred / max(1, len(x) - 1)
        # Shrink towards a scaled identity so the inverse exists even with few samples.
        ridge = shrinkage * torch.trace(cov) / cov.shape[0] + 1e-6
        cov += ridge * torch.eye(cov.shape[0], dtype=torch.float64)
        return cls(means.float(), torch.linalg.inv(cov).float())

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """Min over classes of the squared Mahalanobis distance; float (N,). Higher = more unusual."""
        f = features.float().to(self.means.device)
        diff = f[:, None, :] - self.means[None]  # (N, K, F)
        d = torch.einsum("nkf,fg,nkg->nk", diff, self.precision, diff)
        return d.min(dim=1).values

    def calibrate_threshold(self, val_scores: np.ndarray, percentile: float = 99.0) -> float:
        self.threshold = float(np.percentile(val_scores, percentile))
        return self.threshold

    def to(self, device: torch.device) -> "MahalanobisOOD":
        return MahalanobisOOD(self.means.to(device), self.precision.to(device), self.threshold)


def image_gate(colourfulness: float, blank: bool) -> str | None:
    """Reason an image is outside intended use before the model sees it, or None."""
    if blank:
        return "blank image (no contrast): not a brain MRI slice"
    if colourfulness > COLOUR_LIMIT:
        return f"colour image (chroma {colourfulness:.2f}): MRI slices are greyscale"
    return None
