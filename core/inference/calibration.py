"""Temperature scaling (Guo et al., 2017) and expected calibration error."""
from __future__ import annotations

import numpy as np
import torch


MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """Temperature T > 0 minimising the NLL of ``softmax(logits / T)`` on held-out data.

    Args:
        logits: float (N, K) validation logits.
        labels: int (N,) true class indices.
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # optimise log T: keeps T > 0
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    # An uninformative model (e.g. a few-step dry run) drives T towards infinity; a cap
    # keeps probabilities meaningful to compare while staying far from any real fit.
    return float(min(max(log_t.exp().item(), MIN_TEMPERATURE), MAX_TEMPERATURE))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of float (N, K) logits divided by ``temperature``."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Top-label reliability diagram and ECE.

    ECE = sum_b (n_b / N) * |accuracy_b - confidence_b| over equal-width confidence bins.
    scikit-learn has ``calibration_curve`` for binary problems only, hence this helper.
    Returns ``{"ece", "bins": [{"lo", "hi", "count", "accuracy", "confidence"}]}``.
    """
    probs = np.asarray(probs)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = idx == b
        cnt = int(m.sum())
        acc = float(correct[m].mean()) if cnt else None
        cf = float(conf[m].mean()) if cnt else None
        if cnt:
            ece += cnt / len(conf) * abs(acc - cf)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": cnt, "accuracy": acc, "confidence": cf})
    return {"ece": float(ece), "bins": bins}
