"""Bench section ``ray``: the batch review on the local engine against the Ray Data engine, in one run.

Both engines run ``core.batch.run_batch`` (CSV writer, no audit) over the same files, in turn, on a local Ray
started here with every core. The Ray figure counts its actors' start-up (model load)
but not ``ray.init`` (a cluster is started once and then serves many runs). Rows are compared: same files,
classes and errors, and the largest probability difference. Standalone:

    python -m bench.ray_section --weights weights --data ../shared/data/brain-tumor-mri/Testing --images 1311
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def compare_engines(predictor, weights: str, files: list[Path], batch_size: int = 16,
                    local_workers: tuple[int, ...] = (0, 2), cpus: int | None = None, rounds: int = 2) -> dict:
    """Images/s over ``files`` (written as a list file) of the local engine (in-process, and with each count
    of decode processes in ``local_workers``) and of the Ray engine, run in turn ``rounds`` times (the median
    is reported, so a burst of other load hits every engine alike); the ratio of Ray to the best local
    figure and to the in-process one; and whether the rows are identical (probabilities within 1e-5)."""
    from statistics import median

    from core.batch import local_engine, run_batch
    from core.ray_engine import REPO, RayEngine, import_ray

    ray = import_ray()
    out: dict = {"images": len(files), "batch": batch_size, "rounds": rounds}
    runs: dict[str, list[float]] = {}
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
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
                    n = sum(1 for _ in run_batch(predictor, lst, csv_path, chunk_size=batch_size, engine=engine))
                    runs.setdefault(name, []).append(n / (time.perf_counter() - t0))
            ref = _rows(Path(tmp) / "local, in-process.csv") if 0 in local_workers else None
            b = _rows(Path(tmp) / "ray.csv")
    finally:
        if started:
            ray.shutdown()
    out["images_per_s"] = {k: round(median(v), 1) for k, v in runs.items()}
    out["images_per_s_each_round"] = {k: [round(x, 1) for x in v] for k, v in runs.items()}
    best_local = max(v for k, v in out["images_per_s"].items() if k != "ray")
    out["ratio_ray_to_best_local"] = round(out["images_per_s"]["ray"] / best_local, 3)
    if ref is not None:
        out["ratio_ray_to_in_process"] = round(out["images_per_s"]["ray"] / out["images_per_s"]["local, in-process"], 3)
        probs = [k for k in (ref[0] if ref else {}) if k.startswith("p_")] + ["confidence"]
        diff = max((abs(float(x[k]) - float(y[k])) for x, y in zip(ref, b) for k in probs if x[k] != ""),
                   default=0.0)
        same = (len(ref) == len(b) and [x["path"] for x in ref] == [y["path"] for y in b]
                and all(x["predicted"] == y["predicted"] and x["error"] == y["error"] for x, y in zip(ref, b)))
        out.update(identical_rows=bool(same and diff <= 1e-5), max_probability_difference=diff)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default="weights")
    p.add_argument("--data", required=True, help="folder of images (walked recursively)")
    p.add_argument("--images", type=int, default=0, help="first N files (0: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--local-workers", default="0,2", help="decode-process counts of the local engine to run")
    p.add_argument("--rounds", type=int, default=2, help="each engine runs this many times, in turn")
    args = p.parse_args(argv)

    import torch

    from core.checkpoint import load_bundle
    from core.files import iter_image_files
    from core.predictor import Predictor

    files = sorted(iter_image_files(Path(args.data)))
    files = files[:args.images] if args.images else files
    predictor = Predictor(load_bundle(args.weights), torch.device("cpu"), batch_size=args.batch_size)
    workers = tuple(int(w) for w in args.local_workers.split(","))
    r = compare_engines(predictor, args.weights, files, args.batch_size, workers, rounds=args.rounds)
    print(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
