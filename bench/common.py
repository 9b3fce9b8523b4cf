"""Shared pieces of the benchmark: machine facts, models, data, statistics, Markdown tables."""
from __future__ import annotations

import json
import os
import platform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("MRI_DATA_ROOT", REPO.parent / "shared" / "data" / "brain-tumor-mri")) / "Testing"
CLASS_NAMES = ["glioma", "meningioma", "notumor", "pituitary"]
RANDOM_SHA = "random-weights-seed-0"


def log(msg: str) -> None:
    """A progress line on stderr (stdout carries the report)."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return sorted(f for f in flags if f.startswith(("avx512_vnni", "avx512_bf16", "amx", "avx_vnni"))
                              or f in ("avx2", "avx512f"))
    except OSError:
        pass
    return []


def machine_info(device: torch.device) -> dict:
    import cv2
    import PIL

    info = {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "cores": cores(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "numpy": np.__version__, "opencv": cv2.__version__, "pillow": PIL.__version__,
        "torch_threads": torch.get_num_threads(), "device": str(device), "gpu": None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = p.name
        info["gpu_memory_gb"] = round(p.total_memory / 2**30, 1)
        info["cuda"] = torch.version.cuda
    return info


def machine_slug(info: dict) -> str:
    name = info["gpu"] if info.get("gpu") else info["cpu"]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    kind = "gpu" if info.get("gpu") else "cpu"
    return f"{kind}-{slug}-{info['cores']}c"


def percentiles(values: list[float], scale: float = 1000.0) -> dict:
    """p50/p95/mean/min/max of seconds, in milliseconds by default."""
    a = np.asarray(values, float) * scale
    if a.size == 0:
        return {"n": 0}
    return {"n": int(a.size), "p50": round(float(np.percentile(a, 50)), 2), "p95": round(float(np.percentile(a, 95)), 2),
            "mean": round(float(a.mean()), 2), "min": round(float(a.min()), 2), "max": round(float(a.max()), 2)}


def peak_rss_mb() -> dict:
    """Peak resident memory of this process (VmHWM: reset at exec, so a subprocess does not
    inherit its parent's peak as ``ru_maxrss`` does) and the largest finished child (MB)."""
    peak = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    if peak is None:
        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"self_mb": peak, "children_max_mb": round(child_kb / 1024, 1)}


def reset_peak_rss() -> bool:
    """Reset this process's peak-RSS mark (Linux: /proc/self/clear_refs "5"), so :func:`peak_rss_mb` then reads
    the peak since now; False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def rss_now_mb(uss: bool = False) -> dict:
    """Resident memory now: main process, and its worker processes (RSS counts the pages
    they share with the main process after fork; USS only what each holds alone)."""
    import psutil

    me = psutil.Process()
    kids = kids_uss = 0
    for c in me.children(recursive=True):
        try:
            if uss:
                info = c.memory_full_info()
                kids += info.rss
                kids_uss += info.uss
            else:
                kids += c.memory_info().rss
        except psutil.Error:
            pass
    out = {"main_mb": round(rss_mb(), 1), "workers_rss_mb": round(kids / 2**20, 1)}
    if uss:
        out["workers_uss_mb"] = round(kids_uss / 2**20, 1)
    return out


# --------------------------------------------------------------------------- models

def random_bundle(image_size: int = 160, seed: int = 0):
    """A slimresnet bundle with random weights (same architecture and input as the real one)."""
    from core.model.architectures import build_model
    from core.model.card import ModelCard
    from core.model.checkpoint import ModelBundle
    from core.inference.ood import MahalanobisOOD
    from core.preprocess import PreprocessSpec

    torch.manual_seed(seed)
    model = build_model("slimresnet", 1, len(CLASS_NAMES)).eval()
    for m in model.modules():  # undo zero-init so every block computes something
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.0)
    feats = model.head.in_features
    ood = MahalanobisOOD(torch.randn(len(CLASS_NAMES), feats) * 0.1, torch.eye(feats), threshold=float("inf"))
    spec = PreprocessSpec(image_size=image_size, mean=0.26, std=0.24)
    card = ModelCard(name="random-slimresnet", class_names=list(CLASS_NAMES), input_spec=spec)  # temperature 1
    return ModelBundle(model=model, card=card, ood=ood, sha256=RANDOM_SHA)


def real_weights_ready(folder: Path) -> bool:
    card = folder / "model_card.json"
    if not card.is_file():
        return False
    try:
        return "metrics" in json.loads(card.read_text())
    except (OSError, ValueError):
        return False


def default_weights() -> str:
    """The trained model folder ``weights/`` once training has finished, else "random"."""
    return str(REPO / "weights") if real_weights_ready(REPO / "weights") else "random"


def load_model(weights: str) -> tuple[object, str]:
    """(bundle, description): the trained bundle, or random weights for ``weights='random'``."""
    if weights == "random":
        return random_bundle(), "random weights (speed only)"
    from core.model.checkpoint import load_bundle

    b = load_bundle(weights)
    return b, f"trained weights {Path(weights).name}/ (sha256 {b.sha256[:12]})"


class VGGBaseline(nn.Module):
    """torchvision VGG16 (random weights, 4-class head) behind the Classifier interface.

    Grey input is replicated to the 3 channels VGG expects; same input size as ours.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        from torchvision.models import vgg16

        net = vgg16(weights=None, num_classes=num_classes)
        self.features, self.avgpool, self.head = net.features, net.avgpool, net.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def vgg_bundle(spec, class_names: list[str]):
    from core.model.card import ModelCard
    from core.model.checkpoint import ModelBundle

    torch.manual_seed(0)
    card = ModelCard(name="vgg16-baseline", class_names=list(class_names), input_spec=spec)  # temperature 1
    return ModelBundle(model=VGGBaseline(len(class_names)).eval(), card=card, ood=None, sha256="vgg16-random")


# --------------------------------------------------------------------------- data

def make_generated_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` JPEG fake scans under folder/<class>/ (mixed sizes, some RGB), like the real set."""
    from PIL import Image

    from core.data.synthetic import fake_scan

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = i % len(CLASS_NAMES)
        d = folder / CLASS_NAMES[k]
        d.mkdir(parents=True, exist_ok=True)
        size = int(rng.choice([512, 512, 512, 256, 225]))
        img = fake_scan(rng, size, k)
        im = Image.fromarray(img)
        if i % 5 == 0:
            im = im.convert("RGB")
        p = d / f"gen_{i:05d}.jpg"
        im.save(p, quality=90)
        out.append(p)
    return out


def list_images(folder: Path) -> list[Path]:
    from core.io.files import IMAGE_EXTENSIONS

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def interleave_classes(files: list[Path]) -> list[Path]:
    """Round-robin over class folders, so any prefix has every class."""
    groups: dict[str, list[Path]] = {}
    for f in files:
        groups.setdefault(f.parent.name, []).append(f)
    lists = [groups[k] for k in sorted(groups)]
    out = []
    for i in range(max(len(v) for v in lists)):
        out += [v[i] for v in lists if i < len(v)]
    return out


def cycle(files: list[Path], n: int) -> list[Path]:
    return [files[i % len(files)] for i in range(n)]


def run_json(cmd: list[str], timeout: float = 300) -> dict:
    """Run a helper subprocess that prints one JSON object on its last stdout line."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}… failed ({r.returncode}): {r.stderr[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _busy_cpu_s() -> float | None:
    """Machine-wide busy CPU seconds so far (/proc/stat), or None off Linux."""
    try:
        f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
        v = [int(x) for x in f]
        busy = v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)  # user nice system irq softirq steal
        return busy / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_s() -> float:
    a = resource.getrusage(resource.RUSAGE_SELF)
    b = resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


class ForeignLoad:
    """CPU time other programs used while a section ran: busy CPU of the whole machine
    minus this process and its (finished) children. Numbers taken while other programs
    ran are not this code's speed; the report flags them."""

    def __enter__(self):
        self.busy0, self.own0, self.t0 = _busy_cpu_s(), _own_cpu_s(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t0
        busy1 = _busy_cpu_s()
        if self.busy0 is None or busy1 is None:
            self.result = None
        else:
            foreign = max(0.0, (busy1 - self.busy0) - (_own_cpu_s() - self.own0))
            self.result = {"foreign_cpu_s": round(foreign, 1),
                           "foreign_share_of_machine": round(foreign / max(1e-9, self.wall * cores()), 3)}
        return False


class Timer:
    def __init__(self, sync_device: torch.device | None = None):
        self.sync = sync_device is not None and sync_device.type == "cuda"
        self.device = sync_device

    def __enter__(self):
        if self.sync:
            torch.cuda.synchronize(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.sync:
            torch.cuda.synchronize(self.device)
        self.seconds = time.perf_counter() - self.t0
        return False


def fmt_table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table with columns padded to their widest cell."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line, sep] + ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells])
