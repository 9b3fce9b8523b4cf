"""Test-time augmentation: average the logits of a slice and its left-right mirror.

Why mirroring: tumours occur on either side, training already flips at random, and
sites display axial slices in either the radiological or the neurological convention.
A slice and its mirror should get the same answer; averaging the two views makes the
predicted probabilities exactly mirror-invariant (and, measured on the validation
split, slightly more accurate). It doubles the forward-pass cost.

The card's ``inference.tta`` says which mode a model was calibrated and evaluated with
(``train.py --tta``); the predictor reads it from there.
"""
from __future__ import annotations

from typing import Callable

import torch

TTA_MODES = ("none", "hflip")

Forward = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def check_tta(mode: str) -> str:
    """``mode`` if it is one of :data:`TTA_MODES`; ``ValueError`` with the choices otherwise."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown test-time augmentation {mode!r}; choose one of {list(TTA_MODES)}")
    return mode


def with_tta(forward: Forward, batch: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``forward`` (batch -> (logits, features)) under test-time augmentation ``mode``.

    Args:
        forward: maps a standardised (N, C, S, S) batch to logits (N, K) and pooled features (N, F).
        batch: the standardised input; ``forward`` gets a new (2N, ...) tensor in default
            memory format with "hflip", so it should set the layout it wants.
        mode: "none" (one pass) or "hflip" (the batch and its mirror in one pass of 2N).
    Returns:
        logits (N, K): with "hflip" the mean of both views' logits; features (N, F) of the
        unmirrored view only, because the out-of-distribution statistics are fitted on
        single-view features and the mean of two views would shift their distances.
    """
    if check_tta(mode) == "none":
        return forward(batch)
    n = len(batch)
    logits, feats = forward(torch.cat([batch, torch.flip(batch, dims=[-1])]))
    return (logits[:n] + logits[n:]) / 2, feats[:n]

