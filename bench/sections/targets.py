"""Summary ``targets`` (derived from the other sections, last): each speed and memory target, its measured
value and whether it was met."""
from __future__ import annotations

from bench.common import fmt_table
from bench.context import BenchContext

KEY = "targets"
LATENCY_KEYS = (("single_scan_warm", "warm"), ("single_scan_cold", "cold"),
                ("single_scan_cold_after_warmup", "cold, warm-up at load"))


def _latency_and_throughput(r: dict) -> dict:
    t: dict = {}
    for key, label in LATENCY_KEYS:
        s = r.get(key, {})
        if "with_cam_total" in s:
            p50 = s["with_cam_total"]["p50"]
            t[f"single scan predict + Grad-CAM p50 <= 250 ms ({label})"] = {"value_ms": p50, "met": p50 <= 250}
    thr = r.get("throughput", {})
    if "ratio_best_vs_best" in thr:
        t["batch throughput >= 10x VGG16 (best vs best)"] = {"value": thr["ratio_best_vs_best"],
                                                             "met": thr["ratio_best_vs_best"] >= 10}
        t["batch throughput >= 10x VGG16 (every batch size)"] = {"value": thr["ratio_min_same_batch"],
                                                                 "met": thr["ratio_min_same_batch"] >= 10}
    return t


def _memory_and_accuracy(r: dict) -> dict:
    t: dict = {}
    mem = r.get("memory", {})
    if (mem.get("trend") or {}).get("growth_median_mb") is not None:
        g = mem["trend"]["growth_median_mb"]
        t[f"memory flat over {mem['images']} images (median main RSS, last 1k vs images 1k-2k, grows < 50 MB)"] = {
            "value_mb": g, "met": g < 50}
    sm = r.get("single_scan_memory", {})
    if sm.get("growth_mb") is not None:
        t[f"single-scan memory flat over {sm['calls']} predict + Grad-CAM calls (RSS grows < 50 MB)"] = {
            "value_mb": sm["growth_mb"], "met": sm["growth_mb"] < 50}
    acc = r.get("accuracy", {}).get("rows", {})
    default = r.get("config", {}).get("default_backend")
    if default in acc and "delta_points_vs_fp32" in acc[default]:
        d = acc[default]["delta_points_vs_fp32"]
        t["default path accuracy within 0.2 points of fp32"] = {"value_points": d, "met": abs(d) <= 0.2}
    return t


def _gpu(r: dict) -> dict:
    rows = r.get("gpu", {}).get("rows", [])
    if not rows:
        return {}
    best = max(rows, key=lambda x: x["end_to_end_images_per_s"])
    return {"GPU end-to-end >= 3000 img/s": {"value": best["end_to_end_images_per_s"],
                                             "met": best["end_to_end_images_per_s"] >= 3000},
            "GPU end-to-end >= 70% of pure forward": {"value": best["fraction_of_forward"],
                                                      "met": best["fraction_of_forward"] >= 0.7}}


def measure(ctx: BenchContext) -> dict:
    r = ctx.results
    t = {**_latency_and_throughput(r), **_memory_and_accuracy(r)}
    if ctx.device.type == "cuda":
        t.update(_gpu(r))
    return t


def render(r: dict) -> str:
    tg = r.get(KEY, {})
    if not tg:
        return ""
    rows = [[k, next(str(x) for kk, x in v.items() if kk != "met"), "met" if v["met"] else "MISSED"]
            for k, v in tg.items()]
    return "**Targets**:\n\n" + fmt_table(["target", "measured", "verdict"], rows)
