"""One cold single-scan measurement in a fresh process (run by ``python -m bench``).

A "cold" scan is the first one a freshly started service handles: the interpreter has
just imported torch, the model has just been loaded, and every kernel runs for the
first time. Prints one JSON line: import, load and first-scan stage timings (seconds).
"""
from __future__ import annotations

import time

T_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True, help="model folder or 'random'")
    p.add_argument("--file", required=True)
    p.add_argument("--precision", default="auto")
    p.add_argument("--calibration", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cam-method", default="gradcam")
    p.add_argument("--warmup", action="store_true",
                   help="call Predictor.warmup() and Explainer.warmup() after loading (a server would)")
    args = p.parse_args(argv)

    import torch

    from bench.common import load_model, peak_rss_mb
    from core.explain.cam import Explainer
    from bench.measure import timed_scan
    from core.inference.predictor import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    device = torch.device(args.device)
    bundle, _ = load_model(args.weights)
    predictor = Predictor(bundle, device, args.precision, int8_calibration=args.calibration)
    explainer = Explainer(predictor)
    if args.warmup:
        predictor.warmup()
        explainer.warmup(args.cam_method)
    t_load = time.perf_counter()
    timed = timed_scan(predictor, explainer, args.file, args.cam_method)
    print(json.dumps({
        "import_s": t_import - T_START, "load_s": t_load - t_import, **timed,
        "precision": predictor.precision, "peak_rss_mb": peak_rss_mb()["self_mb"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
