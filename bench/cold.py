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
    p.add_argument("--warmup", action="store_true", help="call Predictor.warmup() after loading (a server would)")
    args = p.parse_args(argv)

    import torch

    from bench.common import load_model, peak_rss_mb
    from core.explain.cam import compute_cams
    from core.io.image import decode_bytes, read_source_bytes
    from core.inference.predictor import Predictor
    from core.preprocess import preprocess_decoded

    if args.threads:
        torch.set_num_threads(args.threads)
    t_import = time.perf_counter()
    device = torch.device(args.device)
    bundle, _ = load_model(args.weights)
    predictor = Predictor(bundle, device, args.precision, int8_calibration=args.calibration)
    if args.warmup:
        predictor.warmup(args.cam_method)
    t_load = time.perf_counter()
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    t0 = time.perf_counter()
    data, name = read_source_bytes(args.file)
    decoded = decode_bytes(data, name)
    t1 = time.perf_counter()
    pre = preprocess_decoded(decoded, predictor.spec)
    t2 = time.perf_counter()
    pred = predictor.predict_preprocessed([pre])[0]
    sync()
    t3 = time.perf_counter()
    compute_cams(predictor, [pre], [pred.index], args.cam_method)
    sync()
    t4 = time.perf_counter()
    print(json.dumps({
        "import_s": t_import - T_START, "load_s": t_load - t_import, "decode": t1 - t0, "preprocess": t2 - t1,
        "forward": t3 - t2, "cam": t4 - t3, "predict_total": t3 - t0, "with_cam_total": t4 - t0,
        "precision": predictor.precision, "peak_rss_mb": peak_rss_mb()["self_mb"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
