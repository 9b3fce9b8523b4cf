"""Section ``backends``: forward-pass throughput and batch-1 latency of each inference path of our model (fp32
NCHW / channels_last, bf16, int8, torch.compile, ONNX Runtime; on a GPU: fp32, AMP, AMP + compile), one view per
image, with VGG16 as the baseline. The backend objects stay on the context for ``accuracy`` and ``gpu``."""
from __future__ import annotations

import copy
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.common import fmt_table
from bench.context import BenchContext
from bench.measure import forward_stats

KEY = "backends"


class OrtBackend:
    """ONNX Runtime session over the same (logits, features) graph; CPU only."""

    def __init__(self, bundle, threads: int):
        import onnxruntime as ort

        from core.model.features import FeaturesAndLogits

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


class PlainBackend:
    """Seed-style: fp32, NCHW, no tricks."""

    def __init__(self, model, ood):
        from core.model.features import FeaturesAndLogits

        self.net, self.ood = FeaturesAndLogits(model).eval(), ood

    def logits_and_scores(self, b):
        with torch.inference_mode():
            lg, f = self.net(b.contiguous())
            return lg.numpy(), (self.ood.score(f).numpy() if self.ood is not None else np.zeros(len(lg)))


def _compiled(make, bundle) -> tuple:
    """(predictor, note) of a torch.compile predictor after its first call, or (None, why it is unavailable)."""
    try:
        t0 = time.perf_counter()
        p = make()
        p.logits_and_scores(torch.zeros(2, bundle.spec.channels, bundle.spec.image_size, bundle.spec.image_size))
        return p, f"first call incl. compilation {time.perf_counter() - t0:.0f} s"
    except Exception as exc:  # noqa: BLE001 - no compiler etc.
        return None, f"unavailable: {type(exc).__name__}: {exc}"[:200]


def _cpu_backends(ctx: BenchContext, Predictor) -> dict:
    bundle, device, cfg = ctx.bundle, ctx.device, ctx.cfg
    out: dict = {"fp32 channels_last": (Predictor(bundle, device, "fp32"), "")}
    if cfg["all_backends"]:
        out["fp32 NCHW eager"] = (PlainBackend(copy.deepcopy(bundle.model), bundle.ood), "no channels_last")
    out["bf16 autocast"] = (Predictor(bundle, device, "bf16"), "oneDNN bf16, channels_last")
    if ctx.calibration is not None:
        t0 = time.perf_counter()
        p = Predictor(bundle, device, "int8", int8_calibration=ctx.calibration)
        out["int8 FX static (x86)"] = (p, f"opt-in; quantise+convert at load {time.perf_counter() - t0:.1f} s")
    if cfg["compile"]:
        out["fp32 torch.compile"] = _compiled(lambda: Predictor(bundle, device, "fp32", compile=True), bundle)
    try:
        if cfg["all_backends"]:
            out["onnxruntime fp32"] = (OrtBackend(bundle, ctx.cores), "ONNX opset 17, CPUExecutionProvider")
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001
        out["onnxruntime fp32"] = (None, f"unavailable: {type(exc).__name__}: {exc}"[:200])
    return out


def _gpu_backends(ctx: BenchContext, Predictor) -> dict:
    bundle, device = ctx.bundle, ctx.device
    out: dict = {"fp32": (Predictor(bundle, device, "fp32"), "")}
    amp = Predictor(bundle, device, "amp")
    out[f"amp {amp.precision} channels_last"] = (amp, "")
    if ctx.cfg["compile"]:
        out[f"amp {amp.precision} + torch.compile"] = _compiled(
            lambda: Predictor(bundle, device, "amp", compile=True), bundle)
    return out


def build_backends(ctx: BenchContext) -> dict:
    """name -> (object with logits_and_scores, note).

    Every backend runs one view per image (no test-time augmentation, whatever the card
    says), so the plain, ONNX and predictor backends are compared like with like; the
    end-to-end sections measure the predictor as shipped.
    """
    from core.inference.predictor import Predictor as ShippedPredictor

    Predictor = partial(ShippedPredictor, tta="none")
    return _cpu_backends(ctx, Predictor) if ctx.device.type == "cpu" else _gpu_backends(ctx, Predictor)


def measure(ctx: BenchContext) -> dict:
    device, cfg = ctx.device, ctx.cfg
    bs = 256 if device.type == "cuda" else cfg["backends_bs"]
    rows = {}
    backends = build_backends(ctx)
    for name, (b, note) in backends.items():
        if b is None:
            rows[name] = {"error": note}
            continue
        try:
            rows[name] = forward_stats(b, device, ctx.bundle.spec, bs, cfg["fwd_reps"])
            rows[name]["note"] = note
            if hasattr(b, "describe"):
                rows[name]["predictor"] = b.describe()
        except Exception as exc:  # noqa: BLE001
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    vgg_stats = forward_stats(ctx.vgg, device, ctx.bundle.spec, min(bs, 32), max(1, cfg["fwd_reps"] // 2))
    vgg_stats["note"] = "torchvision VGG16, random weights, fp32 channels_last"
    rows["VGG16 baseline"] = vgg_stats
    ctx.backend_objects = backends
    return {"rows": rows}


def render(r: dict) -> str:
    """The forward-pass table, with each backend's Testing accuracy from the ``accuracy`` section."""
    b = r.get("backends", {}).get("rows", {})
    if not b:
        return ""
    acc = r.get("accuracy", {}).get("rows", {})
    rows = []
    for name, v in b.items():
        if "error" in v:
            rows.append([name, "-", "-", "-", "-", v["error"][:60]])
            continue
        a = acc.get(name, {})
        accs = f"{a['accuracy_pct']} ({a['delta_points_vs_fp32']:+.2f})" if "accuracy_pct" in a else "-"
        ood = str(a["ood_flagged"]) if "ood_flagged" in a else "-"
        rows.append([name, v["images_per_s"], v["batch1_ms"]["p50"], accs, ood, v.get("note", "")])
    return "**Forward pass only**, one view per image (batch {}; batch-1 latency p50):\n\n".format(
        next(iter(v["batch"] for v in b.values() if "batch" in v), "?")) + fmt_table(
        ["backend", "img/s", "batch-1 ms", "Testing acc % (Δ vs fp32)",
         f"OOD flags / {r.get('accuracy', {}).get('images', '-')}", "note"], rows)
