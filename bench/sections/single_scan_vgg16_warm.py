"""Section ``single_scan_vgg16_warm``: the VGG16 baseline's warm single scan (decode + preprocess + predict)."""
from __future__ import annotations

from bench.context import BenchContext
from bench.sections.single_scan_warm import warm_latency

KEY = "single_scan_vgg16_warm"


def wanted(ctx: BenchContext) -> bool:
    return "vgg_latency" not in ctx.skip


def measure(ctx: BenchContext) -> dict:
    return warm_latency(ctx.vgg, ctx.files, ctx.cfg["vgg_warm_runs"], cam_method=None)


def render(r: dict) -> str:
    vw = r.get(KEY, {})
    if "predict_total" not in vw:
        return ""
    return (f"VGG16 single scan (warm, decode + preprocess + predict): p50 {vw['predict_total']['p50']} ms, "
            f"p95 {vw['predict_total']['p95']} ms.")
