"""One forward pass that returns both what the classifier decides and what it saw.

The predictor needs the logits (for the probabilities) and the pooled features (for the Mahalanobis
out-of-distribution score, ``core.inference.ood``) of every batch; training needs the same pair to fit that score.
Wrapping the model this way gives both from one pass, and gives int8 conversion (``core.model.int8``) a single
traced graph with two outputs.
"""
from __future__ import annotations

import torch
from torch import nn


class FeaturesAndLogits(nn.Module):
    """One forward returning (logits (N, K), pooled features (N, F)): what the predictor needs.

    ``model``: a :class:`core.model.architectures.Classifier` (anything with ``forward_features`` and ``head``).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.model.forward_features(x)
        return self.model.head(feats), feats
