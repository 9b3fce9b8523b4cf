"""Bench section ``input_paths`` (issue 22): each input path side by side, in one run.

Paths: the full one (the card's head search, or the one its fast search stands in for; full decode), the CPU
reduced decode (``head_search="gamma_hist"``:
a JPEG decoded at the size the crop needs, one-histogram head search, 8-bit crop) and, on a CUDA device, the
tensor path of ``core.gpu_preprocess`` (``decode_jpeg`` on the GPU + head search and crop as tensor ops, files
streamed by reader threads into pinned buffers); without a GPU that row says so.

Per path: decode and crop ms per image (one core, in this process, file bytes already read; GPU: per image of a
256-batch, synchronised), forward ms per image (forward only, same batch), end-to-end images/s through the
pipeline (read + decode + crop + forward; CPU: ``core.inference.pipeline.stream`` with every core decoding) and its
fraction of the forward-only rate. Plus the JPEG decoders compared for the reduced decode.

    python -m bench.sections.input_paths [--device auto] [--data DIR] [--images N] [--merge RESULTS_JSON]

``--merge`` adds the section to a ``python -m bench`` results file and re-renders ``bench/README_section.md`` from
it (the README's bench block: ``python -m tools.readme_sections``); ``python -m bench`` runs it as well.
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.common import DEFAULT_DATA, REPO, ForeignLoad, Timer, cores, interleave_classes, list_images
from bench.context import BenchContext
from bench.measure import e2e, forward_stats

KEY = "input_paths"


def _ms(seconds: float, n: int) -> float:
    return round(1000 * seconds / max(n, 1), 3)


def stage_ms(spec, datas: list[bytes]) -> dict:
    """Decode and crop (preprocess) ms per image of one path, one core, bytes already in memory."""
    from core.preprocess import decode_for, preprocess_decoded

    for d in datas[:5]:
        preprocess_decoded(decode_for(d, "w.jpg", spec), spec)
    dec = pre = 0.0
    for d in datas:
        t0 = time.perf_counter()
        x = decode_for(d, "b.jpg", spec)
        t1 = time.perf_counter()
        preprocess_decoded(x, spec)
        dec, pre = dec + t1 - t0, pre + time.perf_counter() - t1
    return {"decode_ms": _ms(dec, len(datas)), "crop_ms": _ms(pre, len(datas)),
            "decode_plus_crop_ms": _ms(dec + pre, len(datas))}


def decoder_choices(spec, datas: list[bytes]) -> dict:
    """ms per image of the candidate reduced JPEG decoders (grey out), and of the current full decode."""
    import cv2
    from PIL import Image

    from core.io.decode import decode_bytes
    from core.io.raster import decode_jpeg_reduced, reduction_factor
    from core.io.types import DEFAULT_LIMITS
    from core.preprocess import _needed_side

    need = _needed_side(spec)
    flags = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
             8: cv2.IMREAD_REDUCED_GRAYSCALE_8}

    def opencv(d: bytes):
        w, h = Image.open(io.BytesIO(d)).size  # the header, for the same scale choice
        return cv2.imdecode(np.frombuffer(d, np.uint8), flags[reduction_factor(w, h, need)])

    cands = {"Pillow draft, luma + chroma planes (used: the colour gate needs chroma)":
             lambda d: decode_jpeg_reduced(d, "b.jpg", DEFAULT_LIMITS, need),
             "OpenCV IMREAD_REDUCED_GRAYSCALE_n (luma only)": opencv,
             "full decode to float32 (current path)": lambda d: decode_bytes(d, "b.jpg")}
    out = {}
    for name, fn in cands.items():
        for d in datas[:5]:
            fn(d)
        t0 = time.perf_counter()
        for d in datas:
            fn(d)
        out[name] = _ms(time.perf_counter() - t0, len(datas))
    return out


def _gpu_row(bundle, spec, files: list[Path], device: torch.device, bs: int) -> dict:
    """The tensor path on a CUDA device: stage split on batches in memory, then streamed end to end."""
    from core.gpu_preprocess import decode_batch, preprocess_batch, stream_batches
    from core.inference.predictor import Predictor

    pred = Predictor(replace(bundle, card=replace(bundle.card, input_spec=spec)), device)
    datas = [torch.frombuffer(bytearray(Path(f).read_bytes()), dtype=torch.uint8).pin_memory() for f in files[:bs]]
    decode_batch(datas[:8], device)
    with Timer(device) as td:
        greys = [g for g, _, err in decode_batch(datas, device) if not err]
    with Timer(device) as tc:
        tb = preprocess_batch(greys, spec)
    x = pred.standardise(tb.images01)
    pred.logits_and_scores(x)
    reps = 10
    with Timer(device) as tf:
        for _ in range(reps):
            pred.logits_and_scores(x)
    fwd_ips = reps * len(x) / tf.seconds
    n = 0
    with Timer(device) as te:
        for _, batch in stream_batches(files, spec, device, batch_size=bs, readers=max(4, cores())):
            if batch.images01.shape[0]:
                pred.logits_and_scores(pred.standardise(batch.images01))
            n += len(batch.errors)
    e2e = n / te.seconds
    return {"path": "GPU decode + GPU crop (tensor path)", "head_search": spec.head_search, "batch": bs,
            "decode_ms": _ms(td.seconds, len(datas)), "crop_ms": _ms(tc.seconds, len(greys)),
            "forward_ms": round(1000 / fwd_ips, 4), "forward_images_per_s": round(fwd_ips, 1),
            "end_to_end_images_per_s": round(e2e, 1), "images": n,
            "fraction_of_forward": round(e2e / fwd_ips, 3), "readers": max(4, cores())}


def input_paths(bundle, device: torch.device, files: list[Path], bs: int = 64, stage_images: int = 200,
                e2e_images: int = 384) -> dict:
    """The section's dict: ``rows`` (one per path), ``decoders``, and what was measured on what."""
    from core.inference.predictor import Predictor

    from core.preprocess import full_path_spec

    full, fast = full_path_spec(bundle.spec), replace(bundle.spec, head_search="gamma_hist")
    own = " (the model's)"
    datas = [Path(f).read_bytes() for f in files[:stage_images]]
    n = cores()
    rows, fwd = [], None
    for label, spec in ((f"full CPU path ({full.head_search}, full decode)" + own * (full == bundle.spec), full),
                        ("CPU reduced decode (gamma_hist)" + own * (fast == bundle.spec), fast)):
        pred = Predictor(replace(bundle, card=replace(bundle.card, input_spec=spec)), device)
        fwd = fwd or forward_stats(pred, device, spec, bs, 5)  # the same network either way: measured once
        row = {"path": label, "head_search": spec.head_search, "batch": bs, **stage_ms(spec, datas)}
        row["forward_ms"] = round(1000 / fwd["images_per_s"], 4)
        e = e2e(pred, files[:e2e_images], bs, n, n)
        row.update({"end_to_end_images_per_s": e["images_per_s"], "images": e["images"], "workers": n,
                    "forward_images_per_s": fwd["images_per_s"],
                    "fraction_of_forward": round(e["images_per_s"] / fwd["images_per_s"], 3),
                    "decode_plus_crop_ms_per_core": row["decode_plus_crop_ms"]})
        rows.append(row)
    if device.type == "cuda":
        rows.append(_gpu_row(bundle, fast, files, device, 256))
    else:
        rows.append({"path": "GPU decode + GPU crop (tensor path)", "note": "no GPU on this machine: not measured "
                     "(the same tensor ops run on CPU in tests/test_input_paths.py)"})
    return {"rows": rows, "decoders_ms_per_image": decoder_choices(fast, datas), "stage_images": len(datas),
            "e2e_images": min(e2e_images, len(files)), "device": str(device), "cores": n}


def measure(ctx: BenchContext) -> dict:
    last = ctx.cfg["sizes"][-1]
    return input_paths(ctx.bundle, ctx.device, ctx.files, 64 if not ctx.quick else last, 200 if not ctx.quick else 8,
                       384 if not ctx.quick else last)


def render(r: dict) -> str:
    """The input-path table and the reduced JPEG decoders compared, from the run's ``input_paths`` entry."""
    sec = r.get(KEY)
    if not isinstance(sec, dict) or not sec.get("rows"):
        return ""
    head = ["path", "decode ms", "crop ms", "decode + crop ms (1 core)", "forward ms", "end to end img/s",
            "of forward-only"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in sec["rows"]:
        if "note" in r:
            lines.append(f"| {r['path']} | {r['note']} |" + " |" * (len(head) - 2))
            continue
        lines.append(f"| {r['path']} | {r['decode_ms']} | {r['crop_ms']} | {r.get('decode_plus_crop_ms', '-')} | "
                     f"{r['forward_ms']:.3g} | {r['end_to_end_images_per_s']} | {100 * r['fraction_of_forward']:.0f}% |")
    dec = "; ".join(f"{k}: {v} ms" for k, v in sec.get("decoders_ms_per_image", {}).items())
    fast = next((r for r in sec["rows"] if r.get("head_search") == "gamma_hist" and "decode_plus_crop_ms" in r), None)
    if fast is not None:  # the CPU target
        verdict = "met" if fast["decode_plus_crop_ms"] <= 3.0 else "MISSED"
        dec += (f". Target decode + crop <= 3 ms per image per core (CPU reduced decode): "
                f"{fast['decode_plus_crop_ms']} ms, {verdict}")
    when = f" Measured {sec['date']} by `{sec['command']}`" if sec.get("date") else ""
    load = sec.get("other_programs", {}).get("foreign_share_of_machine")
    busy = f"; other programs used {100 * load:.0f}% of the machine meanwhile" if load is not None else ""
    return (f"**Input paths** (issue 22; batch {sec['rows'][0].get('batch')}, {sec['e2e_images']} images end to "
            f"end with {sec['cores']} decode workers, stage split on {sec['stage_images']} images in one "
            f"process).{when}{busy}.\n\n" + "\n".join(lines) + f"\n\nReduced JPEG decoders, ms per image: {dec}.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda")
    p.add_argument("--weights", default=str(REPO / "weights"), help="model folder")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of JPEGs (Testing)")
    p.add_argument("--images", type=int, default=384, help="images per end-to-end run")
    p.add_argument("--out", default=None, help="write the section's JSON here")
    p.add_argument("--merge", default=None, metavar="RESULTS_JSON",
                   help="add the section to this bench results file and re-render bench/README_section.md")
    args = p.parse_args(argv)

    from bench.common import load_model
    from core.model.device import select_device

    device = select_device(args.device)
    bundle, _ = load_model(args.weights)
    files = interleave_classes(list_images(Path(args.data)))
    if not files:
        print(f"error: no images under {args.data}", file=sys.stderr)
        return 2
    with ForeignLoad() as load:
        sec = input_paths(bundle, device, files, e2e_images=args.images)
    sec["other_programs"] = load.result
    sec["date"] = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    sec["command"] = " ".join(["python -m bench.sections.input_paths"] + (sys.argv[1:] if argv is None else argv))
    print(json.dumps(sec, indent=2, default=str))
    print(render({KEY: sec}))
    if args.out:
        Path(args.out).write_text(json.dumps(sec, indent=2, default=str))
    if args.merge:
        from bench.report import readme_section, render_results

        path = Path(args.merge)
        r = json.loads(path.read_text())
        r[KEY] = sec
        path.write_text(json.dumps(r, indent=2, default=str))
        (REPO / "bench" / "README_section.md").write_text(readme_section(r, render_results(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
