"""Shared sessions: one cached predictor serves every browser session.

* 8 threads computing Grad-CAMs for different images and target classes at once must
  each get exactly their single-threaded result, also while other threads run plain
  predictions on the same model (hooks must never see another session's forward pass).
* RSS stays flat over 1,000 single-scan predictions with CAM.

The model is the dry-run ``slimresnet`` (the shipped architecture, ~2.8 M parameters,
untrained) served at the real input size of 160 px: the dry run trains at 64 px, and the
network is fully convolutional, so only the card's ``image_size`` is raised here.
"""
from __future__ import annotations

import dataclasses
import gc
import threading
import time

import numpy as np
import pytest
import torch

from core.explain import cam as core_cam
from core.explain.cam import Explainer
from core.model.checkpoint import load_bundle
from core.inference.predictor import Predictor
from core.data.synthetic import fake_scan
from tests.factories import encode

N_THREADS = 8
# The hook-free native engine (the default for this architecture) and the grad-cam package.
ENGINES = [e for e in getattr(core_cam, "CAM_ENGINES", ("auto",)) if e != "auto"] or ["auto"]


@pytest.fixture(scope="module")
def predictor160(tiny_bundle_dir) -> Predictor:
    bundle = load_bundle(tiny_bundle_dir)
    card = dataclasses.replace(bundle.card, input_spec=dataclasses.replace(bundle.spec, image_size=160),
                               calibration=dataclasses.replace(bundle.card.calibration, temperature=1.0))
    bundle = dataclasses.replace(bundle, card=card)
    return Predictor(bundle, torch.device("cpu"))


@pytest.fixture(scope="module")
def explainer160(predictor160) -> Explainer:
    """One explainer shared by every thread, as the dashboard shares one per loaded model."""
    return Explainer(predictor160)


@pytest.fixture(scope="module")
def scans() -> list[bytes]:
    rng = np.random.default_rng(2024)
    return [encode(fake_scan(rng, 176 + 16 * i, i % 4), "PNG") for i in range(N_THREADS)]


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("engine", ENGINES)
def test_eight_threads_cams_equal_single_threaded(predictor160, explainer160, scans, engine):
    p, e = predictor160, explainer160
    kw = {} if engine == "auto" else {"engine": engine}
    assert p.spec.image_size == 160
    pres = [p.predict(s)[1] for s in scans]
    jobs = [(k, k % 4, "gradcam" if k < 6 else "gradcam++") for k in range(N_THREADS)]  # image, target, method
    reference = {job: e.compute([pres[job[0]]], [job[1]], job[2], **kw)[0].heatmap for job in jobs}
    ref_preds = p.predict_preprocessed(pres[:3])
    # Not vacuous: most maps are non-zero and no two jobs give the same map.
    assert sum(float(r.max()) > 0.5 for r in reference.values()) >= N_THREADS // 2
    maps = list(reference.values())
    assert all(maps[i].shape != maps[j].shape or not np.allclose(maps[i], maps[j])
               for i in range(len(maps)) for j in range(i))
    same_image = e.compute([pres[0], pres[0]], [0, 2], "gradcam", **kw)  # target matters on one image
    assert not np.allclose(same_image[0].heatmap, same_image[1].heatmap)

    rounds = 4
    start = threading.Barrier(N_THREADS + 2)
    stop = threading.Event()
    results: dict[tuple, list[np.ndarray]] = {job: [] for job in jobs}
    predictions: list[list] = []
    errors: list[BaseException] = []

    def cam_worker(job):
        try:
            start.wait()
            for _ in range(rounds):
                results[job].append(e.compute([pres[job[0]]], [job[1]], job[2], **kw)[0].heatmap)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    def predict_worker():  # another session predicting meanwhile, without the CAM lock
        try:
            start.wait()
            while not stop.is_set():
                predictions.append(p.predict_preprocessed(pres[:3]))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    cams = [threading.Thread(target=cam_worker, args=(job,)) for job in jobs]
    preds = [threading.Thread(target=predict_worker) for _ in range(2)]
    for t in cams + preds:
        t.start()
    for t in cams:
        t.join(timeout=300)
    stop.set()
    for t in preds:
        t.join(timeout=60)
    assert not errors, errors
    assert not any(t.is_alive() for t in cams + preds)
    for job in jobs:
        assert len(results[job]) == rounds
        for got in results[job]:
            assert np.allclose(got, reference[job], atol=1e-5), f"CAM {job} differs from its single-threaded result"
    assert predictions, "the prediction threads never ran"
    for batch in predictions:
        for got, ref in zip(batch, ref_preds):
            assert got.label == ref.label and np.allclose(got.logits, ref.logits, atol=1e-5)
    # Hooks are gone and no gradients are left on the shared model.
    assert _hook_count(p.model) == 0
    assert all(param.grad is None for param in p.model.parameters())


@pytest.mark.slow
def test_rss_flat_over_1000_predictions_with_cam(predictor160, explainer160, scans):
    import psutil

    proc = psutil.Process()
    p, e = predictor160, explainer160
    n, warmup = 1_000, 30

    def one(i: int) -> None:
        pred, pre = p.predict(scans[i % len(scans)])
        cam = e.compute([pre], [pred.index], "gradcam")[0]
        assert cam.heatmap.shape == pre.decoded.pixels.shape

    for i in range(warmup):  # allocator pools, lazy imports, oneDNN primitive caches
        one(i)
    gc.collect()
    rss0 = proc.memory_info().rss
    trace = []
    t0 = time.monotonic()
    for i in range(n):
        one(i)
        if (i + 1) % 100 == 0:
            trace.append(proc.memory_info().rss)
    elapsed = time.monotonic() - t0
    gc.collect()
    rss1 = proc.memory_info().rss
    mib = 2**20
    growth = (rss1 - rss0) / mib
    late_growth = (trace[-1] - trace[len(trace) // 2 - 1]) / mib  # calls 500 -> 1,000
    print(f"\nRSS over {n} predict+Grad-CAM calls at {p.spec.image_size} px (after {warmup} warm-up calls, "
          f"{elapsed:.0f} s, {1000 * elapsed / n:.0f} ms/call): start {rss0 / mib:.1f} MiB, end {rss1 / mib:.1f} MiB, "
          f"growth {(rss1 - rss0) / 2**10:+.0f} KiB (calls 500-1,000: {late_growth * 1024:+.0f} KiB); "
          f"every 100 calls: {[round(r / mib) for r in trace]} MiB")
    assert growth < 150, f"RSS grew by {growth:.0f} MiB over {n} calls"
    assert late_growth < 50, f"RSS keeps creeping: +{late_growth:.0f} MiB over the last 500 calls"
