"""What every section of ``python -m bench`` measures with: one :class:`BenchContext`, built once per run."""
from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from bench.common import (REPO, cores, default_weights, interleave_classes, list_images, load_model, machine_info,
                          machine_slug, make_generated_images, vgg_bundle)

if TYPE_CHECKING:
    from core.explain.cam import Explainer
    from core.inference.predictor import Predictor
    from core.model.checkpoint import ModelBundle

FULL = dict(images=0, vgg_images=256, sizes=[1, 8, 32, 64, 128, 256], warm_runs=100, cold_runs=50, vgg_warm_runs=20,
            cam_sizes=[1, 32, 128], memory_images=5000, single_memory_calls=1000, tune_images=384, compile=True, accuracy=True,
            gpu_images=10000, fwd_reps=5, generated=600, ray=True, ray_memory_files=20_000)
QUICK = dict(images=32, vgg_images=8, sizes=[4, 16], warm_runs=5, cold_runs=1, vgg_warm_runs=2, cam_sizes=[16],
             memory_images=96, single_memory_calls=20, tune_images=16, compile=False, accuracy=False, gpu_images=256, fwd_reps=1, generated=32,
             backends_bs=8, all_backends=False, fp32_sweep=False, cam_engine_bs=8, ray=False,
             ray_memory_files=0)
FULL.update(backends_bs=64, all_backends=True, fp32_sweep=True, cam_engine_bs=32)


@dataclass
class BenchContext:
    """The run's settings, device, model, data and predictors, and the results measured so far (a section may
    read an earlier section's entry, e.g. the pipeline that ``pipeline_tuning`` chose)."""

    args: argparse.Namespace  # the command line (``bench.run.parse_args``)
    cfg: dict  # FULL or QUICK, with --cold-runs applied
    skip: set[str]  # sections named by --skip
    device: torch.device
    cores: int  # CPU cores this process may use
    weights: str  # model folder, or "random"
    bundle: ModelBundle
    data: Path  # the image folder the files come from (real Testing set, or generated here)
    real_data: bool
    files: list[Path]  # interleaved by class, so any prefix has every class
    vgg_files: list[Path]
    calibration: Path | None  # int8 calibration file, when int8 runs here
    ours: Predictor  # the shipped model as the predictor serves it
    variants: dict[str, Predictor]  # other precisions / views of our model swept beside it
    vgg: Predictor  # the VGG16 baseline
    explainer: Explainer  # Grad-CAM for ``ours``
    out: Path  # the results JSON
    started: float  # time.time() at the start of the run
    results: dict  # the results JSON being filled in, section by section
    tmp: tempfile.TemporaryDirectory  # generated images, int8 calibration of random weights
    backend_objects: dict = field(default_factory=dict)  # name -> (backend, note), set by the backends section

    @property
    def quick(self) -> bool:
        return bool(self.args.quick)

    @property
    def tuned(self) -> dict:
        """Decode workers x torch threads chosen by ``pipeline_tuning`` (every core for both if it failed)."""
        return self.results["pipeline_tuning"].get("chosen", {"workers": self.cores, "threads": self.cores})


def _data(args: argparse.Namespace, cfg: dict, tmp: str) -> tuple[Path, list[Path], str, bool]:
    """(folder, files, description, real): real Testing JPEGs when present, else generated ones."""
    data = Path(args.data)
    if data.is_dir() and not args.generated and list_images(data):
        files = interleave_classes(list_images(data))
        return data, files, f"{len(files)} JPEGs of {data.name}/ ({data})", True
    gen = Path(tmp) / "generated"
    files = interleave_classes(make_generated_images(gen, cfg["generated"]))
    return gen, files, f"{len(files)} generated JPEG fake scans (no real data found)", False


def _calibration(device: torch.device, weights: str, bundle, files: list[Path], tmp: str) -> Path | None:
    """Int8 calibration: the shipped file for trained weights; for random weights, measured here."""
    from core.model.int8 import CALIBRATION_FILE, calibrate, int8_supported, load_calibration, save_calibration

    if device.type != "cpu" or not int8_supported():
        return None
    if weights != "random":
        cand = Path(weights) / CALIBRATION_FILE
        return cand if load_calibration(cand, bundle.sha256) is not None else None
    from core.preprocess import preprocess, to_model_tensor

    imgs = np.stack([preprocess(f, bundle.spec).image for f in files[:32]])
    state = calibrate(bundle.model, to_model_tensor(imgs, bundle.spec).split(16), bundle.spec.image_size)
    return save_calibration(tmp, state, bundle.sha256)


def _variants(ours, bundle, device: torch.device, precision: str, calibration, cfg: dict) -> dict:
    """Other precisions / views of our model that the throughput sweep runs beside the default."""
    from core.inference.predictor import Predictor

    variants = {}
    if cfg["fp32_sweep"]:
        if ours.tta != "none":  # what the test-time augmentation costs, same precision
            variants["single view"] = Predictor(bundle, device, precision, int8_calibration=calibration, tta="none")
        if ours.precision != "fp32":
            variants["fp32"] = Predictor(bundle, device, "fp32")
        if calibration is not None and ours.precision != "int8":
            variants["int8"] = Predictor(bundle, device, "int8", int8_calibration=calibration)
    return variants


def default_backend(ours, device: torch.device) -> str:
    """The backends-table row that is the predictor's own choice on this device."""
    if device.type != "cpu":
        return f"amp {ours.precision} channels_last"
    return {"int8": "int8 FX static (x86)", "fp32": "fp32 channels_last", "bf16": "bf16 autocast"}.get(
        ours.precision, ours.precision)


def _run_header(args: argparse.Namespace, argv: list[str] | None, device: torch.device) -> tuple[dict, Path]:
    """The results' first entries (date, mode, machine, command) and the path they will be written to."""
    results: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                     "mode": "quick" if args.quick else "full", "machine": machine_info(device),
                     "command": " ".join(["python -m bench"] + (sys.argv[1:] if argv is None else list(argv)))}
    slug = machine_slug(results["machine"])
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"{slug}-{results['date'][:10]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    return results, out


def build_context(args: argparse.Namespace, argv: list[str] | None = None) -> BenchContext:
    """Device, model (trained weights when training has finished, else random), data, predictors; and the
    results' header and ``config`` entry."""
    from core.explain.cam import Explainer
    from core.inference.predictor import Predictor
    from core.model.device import select_device

    cfg = dict(QUICK if args.quick else FULL)
    if args.cold_runs is not None:
        cfg["cold_runs"] = max(1, args.cold_runs)
    device = select_device(args.device)
    n_cores = cores()
    torch.set_num_threads(n_cores)
    started = time.time()
    results, out = _run_header(args, argv, device)
    weights = args.weights or default_weights()
    bundle, model_desc = load_model(weights)
    tmp = tempfile.TemporaryDirectory(prefix="bench-data-")
    data, files, data_desc, real_data = _data(args, cfg, tmp.name)
    if cfg["images"]:
        files = files[:cfg["images"]]
    calibration = _calibration(device, weights, bundle, files, tmp.name)
    ours = Predictor(bundle, device, args.precision, int8_calibration=calibration)
    variants = _variants(ours, bundle, device, args.precision, calibration, cfg)
    vgg = Predictor(vgg_bundle(bundle.spec, bundle.class_names), device, "fp32")
    results["config"] = {"model": model_desc, "weights": weights, "data": data_desc, "real_data": real_data,
                         "ours": ours.describe(), "default_backend": default_backend(ours, device),
                         "vgg16_parameters": sum(x.numel() for x in vgg.model.parameters()),
                         "ours_parameters": sum(x.numel() for x in ours.model.parameters()),
                         "settings": {k: v for k, v in cfg.items()}}
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    return BenchContext(args=args, cfg=cfg, skip=skip, device=device, cores=n_cores, weights=weights, bundle=bundle,
                        data=data, real_data=real_data, files=files, vgg_files=files[:cfg["vgg_images"]],
                        calibration=calibration, ours=ours, variants=variants, vgg=vgg, explainer=Explainer(ours),
                        out=out, started=started, results=results, tmp=tmp)
