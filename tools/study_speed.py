"""Time the study review on this machine: a whole series (read, every slice predicted, verdict, CAM of the shown
slice) and the heatmap of another slice. Prints JSON; not part of ``bench`` (kept separate on purpose).

    python -m tools.study_speed [--volume ../shared/data/volumes/brats2013/brats2013_pat0004_1/flair.nii.gz]

Without the volume a synthetic 155-slice 240x240 volume is used.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
DEFAULT = REPO.parent / "shared" / "data" / "volumes" / "brats2013" / "brats2013_pat0004_1" / "flair.nii.gz"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--volume", default=str(DEFAULT))
    ap.add_argument("--weights", default=str(REPO / "weights"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    from core.model.checkpoint import load_bundle
    from core.model.device import select_device
    from core.inference.predictor import Predictor
    from core.io.read_series import read_series
    from core.inference.study import load_rule, review_series
    from core.explain.cam import Explainer
    from core.explain.study_cams import slice_cam

    torch.set_num_threads(args.threads)
    if Path(args.volume).is_file():
        name, data = Path(args.volume).name, Path(args.volume).read_bytes()
    else:
        from tests.study_support import nifti_bytes, synthetic_brain

        name, data = "synthetic.nii.gz", nifti_bytes(synthetic_brain((240, 240, 155)), np.eye(4))
    predictor = Predictor(load_bundle(args.weights), select_device("cpu"))
    method = predictor.bundle.card.explanation.method or "gradcam"
    explainer = Explainer(predictor)
    predictor.warmup()  # what the app does once when it loads the model
    explainer.warmup(method)
    rule = load_rule()
    runs = []
    for i in range(args.repeats):
        t0 = time.perf_counter()
        series = read_series([(name, data)])[0].series
        t1 = time.perf_counter()
        review = review_series(predictor, series, rule)
        t2 = time.perf_counter()
        shown = review.top_slices[0] if review.top_slices else review.n_slices // 2
        slice_cam(explainer, series, review, shown, method)
        t3 = time.perf_counter()
        runs.append({"read_s": t1 - t0, "predict_and_verdict_s": t2 - t1, "cam_shown_s": t3 - t2, "total_s": t3 - t0})
    cams = []
    for k in range(40, 120, 8):  # other slices, each heatmap computed when shown
        t = time.perf_counter()
        slice_cam(explainer, series, review, k, method)
        cams.append(time.perf_counter() - t)
    out = {"volume": name, "shape_xyz": list(series.volume.shape), "slices": review.n_slices,
           "threads": args.threads, "precision": predictor.describe().get("precision"), "tta": predictor.tta,
           "cam_method": method, "load_average": os.getloadavg()[0],
           "first_series_after_model_load": runs[0], "later_series": runs[1:],
           "other_slice_cam_ms": {"p50": 1000 * statistics.median(cams), "max": 1000 * max(cams), "n": len(cams)},
           "verdict": review.verdict_text()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
