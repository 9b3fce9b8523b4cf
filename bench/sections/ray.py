"""Bench section ``ray``: the batch review on the local engine against the Ray Data engine, in one run, and the
driver's memory over a long run.

Both engines run ``core.review.folder.run_batch`` (CSV writer, no audit) over the same files, in turn, on a local Ray
started here with every core. The Ray figure counts its actors' start-up (model load)
but not ``ray.init`` (a cluster is started once and then serves many runs). Rows are compared: same files,
classes and errors, and the largest probability difference. The memory part runs the Ray engine over a list
file of 20,000 small generated slices and samples this (driver) process's RSS as rows arrive: flat means the
driver holds a bounded window of paths and blocks, not the run. ``python -m bench`` runs it on a CPU with trained
weights (``--skip ray`` leaves it out); standalone:

    python -m bench.sections.ray --weights weights --data ../shared/data/brain-tumor-mri/Testing --images 1311 \
        --memory-files 20000 [--out bench/results/ray-....json]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.context import BenchContext

KEY = "ray"


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _start_ray(cpus: int | None) -> bool:
    """A local Ray for the section (True when this call started it, so the caller stops it)."""
    from core.review.ray_engine import REPO, import_ray

    ray = import_ray()
    if ray.is_initialized():
        return False
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    return True


def compare_engines(predictor, weights: str, files: list[Path], batch_size: int = 16,
                    local_workers: tuple[int, ...] = (0, 2), cpus: int | None = None, rounds: int = 2) -> dict:
    """Images/s over ``files`` (written as a list file) of the local engine (in-process, and with each count
    of decode processes in ``local_workers``) and of the Ray engine, run in turn ``rounds`` times (the median
    is reported, so a burst of other load hits every engine alike); the ratio of Ray to the best local
    figure and to the in-process one; and whether the rows are identical (probabilities within 1e-5). Also, per
    engine, the seconds until the first row and the rate from the first row on: a fixed start-up cost and a
    per-image cost are different overheads."""
    from statistics import median

    from core.review.folder import local_engine, run_batch
    from core.review.ray_engine import RayEngine, import_ray

    ray = import_ray()
    out: dict = {"images": len(files), "batch": batch_size, "rounds": rounds}
    runs: dict[str, list[float]] = {}
    starts: dict[str, list[float]] = {}  # seconds until the first row (Ray: its actors start and load the model)
    after: dict[str, list[float]] = {}  # images/s from the first row on
    started = _start_ray(cpus)
    try:
        ray_engine = RayEngine(weights)
        out["ray_actors"] = ray_engine._actors()
        out["ray_cpus"] = int(ray.cluster_resources().get("CPU", 0))
        engines = {f"local, {w} decode processes" if w else "local, in-process": local_engine(w)
                   for w in local_workers}
        engines["ray"] = ray_engine
        with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
            lst = Path(tmp) / "files.txt"
            lst.write_text("\n".join(str(Path(f).resolve()) for f in files))
            for _ in range(rounds):
                for name, engine in engines.items():
                    csv_path = Path(tmp) / f"{name}.csv"
                    t0 = time.perf_counter()
                    first, n = None, 0
                    for _ in run_batch(predictor, lst, csv_path, chunk_size=batch_size, engine=engine):
                        first = first if first is not None else time.perf_counter() - t0
                        n += 1
                    total = time.perf_counter() - t0
                    runs.setdefault(name, []).append(n / total)
                    starts.setdefault(name, []).append(first or 0.0)
                    after.setdefault(name, []).append((n - 1) / max(total - (first or 0.0), 1e-9))
            ref = _rows(Path(tmp) / "local, in-process.csv") if 0 in local_workers else None
            b = _rows(Path(tmp) / "ray.csv")
    finally:
        if started:
            ray.shutdown()
    out["images_per_s"] = {k: round(median(v), 1) for k, v in runs.items()}
    out["images_per_s_each_round"] = {k: [round(x, 1) for x in v] for k, v in runs.items()}
    best_local = max(v for k, v in out["images_per_s"].items() if k != "ray")
    out["ratio_ray_to_best_local"] = round(out["images_per_s"]["ray"] / best_local, 3)
    # Where Ray's overhead lies: the seconds before the first row, and the rate once rows flow.
    out["first_row_s"] = {k: round(median(v), 2) for k, v in starts.items()}
    out["images_per_s_after_first_row"] = {k: round(median(v), 1) for k, v in after.items()}
    best_after = max(v for k, v in out["images_per_s_after_first_row"].items() if k != "ray")
    out["ratio_ray_to_best_local_after_first_row"] = round(out["images_per_s_after_first_row"]["ray"] / best_after, 3)
    if ref is not None:
        out["ratio_ray_to_in_process"] = round(out["images_per_s"]["ray"] / out["images_per_s"]["local, in-process"], 3)
        probs = [k for k in (ref[0] if ref else {}) if k.startswith("p_")] + ["confidence"]
        diff = max((abs(float(x[k]) - float(y[k])) for x, y in zip(ref, b) for k in probs if x[k] != ""),
                   default=0.0)
        same = (len(ref) == len(b) and [x["path"] for x in ref] == [y["path"] for y in b]
                and all(x["predicted"] == y["predicted"] and x["error"] == y["error"] for x, y in zip(ref, b)))
        out.update(identical_rows=bool(same and diff <= 1e-5), max_probability_difference=diff)
    return out


def _slope_mb_per_1000(points: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) against rows done, per 1,000 rows."""
    import numpy as np

    x = np.array([p[0] for p in points], float)
    y = np.array([p[1] for p in points], float)
    if len(x) < 2 or np.ptp(x) == 0:
        return 0.0
    return float(np.polyfit(x, y, 1)[0] * 1000)


def generate_slices(folder: Path, n: int, size: int = 64, distinct: int = 500) -> Path:
    """A list file naming ``n`` small generated PNG slices (``distinct`` images, each copied under
    ``n / distinct`` names, so every row is its own file and the SHA-256s repeat)."""
    import numpy as np
    from PIL import Image

    from core.data.synthetic import fake_scan

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    blobs = []
    for k in range(min(distinct, n)):
        img = Path(folder) / f"src{k:04d}.png"
        Image.fromarray(fake_scan(rng, size, k % 4)).save(img)
        blobs.append(img.read_bytes())
    names = []
    for i in range(n):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        f = sub / f"s{i:06d}.png"
        f.write_bytes(blobs[i % len(blobs)])
        names.append(str(f))
    lst = folder / "files.txt"
    lst.write_text("\n".join(names) + "\n")
    return lst


def driver_memory(predictor, weights: str, n_files: int = 20_000, batch_size: int = 16, cpus: int | None = None,
                  samples: int = 50, size: int = 64) -> dict:
    """RSS of this (driver) process while the Ray engine reviews ``n_files`` generated slices from a list file,
    with the CSV written as the CLI does: sampled ``samples`` times; the slope (MB per 1,000 rows, least squares
    after the first 10 % of rows, when the actors and Ray's buffers have started) says whether it is flat."""
    import psutil

    from core.review.folder import run_batch
    from core.review.ray_engine import RayEngine, import_ray

    ray = import_ray()
    proc = psutil.Process(os.getpid())
    out: dict = {"files": n_files, "batch": batch_size, "image_px": size}
    with tempfile.TemporaryDirectory(prefix="bench-ray-mem-") as tmp:
        t0 = time.perf_counter()
        lst = generate_slices(Path(tmp) / "slices", n_files, size)
        out["generate_seconds"] = round(time.perf_counter() - t0, 1)
        started = _start_ray(cpus)
        try:
            engine = RayEngine(weights)
            out["ray_actors"] = engine._actors()
            every = max(1, n_files // samples)
            points: list[tuple[int, float]] = [(0, proc.memory_info().rss / 2**20)]
            n, errors = 0, 0
            t0 = time.perf_counter()
            for row in run_batch(predictor, lst, Path(tmp) / "rows.csv", chunk_size=batch_size, engine=engine):
                n += 1
                errors += bool(row["error"])
                if n % every == 0:
                    points.append((n, proc.memory_info().rss / 2**20))
            out["seconds"] = round(time.perf_counter() - t0, 1)
        finally:
            if started:
                ray.shutdown()
    out.update(rows=n, error_rows=errors, images_per_s=round(n / out["seconds"], 1))
    after = [p for p in points if p[0] >= n_files // 10]
    half = [p for p in points if p[0] >= n_files // 2]
    out["rss_mb"] = {"before": round(points[0][1], 1), "at_10pct": round(after[0][1], 1) if after else None,
                     "at_50pct": round(half[0][1], 1) if half else None, "end": round(points[-1][1], 1),
                     "peak": round(max(p[1] for p in points), 1)}
    out["slope_mb_per_1000_files"] = round(_slope_mb_per_1000(after), 3)
    out["slope_mb_per_1000_files_second_half"] = round(_slope_mb_per_1000(half), 3)
    out["rss_samples"] = [(k, round(v, 1)) for k, v in points]
    return out


def ray_vs_local(predictor, weights: str, files: list[Path] | None, batch_size: int = 16,
            local_workers: tuple[int, ...] = (0, 2), cpus: int | None = None, rounds: int = 2,
            memory_files: int = 20_000) -> dict:
    """Both parts on one local Ray: the engine comparison over ``files`` (skipped, with the reason, when there
    are none) and the driver's memory over ``memory_files`` generated slices (0: skipped)."""
    from core.review.ray_engine import import_ray

    out: dict = {}
    started = _start_ray(cpus)
    try:
        if files:
            out["engines"] = compare_engines(predictor, weights, files, batch_size, local_workers, cpus, rounds)
        else:
            out["engines"] = {"skipped": "no Testing images found (set --data or MRI_DATA_ROOT)"}
        if memory_files:
            out["driver_memory"] = driver_memory(predictor, weights, memory_files, batch_size, cpus)
    finally:
        if started:
            import_ray().shutdown()
    return out


def wanted(ctx: BenchContext) -> bool:
    return ctx.cfg["ray"] and ctx.weights != "random" and KEY not in ctx.skip and ctx.device.type == "cpu"


def measure(ctx: BenchContext) -> dict:
    return ray_vs_local(ctx.ours, ctx.weights, ctx.files, 16, (0, ctx.cores), ctx.cores,
                        memory_files=ctx.cfg["ray_memory_files"])


def render(r: dict) -> str:
    return ""  # the README's "Scaling out" section quotes its figures


def main(argv: list[str] | None = None) -> int:
    from bench.common import DEFAULT_DATA

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of images (walked recursively)")
    p.add_argument("--images", type=int, default=0, help="first N files (0: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--local-workers", default="0,2", help="decode-process counts of the local engine to run")
    p.add_argument("--rounds", type=int, default=2, help="each engine runs this many times, in turn")
    p.add_argument("--memory-files", type=int, default=20_000, help="generated files of the memory part (0: skip)")
    p.add_argument("--out", default=None, help="also write the results here (JSON)")
    args = p.parse_args(argv)

    import torch

    from core.model.checkpoint import load_bundle
    from core.io.files import iter_image_files
    from core.inference.predictor import Predictor

    data = Path(args.data)
    files = sorted(iter_image_files(data)) if data.is_dir() else []
    files = files[:args.images] if args.images else files
    predictor = Predictor(load_bundle(args.weights), torch.device("cpu"), batch_size=args.batch_size)
    workers = tuple(int(w) for w in args.local_workers.split(","))
    r = ray_vs_local(predictor, args.weights, files, args.batch_size, workers, rounds=args.rounds,
                memory_files=args.memory_files)
    r["load_average_after"] = list(os.getloadavg())  # other work on the machine: the figures are only as clean
    r["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r["command"] = " ".join(["python -m bench.sections.ray", *(sys.argv[1:] if argv is None else argv)])
    text = json.dumps(r, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
