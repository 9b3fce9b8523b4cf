"""Section ``single_scan_cold``: the first scan of a freshly started process (``bench/cold.py``, one process per
run): torch just imported, the model just loaded, every kernel run for the first time."""
from __future__ import annotations

import sys

from bench.common import percentiles, run_json
from bench.context import BenchContext
from bench.sections.single_scan_warm import stage_table

KEY = "single_scan_cold"


def wanted(ctx: BenchContext) -> bool:
    return "cold" not in ctx.skip


def cold_latency(ctx: BenchContext, runs: int, warmup: bool = False) -> dict:
    """Stage percentiles (ms) over ``runs`` fresh processes; with ``warmup``, each runs ``Predictor.warmup()``
    and the Grad-CAM warm-up at load, as a server would."""
    stages: dict[str, list[float]] = {}
    import_s, load_s, rss = [], [], []
    prec = None
    for i in range(runs):
        cmd = [sys.executable, "-m", "bench.cold", "--weights", ctx.weights, "--file",
               str(ctx.files[(i * 7) % len(ctx.files)]), "--precision", ctx.args.precision, "--device",
               str(ctx.device), "--threads", str(ctx.cores)]
        if ctx.calibration:
            cmd += ["--calibration", str(ctx.calibration)]
        if warmup:
            cmd.append("--warmup")
        r = run_json(cmd)
        prec = r.pop("precision")
        rss.append(r.pop("peak_rss_mb"))
        import_s.append(r.pop("import_s"))
        load_s.append(r.pop("load_s"))
        for k, v in r.items():
            stages.setdefault(k, []).append(v)
    out = {k: percentiles(v) for k, v in stages.items()}
    out["import_torch_and_core"] = percentiles(import_s)
    out["load_model"] = percentiles(load_s)
    out["precision"] = prec
    out["peak_rss_mb"] = max(rss) if rss else None
    out["definition"] = ("first scan in a fresh process: torch imported, model just loaded"
                         + ("" if not warmup else " and Predictor.warmup() run (one dummy scan)")
                         + "; import and load times are listed separately and not in the totals")
    return out


def measure(ctx: BenchContext) -> dict:
    return cold_latency(ctx, ctx.cfg["cold_runs"])


def cold_table(s: dict, title: str, load_what: str) -> str:
    """A cold section's stage table, headed by its import and load times and the process's peak RSS."""
    if "predict_total" not in s:
        return ""
    extra = (f" (fresh process; import torch+core p50 {s['import_torch_and_core']['p50']:.0f} ms and {load_what} "
             f"p50 {s['load_model']['p50']:.0f} ms come before and are not in the totals)")
    if s.get("peak_rss_mb"):
        extra += f"; peak RSS of that serving process {s['peak_rss_mb']:.0f} MB"
    return stage_table(s, title, extra)


def render(r: dict) -> str:
    return cold_table(r.get(KEY, {}), "cold", "model load")
