"""Section ``gpu`` (CUDA only): pure forward against end to end on the GPU for each AMP backend of the
``backends`` section, with and without torch.compile; and the GPU JPEG decode rate alone."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.common import Timer, cores, cycle, fmt_table
from bench.context import BenchContext
from bench.measure import e2e, forward_stats

KEY = "gpu"


def wanted(ctx: BenchContext) -> bool:
    return ctx.device.type == "cuda"


def _nvjpeg_rate(files: list[Path], device: torch.device) -> float | str:
    """Images/s of torchvision's GPU JPEG decode alone, batches of 64 (or why it is unavailable)."""
    try:
        from torchvision.io import decode_jpeg

        datas = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8) for f in files[:256]]
        decode_jpeg(datas[:8], device=device)
        with Timer(device) as t:
            for i in range(0, len(datas), 64):
                decode_jpeg(datas[i:i + 64], device=device)
        return round(len(datas) / t.seconds, 1)
    except Exception as exc:  # noqa: BLE001
        return f"unavailable: {type(exc).__name__}: {exc}"[:200]


def measure(ctx: BenchContext) -> dict:
    out: dict = {"rows": []}
    gpu_files = cycle(ctx.files, ctx.cfg["gpu_images"])
    for name, (p, _) in dict(ctx.backend_objects).items():
        if p is None or not name.startswith("amp"):
            continue
        bs = 256
        fwd = forward_stats(p, ctx.device, ctx.bundle.spec, bs, max(5, ctx.cfg["fwd_reps"] * 4))
        e = e2e(p, gpu_files, bs, cores(), cores(), collect_stages=True)
        out["rows"].append({"backend": name, "forward_images_per_s": fwd["images_per_s"],
                            "end_to_end_images_per_s": e["images_per_s"],
                            "fraction_of_forward": round(e["images_per_s"] / fwd["images_per_s"], 3),
                            "end_to_end": e})
    out["nvjpeg_decode_only_images_per_s"] = _nvjpeg_rate(ctx.files, ctx.device)
    return out


def render(r: dict) -> str:
    g = r.get(KEY, {})
    if not g.get("rows"):
        return ""
    rows = [[x["backend"], x["forward_images_per_s"], x["end_to_end_images_per_s"],
             f"{100 * x['fraction_of_forward']:.0f}%"] for x in g["rows"]]
    return ("**GPU**:\n\n" + fmt_table(["backend", "pure forward img/s", "end-to-end img/s", "fraction"], rows)
            + f"\n\nnvJPEG decode alone: {g.get('nvjpeg_decode_only_images_per_s')} img/s.")
