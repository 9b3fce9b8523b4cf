"""Memory over a long batch run, in a fresh process (run by ``python -m bench``).

Streams ``--images`` files (the data folder cycled) through the same pipeline as the
throughput benchmark and samples resident memory (main process + decode workers)
after every batch. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import sys
import time


def _trend(samples: list[dict], n: int) -> dict | None:
    """Whether main-process RSS grows over a run of ``n`` images, from its ``samples``.

    The allocator takes and returns whole batches, so RSS swings between samples. A leak is a trend:
    compare the median of the window after warm-up (images 1000-2000) with the median of the last 1000
    images, and fit a straight line through every sample after 1000 images.
    """
    import numpy as np

    early = [s["main_mb"] for s in samples if 1000 <= s["images"] < 2000]
    late = [s["main_mb"] for s in samples if s["images"] > n - 1000]
    after = [s for s in samples if s["images"] >= 1000]
    if not (early and late):
        return None
    slope = float(np.polyfit([s["images"] for s in after], [s["main_mb"] for s in after], 1)[0]) \
        if len(after) >= 3 else None
    return {"median_mb_images_1000_2000": round(float(np.median(early)), 1),
            "median_mb_last_1000": round(float(np.median(late)), 1),
            "growth_median_mb": round(float(np.median(late) - np.median(early)), 1),
            "slope_mb_per_1000_images": None if slope is None else round(slope * 1000, 2),
            "swing_mb": round(max(s["main_mb"] for s in after) - min(s["main_mb"] for s in after), 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--calibration", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cam-method", default=None)
    args = p.parse_args(argv)

    import torch

    from bench.common import cycle, interleave_classes, list_images, load_model, peak_rss_mb, rss_now_mb
    from core.explain.cam import Explainer
    from core.inference.pipeline import stream
    from core.inference.predictor import Predictor
    from pathlib import Path

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bundle, _ = load_model(args.weights)
    predictor = Predictor(bundle, device, args.precision, args.batch_size, int8_calibration=args.calibration)
    files = cycle(interleave_classes(list_images(Path(args.data))), args.images)
    baseline = rss_now_mb()
    samples = []
    peak_total = 0.0
    gpu_peak = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    n = 0
    every = args.batch_size  # every batch: RSS moves by tens of MB between batches, so one sample proves little
    for n, _ in enumerate(stream(predictor, files, batch_size=args.batch_size, num_workers=args.workers,
                                        cam_method=args.cam_method, explainer=Explainer(predictor)), start=1):
        if n % every == 0:  # while the decode workers are alive (the last rows come after they exit)
            r = rss_now_mb(uss=True)
            total = r["main_mb"] + r["workers_uss_mb"]
            peak_total = max(peak_total, total)
            samples.append({"images": n, **r, "main_plus_workers_uss_mb": round(total, 1)})
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        gpu_peak = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)

    def at(k: int) -> dict:
        return min(samples, key=lambda s: abs(s["images"] - k)) if samples else {}

    first, last = at(1000), samples[-1] if samples else {}
    trend = _trend(samples, n)
    end_rss = rss_now_mb()
    print(json.dumps({
        "images": n, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1),
        "batch_size": args.batch_size, "workers": args.workers, "cam_method": args.cam_method,
        "precision": predictor.precision, "rss_before_mb": baseline, "rss_at_1k": first, "rss_at_end": last,
        "rss_after_run_mb": end_rss["main_mb"],
        "growth_1k_to_end_mb": round(last.get("main_mb", 0) - first.get("main_mb", 0), 1), "trend": trend,
        "peak_main_plus_workers_uss_mb": round(peak_total, 1), "peak_rss": peak_rss_mb(), "gpu_peak_allocated_mb": gpu_peak,
        "samples": samples[:: max(1, len(samples) // 20)],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
