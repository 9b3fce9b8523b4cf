"""Section ``throughput``: images/s end to end over a folder of JPEGs (read + decode + preprocess + predict) for
each batch size, our model (and its other precisions) against VGG16 through the same pipeline."""
from __future__ import annotations

from bench.common import fmt_table, log
from bench.context import BenchContext
from bench.measure import e2e

KEY = "throughput"


def vgg_pipeline(ctx: BenchContext) -> dict:
    """Decode workers x torch threads for VGG16: on a CPU (full run) the better of 1 and every core."""
    if ctx.device.type == "cuda":
        return dict(ctx.tuned)
    if ctx.device.type != "cpu" or ctx.quick:
        return {"workers": 1, "threads": ctx.cores}
    tried = [{"workers": w, "threads": ctx.cores,
              "images_per_s": e2e(ctx.vgg, ctx.files[:32], 32, w, ctx.cores)["images_per_s"]}
             for w in sorted({1, ctx.cores})]
    best = max(tried, key=lambda x: x["images_per_s"])
    return {"workers": best["workers"], "threads": best["threads"]}


def _row(ctx: BenchContext, bs: int, tuned: dict, vgg_tuned: dict) -> dict:
    log(f"  batch {bs}")
    w, th = tuned["workers"], tuned["threads"]
    r = {"batch": bs}
    r["ours"] = e2e(ctx.ours, ctx.files, bs, w, th, collect_stages=(bs == 64 or bs == ctx.cfg["sizes"][-1]))
    for name, pred in ctx.variants.items():
        r[f"ours_{name}"] = e2e(pred, ctx.files, bs, w, th)
    r["vgg16"] = e2e(ctx.vgg, ctx.vgg_files, bs, vgg_tuned["workers"], vgg_tuned["threads"])
    r["ratio_vs_vgg16"] = round(r["ours"]["images_per_s"] / r["vgg16"]["images_per_s"], 1)
    for name in ctx.variants:
        r[f"ratio_{name}_vs_vgg16"] = round(r[f"ours_{name}"]["images_per_s"] / r["vgg16"]["images_per_s"], 1)
    return r


def measure(ctx: BenchContext) -> dict:
    tuned, vgg_tuned = ctx.tuned, vgg_pipeline(ctx)
    rows = [_row(ctx, bs, tuned, vgg_tuned) for bs in ctx.cfg["sizes"]]
    best_ours = max(rows, key=lambda r: r["ours"]["images_per_s"])
    best_vgg = max(rows, key=lambda r: r["vgg16"]["images_per_s"])
    return {"rows": rows, "images_ours": len(ctx.files), "images_vgg16": len(ctx.vgg_files),
            "ours_precision": ctx.ours.precision, "variants": {k: v.precision for k, v in ctx.variants.items()},
            "best_ours": {"batch": best_ours["batch"], "images_per_s": best_ours["ours"]["images_per_s"]},
            "best_vgg16": {"batch": best_vgg["batch"], "images_per_s": best_vgg["vgg16"]["images_per_s"]},
            "ratio_best_vs_best": round(best_ours["ours"]["images_per_s"] / best_vgg["vgg16"]["images_per_s"], 1),
            "ratio_min_same_batch": min(r["ratio_vs_vgg16"] for r in rows),
            "pipeline": {"ours": {"chosen": tuned}, "vgg16": {"chosen": vgg_tuned}}}


def render(r: dict) -> str:
    """The throughput table, with the Grad-CAM column from ``cam_throughput``."""
    thr = r.get(KEY, {})
    if not thr.get("rows"):
        return ""
    cam = {x["batch"]: x["images_per_s"] for x in r.get("cam_throughput", {}).get("rows", [])}
    var = list(thr.get("variants", {}))
    rows = [[x["batch"], x["ours"]["images_per_s"]] + [x[f"ours_{v}"]["images_per_s"] for v in var]
            + [x["vgg16"]["images_per_s"], f"{x['ratio_vs_vgg16']}x", cam.get(x["batch"], "-")] for x in thr["rows"]]
    p = thr["pipeline"]
    return (
        f"**Batch throughput, end to end** (read + decode + preprocess + predict; {thr['images_ours']} JPEGs for "
        f"ours, {thr['images_vgg16']} for VGG16; pipeline: ours {p['ours']['chosen']['workers']} decode workers x "
        f"{p['ours']['chosen']['threads']} torch threads, VGG16 {p['vgg16']['chosen']['workers']} x "
        f"{p['vgg16']['chosen']['threads']}), images/s:\n\n" + fmt_table(
            ["batch", f"ours ({thr.get('ours_precision', 'default')}, default)"] + [f"ours {v}" for v in var]
            + ["VGG16", "ratio", "ours + Grad-CAM"], rows)
        + f"\n\nBest vs best: ours {thr['best_ours']['images_per_s']} img/s (batch {thr['best_ours']['batch']}) vs "
          f"VGG16 {thr['best_vgg16']['images_per_s']} img/s (batch {thr['best_vgg16']['batch']}): "
          f"**{thr['ratio_best_vs_best']}x**; lowest same-batch ratio {thr['ratio_min_same_batch']}x.")
