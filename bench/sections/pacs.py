"""Bench section ``pacs``: a 155-slice series retrieved from a local Orthanc, reviewed and sent back; memory over
20 consecutive studies.

Each study runs the dashboard's path (``core.pacs.workflow``): WADO-RS retrieve to a temporary folder, read as a
series (files deleted), every slice predicted, the verdict, the key slices' heatmaps, the SR and Secondary Captures
built and STOW-RS stored. The studies are distinct (own UIDs), each the same 155-slice volume: a BraTS FLAIR volume
from ``../shared/data/volumes`` when present, else a synthetic head. The process's RSS is read after every study
(after ``gc.collect``): flat means the 20th study costs no more memory than the 5th. Skipped, with the reason,
when Orthanc is not installed. ``python -m bench`` runs it in a full CPU run with trained weights (``--skip pacs``
leaves it out); standalone:

    python -m bench.sections.pacs --weights weights [--studies 20]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.common import REPO, rss_mb
from bench.context import BenchContext

KEY = "pacs"
VOLUME = REPO.parent / "shared" / "data" / "volumes" / "brats2013" / "brats2013_pat0004_1" / "flair.nii.gz"
TARGET_SECONDS = 10.0


def _slices(volume_path: Path, n: int) -> tuple[np.ndarray, str]:
    """(slices, rows, cols) 12-bit values, slice 0 the most inferior, and where they came from."""
    from tests.orthanc_support import demo_volume
    from tests.study_support import display_slices, synthetic_brain

    if volume_path.is_file():
        vol = demo_volume(volume_path)[:n]
        size = f"{vol.shape[0]} slices of {vol.shape[1]}x{vol.shape[2]}"
        return vol, f"{volume_path.name} of {volume_path.parent.name} ({size})"
    vol = display_slices(synthetic_brain((240, 240, n))).astype(np.float32)
    return vol / max(float(vol.max()), 1.0) * 4000.0, f"synthetic head, {n} slices of 240x240"


def pacs_bench(predictor, explainer, studies: int = 20, slices: int = 155, volume_path: Path = VOLUME) -> dict:
    """Seconds per study (retrieve, read, review, heatmaps, build, store) and RSS after each of ``studies``;
    ``explainer``: the ``core.explain.cam.Explainer`` of ``predictor``."""
    from core.pacs import workflow as wf
    from core.pacs.client import PacsConfig
    from core.report.sr import ModelIdentity
    from tests.orthanc_support import OrthancServer, missing_reason, mr_series, to_bytes

    reason = missing_reason()
    if reason:
        return {"skipped": reason}
    volume, source = _slices(Path(volume_path), slices)
    method = predictor.bundle.card.explanation.method or "gradcam"
    predictor.warmup()  # as the dashboard does once when it loads the model
    explainer.warmup(method)
    model = ModelIdentity.from_card(predictor.bundle.card)
    with tempfile.TemporaryDirectory(prefix="bench-pacs-") as tmp:
        server = OrthancServer(Path(tmp) / "orthanc").start()
        try:
            t0 = time.perf_counter()
            uids = []
            with ThreadPoolExecutor(4) as pool:
                for i in range(studies):
                    series = mr_series(patient_id=f"BENCH-{i:03d}", volume=volume, seed=i)
                    list(pool.map(lambda ds: server.upload(to_bytes(ds)), series))
                    uids.append((str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)))
                    del series
            upload_s = time.perf_counter() - t0
            cfg = PacsConfig(url=server.url, user=server.user, password=server.password)
            rows, rss = [], []
            gc.collect()
            rss_start = rss_mb()
            for study_uid, series_uid in uids:
                t = {}
                t0 = time.perf_counter()
                retrieved = wf.retrieve_for_review(cfg, study_uid, series_uid, workdir=tmp)
                t["retrieve_and_read"] = time.perf_counter() - t0
                t1 = time.perf_counter()
                result = wf.review(predictor, retrieved)
                t["review"] = time.perf_counter() - t1
                t1 = time.perf_counter()
                overlays = wf.overlays(explainer, retrieved, result, method)
                t["heatmaps"] = time.perf_counter() - t1
                t1 = time.perf_counter()
                outputs = wf.build_outputs(retrieved, result, model, overlays)
                stored = wf.send(cfg, outputs)
                t["build_and_store"] = time.perf_counter() - t1
                t["total"] = time.perf_counter() - t0
                rows.append({**{k: round(v, 2) for k, v in t.items()}, "slices": result.n_slices,
                             "verdict": result.verdict_text(), "stored": len(stored)})
                del retrieved, result, overlays, outputs, stored
                gc.collect()
                rss.append(round(rss_mb(), 1))
        finally:
            server.stop()
    totals = [r["total"] for r in rows]
    later = rss[min(4, len(rss) - 1):]
    return {
        "source": source, "studies": studies, "slices": rows[0]["slices"] if rows else 0,
        "upload_seconds": round(upload_s, 1), "per_study": rows,
        "seconds_first": totals[0] if totals else None, "seconds_median": float(np.median(totals)) if totals else None,
        "seconds_max": max(totals) if totals else None, "target_seconds": TARGET_SECONDS,
        "met": bool(totals) and float(np.median(totals)) <= TARGET_SECONDS,
        "rss_mb_before": round(rss_start, 1), "rss_mb_after_each": rss,
        # Growth from the 5th study to the last: what a leak per study would show (the first ones fill caches).
        "rss_growth_mb_5th_to_last": round(later[-1] - later[0], 1) if later else None,
        # Other programs share the CPU (bench.run's ForeignLoad measures them when run from there): say how busy.
        "load_average_1_5_15_at_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }


def wanted(ctx: BenchContext) -> bool:
    return ctx.weights != "random" and KEY not in ctx.skip and not ctx.quick and ctx.device.type == "cpu"


def measure(ctx: BenchContext) -> dict:
    return pacs_bench(ctx.ours, ctx.explainer)


def render(r: dict) -> str:
    return ""  # its README line is drawn by tools.readme_sections from the newest bench/results/pacs-*.json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(REPO / "weights"))
    p.add_argument("--studies", type=int, default=20)
    p.add_argument("--slices", type=int, default=155)
    p.add_argument("--volume", default=str(VOLUME))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    import torch

    from core.explain.cam import Explainer
    from core.inference.predictor import Predictor
    from core.model.checkpoint import load_bundle

    torch.set_num_threads(args.threads)
    predictor = Predictor(load_bundle(args.weights), torch.device("cpu"))
    print(json.dumps(pacs_bench(predictor, Explainer(predictor), args.studies, args.slices, Path(args.volume)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
