"""Bench section ``study``: a whole series reviewed, a slice change, and memory over a long series.

* Full review: a synthetic 155-slice 240x240 NIfTI volume (``core.data.synthetic.fake_volume``; no real data needed)
  read, every slice predicted, the series verdict, and the heatmap of the shown slice; after
  ``Predictor.warmup`` as the app does at load. The first series and the median of the later ones.
* Slice change: what the Study page's fragment does on the server when the viewer reports another slice: the
  slice's heatmap (``core.explain.study_cams.SliceCams``) plus encoding it for the browser (overlay, the windowed
  slice, strip chart line). Two cases: the next slice, computed ahead while the reader looked at the current one
  (the page's prefetch), and a jump to a slice far away (computed on demand). And the same in a real browser,
  key press to heatmap on screen (``bench.study_browser``; skipped with the reason without Chromium).
* Memory: RSS of a fresh process while it reviews a 155- and a 500-slice series: the growth over the RSS
  after reading the volume (what predicting adds) must not grow with the number of slices.

    python -m bench.sections.study [--weights weights] [--readme bench/README_section_study.md]

Writes ``bench/results/study-<machine>-<date>.json`` and the README section file (the README's ``bench``
block includes it: ``python -m tools.readme_sections``). ``python -m bench`` runs it too in a full CPU run
(``--skip study`` leaves it out), writing the same README section file.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (REPO, ForeignLoad, cores, default_weights, load_model, machine_info, machine_slug,
                          peak_rss_mb, reset_peak_rss, rss_mb, run_json)
from bench.context import BenchContext
from bench.study_browser import browser_slice_changes

KEY = "study"
README_FILE = REPO / "bench" / "README_section_study.md"
SHAPE = (240, 240, 155)
TARGET_REVIEW_S, TARGET_SLICE_MS = 5.0, 150.0
TARGET_DRIFT_MB = 25.0  # memory flat: what a 500-slice review keeps while it runs (0.22 MB per slice if it kept them)


def volume_bytes(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> bytes:
    """A synthetic head volume with a bright ball, as gzipped NIfTI bytes (1 mm voxels)."""
    import nibabel as nib

    from core.data.synthetic import fake_volume

    vol, _ = fake_volume(np.random.default_rng(seed), shape)
    return gzip.compress(nib.Nifti1Image(vol, np.eye(4)).to_bytes(), compresslevel=1)


def _draw(series, review, k: int, cam, item, state: dict) -> None:
    """What the page's fragment does on the server for a new slice ``k`` (ui.study_viewer), minus sending it: the
    heatmap overlay encoded for the browser's viewer, the windowed slice encoded, the strip chart's line moved."""
    from ui.study_view import heatmap_panel, move_marker, png_uri, strip_chart, windowed_slice

    lo, hi = review.scale
    heatmap_panel(item, cam, "gradcam", 0.45, "jet")
    png_uri(windowed_slice(series, review.plane, k, (lo + hi) / 2, hi - lo))
    state["strip"] = move_marker(state.get("strip") or strip_chart(review, k), k)
    state["strip"].to_json()  # the serialisation st.plotly_chart does


def _full_reviews(predictor, explainer, rule, method: str, repeats: int) -> tuple[list[dict], tuple]:
    """Seconds of each full review (read, predict + verdict, the shown slice's heatmap) of the synthetic volume,
    and the last review's (series, review, shown slice, its SliceCams)."""
    from core.explain.study_cams import SliceCams
    from core.inference.study import review_series
    from core.io.read_series import read_series

    data = volume_bytes()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        series = read_series([("synthetic.nii.gz", data)])[0].series
        t1 = time.perf_counter()
        review = review_series(predictor, series, rule)
        t2 = time.perf_counter()
        shown = review.top_slices[0] if review.top_slices else review.n_slices // 2
        cams = SliceCams(explainer, series, review, method)
        cams.get(shown)
        t3 = time.perf_counter()
        runs.append({"read_s": round(t1 - t0, 3), "predict_and_verdict_s": round(t2 - t1, 3),
                     "cam_shown_s": round(t3 - t2, 3), "total_s": round(t3 - t0, 3)})
    return runs, (series, review, shown, cams)


def _slice_changes(explainer, method: str, shown_state: tuple, steps: int) -> dict:
    """ms per slice change: ``steps`` steps to the next slice (computed ahead) and ``steps`` jumps (on demand)."""
    from core.explain.study_cams import SliceCams

    series, review, shown, cams = shown_state
    state: dict = {}
    _draw(series, review, shown, *cams.get(shown), state)  # the page's figures exist once a series is shown
    ahead, demand = [], []
    k = max(0, min(shown, review.n_slices - steps - 1))
    for _ in range(steps):  # the reader steps on; each neighbour was computed while the previous slice was read
        cams.prefetch(cams.neighbours(k))
        cams.wait()
        k += 1
        t = time.perf_counter()
        _draw(series, review, k, *cams.get(k), state)
        ahead.append(1000 * (time.perf_counter() - t))
    fresh = SliceCams(explainer, series, review, method)
    for j in np.linspace(5, review.n_slices - 5, steps).astype(int):  # jumps: nothing computed ahead
        t = time.perf_counter()
        _draw(series, review, int(j), *fresh.get(int(j)), state)
        demand.append(1000 * (time.perf_counter() - t))
    return {"next_slice_computed_ahead": _stats(ahead), "jump_computed_on_demand": _stats(demand)}


def study_section(predictor, explainer, weights: str, repeats: int = 3, steps: int = 10,
                  memory_slices: tuple[int, ...] = (155, 500), readme: str | Path | None = None,
                  output: str = "", browser_steps: int = 30) -> dict:
    """Measure the study review (see the module docstring) with ``predictor`` (the model of ``weights``, which
    the memory runs load in fresh processes) and its ``explainer``; returns the section's results and, with
    ``readme``, writes the README section there (``output``: the results file the figures are kept in)."""
    import torch

    from core.inference.study import load_rule

    method = predictor.bundle.card.explanation.method or "gradcam"
    predictor.warmup()  # what the app does once when it loads the model
    explainer.warmup(method)
    rule = load_rule()
    runs, shown_state = _full_reviews(predictor, explainer, rule, method, repeats)
    later = runs[1:] or runs
    slice_change = _slice_changes(explainer, method, shown_state, steps)
    review = shown_state[1]
    out = {
        "volume": f"synthetic {SHAPE[0]}x{SHAPE[1]}x{SHAPE[2]} NIfTI (core.data.synthetic.fake_volume)",
        "cam_method": method, "precision": predictor.describe().get("precision"), "tta": predictor.tta,
        "rule": {"min_run": rule.min_run, "threshold": rule.threshold}, "verdict": review.verdict_text(),
        "first_series": runs[0], "later_series": later,
        "full_review_s_median_later": round(statistics.median(r["total_s"] for r in later), 3),
        "slice_change_ms": slice_change,
        "memory": {str(z): memory_run(weights, z) for z in memory_slices},
        "browser": browser_slice_changes(weights, volume_bytes(), browser_steps) if browser_steps else
        {"skipped": "not asked for (--browser-steps 0)"},
    }
    out["targets"] = targets(out)
    info = machine_info(torch.device("cpu"))
    out.update(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
               machine=f"{info['cpu']}, {info['cores']} cores", output=output)
    if readme:
        Path(readme).write_text(render(out))
    return out


def wanted(ctx: BenchContext) -> bool:
    return not ctx.quick and KEY not in ctx.skip and ctx.device.type == "cpu"


def measure(ctx: BenchContext) -> dict:
    """Also writes its own README section (``README_FILE``); not part of ``bench/README_section.md``."""
    return study_section(ctx.ours, ctx.explainer, ctx.weights, readme=README_FILE,
                         output=f"bench/results/{ctx.out.name}")


def _stats(ms: list[float]) -> dict:
    return {"p50": round(statistics.median(ms), 1), "max": round(max(ms), 1), "n": len(ms)}


def memory_run(weights: str, slices: int, timeout: float = 900) -> dict:
    """Peak RSS growth while a fresh process reviews a ``slices``-slice series (see :func:`memory_child`)."""
    cmd = [sys.executable, "-m", "bench.sections.study", "--memory-child", str(slices),
           "--weights", str(weights)]
    return run_json(cmd, timeout)


def memory_child(weights: str, slices: int) -> dict:
    """In a fresh process: read a ``slices``-slice 240x240 volume, then review it, sampling RSS after every
    chunk. ``growth_mb``: the highest RSS during the review minus the RSS once the volume was read."""
    import torch

    from core.inference.predictor import Predictor
    from core.io.read_series import read_series
    from core.inference.study import load_rule, review_series

    torch.set_num_threads(cores())
    bundle, _ = load_model(weights)
    predictor = Predictor(bundle, torch.device("cpu"))
    predictor.warmup()
    data = volume_bytes((SHAPE[0], SHAPE[1], slices), seed=1)
    series = read_series([("long.nii.gz", data)])[0].series
    del data
    base = rss_mb()
    hwm = reset_peak_rss()
    samples: list[float] = []
    review_series(predictor, series, load_rule(), progress=lambda done, n: samples.append(rss_mb()))
    out = {"slices": slices, "volume_mb": round(series.volume.nbytes / 2 ** 20, 1),
           "rss_after_read_mb": round(base, 1),
           "peak_during_review_mb": round(max(samples), 1), "growth_mb": round(max(samples) - base, 1),
           "samples_mb": [round(s) for s in samples[:: max(1, len(samples) // 8)]],
           "drift_mb": _drift(samples)}
    if hwm:  # the kernel's high-water mark since the reset: transients between samples included
        out["true_peak_growth_mb"] = round(peak_rss_mb()["self_mb"] - base, 1)
    return out


def _drift(samples: list[float]) -> float:
    """RSS (MB) in the last third of a review's samples minus the first third (medians): what the review keeps
    as it goes. Memory that grew with the slices reviewed (a 240x240 float32 slice is 0.22 MB) shows here; the
    forward pass's transients, which the kernel's peak includes and which vary by tens of MB from run to run, do
    not."""
    third = max(1, len(samples) // 3)
    return round(statistics.median(samples[-third:]) - statistics.median(samples[:third]), 1)


def targets(r: dict) -> dict:
    review = r["full_review_s_median_later"]
    out = {f"155-slice volume fully reviewed <= {TARGET_REVIEW_S:g} s (median of later series)":
           {"value_s": review, "met": review <= TARGET_REVIEW_S}}
    seen = (r.get("browser") or {}).get("key_to_heatmap_ms")
    if seen:  # what the reader sees; without a browser here, the target is not measured (no server-side stand-in)
        out[f"next slice's heatmap on screen <= {TARGET_SLICE_MS:g} ms (real browser, key to decoded image, p50)"] = {
            "value_ms": seen["p50"], "met": seen["p50"] <= TARGET_SLICE_MS}
    mem = r.get("memory") or {}
    if mem:
        longest = mem[max(mem, key=int)]
        if "drift_mb" in longest:
            out[f"memory flat: RSS drift over a {longest['slices']}-slice review <= {TARGET_DRIFT_MB:g} MB (last third "
                "of the review's samples minus the first)"] = {"value_mb": longest["drift_mb"],
                                                                "met": longest["drift_mb"] <= TARGET_DRIFT_MB}
    return out


def render(r: dict) -> str:
    """The README section (a Markdown fragment with its own ``###`` heading)."""
    first, later = r["first_series"], r["later_series"]
    med = lambda key: round(statistics.median(x[key] for x in later), 2)  # noqa: E731
    sc = r["slice_change_ms"]
    lines = [
        "### Study review (whole series)",
        "",
        f"`python -m bench.sections.study` ({r['date']}, {r['machine']}"
        + (f"; `{r['output']}`" if r.get("output") else "") + f"): {r['volume']}, model "
        f"{r['precision']}{', mirror-averaged' if r['tta'] == 'hflip' else ''}, heatmap {r['cam_method']}; after "
        f"`Predictor.warmup()` as the app does at load."
        + (f" Other programs used {r['foreign_share']} of the machine's CPU while it ran, so these figures are "
           "slower than on a quiet machine." if r.get("foreign_share") and r["foreign_share"] != "0%" else ""),
        "",
        "| step | first series (s) | later series, median (s) |", "|---|---:|---:|",
        f"| read the NIfTI volume | {first['read_s']} | {med('read_s')} |",
        f"| every slice predicted + series verdict | {first['predict_and_verdict_s']} | "
        f"{med('predict_and_verdict_s')} |",
        f"| heatmap of the shown slice | {first['cam_shown_s']} | {med('cam_shown_s')} |",
        f"| **total** | **{first['total_s']}** | **{med('total_s')}** |",
        "",
        "Slice change, on the server (what the page's fragment does when the viewer reports a new slice: the "
        "heatmap, its overlay and the slice encoded for the viewer, the strip chart's line moved): next slice, its "
        "heatmap computed ahead while "
        f"the reader looked at the current one, p50 **{sc['next_slice_computed_ahead']['p50']} ms** (max "
        f"{sc['next_slice_computed_ahead']['max']} ms, {sc['next_slice_computed_ahead']['n']} steps); a jump to a "
        f"slice far away, computed on demand, p50 {sc['jump_computed_on_demand']['p50']} ms (max "
        f"{sc['jump_computed_on_demand']['max']} ms).",
    ]
    br = r.get("browser") or {}
    if br.get("key_to_heatmap_ms"):
        h, t = br["key_to_heatmap_ms"], br["key_to_slice_line_ms"]
        lines += ["", f"Slice change **in a real browser** (`bench/study_browser.py`: the dashboard on this machine, "
                      f"Chromium through Playwright, the same volume; {br['steps']} presses of → {br['gap_s']} s apart "
                      f"after the page settled {br['settle_s']:g} s): from the key press until the new slice's "
                      f"heatmap is decoded on screen p50 **{h['p50']} ms**, p90 {h['p90']} ms, max {h['max']} ms; "
                      f"until the \"Slice N of n\" line changes p50 {t['p50']} ms (p90 {t['p90']} ms). The viewer "
                      "keeps the slices and heatmaps it was sent in the page, so a step draws without the server; a "
                      "step to a slice whose heatmap has not arrived (a far jump, or more than 16 slices ahead of the "
                      "server's last report) shows the slice at once and its heatmap when it comes. Upload to the "
                      f"first heatmap on screen: {br['upload_to_first_heatmap_s']} s (the page, the upload, every "
                      "slice predicted and the shown slice's heatmap)."]
    elif br.get("skipped"):
        lines += ["", f"Slice change in a real browser: not measured ({br['skipped']})."]
    mem = r.get("memory") or {}
    if mem:
        lines += ["", "Memory while a fresh process reviews one series (RSS growth over the RSS once the volume "
                      "was read; the volume itself is float32 in memory):", "",
                  "| slices | volume (MB) | RSS after read (MB) | peak at the progress samples (MB) | growth there "
                  "(MB) | growth to the true peak (MB) | drift during the review (MB) |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {m['slices']} | {m['volume_mb']} | {m['rss_after_read_mb']} | {m['peak_during_review_mb']} | "
                  f"{m['growth_mb']} | {m.get('true_peak_growth_mb', '–')} | {m.get('drift_mb', '–')} |"
                  for m in mem.values()]
        lines += ["", "The true peak is the kernel's high-water mark (`VmHWM`, reset after the read): it includes "
                      "transients between the samples, such as the forward pass of a chunk and the series' "
                      "intensity percentiles (computed in place on one copy of the non-zero voxels); it varies "
                      "by tens of MB from one run to the next, so two single runs cannot show that memory does not "
                      "grow with the series. The drift can: the RSS in the last third of the review's samples "
                      "minus the first third, in one run. A review that kept each 240x240 slice would drift by "
                      "about 0.22 MB per slice, 70 MB over the last two thirds of 500 slices."]
    lines += ["", "| target | measured | verdict |", "|---|---|---|"]
    lines += [f"| {k} | {next(v for kk, v in t.items() if kk != 'met')} | {'met' if t['met'] else 'MISSED'} |"
              for k, t in r["targets"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="model folder (default weights/ when trained, else random)")
    p.add_argument("--readme", default=str(README_FILE), help="README section file to write ('-': none)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--browser-steps", type=int, default=30, help="key presses timed in a real browser (0: none)")
    p.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    import torch

    weights = args.weights or default_weights()
    if args.memory_child:
        print(json.dumps(memory_child(weights, args.memory_child)))
        return 0
    from core.explain.cam import Explainer
    from core.inference.predictor import Predictor

    torch.set_num_threads(cores())
    bundle, desc = load_model(weights)
    predictor = Predictor(bundle, torch.device("cpu"))
    info = machine_info(torch.device("cpu"))
    out = REPO / "bench" / "results" / f"study-{machine_slug(info)}-{dt.date.today().isoformat()}.json"
    with ForeignLoad() as load:
        r = study_section(predictor, Explainer(predictor), weights, repeats=args.repeats,
                          output=str(out.relative_to(REPO)), browser_steps=0)
    r["model"] = desc
    if load.result is not None:
        r["other_programs"] = load.result
        r["foreign_share"] = f"{100 * load.result['foreign_share_of_machine']:.0f}%"
    # After the load check: the dashboard and the browser it starts are part of what that part measures, and
    # Chromium's processes would count as other programs there.
    if args.browser_steps:
        r["browser"] = browser_slice_changes(weights, volume_bytes(), args.browser_steps)
        r["targets"] = targets(r)
    out.write_text(json.dumps(r, indent=2))
    text = render(r)
    if args.readme != "-":
        Path(args.readme).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
