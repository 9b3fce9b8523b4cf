"""Section ``single_scan_warm``: one scan at a time in this (warm) process, p50/p95 of each stage: decode,
preprocess, forward (predict) and Grad-CAM. Also the stage table the cold sections render."""
from __future__ import annotations

from pathlib import Path

from bench.common import fmt_table, percentiles
from bench.context import BenchContext
from bench.measure import timed_scan

KEY = "single_scan_warm"
STAGES = ("decode", "preprocess", "forward", "cam", "predict_total", "with_cam_total")


def warm_latency(predictor, files: list[Path], runs: int, explainer=None, cam_method: str | None = "gradcam") -> dict:
    """Stage percentiles (ms) over ``runs`` scans after 3 warm-up scans; Grad-CAM by ``explainer`` unless
    ``cam_method`` is None."""
    stages: dict[str, list[float]] = {k: [] for k in STAGES}
    for i in range(runs + 3):
        timed = timed_scan(predictor, explainer, files[i % len(files)], cam_method)
        if i >= 3:  # the first three are warm-up
            for k in STAGES:
                stages[k].append(timed[k])
    if not cam_method:
        stages.pop("cam")
        stages.pop("with_cam_total")
    return {k: percentiles(v) for k, v in stages.items()}


def measure(ctx: BenchContext) -> dict:
    return warm_latency(ctx.ours, ctx.files, ctx.cfg["warm_runs"], ctx.explainer)


def stage_table(s: dict, title: str, extra: str = "") -> str:
    """A single-scan section's stage table (p50, p95, runs), or '' when it has no totals."""
    if "predict_total" not in s:
        return ""
    rows = [[k, s[k]["p50"], s[k]["p95"], s[k]["n"]] for k in STAGES if k in s]
    return f"**Single scan, {title}**{extra}, ms:\n\n" + fmt_table(["stage", "p50", "p95", "runs"], rows)


def render(r: dict) -> str:
    return stage_table(r.get(KEY, {}), "warm")
