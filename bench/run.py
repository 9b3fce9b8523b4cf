"""``python -m bench``: speed of the slice classifier on this machine, with a VGG16 baseline.

Everything is measured in one run, on whatever device ``core.model.device.select_device``
picks (or ``--device``), and reported as a table on stdout plus a JSON file
(``bench/results/<machine>-<date>.json``) and a README section (``bench/README_section.md``).
Each section is a module of :mod:`bench.sections`, run in turn on one :class:`bench.context.BenchContext`:

* backends: forward-pass throughput / latency per inference path (fp32 NCHW, fp32
  channels_last, bf16, int8, torch.compile, ONNX Runtime; GPU: fp32, AMP, AMP+compile)
  and, with trained weights and the real Testing set, their accuracy against fp32;
* single scan: cold (fresh process, ``bench/cold.py``) and warm latency, p50/p95,
  split into decode, preprocess, forward (predict) and Grad-CAM;
* batch throughput end to end over a folder of real JPEGs (decode included) for batch
  sizes 1-256, ours and VGG16 through the same pipeline (``core.inference.pipeline``), the
  ratio between them, and with batched Grad-CAM on;
* memory: RSS over a 5,000-image run in a fresh process (``bench/memory.py``); peak
  GPU memory on CUDA;
* a profile (torch.profiler + the per-stage split of the pipeline) of where time goes;
* one training epoch's time from the training log / model card.

``--quick`` runs a reduced version in under a minute (smoke test; numbers not meaningful).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

from bench.common import DEFAULT_DATA, REPO, ForeignLoad, log, peak_rss_mb
from bench.context import BenchContext, build_context
from bench.report import readme_section, render_results
from bench.sections import stage_split, targets, training_epochs
from bench.sections.order import MEASURED


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="reduced run (< 1 min) for smoke tests")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda")
    p.add_argument("--weights", default=None, help="model folder; default weights/ when trained, else random weights")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="folder of JPEGs (Testing); generated images if absent")
    p.add_argument("--generated", action="store_true", help="use generated images even if --data exists")
    p.add_argument("--precision", default="auto", help="our model's precision (the predictor's choice by default)")
    p.add_argument("--out", default=None, help="JSON path (default bench/results/<machine>-<date>.json)")
    p.add_argument("--readme", default=None, help="README section path (default bench/README_section.md; "
                                                  "'-' to skip; quick mode skips unless given)")
    p.add_argument("--skip", default="", help="comma-separated sections to skip (cold, memory, accuracy, vgg_latency, ray)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="measure nothing: re-render the README section (--readme) from a results file")
    p.add_argument("--cold-runs", type=int, default=None, help="fresh processes for the cold single-scan figures "
                                                              "(default 50; 1 in --quick)")
    p.add_argument("--train-card", action="append", default=[], metavar="CARD",
                   help="model_card.json of a training run whose epoch times to report beside the shipped model's")
    return p.parse_args(argv)


def run_section(ctx: BenchContext, section: ModuleType) -> None:
    """One section; a failure is recorded (``error``) and the run goes on. Then everything so far is written to
    the ``.partial.json`` beside the results file: a run cut short keeps what it measured."""
    name, results = section.KEY, ctx.results
    log(f"{name} …")
    t0 = time.perf_counter()
    with ForeignLoad() as load:
        try:
            results[name] = section.measure(ctx)
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
            traceback.print_exc()
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    if isinstance(results[name], dict):
        results[name]["section_seconds"] = round(time.perf_counter() - t0, 1)
        if load.result is not None:
            results[name]["other_programs"] = load.result
            if load.result["foreign_share_of_machine"] > 0.05:
                log(f"  warning: other programs used {100 * load.result['foreign_share_of_machine']:.0f}% of the "
                    f"machine during {name}; its numbers are not clean")
    ctx.out.with_suffix(".partial.json").write_text(json.dumps(results, indent=2, default=str))


def finish(ctx: BenchContext) -> dict:
    """The summaries computed from the sections, then where the results go and how long the run took."""
    r = ctx.results
    r[stage_split.KEY] = stage_split.measure(ctx)
    r[training_epochs.KEY] = training_epochs.measure(ctx)
    r["peak_rss_this_process"] = peak_rss_mb()
    r[targets.KEY] = targets.measure(ctx)
    try:
        r["output"] = str(ctx.out.resolve().relative_to(REPO))
    except ValueError:
        r["output"] = str(ctx.out)
    r["seconds"] = round(time.time() - ctx.started)
    return r


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        r = json.loads(Path(args.render).read_text())
        Path(args.readme or REPO / "bench" / "README_section.md").write_text(readme_section(r, render_results(r)))
        return 0
    ctx = build_context(args, argv)
    config = ctx.results["config"]
    log(f"device {ctx.device}; {config['model']}; {config['data']}; ours: {ctx.ours.describe()}")
    for section in MEASURED:
        if not hasattr(section, "wanted") or section.wanted(ctx):
            run_section(ctx, section)
    results = finish(ctx)
    ctx.out.write_text(json.dumps(results, indent=2, default=str))
    ctx.out.with_suffix(".partial.json").unlink(missing_ok=True)
    text = render_results(results)
    print(text)
    readme = args.readme if args.readme is not None else ("-" if args.quick else str(REPO / "bench" / "README_section.md"))
    if readme != "-":
        Path(readme).write_text(readme_section(results, text))
        log(f"wrote {readme}")
    log(f"wrote {ctx.out}")
    ctx.tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
