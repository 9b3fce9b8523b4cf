"""Section ``pipeline_tuning``: decode workers x torch threads for this machine (best end-to-end images/s of our
model); the sections after it run the pipeline as chosen here (``BenchContext.tuned``)."""
from __future__ import annotations

from bench.context import BenchContext
from bench.measure import e2e

KEY = "pipeline_tuning"


def measure(ctx: BenchContext) -> dict:
    n = ctx.cores
    bs = 64 if not ctx.quick else ctx.cfg["sizes"][-1]
    if ctx.device.type == "cuda":
        return {"chosen": {"workers": max(1, n), "threads": n}, "tried": []}
    files = ctx.files[:ctx.cfg["tune_images"]]
    grid = sorted({(0, n), (1, n), (n, 1), (n, n), (max(1, n - 1), 1)}) if bs >= 32 else [(0, n), (n, 1)]
    tried = []
    for w, th in grid:
        r = e2e(ctx.ours, files, bs, w, th)
        tried.append({"workers": w, "threads": th, "images_per_s": r["images_per_s"]})
    best = max(tried, key=lambda r: r["images_per_s"])
    return {"chosen": {"workers": best["workers"], "threads": best["threads"]}, "tried": tried, "batch": bs}


def render(r: dict) -> str:
    return ""  # the choice is named in the throughput table's heading
