"""Section ``cam_engines``: the native batched Grad-CAM against the grad-cam package on the same batch: time per
batch and per image, and the largest difference between their maps."""
from __future__ import annotations

import numpy as np

from bench.common import Timer
from bench.context import BenchContext

KEY = "cam_engines"


def measure(ctx: BenchContext) -> dict:
    from core.preprocess import preprocess

    predictor = ctx.ours
    bs = min(ctx.cfg["cam_engine_bs"], len(ctx.files))
    items = [preprocess(f, predictor.spec) for f in ctx.files[:bs]]
    batch = predictor.batch_tensor(items)
    out = {"batch": len(items)}
    maps = {}
    for engine in ("native", "library"):
        ctx.explainer.maps(batch, None, "gradcam", engine)
        times = []
        for _ in range(3 if len(items) >= 32 else 1):
            with Timer(predictor.device) as t:
                maps[engine], _ = ctx.explainer.maps(batch, None, "gradcam", engine)
            times.append(t.seconds)
        out[engine] = {"ms_per_batch": round(1000 * min(times), 1),
                       "ms_per_image": round(1000 * min(times) / len(items), 2)}
    out["max_abs_difference"] = float(np.abs(maps["native"] - maps["library"]).max())
    out["speedup"] = round(out["library"]["ms_per_batch"] / out["native"]["ms_per_batch"], 1)
    return out


def render(r: dict) -> str:
    ce = r.get(KEY, {})
    if "native" not in ce:
        return ""
    return (f"Batched Grad-CAM (batch {ce['batch']}): native engine {ce['native']['ms_per_image']} ms/image vs "
            f"grad-cam package {ce['library']['ms_per_image']} ms/image ({ce['speedup']}x), largest "
            f"difference between their maps {ce['max_abs_difference']:.1e}.")
