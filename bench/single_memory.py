"""Memory of a serving process over many single-scan predictions with Grad-CAM (run by ``python -m bench``).

What one dashboard process does for every upload: decode a file, predict, and compute a Grad-CAM for the
predicted class (``core.explain.cam.Explainer.compute``, which takes the explainer's lock and releases its hooks). In a
fresh process, after ``--warmup`` calls (allocator pools, lazy imports, oneDNN primitive caches), it runs
``--calls`` more over real files and samples the resident set size every ``--every`` calls. Prints one
JSON line. ``tests/test_concurrency.py`` asserts the same flatness on synthetic scans; this script is where
the figures the README shows come from.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--every", type=int, default=0, help="sample RSS every this many calls (0: a tenth of --calls)")
    p.add_argument("--cam-method", default="gradcam")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="auto")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)

    from pathlib import Path

    import torch

    from bench.common import interleave_classes, list_images, load_model, peak_rss_mb, rss_now_mb
    from core.explain.cam import Explainer
    from core.inference.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    bundle, _ = load_model(args.weights)
    predictor = Predictor(bundle, torch.device(args.device), args.precision)
    explainer = Explainer(predictor)
    files = interleave_classes(list_images(Path(args.data)))
    every = args.every or max(1, args.calls // 10)

    def one(i: int) -> None:
        pred, pre = predictor.predict(files[i % len(files)])
        explainer.compute([pre], [pred.index], args.cam_method)

    for i in range(args.warmup):
        one(i)
    gc.collect()
    start = rss_now_mb()["main_mb"]
    samples, half_mb = [], None
    t0 = time.perf_counter()
    for i in range(args.calls):
        one(args.warmup + i)
        if (i + 1) % every == 0:
            samples.append({"calls": i + 1, "main_mb": rss_now_mb()["main_mb"]})
        if i + 1 == args.calls // 2:  # read here whatever --every is, so the second-half growth always exists
            half_mb = rss_now_mb()["main_mb"]
    seconds = time.perf_counter() - t0
    gc.collect()
    end = rss_now_mb()["main_mb"]
    print(json.dumps({
        "calls": args.calls, "warmup_calls": args.warmup, "cam_method": args.cam_method,
        "distinct_files": len(files), "image_size": bundle.spec.image_size, "precision": predictor.precision,
        "tta": predictor.tta, "ms_per_call": round(1000 * seconds / max(args.calls, 1), 1),
        "rss_start_mb": start, "rss_end_mb": end, "growth_mb": round(end - start, 1),
        # A leak keeps growing; a one-off pool allocation does not: the second half must be flat too.
        "growth_second_half_mb": round(end - half_mb, 1) if half_mb is not None else None,
        "samples": samples, "peak_rss": peak_rss_mb(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
