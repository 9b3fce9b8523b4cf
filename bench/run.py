"""``python -m bench``: speed of the slice classifier on this machine, with a VGG16 baseline.

Everything is measured in one run, on whatever device ``core.model.device.select_device``
picks (or ``--device``), and reported as a table on stdout plus a JSON file
(``bench/results/<machine>-<date>.json``) and a README section (``bench/README_section.md``):

* backends: forward-pass throughput / latency per inference path (fp32 NCHW, fp32
  channels_last, bf16, int8, torch.compile, ONNX Runtime; GPU: fp32, AMP, AMP+compile)
  and, with trained weights and the real Testing set, their accuracy against fp32;
* single scan: cold (fresh process, ``bench/cold.py``) and warm latency, p50/p95,
  split into decode, preprocess, forward (predict) and Grad-CAM;
* batch throughput end to end over a folder of real JPEGs (decode included) for batch
  sizes 1-256, ours and VGG16 through the same pipeline (``core.inference.pipeline``), the
  ratio between them, and with batched Grad-CAM on;
* memory: RSS over a 5,000-image run in a fresh process (``bench/memory.py``); peak
  GPU memory on CUDA;
* a profile (torch.profiler + the per-stage split of the pipeline) of where time goes;
* one training epoch's time from the training log / model card.

``--quick`` runs a reduced version in under a minute (smoke test; numbers not meaningful).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from bench.common import (DEFAULT_DATA, REPO, ForeignLoad, Timer, cores, cycle, interleave_classes, list_images, load_model,
                          machine_info, machine_slug, make_generated_images, peak_rss_mb, percentiles,
                          real_weights_ready, run_json, vgg_bundle)

FULL = dict(images=0, vgg_images=256, sizes=[1, 8, 32, 64, 128, 256], warm_runs=100, cold_runs=50, vgg_warm_runs=20,
            cam_sizes=[1, 32, 128], memory_images=5000, single_memory_calls=1000, tune_images=384, compile=True, accuracy=True,
            gpu_images=10000, fwd_reps=5, generated=600, ray=True, ray_memory_files=20_000)
QUICK = dict(images=32, vgg_images=8, sizes=[4, 16], warm_runs=5, cold_runs=1, vgg_warm_runs=2, cam_sizes=[16],
             memory_images=96, single_memory_calls=20, tune_images=16, compile=False, accuracy=False, gpu_images=256, fwd_reps=1, generated=32,
             backends_bs=8, all_backends=False, fp32_sweep=False, cam_engine_bs=8, ray=False,
             ray_memory_files=0)
FULL.update(backends_bs=64, all_backends=True, fp32_sweep=True, cam_engine_bs=32)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def section(results: dict, name: str, fn, *args, **kwargs):
    """Run one section; a failure is recorded (``error``) and the run goes on."""
    log(f"{name} …")
    t0 = time.perf_counter()
    with ForeignLoad() as load:
        try:
            results[name] = fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(results[name], dict):
        results[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        if load.result is not None:
            results[name]["other_programs"] = load.result
            if load.result["foreign_share_of_machine"] > 0.05:
                log(f"  warning: other programs used {100 * load.result['foreign_share_of_machine']:.0f}% of the "
                    f"machine during {name}; its numbers are not clean")


# --------------------------------------------------------------------------- forward-only backends

class OrtBackend:
    """ONNX Runtime session over the same (logits, features) graph; CPU only."""

    def __init__(self, bundle, threads: int):
        import onnxruntime as ort

        from core.model.int8 import FeaturesAndLogits

        s = bundle.spec.image_size
        self.path = Path(tempfile.mkdtemp(prefix="bench-ort-")) / "model.onnx"
        net = FeaturesAndLogits(bundle.model).eval()
        torch.onnx.export(net, (torch.zeros(2, bundle.spec.channels, s, s),), str(self.path), dynamo=False,
                          input_names=["x"], output_names=["logits", "feats"], opset_version=17,
                          dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}, "feats": {0: "n"}})
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        self.ood = bundle.ood

    def logits_and_scores(self, batch: torch.Tensor):
        logits, feats = self.session.run(None, {"x": batch.contiguous().numpy()})
        scores = self.ood.score(torch.from_numpy(feats)).numpy() if self.ood is not None else np.zeros(len(logits))
        return logits, scores


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


def build_backends(bundle, device, cfg, calibration, threads) -> dict:
    """name -> (object with logits_and_scores, note).

    Every backend runs one view per image (no test-time augmentation, whatever the card
    says), so the plain, ONNX and predictor backends are compared like with like; the
    end-to-end sections measure the predictor as shipped.
    """
    from functools import partial

    from core.inference.predictor import Predictor as ShippedPredictor
    from core.model.int8 import FeaturesAndLogits

    Predictor = partial(ShippedPredictor, tta="none")

    out: dict = {}
    if device.type == "cpu":
        class Plain:  # seed-style: fp32, NCHW, no tricks
            def __init__(self, model, ood):
                self.net, self.ood = FeaturesAndLogits(model).eval(), ood

            def logits_and_scores(self, b):
                with torch.inference_mode():
                    lg, f = self.net(b.contiguous())
                    return lg.numpy(), (self.ood.score(f).numpy() if self.ood is not None else np.zeros(len(lg)))

        import copy

        out["fp32 channels_last"] = (Predictor(bundle, device, "fp32"), "")
        if cfg["all_backends"]:
            out["fp32 NCHW eager"] = (Plain(copy.deepcopy(bundle.model), bundle.ood), "no channels_last")
        out["bf16 autocast"] = (Predictor(bundle, device, "bf16"), "oneDNN bf16, channels_last")
        if calibration is not None:
            t0 = time.perf_counter()
            p = Predictor(bundle, device, "int8", int8_calibration=calibration)
            out["int8 FX static (x86)"] = (p, f"opt-in; quantise+convert at load {time.perf_counter() - t0:.1f} s")
        if cfg["compile"]:
            try:
                t0 = time.perf_counter()
                p = Predictor(bundle, device, "fp32", compile=True)
                p.logits_and_scores(torch.zeros(2, bundle.spec.channels, bundle.spec.image_size, bundle.spec.image_size))
                out["fp32 torch.compile"] = (p, f"first call incl. compilation {time.perf_counter() - t0:.0f} s")
            except Exception as exc:  # noqa: BLE001 - no compiler etc.
                out["fp32 torch.compile"] = (None, f"unavailable: {type(exc).__name__}: {exc}"[:200])
        try:
            if cfg["all_backends"]:
                out["onnxruntime fp32"] = (OrtBackend(bundle, threads), "ONNX opset 17, CPUExecutionProvider")
        except ImportError:
            pass
        except Exception as exc:  # noqa: BLE001
            out["onnxruntime fp32"] = (None, f"unavailable: {type(exc).__name__}: {exc}"[:200])
    else:
        out["fp32"] = (Predictor(bundle, device, "fp32"), "")
        amp = Predictor(bundle, device, "amp")
        out[f"amp {amp.precision} channels_last"] = (amp, "")
        if cfg["compile"]:
            try:
                t0 = time.perf_counter()
                p = Predictor(bundle, device, "amp", compile=True)
                p.logits_and_scores(torch.zeros(2, bundle.spec.channels, bundle.spec.image_size, bundle.spec.image_size))
                out[f"amp {amp.precision} + torch.compile"] = (p, f"first call incl. compilation {time.perf_counter() - t0:.0f} s")
            except Exception as exc:  # noqa: BLE001
                out[f"amp {amp.precision} + torch.compile"] = (None, f"unavailable: {type(exc).__name__}: {exc}"[:200])
    return out


def bench_backends(bundle, device, cfg, calibration, threads, vgg) -> dict:
    bs = 256 if device.type == "cuda" else cfg["backends_bs"]
    rows = {}
    backends = build_backends(bundle, device, cfg, calibration, threads)
    for name, (b, note) in backends.items():
        if b is None:
            rows[name] = {"error": note}
            continue
        try:
            rows[name] = forward_stats(b, device, bundle.spec, bs, cfg["fwd_reps"])
            rows[name]["note"] = note
            if hasattr(b, "describe"):
                rows[name]["predictor"] = b.describe()
        except Exception as exc:  # noqa: BLE001
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    vgg_stats = forward_stats(vgg, device, bundle.spec, min(bs, 32), max(1, cfg["fwd_reps"] // 2))
    vgg_stats["note"] = "torchvision VGG16, random weights, fp32 channels_last"
    rows["VGG16 baseline"] = vgg_stats
    return {"rows": rows, "_objects": backends}


def accuracy_check(objects: dict, bundle, device, files: list[Path], workers: int) -> dict:
    """Testing accuracy of every backend, from one decode of the files (labels: folder names)."""
    from core.inference.pipeline import iter_batches

    names = bundle.class_names
    tensors, labels = [], []
    for b in iter_batches(files, bundle.spec, batch_size=64, num_workers=workers, hash_files=False):
        for r in b.rows:
            if r.item is not None:
                labels.append(names.index(Path(r.path).parent.name))
        if b.images01 is not None:
            tensors.append(b.images01.clone())
    from core.preprocess import to_model_tensor

    x = to_model_tensor(torch.cat(tensors), bundle.spec)
    y = np.asarray(labels)
    out, ref = {}, None
    thr = bundle.ood.threshold if bundle.ood is not None else float("inf")
    for name, (b, _) in objects.items():
        if b is None:
            continue
        logits, scores = [], []
        try:
            for chunk in x.split(64):
                lg, sc = b.logits_and_scores(b.to_device(chunk) if hasattr(b, "to_device") else chunk)
                logits.append(lg)
                scores.append(sc)
        except Exception as exc:  # noqa: BLE001 - one backend failing keeps the others' results
            out[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            continue
        lg, sc = np.concatenate(logits), np.concatenate(scores)
        pred = lg.argmax(1)
        if ref is None:
            ref = pred
        out[name] = {"accuracy_pct": round(100 * float((pred == y).mean()), 2),
                     "agreement_with_fp32_pct": round(100 * float((pred == ref).mean()), 2),
                     "ood_flagged": int((sc > thr).sum())}
    ok = {k: v for k, v in out.items() if "error" not in v}
    base = next(iter(ok.values()))["accuracy_pct"]
    for v in ok.values():
        v["delta_points_vs_fp32"] = round(v["accuracy_pct"] - base, 2)
    return {"images": int(len(y)), "reference": next(iter(ok)), "rows": out}


# --------------------------------------------------------------------------- single scan

def single_scan_warm(predictor, files: list[Path], runs: int, cam_method: str | None = "gradcam") -> dict:
    from core.explain.cam import compute_cams
    from core.io.image import decode_bytes, read_source_bytes
    from core.preprocess import preprocess_decoded

    dev = predictor.device
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    stages: dict[str, list[float]] = {k: [] for k in ("decode", "preprocess", "forward", "cam", "predict_total",
                                                      "with_cam_total")}
    for i in range(runs + 3):
        f = files[i % len(files)]
        t0 = time.perf_counter()
        data, name = read_source_bytes(f)
        decoded = decode_bytes(data, name)
        t1 = time.perf_counter()
        pre = preprocess_decoded(decoded, predictor.spec)
        t2 = time.perf_counter()
        pred = predictor.predict_preprocessed([pre])[0]
        sync()
        t3 = time.perf_counter()
        if cam_method:
            compute_cams(predictor, [pre], [pred.index], cam_method)
            sync()
        t4 = time.perf_counter()
        if i < 3:  # warm-up
            continue
        for k, v in (("decode", t1 - t0), ("preprocess", t2 - t1), ("forward", t3 - t2), ("cam", t4 - t3),
                     ("predict_total", t3 - t0), ("with_cam_total", t4 - t0)):
            stages[k].append(v)
    if not cam_method:
        stages.pop("cam")
        stages.pop("with_cam_total")
    return {k: percentiles(v) for k, v in stages.items()}


def single_scan_cold(weights: str, files: list[Path], runs: int, precision: str, calibration, device, threads,
                     warmup: bool = False) -> dict:
    stages: dict[str, list[float]] = {}
    import_s, load_s, rss = [], [], []
    prec = None
    for i in range(runs):
        cmd = [sys.executable, "-m", "bench.cold", "--weights", weights, "--file", str(files[(i * 7) % len(files)]),
               "--precision", precision, "--device", str(device), "--threads", str(threads)]
        if calibration:
            cmd += ["--calibration", str(calibration)]
        if warmup:
            cmd.append("--warmup")
        r = run_json(cmd)
        prec = r.pop("precision")
        rss.append(r.pop("peak_rss_mb"))
        import_s.append(r.pop("import_s"))
        load_s.append(r.pop("load_s"))
        for k, v in r.items():
            stages.setdefault(k, []).append(v)
    out = {k: percentiles(v) for k, v in stages.items()}
    out["import_torch_and_core"] = percentiles(import_s)
    out["load_model"] = percentiles(load_s)
    out["precision"] = prec
    out["peak_rss_mb"] = max(rss) if rss else None
    out["definition"] = ("first scan in a fresh process: torch imported, model just loaded"
                         + ("" if not warmup else " and Predictor.warmup() run (one dummy scan)")
                         + "; import and load times are listed separately and not in the totals")
    return out


# --------------------------------------------------------------------------- batch throughput

def e2e(predictor, files: list[Path], bs: int, workers: int, threads: int, cam_method: str | None = None,
        collect_stages: bool = False) -> dict:
    """Images/s over ``files`` through core.inference.pipeline.stream (read + decode + preprocess + forward [+ CAM])."""
    from core.explain.cam import cam_maps
    from core.inference.pipeline import stream

    torch.set_num_threads(threads)
    s, c = predictor.spec.image_size, predictor.spec.channels
    warm = torch.zeros(min(bs, 16), c, s, s)
    predictor.logits_and_scores(predictor.to_device(warm))
    if cam_method:
        cam_maps(predictor, predictor.to_device(warm), None, cam_method)
    dev = predictor.device
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    stage_sum: dict[str, float] = {}
    n = errors = 0
    with Timer(dev) as t:
        for res in stream(predictor, files, batch_size=bs, num_workers=workers, cam_method=cam_method):
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


def tune_pipeline(predictor, files: list[Path], bs: int, device) -> dict:
    """Pick decode workers x torch threads for this machine (best end-to-end images/s)."""
    n = cores()
    if device.type == "cuda":
        return {"chosen": {"workers": max(1, n), "threads": n}, "tried": []}
    grid = sorted({(0, n), (1, n), (n, 1), (n, n), (max(1, n - 1), 1)}) if bs >= 32 else [(0, n), (n, 1)]
    tried = []
    for w, th in grid:
        r = e2e(predictor, files, bs, w, th)
        tried.append({"workers": w, "threads": th, "images_per_s": r["images_per_s"]})
    best = max(tried, key=lambda r: r["images_per_s"])
    return {"chosen": {"workers": best["workers"], "threads": best["threads"]}, "tried": tried, "batch": bs}


def throughput_sweep(ours, variants: dict, vgg, files, vgg_files, cfg, tuned, vgg_tuned, device) -> dict:
    """``variants``: other precisions of our model (name -> Predictor) swept alongside the default."""
    rows = []
    w, th = tuned["workers"], tuned["threads"]
    vw, vth = vgg_tuned["workers"], vgg_tuned["threads"]
    for bs in cfg["sizes"]:
        log(f"  batch {bs}")
        r = {"batch": bs}
        r["ours"] = e2e(ours, files, bs, w, th, collect_stages=(bs == 64 or bs == cfg["sizes"][-1]))
        for name, pred in variants.items():
            r[f"ours_{name}"] = e2e(pred, files, bs, w, th)
        r["vgg16"] = e2e(vgg, vgg_files, bs, vw, vth)
        r["ratio_vs_vgg16"] = round(r["ours"]["images_per_s"] / r["vgg16"]["images_per_s"], 1)
        for name in variants:
            r[f"ratio_{name}_vs_vgg16"] = round(r[f"ours_{name}"]["images_per_s"] / r["vgg16"]["images_per_s"], 1)
        rows.append(r)
    best_ours = max(rows, key=lambda r: r["ours"]["images_per_s"])
    best_vgg = max(rows, key=lambda r: r["vgg16"]["images_per_s"])
    return {"rows": rows, "images_ours": len(files), "images_vgg16": len(vgg_files), "ours_precision": ours.precision,
            "variants": {k: v.precision for k, v in variants.items()},
            "best_ours": {"batch": best_ours["batch"], "images_per_s": best_ours["ours"]["images_per_s"]},
            "best_vgg16": {"batch": best_vgg["batch"], "images_per_s": best_vgg["vgg16"]["images_per_s"]},
            "ratio_best_vs_best": round(best_ours["ours"]["images_per_s"] / best_vgg["vgg16"]["images_per_s"], 1),
            "ratio_min_same_batch": min(r["ratio_vs_vgg16"] for r in rows),
            "pipeline": {"ours": {"chosen": tuned}, "vgg16": {"chosen": vgg_tuned}}}


def cam_throughput(ours, files, cfg, tuned) -> dict:
    rows = [e2e(ours, files, bs, tuned["workers"], tuned["threads"], cam_method="gradcam") for bs in cfg["cam_sizes"]]
    return {"rows": rows, "method": "gradcam", "images": len(files)}


def cam_engines(predictor, files: list[Path], bs: int) -> dict:
    """Native batched CAM vs the grad-cam package on the same batch: time and largest difference."""
    from core.explain.cam import cam_maps
    from core.preprocess import preprocess

    items = [preprocess(f, predictor.spec) for f in files[:bs]]
    batch = predictor.batch_tensor(items)
    out = {"batch": len(items)}
    maps = {}
    for engine in ("native", "library"):
        cam_maps(predictor, batch, None, "gradcam", engine)
        times = []
        for _ in range(3 if len(items) >= 32 else 1):
            with Timer(predictor.device) as t:
                maps[engine], _ = cam_maps(predictor, batch, None, "gradcam", engine)
            times.append(t.seconds)
        out[engine] = {"ms_per_batch": round(1000 * min(times), 1),
                       "ms_per_image": round(1000 * min(times) / len(items), 2)}
    out["max_abs_difference"] = float(np.abs(maps["native"] - maps["library"]).max())
    out["speedup"] = round(out["library"]["ms_per_batch"] / out["native"]["ms_per_batch"], 1)
    return out


# --------------------------------------------------------------------------- GPU-only

def gpu_section(ours_objects: dict, files: list[Path], cfg, device, bundle) -> dict:
    """Pure forward vs end to end on the GPU, with and without torch.compile; GPU JPEG decode rate."""
    out: dict = {"rows": []}
    gpu_files = cycle(files, cfg["gpu_images"])
    workers = cores()
    for name, (p, _) in ours_objects.items():
        if p is None or not name.startswith("amp"):
            continue
        bs = 256
        fwd = forward_stats(p, device, bundle.spec, bs, max(5, cfg["fwd_reps"] * 4))
        e = e2e(p, gpu_files, bs, workers, cores(), collect_stages=True)
        out["rows"].append({"backend": name, "forward_images_per_s": fwd["images_per_s"],
                            "end_to_end_images_per_s": e["images_per_s"],
                            "fraction_of_forward": round(e["images_per_s"] / fwd["images_per_s"], 3),
                            "end_to_end": e})
    try:
        from torchvision.io import decode_jpeg

        datas = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files[:256]]
        decode_jpeg(datas[:8], device=device)
        with Timer(device) as t:
            for i in range(0, len(datas), 64):
                decode_jpeg(datas[i:i + 64], device=device)
        out["nvjpeg_decode_only_images_per_s"] = round(len(datas) / t.seconds, 1)
    except Exception as exc:  # noqa: BLE001
        out["nvjpeg_decode_only_images_per_s"] = f"unavailable: {type(exc).__name__}: {exc}"[:200]
    return out


# --------------------------------------------------------------------------- profile, training

def profile_forward(predictor, bs: int = 64) -> dict:
    from torch.profiler import ProfilerActivity, profile

    s, c = predictor.spec.image_size, predictor.spec.channels
    x = predictor.to_device(torch.randn(bs, c, s, s))
    predictor.logits_and_scores(x)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if predictor.device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(3):
            predictor.logits_and_scores(x)
    key = "self_cpu_time_total"
    if predictor.device.type == "cuda":
        key = "self_device_time_total" if hasattr(prof.key_averages()[0], "self_device_time_total") else "self_cuda_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key, 0), reverse=True)
    total = sum(getattr(e, key, 0) for e in events) or 1
    top = [{"op": e.key, "share_pct": round(100 * getattr(e, key, 0) / total, 1), "calls": e.count}
           for e in events[:10]]
    return {"batch": bs, "precision": predictor.precision, "top_ops": top}


def profile_decode(spec, files: list[Path]) -> dict:
    """cProfile of one pipeline worker's job (read + hash + decode + preprocess), top functions by own time."""
    import cProfile
    import pstats

    from core.inference.pipeline import load_file

    for f in files[:3]:
        load_file(f, spec)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for f in files:
        load_file(f, spec)
    prof.disable()
    wall = time.perf_counter() - t0
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values()) or 1.0
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:10]
    top = [{"function": f"{Path(k[0]).name}:{k[1]}({k[2]})", "share_pct": round(100 * v[2] / total, 1),
            "ms_per_image": round(1000 * v[2] / len(files), 3)} for k, v in rows]
    return {"images": len(files), "ms_per_image": round(1000 * wall / len(files), 2), "top_functions": top}


def training_epochs(extra_cards: list[Path] = ()) -> dict:
    """Epoch times from the shipped model card and from the cards of timing runs (``--train-card``).

    An epoch's seconds (``training.history``) include its validation pass; images/s is
    training images per epoch divided by that, so runs on training sets of other sizes compare.
    """
    out: dict = {}
    for card_path in [REPO / "weights" / "model_card.json", *map(Path, extra_cards)]:
        try:
            t = json.loads(card_path.read_text()).get("training", {})
        except (OSError, ValueError):
            continue
        secs = [h["seconds"] for h in t.get("history") or [] if "seconds" in h]
        if not secs:
            continue
        try:
            source = str(card_path.resolve().relative_to(REPO))
        except ValueError:
            source = card_path.name
        median, n = float(np.median(secs)), t.get("train_files")
        out[f"{t.get('device', '?')}: {source}"] = {
            "device": t.get("device"), "epochs": len(secs), "median_epoch_s": median, "min_epoch_s": float(min(secs)),
            "max_epoch_s": float(max(secs)), "train_images": n, "images_per_s": round(n / median, 1) if n else None,
            "data": f"{t.get('data_root')}/{t.get('train_dir')}", "image_size": t.get("hyperparameters", {}).get(
                "image_size"), "torch": t.get("torch"), "source": source}
    return out


# --------------------------------------------------------------------------- report

def targets(r: dict, device) -> dict:
    t: dict = {}
    warm = r.get("single_scan_warm", {})
    cold = r.get("single_scan_cold", {})
    cold_w = r.get("single_scan_cold_after_warmup", {})
    if "with_cam_total" in warm:
        p50 = warm["with_cam_total"]["p50"]
        t["single scan predict + Grad-CAM p50 <= 250 ms (warm)"] = {"value_ms": p50, "met": p50 <= 250}
    if "with_cam_total" in cold:
        p50 = cold["with_cam_total"]["p50"]
        t["single scan predict + Grad-CAM p50 <= 250 ms (cold)"] = {"value_ms": p50, "met": p50 <= 250}
    if "with_cam_total" in cold_w:
        p50 = cold_w["with_cam_total"]["p50"]
        t["single scan predict + Grad-CAM p50 <= 250 ms (cold, warm-up at load)"] = {"value_ms": p50, "met": p50 <= 250}
    thr = r.get("throughput", {})
    if "ratio_best_vs_best" in thr:
        t["batch throughput >= 10x VGG16 (best vs best)"] = {"value": thr["ratio_best_vs_best"],
                                                             "met": thr["ratio_best_vs_best"] >= 10}
        t["batch throughput >= 10x VGG16 (every batch size)"] = {"value": thr["ratio_min_same_batch"],
                                                                 "met": thr["ratio_min_same_batch"] >= 10}
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
    if device.type == "cuda":
        rows = r.get("gpu", {}).get("rows", [])
        if rows:
            best = max(rows, key=lambda x: x["end_to_end_images_per_s"])
            t["GPU end-to-end >= 3000 img/s"] = {"value": best["end_to_end_images_per_s"],
                                                 "met": best["end_to_end_images_per_s"] >= 3000}
            t["GPU end-to-end >= 70% of pure forward"] = {"value": best["fraction_of_forward"],
                                                          "met": best["fraction_of_forward"] >= 0.7}
    return t


def fmt_table(headers: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line, sep] + ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells])


def render(r: dict) -> str:
    m = r["machine"]
    parts = []
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    flags = m.get("cpu_flags") or []
    parts.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB RAM{gpu}; CPU features "
                 f"{', '.join(flags) or 'without AVX2'}; torch {m['torch']}, "
                 f"Python {m['python']}; device `{m['device']}`. Date: {r['date']}. Mode: {r['mode']}. "
                 f"Model: {r['config']['model']}. Data: {r['config']['data']}.")
    # Figures from machines with and without native bf16 differ about twofold; say which this one is.
    why = (" (this CPU has no native bf16, AVX-512 BF16 or AMX, so the predictor serves fp32)"
           if m["device"] == "cpu" and r["config"]["default_backend"].startswith("fp32")
           and not {"avx512_bf16", "amx_bf16"} & set(flags) else "")
    parts.append(f"Default inference path chosen by the predictor: **{r['config']['default_backend']}**{why}.")
    busy = {k: v["other_programs"]["foreign_share_of_machine"] for k, v in r.items()
            if isinstance(v, dict) and isinstance(v.get("other_programs"), dict)}
    if busy:
        worst = max(busy, key=busy.get)
        noisy = [k for k, v in busy.items() if v > 0.05]
        parts.append(f"Other programs on the machine during the run: at most {100 * busy[worst]:.1f}% of its CPU "
                     f"({worst})" + (f"; sections with > 5%: {', '.join(noisy)} (not clean)" if noisy else
                                     "; every section ran on a quiet machine") + ".")
    b = r.get("backends", {}).get("rows", {})
    acc = r.get("accuracy", {}).get("rows", {})
    if b:
        rows = []
        for name, v in b.items():
            if "error" in v:
                rows.append([name, "-", "-", "-", "-", v["error"][:60]])
                continue
            a = acc.get(name, {})
            accs = f"{a['accuracy_pct']} ({a['delta_points_vs_fp32']:+.2f})" if "accuracy_pct" in a else "-"
            ood = str(a["ood_flagged"]) if "ood_flagged" in a else "-"
            rows.append([name, v["images_per_s"], v["batch1_ms"]["p50"], accs, ood, v.get("note", "")])
        parts.append("**Forward pass only**, one view per image (batch {}; batch-1 latency p50):\n\n".format(
            next(iter(v["batch"] for v in b.values() if "batch" in v), "?")) + fmt_table(
            ["backend", "img/s", "batch-1 ms", "Testing acc % (Δ vs fp32)",
             f"OOD flags / {r.get('accuracy', {}).get('images', '-')}", "note"], rows))
    for key, title in (("single_scan_warm", "warm"), ("single_scan_cold", "cold"),
                       ("single_scan_cold_after_warmup", "cold, after Predictor.warmup() at load")):
        s = r.get(key, {})
        if "predict_total" not in s:
            continue
        stages = [k for k in ("decode", "preprocess", "forward", "cam", "predict_total", "with_cam_total") if k in s]
        rows = [[k, s[k]["p50"], s[k]["p95"], s[k]["n"]] for k in stages]
        extra = ""
        if key.startswith("single_scan_cold"):
            what = "model load + warm-up" if key.endswith("warmup") else "model load"
            extra = (f" (fresh process; import torch+core p50 {s['import_torch_and_core']['p50']:.0f} ms and {what} "
                     f"p50 {s['load_model']['p50']:.0f} ms come before and are not in the totals)")
        if key.startswith("single_scan_cold") and s.get("peak_rss_mb"):
            extra += f"; peak RSS of that serving process {s['peak_rss_mb']:.0f} MB"
        parts.append(f"**Single scan, {title}**{extra}, ms:\n\n" + fmt_table(["stage", "p50", "p95", "runs"], rows))
    vw = r.get("single_scan_vgg16_warm", {})
    if "predict_total" in vw:
        parts.append(f"VGG16 single scan (warm, decode + preprocess + predict): p50 {vw['predict_total']['p50']} ms, "
                     f"p95 {vw['predict_total']['p95']} ms.")
    thr = r.get("throughput", {})
    if thr.get("rows"):
        cam = {x["batch"]: x["images_per_s"] for x in r.get("cam_throughput", {}).get("rows", [])}
        var = list(thr.get("variants", {}))
        rows = []
        for x in thr["rows"]:
            rows.append([x["batch"], x["ours"]["images_per_s"]] + [x[f"ours_{v}"]["images_per_s"] for v in var]
                        + [x["vgg16"]["images_per_s"], f"{x['ratio_vs_vgg16']}x", cam.get(x["batch"], "-")])
        p = thr["pipeline"]
        parts.append(
            f"**Batch throughput, end to end** (read + decode + preprocess + predict; {thr['images_ours']} JPEGs for "
            f"ours, {thr['images_vgg16']} for VGG16; pipeline: ours {p['ours']['chosen']['workers']} decode workers x "
            f"{p['ours']['chosen']['threads']} torch threads, VGG16 {p['vgg16']['chosen']['workers']} x "
            f"{p['vgg16']['chosen']['threads']}), images/s:\n\n" + fmt_table(
                ["batch", f"ours ({thr.get('ours_precision', 'default')}, default)"] + [f"ours {v}" for v in var]
                + ["VGG16", "ratio", "ours + Grad-CAM"], rows)
            + f"\n\nBest vs best: ours {thr['best_ours']['images_per_s']} img/s (batch {thr['best_ours']['batch']}) vs "
              f"VGG16 {thr['best_vgg16']['images_per_s']} img/s (batch {thr['best_vgg16']['batch']}): "
              f"**{thr['ratio_best_vs_best']}x**; lowest same-batch ratio {thr['ratio_min_same_batch']}x.")
    ce = r.get("cam_engines", {})
    if "native" in ce:
        parts.append(f"Batched Grad-CAM (batch {ce['batch']}): native engine {ce['native']['ms_per_image']} ms/image vs "
                     f"grad-cam package {ce['library']['ms_per_image']} ms/image ({ce['speedup']}x), largest "
                     f"difference between their maps {ce['max_abs_difference']:.1e}.")
    mem = r.get("memory", {})
    if "rss_at_end" in mem:
        a, e = mem["rss_at_1k"], mem["rss_at_end"]
        parts.append(
            f"**Memory** over {mem['images']} images (batch {mem['batch_size']}, {mem['workers']} decode workers, "
            f"CAM {mem['cam_method'] or 'off'}, {mem['images_per_s']} img/s, fresh process): main-process RSS "
            f"{a['main_mb']} MB at {a['images']} images, {e['main_mb']} MB at {e['images']}"
            + (f"; median {tr['median_mb_images_1000_2000']} MB over images 1000-2000 and "
               f"{tr['median_mb_last_1000']} MB over the last 1000 (growth {tr['growth_median_mb']} MB, straight-line "
               f"trend {tr['slope_mb_per_1000_images']} MB per 1000 images, swing between batches "
               f"{tr['swing_mb']} MB)" if (tr := mem.get("trend")) else "")
            + f"; decode workers {a.get('workers_uss_mb', '-')} MB -> "
            f"{e.get('workers_uss_mb', '-')} MB unique (USS; their RSS {e.get('workers_rss_mb', '-')} MB is mostly "
            f"pages shared with the main process); peak RSS of the main process {mem['peak_rss']['self_mb']} MB"
            + (f"; peak GPU memory {mem['gpu_peak_allocated_mb']} MB" if mem.get("gpu_peak_allocated_mb") else "") + ".")
    sm = r.get("single_scan_memory", {})
    if "growth_mb" in sm:
        parts.append(
            f"**Memory of single-scan serving** ({sm['calls']} predict + {sm['cam_method']} calls on "
            f"{min(sm['calls'], sm['distinct_files'])} different files after {sm['warmup_calls']} warm-up calls, "
            f"{sm['ms_per_call']} ms per call, fresh process): RSS {sm['rss_start_mb']} MB at the start and "
            f"{sm['rss_end_mb']} MB at the end, growth {sm['growth_mb']:+} MB ({sm['growth_second_half_mb']:+} MB "
            f"over the second half); every {sm['samples'][0]['calls'] if sm['samples'] else '-'} calls: "
            f"{', '.join(str(round(x['main_mb'])) for x in sm['samples'])} MB.")
    g = r.get("gpu", {})
    if g.get("rows"):
        rows = [[x["backend"], x["forward_images_per_s"], x["end_to_end_images_per_s"],
                 f"{100 * x['fraction_of_forward']:.0f}%"] for x in g["rows"]]
        parts.append("**GPU**:\n\n" + fmt_table(["backend", "pure forward img/s", "end-to-end img/s", "fraction"],
                                                rows) + f"\n\nnvJPEG decode alone: {g.get('nvjpeg_decode_only_images_per_s')} img/s.")
    prof = r.get("profile", {})
    if prof.get("top_ops"):
        ops = ", ".join(f"{o['op']} {o['share_pct']}%" for o in prof["top_ops"][:6])
        parts.append(f"Profile of the {prof['precision']} forward (batch {prof['batch']}, torch.profiler, self time): {ops}.")
    pdec = r.get("profile_decode", {})
    if pdec.get("top_functions"):
        fns = ", ".join(f"{o['function']} {o['share_pct']}%" for o in pdec["top_functions"][:6])
        parts.append(f"Profile of one worker's decode + preprocess ({pdec['ms_per_image']} ms/image, cProfile, own "
                     f"time): {fns}.")
    st = r.get("stage_split", {})
    if st:
        parts.append("Where a batch image's CPU time goes (ms per image, one core): " + ", ".join(
            f"{k} {v}" for k, v in st.items() if isinstance(v, (int, float))) + ".")
    tr = r.get("training_epochs", {})
    if tr:
        parts.append("**Training** (`train.py`; an epoch includes its validation pass): " + "; ".join(
            f"{v.get('device', dev)}: median epoch {v['median_epoch_s']:.1f} s over {v['epochs']} epochs"
            + (f" of {v['train_images']} {v['image_size']} px images from `{v['data']}`" if v.get("train_images") else "")
            + " (" + (f"{v['images_per_s']} img/s; " if v.get("images_per_s") else "") + f"`{v['source']}`)"
            for dev, v in tr.items()) + ".")
    from bench.input_path_section import render_input_paths  # issue 22's section, when the run has it

    if render_input_paths(r.get("input_paths")):
        parts.append(render_input_paths(r.get("input_paths")))
    tg = r.get("targets", {})
    if tg:
        rows = [[k, next(str(x) for kk, x in v.items() if kk != "met"), "met" if v["met"] else "MISSED"]
                for k, v in tg.items()]
        parts.append("**Targets**:\n\n" + fmt_table(["target", "measured", "verdict"], rows))
    return "\n\n".join(parts) + "\n"


def readme_section(r: dict, text: str) -> str:
    minutes = round((r.get("seconds") or 0) / 60)
    took = f"{minutes} min on the machine below" if minutes else "roughly half an hour on 2 CPU cores"
    others = sorted(str(f.relative_to(REPO)) for f in (REPO / "bench" / "results").glob("*.json")
                    if str(f.relative_to(REPO)) != r["output"])
    head = (f"## Benchmarks\n\nRun `python -m bench` (full, {took}; run it on a quiet machine) or "
            "`python -m bench --quick` (smoke test, < 1 min, numbers not meaningful). It measures on whatever machine "
            "it runs, prints the tables below and writes `bench/results/<machine>-<date>.json`. Figures below: "
            f"`{r['output']}`" + (f", from `{r['command']}`" if r.get("command") else "")
            + (f"; earlier runs, on other machines or models: {', '.join(f'`{o}`' for o in others)}" if others else "")
            + ".\n\n")
    notes = REPO / "bench" / "analysis.md"
    tail = "\n" + notes.read_text() if notes.is_file() else ""
    return head + text + tail


# --------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced run (< 1 min) for smoke tests")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda")
    p.add_argument("--weights", default=None, help="model folder; default weights/ when trained, else random weights")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of JPEGs (Testing); generated images if absent")
    p.add_argument("--generated", action="store_true", help="use generated images even if --data exists")
    p.add_argument("--precision", default="auto", help="our model's precision (the predictor's choice by default)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<machine>-<date>.json)")
    p.add_argument("--readme", default=None, help="README section path (default bench/README_section.md; "
                                                  "'-' to skip; quick mode skips unless given)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip (cold, memory, accuracy, vgg_latency, ray)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="measure nothing: re-render the README section (--readme) from a results file")
    p.add_argument("--cold-runs", type=int, default=None, help="fresh processes for the cold single-scan figures "
                                                              "(default 50; 1 in --quick)")
    p.add_argument("--train-card", action="append", default=[], metavar="CARD",
                   help="model_card.json of a training run whose epoch times to report beside the shipped model's")
    args = p.parse_args(argv)
    if args.render:
        r = json.loads(Path(args.render).read_text())
        Path(args.readme or REPO / "bench" / "README_section.md").write_text(readme_section(r, render(r)))
        return 0
    cfg = dict(QUICK if args.quick else FULL)
    if args.cold_runs is not None:
        cfg["cold_runs"] = max(1, args.cold_runs)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    from core.model.device import select_device
    from core.inference.predictor import Predictor

    device = select_device(args.device)
    n_cores = cores()
    torch.set_num_threads(n_cores)
    started = time.time()
    results: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "mode": "quick" if args.quick else "full", "machine": machine_info(device),
                     "command": " ".join(["python -m bench"] + (sys.argv[1:] if argv is None else list(argv)))}
    slug = machine_slug(results["machine"])
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"{slug}-{results['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial.json")

    def run(name: str, fn, *a, **k) -> None:
        """One section, then everything so far to ``partial``: a run cut short keeps what it measured."""
        section(results, name, fn, *a, **k)
        partial.write_text(json.dumps(results, indent=2, default=str))

    # Model: the trained bundle when training has finished, else random weights.
    weights = args.weights or (str(REPO / "weights") if real_weights_ready(REPO / "weights") else "random")
    bundle, model_desc = load_model(weights)
    # Data: real Testing JPEGs when present, else generated ones.
    tmp = tempfile.TemporaryDirectory(prefix="bench-data-")
    data = Path(args.data)
    if data.is_dir() and not args.generated and list_images(data):
        files = interleave_classes(list_images(data))
        data_desc = f"{len(files)} JPEGs of {data.name}/ ({data})"
        real_data = True
    else:
        gen = Path(tmp.name) / "generated"
        files = interleave_classes(make_generated_images(gen, cfg["generated"]))
        data = gen
        data_desc = f"{len(files)} generated JPEG fake scans (no real data found)"
        real_data = False
    if cfg["images"]:
        files = files[:cfg["images"]]
    vgg_files = files[:cfg["vgg_images"]]

    # Int8 calibration: the shipped file for trained weights; for random weights, measured here.
    calibration = None
    from core.model.int8 import CALIBRATION_FILE, calibrate, int8_supported, load_calibration, save_calibration
    if device.type == "cpu" and int8_supported():
        if weights != "random":
            cand = Path(weights) / CALIBRATION_FILE
            calibration = cand if load_calibration(cand, bundle.sha256) is not None else None
        else:
            from core.preprocess import preprocess, to_model_tensor

            imgs = np.stack([preprocess(f, bundle.spec).image for f in files[:32]])
            state = calibrate(bundle.model, to_model_tensor(imgs, bundle.spec).split(16), bundle.spec.image_size)
            calibration = save_calibration(tmp.name, state, bundle.sha256)
    ours = Predictor(bundle, device, args.precision, int8_calibration=calibration)
    variants = {}
    if cfg["fp32_sweep"]:
        if ours.tta != "none":  # what the test-time augmentation costs, same precision
            variants["single view"] = Predictor(bundle, device, args.precision, int8_calibration=calibration,
                                                tta="none")
        if ours.precision != "fp32":
            variants["fp32"] = Predictor(bundle, device, "fp32")
        if calibration is not None and ours.precision != "int8":
            variants["int8"] = Predictor(bundle, device, "int8", int8_calibration=calibration)
    vgg = Predictor(vgg_bundle(bundle.spec, bundle.class_names), device, "fp32")
    default_backend = {"int8": "int8 FX static (x86)", "fp32": "fp32 channels_last", "bf16": "bf16 autocast"}.get(
        ours.precision, ours.precision) if device.type == "cpu" else f"amp {ours.precision} channels_last"
    results["config"] = {"model": model_desc, "weights": weights, "data": data_desc, "real_data": real_data,
                         "ours": ours.describe(), "default_backend": default_backend,
                         "vgg16_parameters": sum(x.numel() for x in vgg.model.parameters()),
                         "ours_parameters": sum(x.numel() for x in ours.model.parameters()),
                         "settings": {k: v for k, v in cfg.items()}}
    log(f"device {device}; {model_desc}; {data_desc}; ours: {ours.describe()}")

    run("backends", bench_backends, bundle, device, cfg, calibration, n_cores, vgg)
    objects = results["backends"].pop("_objects", {}) if isinstance(results["backends"], dict) else {}
    if cfg["accuracy"] and real_data and weights != "random" and "accuracy" not in skip and objects:
        run("accuracy", accuracy_check, objects, bundle, device, interleave_classes(list_images(data)), n_cores)
    run("single_scan_warm", single_scan_warm, ours, files, cfg["warm_runs"])
    if "vgg_latency" not in skip:
        run("single_scan_vgg16_warm", single_scan_warm, vgg, files, cfg["vgg_warm_runs"], None)
    if "cold" not in skip:
        run("single_scan_cold", single_scan_cold, weights, files, cfg["cold_runs"], args.precision,
            calibration, device, n_cores)
        run("single_scan_cold_after_warmup", single_scan_cold, weights, files,
            max(1, cfg["cold_runs"] // 5), args.precision, calibration, device, n_cores, True)
    tune_bs = 64 if not args.quick else cfg["sizes"][-1]
    run("pipeline_tuning", tune_pipeline, ours, files[:cfg["tune_images"]], tune_bs, device)
    tuned = results["pipeline_tuning"].get("chosen", {"workers": n_cores, "threads": n_cores})
    vgg_tune = {"chosen": dict(tuned) if device.type == "cuda" else {"workers": 1, "threads": n_cores}}
    if device.type == "cpu" and not args.quick:
        tried = []
        for w in sorted({1, n_cores}):
            tried.append({"workers": w, "threads": n_cores, "images_per_s":
                          e2e(vgg, files[:32], 32, w, n_cores)["images_per_s"]})
        best = max(tried, key=lambda x: x["images_per_s"])
        vgg_tune = {"chosen": {"workers": best["workers"], "threads": best["threads"]}, "tried": tried}
    run("throughput", throughput_sweep, ours, variants, vgg, files, vgg_files, cfg, tuned, vgg_tune["chosen"], device)
    run("cam_throughput", cam_throughput, ours, files, cfg, tuned)
    if cfg["ray"] and weights != "random" and "ray" not in skip and device.type == "cpu":
        from bench.ray_section import section as ray_section  # Ray vs local engine, same files; driver memory

        run("ray", ray_section, ours, weights, files, 16, (0, n_cores), n_cores, memory_files=cfg["ray_memory_files"])
    run("cam_engines", cam_engines, ours, files, min(cfg["cam_engine_bs"], len(files)))
    from bench.input_path_section import input_paths  # each input path side by side (issue 22)

    run("input_paths", input_paths, bundle, device, files, 64 if not args.quick else cfg["sizes"][-1],
        200 if not args.quick else 8, 384 if not args.quick else cfg["sizes"][-1])
    if weights != "random" and "pacs" not in skip and not args.quick and device.type == "cpu":
        from bench.pacs_section import pacs_bench  # a 155-slice study from a local Orthanc: retrieve, review, send

        run("pacs", pacs_bench, ours)
    if not args.quick and "study" not in skip and device.type == "cpu":
        from bench.study_section import README_FILE, study_section  # whole series reviewed, slice change (issue 18)

        run("study", study_section, ours, weights, readme=README_FILE, output=f"bench/results/{out.name}")
    if device.type == "cuda":
        gpu_objs = {k: v for k, v in objects.items()}
        run("gpu", gpu_section, gpu_objs, files, cfg, device, bundle)
    run("profile", profile_forward, ours, 64)
    run("profile_decode", profile_decode, bundle.spec, files[:200 if not args.quick else 8])
    if "memory" not in skip:
        cmd = [sys.executable, "-m", "bench.memory", "--weights", weights, "--data", str(data),
               "--images", str(cfg["memory_images"]), "--batch-size", "64", "--workers", str(tuned["workers"]),
               "--threads", str(tuned["threads"]), "--precision", args.precision, "--device", str(device)]
        if calibration:
            cmd += ["--calibration", str(calibration)]
        run("memory", run_json, cmd, 1800)
        cmd = [sys.executable, "-m", "bench.single_memory", "--weights", weights, "--data", str(data),
               "--calls", str(cfg["single_memory_calls"]), "--threads", str(n_cores), "--precision", args.precision,
               "--device", str(device)]
        run("single_scan_memory", run_json, cmd, 1800)

    # Where the CPU time of one batch image goes (per image, summed over cores).
    split: dict = {}
    for row in results.get("throughput", {}).get("rows", []):
        if "worker_ms_per_image" in row.get("ours", {}):
            split.update(row["ours"]["worker_ms_per_image"])
            bsz = row["batch"]
    fwd = results.get("backends", {}).get("rows", {}).get(default_backend, {})
    if split and "images_per_s" in fwd:
        split[f"forward ({default_backend}, batch {fwd['batch']}, all cores)"] = round(1000 / fwd["images_per_s"], 2)
    ce = results.get("cam_engines", {})
    if split and "native" in ce:
        split["grad-cam (native, batched)"] = ce["native"]["ms_per_image"]
    results["stage_split"] = split
    results["training_epochs"] = training_epochs(args.train_card)
    results["peak_rss_this_process"] = peak_rss_mb()
    results["targets"] = targets(results, device)

    try:
        results["output"] = str(out.resolve().relative_to(REPO))
    except ValueError:
        results["output"] = str(out)
    results["seconds"] = round(time.time() - started)
    out.write_text(json.dumps(results, indent=2, default=str))
    partial.unlink(missing_ok=True)
    text = render(results)
    print(text)
    readme = args.readme if args.readme is not None else ("-" if args.quick else str(REPO / "bench" / "README_section.md"))
    if readme != "-":
        Path(readme).write_text(readme_section(results, text))
        log(f"wrote {readme}")
    log(f"wrote {out}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
