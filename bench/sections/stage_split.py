"""Summary ``stage_split`` (derived from ``throughput``, ``backends`` and ``cam_engines``, after them): where the
CPU time of one batch image goes, ms per image."""
from __future__ import annotations

from bench.context import BenchContext

KEY = "stage_split"


def measure(ctx: BenchContext) -> dict:
    r = ctx.results
    split: dict = {}
    for row in r.get("throughput", {}).get("rows", []):
        if "worker_ms_per_image" in row.get("ours", {}):
            split.update(row["ours"]["worker_ms_per_image"])
    default = r["config"]["default_backend"]
    fwd = r.get("backends", {}).get("rows", {}).get(default, {})
    if split and "images_per_s" in fwd:
        split[f"forward ({default}, batch {fwd['batch']}, all cores)"] = round(1000 / fwd["images_per_s"], 2)
    ce = r.get("cam_engines", {})
    if split and "native" in ce:
        split["grad-cam (native, batched)"] = ce["native"]["ms_per_image"]
    return split


def render(r: dict) -> str:
    st = r.get(KEY, {})
    if not st:
        return ""
    return "Where a batch image's CPU time goes (ms per image, one core): " + ", ".join(
        f"{k} {v}" for k, v in st.items() if isinstance(v, (int, float))) + "."
