"""Section ``accuracy``: Testing accuracy of every backend of the ``backends`` section, from one decode of the
real Testing files (labels: folder names), and its agreement with fp32. Needs trained weights and real data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.common import interleave_classes, list_images
from bench.context import BenchContext

KEY = "accuracy"


def wanted(ctx: BenchContext) -> bool:
    return (ctx.cfg["accuracy"] and ctx.real_data and ctx.weights != "random" and KEY not in ctx.skip
            and bool(ctx.backend_objects))


def _testing_tensor(bundle, files: list[Path], workers: int) -> tuple[torch.Tensor, np.ndarray]:
    """(model input, labels) of every readable file."""
    from core.inference.pipeline import iter_batches
    from core.preprocess import to_model_tensor

    names = bundle.class_names
    tensors, labels = [], []
    for b in iter_batches(files, bundle.spec, batch_size=64, num_workers=workers, hash_files=False):
        for r in b.rows:
            if r.item is not None:
                labels.append(names.index(Path(r.path).parent.name))
        if b.images01 is not None:
            tensors.append(b.images01.clone())
    return to_model_tensor(torch.cat(tensors), bundle.spec), np.asarray(labels)


def measure(ctx: BenchContext) -> dict:
    bundle = ctx.bundle
    x, y = _testing_tensor(bundle, interleave_classes(list_images(ctx.data)), ctx.cores)
    out, ref = {}, None
    thr = bundle.ood.threshold if bundle.ood is not None else float("inf")
    for name, (b, _) in ctx.backend_objects.items():
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


def render(r: dict) -> str:
    return ""  # its figures are columns of the backends table
