"""The measurements several sections share: one scan's stage timings (warm and cold sections), forward-only
throughput of a backend, and end-to-end throughput of a predictor through the batch pipeline
(``core.inference.pipeline``)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from bench.common import Timer, cores, percentiles


def timed_scan(predictor, explainer, path, cam_method: str | None) -> dict[str, float]:
    """Seconds of each stage of one single-scan review, as the Single scan page runs it: decode, preprocess,
    forward (predict) and Grad-CAM of the predicted class (0 when ``cam_method`` is None), plus the totals."""
    from core.io.decode import decode_bytes, read_source_bytes
    from core.preprocess import preprocess_decoded

    dev = predictor.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    data, name = read_source_bytes(path)
    decoded = decode_bytes(data, name)
    t1 = time.perf_counter()
    pre = preprocess_decoded(decoded, predictor.spec)
    t2 = time.perf_counter()
    pred = predictor.predict_preprocessed([pre])[0]
    sync()
    t3 = time.perf_counter()
    if cam_method:
        explainer.compute([pre], [pred.index], cam_method)
        sync()
    t4 = time.perf_counter()
    return {"decode": t1 - t0, "preprocess": t2 - t1, "forward": t3 - t2, "cam": t4 - t3,
            "predict_total": t3 - t0, "with_cam_total": t4 - t0}


def forward_stats(backend, device: torch.device, spec, bs: int, reps: int) -> dict:
    """Throughput (img/s) at ``bs`` and batch-1 latency of ``backend.logits_and_scores`` on device tensors."""
    s, c = spec.image_size, spec.channels
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bs, c, s, s, generator=g)
    x1 = x[:1].clone()
    if hasattr(backend, "to_device"):
        x, x1 = backend.to_device(x), backend.to_device(x1)
    backend.logits_and_scores(x)
    backend.logits_and_scores(x)
    with Timer(device) as t:
        for _ in range(reps):
            backend.logits_and_scores(x)
    lat = []
    for _ in range(3):
        backend.logits_and_scores(x1)
    for _ in range(max(10, reps * 4)):
        with Timer(device) as t1:
            backend.logits_and_scores(x1)
        lat.append(t1.seconds)
    return {"batch": bs, "images_per_s": round(bs * reps / t.seconds, 1), "batch1_ms": percentiles(lat)}


def e2e(predictor, files: list[Path], bs: int, workers: int, threads: int, cam_method: str | None = None,
        collect_stages: bool = False, explainer=None) -> dict:
    """Images/s over ``files`` through core.inference.pipeline.stream (read + decode + preprocess + forward [+ CAM
    by ``explainer``, the predictor's ``core.explain.cam.Explainer``, with ``cam_method``])."""
    from core.inference.pipeline import stream

    torch.set_num_threads(threads)
    s, c = predictor.spec.image_size, predictor.spec.channels
    warm = torch.zeros(min(bs, 16), c, s, s)
    predictor.logits_and_scores(predictor.to_device(warm))
    if cam_method:
        explainer.maps(predictor.to_device(warm), None, cam_method)
    dev = predictor.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    stage_sum: dict[str, float] = {}
    n = errors = 0
    with Timer(dev) as t:
        for res in stream(predictor, files, batch_size=bs, num_workers=workers, cam_method=cam_method,
                          explainer=explainer):
            n += 1
            errors += res.prediction is None
            if collect_stages:
                for k, v in res.seconds.items():
                    stage_sum[k] = stage_sum.get(k, 0.0) + v
    out = {"batch": bs, "images": n, "errors": errors, "seconds": round(t.seconds, 2),
           "images_per_s": round(n / t.seconds, 1), "workers": workers, "threads": threads}
    if dev.type == "cuda":
        out["gpu_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated(dev) / 2**20, 1)
    if collect_stages and n:
        out["worker_ms_per_image"] = {k: round(1000 * v / n, 2) for k, v in stage_sum.items()}
    torch.set_num_threads(cores())
    return out
