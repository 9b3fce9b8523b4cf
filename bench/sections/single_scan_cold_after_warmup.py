"""Section ``single_scan_cold_after_warmup``: as ``single_scan_cold``, with the warm-up a server runs once at
load (``Predictor.warmup()`` and the Grad-CAM warm-up) before the first scan; a fifth as many processes."""
from __future__ import annotations

from bench.context import BenchContext
from bench.sections.single_scan_cold import cold_latency, cold_table

KEY = "single_scan_cold_after_warmup"


def wanted(ctx: BenchContext) -> bool:
    return "cold" not in ctx.skip


def measure(ctx: BenchContext) -> dict:
    return cold_latency(ctx, max(1, ctx.cfg["cold_runs"] // 5), warmup=True)


def render(r: dict) -> str:
    return cold_table(r.get(KEY, {}), "cold, after Predictor.warmup() at load", "model load + warm-up")
