"""Section ``cam_throughput``: end-to-end images/s of our model with batched Grad-CAM on, per batch size."""
from __future__ import annotations

from bench.context import BenchContext
from bench.measure import e2e

KEY = "cam_throughput"


def measure(ctx: BenchContext) -> dict:
    tuned = ctx.tuned
    rows = [e2e(ctx.ours, ctx.files, bs, tuned["workers"], tuned["threads"], cam_method="gradcam",
                explainer=ctx.explainer) for bs in ctx.cfg["cam_sizes"]]
    return {"rows": rows, "method": "gradcam", "images": len(ctx.files)}


def render(r: dict) -> str:
    return ""  # its figures are the last column of the throughput table
