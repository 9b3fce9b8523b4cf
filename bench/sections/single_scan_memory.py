"""Section ``single_scan_memory``: resident memory of a serving process over many single-scan predictions with
Grad-CAM, in a fresh process (``bench/single_memory.py``)."""
from __future__ import annotations

import sys

from bench.common import run_json
from bench.context import BenchContext

KEY = "single_scan_memory"


def wanted(ctx: BenchContext) -> bool:
    return "memory" not in ctx.skip


def measure(ctx: BenchContext) -> dict:
    cmd = [sys.executable, "-m", "bench.single_memory", "--weights", ctx.weights, "--data", str(ctx.data),
           "--calls", str(ctx.cfg["single_memory_calls"]), "--threads", str(ctx.cores), "--precision",
           ctx.args.precision, "--device", str(ctx.device)]
    return run_json(cmd, 1800)


def render(r: dict) -> str:
    sm = r.get(KEY, {})
    if "growth_mb" not in sm:
        return ""
    return (
        f"**Memory of single-scan serving** ({sm['calls']} predict + {sm['cam_method']} calls on "
        f"{min(sm['calls'], sm['distinct_files'])} different files after {sm['warmup_calls']} warm-up calls, "
        f"{sm['ms_per_call']} ms per call, fresh process): RSS {sm['rss_start_mb']} MB at the start and "
        f"{sm['rss_end_mb']} MB at the end, growth {sm['growth_mb']:+} MB ({sm['growth_second_half_mb']:+} MB "
        f"over the second half); every {sm['samples'][0]['calls'] if sm['samples'] else '-'} calls: "
        f"{', '.join(str(round(x['main_mb'])) for x in sm['samples'])} MB.")
