"""Benchmark: picking another shipped model in the dashboard with a scan on screen.

Issue 19 asks that switching models takes ≤ 2 s after each model's first load, with each model cached once per
process. This runs the dashboard (``streamlit_app.py``, Single scan page) in Streamlit's AppTest, the page script
as the server runs it, minus the browser. It uploads one slice (a Kaggle Testing JPEG when ``../shared`` is there,
else a synthetic scan) and then moves the sidebar's model picker round every bundle of the registry
(``weights/`` and ``weights/<name>/``, ``core.model.registry``) several times. The first visit of a model loads it
(weights, SHA-256 check, warm-up prediction and heatmap). Every later switch finds it in the process's cache. Two
kinds of later switch are timed, alternating rounds: the scan new to that model (the session's analyses are
forgotten first, so the page predicts, computes the heatmap and redraws), and the scan already analysed by that
model in this session (the page redraws from the session's analysis).

    python -m bench.model_switch [--weights weights] [--rounds 5]

Writes ``bench/results/model-switch-<machine>-<date>.json``; the README's ``bench`` block shows a line from the
newest one (``python -m tools.readme_sections``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

from bench.common import REPO, ForeignLoad, default_weights, log, machine_info, machine_slug

TARGET_SECONDS = 2.0
KAGGLE_SLICE = REPO.parent / "shared" / "data" / "brain-tumor-mri" / "Testing" / "glioma"


def scan_upload() -> tuple[str, bytes]:
    """(name, bytes) of the slice the page shows: a real Testing JPEG when the shared data is there."""
    real = sorted(KAGGLE_SLICE.glob("*.jpg"))[:1] if KAGGLE_SLICE.is_dir() else []
    if real:
        return real[0].name, real[0].read_bytes()
    import io

    import numpy as np
    from PIL import Image

    from core.data.synthetic import fake_scan

    buf = io.BytesIO()
    Image.fromarray(fake_scan(np.random.default_rng(0), size=256, label=1)).save(buf, format="PNG")
    return "synthetic.png", buf.getvalue()


def _timed_run(at) -> float:
    t0 = time.perf_counter()
    at.run()
    if at.exception:
        raise RuntimeError(f"the page raised: {at.exception}")
    return time.perf_counter() - t0


def switch_times(weights: Path, rounds: int) -> dict:
    """Seconds of each model's first load and of every later switch, with a scan uploaded (module docstring)."""
    from streamlit.testing.v1 import AppTest

    data = tempfile.mkdtemp(prefix="bench-model-switch-")
    os.environ.update({"MRI_WEIGHTS_DIR": str(weights), "MRI_APP_DATA": data, "MRI_ALLOWED_ROOTS": data})
    at = AppTest.from_file(str(REPO / "streamlit_app.py"), default_timeout=600)
    first_page = _timed_run(at)
    from core.model.registry import list_models

    entries = {str(e.path): e for e in list_models(weights)}
    models = list(entries)
    if len(models) < 2:
        raise RuntimeError(f"{weights} holds one model; nothing to switch between")
    name, payload = scan_upload()
    at.file_uploader(key="single_upload").set_value((name, payload, "image/jpeg" if name.endswith(".jpg")
                                                     else "image/png"))
    upload = _timed_run(at)
    first_load: dict[str, float] = {}
    switches: dict[str, list[float]] = {"analysed": [], "new": []}
    for r in range(2 * rounds + 1):
        fresh = r % 2 == 1  # every other round the scan is new to the session (its analyses forgotten)
        for model in models[1:] + models[:1]:
            if fresh:
                at.session_state["single_analyses"] = OrderedDict()
            at.sidebar.selectbox(key="model_pick").set_value(model)
            seconds = _timed_run(at)
            shown = " ".join(str(c.value) for c in at.sidebar.caption)
            if f"{len(entries[model].class_names)} classes." not in shown:  # the page really follows the pick
                raise RuntimeError(f"the sidebar does not show {entries[model].name} after picking it: {shown!r}")
            if r == 0 and model != models[0]:  # the default model was loaded by the first page
                first_load[model] = seconds  # first visit: loaded, checked, warmed up, the scan analysed
            else:
                switches["new" if fresh else "analysed"].append(seconds)
    return {"models": [entries[m].name for m in models], "scan": name, "first_page_s": round(first_page, 3),
            "first_upload_s": round(upload, 3), "first_load_s": {entries[m].name: round(v, 3)
                                                                  for m, v in first_load.items()},
            "switches": {k: len(v) for k, v in switches.items()},
            "switch_median_s": {k: round(statistics.median(v), 3) for k, v in switches.items()},
            "switch_max_s": {k: round(max(v), 3) for k, v in switches.items()}, "target_s": TARGET_SECONDS,
            "met": max(max(v) for v in switches.values()) <= TARGET_SECONDS}


def measure_and_save(weights: Path, rounds: int, threads: int) -> tuple[dict, Path]:
    torch.set_num_threads(threads)
    info = machine_info(torch.device("cpu"))
    with ForeignLoad() as load:
        result = switch_times(weights, rounds)
    result.update({"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "cpu": info["cpu"],
                   "cores": info["cores"], "threads": threads, "foreign_load": load.result,
                   "command": "python -m bench.model_switch " + " ".join(sys.argv[1:])})
    out = REPO / "bench" / "results" / f"model-switch-{machine_slug(info)}-{dt.date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result, out


def readme_line(path: Path) -> str:
    """The README's line for a saved result (``tools.readme_sections`` draws it from the newest file)."""
    r = json.loads(path.read_text())
    share = (r.get("foreign_load") or {}).get("foreign_share_of_machine")
    busy = f"; other programs used {share:.0%} of the machine meanwhile" if share is not None else ""
    loads = ", ".join(f"{m} {s:.1f} s" for m, s in r["first_load_s"].items())
    med, top = r["switch_median_s"], r["switch_max_s"]
    return (f"**Switching models** (`bench/results/{path.name}`, `python -m bench.model_switch`, "
            f"{r['cores']} cores{busy}): the Single scan page with a scan on screen, the sidebar's picker moved "
            f"round {len(r['models'])} shipped models (the first page, which loads the default model: "
            f"{r['first_page_s']:.1f} s; the first visit of each other model, which loads it and analyses the scan: "
            f"{loads}). Later switches: median **{med['new']:.2f} s** (slowest {top['new']:.2f} s) when the scan "
            f"is new to that model (prediction, heatmap, page), {med['analysed']:.2f} s (slowest "
            f"{top['analysed']:.2f} s) when this session already analysed it; {sum(r['switches'].values())} "
            f"switches, target ≤ {r['target_s']:g} s: {'met' if r['met'] else '**not met**'}.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(default_weights()), help="the registry folder (default: weights/)")
    p.add_argument("--rounds", type=int, default=5, help="times round every model after the first loads")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = p.parse_args(argv)
    result, out = measure_and_save(Path(args.weights), args.rounds, args.threads)
    log(f"wrote {out}")
    print(json.dumps(result, indent=2))
    print(readme_line(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
