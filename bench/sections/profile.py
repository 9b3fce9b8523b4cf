"""Section ``profile``: where the forward pass of our model spends its time (torch.profiler, self time, top 10
operators over 3 batches of 64)."""
from __future__ import annotations

import torch

from bench.context import BenchContext

KEY = "profile"


def profile_forward(predictor, bs: int = 64) -> dict:
    from torch.profiler import ProfilerActivity, profile

    s, c = predictor.spec.image_size, predictor.spec.channels
    x = predictor.to_device(torch.randn(bs, c, s, s))
    predictor.logits_and_scores(x)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if predictor.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            predictor.logits_and_scores(x)
    key = "self_cpu_time_total"
    if predictor.device.type == "cuda":
        key = "self_device_time_total" if hasattr(prof.key_averages()[0], "self_device_time_total") else "self_cuda_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) or 1
    top = [{"op": e.key, "share_pct": round(100 * getattr(e, key, 0) / total, 1), "calls": e.count}
           for e in events[:10]]
    return {"batch": bs, "precision": predictor.precision, "top_ops": top}


def measure(ctx: BenchContext) -> dict:
    return profile_forward(ctx.ours, 64)


def render(r: dict) -> str:
    prof = r.get(KEY, {})
    if not prof.get("top_ops"):
        return ""
    ops = ", ".join(f"{o['op']} {o['share_pct']}%" for o in prof["top_ops"][:6])
    return f"Profile of the {prof['precision']} forward (batch {prof['batch']}, torch.profiler, self time): {ops}."
