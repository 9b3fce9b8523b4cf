"""Section ``memory``: resident memory over a long batch run (5,000 images in a full run) in a fresh process
(``bench/memory.py``), decode workers included; peak GPU memory on CUDA."""
from __future__ import annotations

import sys

from bench.common import run_json
from bench.context import BenchContext

KEY = "memory"


def wanted(ctx: BenchContext) -> bool:
    return "memory" not in ctx.skip


def measure(ctx: BenchContext) -> dict:
    tuned = ctx.tuned
    cmd = [sys.executable, "-m", "bench.memory", "--weights", ctx.weights, "--data", str(ctx.data),
           "--images", str(ctx.cfg["memory_images"]), "--batch-size", "64", "--workers", str(tuned["workers"]),
           "--threads", str(tuned["threads"]), "--precision", ctx.args.precision, "--device", str(ctx.device)]
    if ctx.calibration:
        cmd += ["--calibration", str(ctx.calibration)]
    return run_json(cmd, 1800)


def render(r: dict) -> str:
    mem = r.get(KEY, {})
    if "rss_at_end" not in mem:
        return ""
    a, e = mem["rss_at_1k"], mem["rss_at_end"]
    return (
        f"**Memory** over {mem['images']} images (batch {mem['batch_size']}, {mem['workers']} decode workers, "
        f"CAM {mem['cam_method'] or 'off'}, {mem['images_per_s']} img/s, fresh process): main-process RSS "
        f"{a['main_mb']} MB at {a['images']} images, {e['main_mb']} MB at {e['images']}"
        + (f"; median {tr['median_mb_images_1000_2000']} MB over images 1000-2000 and "
           f"{tr['median_mb_last_1000']} MB over the last 1000 (growth {tr['growth_median_mb']} MB, straight-line "
           f"trend {tr['slope_mb_per_1000_images']} MB per 1000 images, swing between batches "
           f"{tr['swing_mb']} MB)" if (tr := mem.get("trend")) else "")
        + f"; decode workers {a.get('workers_uss_mb', '-')} MB -> "
        f"{e.get('workers_uss_mb', '-')} MB unique (USS; their RSS {e.get('workers_rss_mb', '-')} MB is mostly "
        f"pages shared with the main process); peak RSS of the main process {mem['peak_rss']['self_mb']} MB"
        + (f"; peak GPU memory {mem['gpu_peak_allocated_mb']} MB" if mem.get("gpu_peak_allocated_mb") else "") + ".")
