"""Keep the README's figures equal to what the code measured.

Three README blocks are generated, never typed:
  * ``model-results``: rendered from ``weights/model_card.json`` and ``weights/metrics.json``
    (written by train.py after reloading the saved weights);
  * ``bench``: the file ``bench/README_section.md`` written by ``python -m bench``, followed by
    ``bench/README_section_gpu.md`` (the same, written by a run on a GPU; ``bench/gpu_check.sh``) when present;
  * ``shift-eval``: rendered from ``reports/shift_eval.json`` (``python -m tools.shift_eval``).

    python -m tools.readme_sections            # rewrite the blocks in README.md
    python -m tools.readme_sections --check    # exit 1 if README.md differs (the tests call this)
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from app_config import AppConfig
from core.augment import AugmentConfig
from core.checkpoint import model_identity
from core.metrics import missed_findings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
WEIGHTS = REPO / "weights"
BENCH_SECTION = REPO / "bench" / "README_section.md"
BENCH_GPU_SECTION = REPO / "bench" / "README_section_gpu.md"
SHIFT_REPORT = REPO / "reports" / "shift_eval.json"

# The targets set by the issue that asked for the model (Testing = the public 1311-image split).
TARGETS = (
    ("accuracy ≥ 0.99 on Testing (full)", "testing_full", "accuracy", 0.99, ">="),
    ("macro-F1 ≥ 0.99 on Testing (full)", "testing_full", "macro_f1", 0.99, ">="),
    ("accuracy ≥ 0.985 on the leakage-free subset", "testing_leak_free", "accuracy", 0.985, ">="),
    ("ECE ≤ 0.03 after temperature scaling (Testing, full)", "testing_full", "ece", 0.03, "<="),
)
MAX_WEIGHTS_MB = 50


def _ci(v: list[float]) -> str:
    return f"[{v[0]:.3f}, {v[1]:.3f}]"


def _commands(training: dict) -> tuple[list[str], str | None]:
    """Training commands oldest first, following the card's nested ``init_from``; and the SHA-256 of an
    ancestor whose own command the card does not hold (cards written before the lineage was nested)."""
    chain, node = [training.get("command")], training.get("init_from")
    missing = None
    while node:
        chain.append(node.get("command"))
        if "init_from" not in node:  # older card: the parent's own parent is not recorded here
            if "--init-from" in (node.get("command") or ""):
                missing = node.get("sha256")
            break
        node = node.get("init_from")
    return [c for c in reversed(chain) if c], missing


def _missed_findings_paragraph(sets: dict, names: list[str]) -> list[str]:
    """Tumours read as no tumour, at the dashboard's default "uncertain below" threshold."""
    threshold = AppConfig().uncertain_below
    found = {key: missed_findings(sets[key], names, threshold) for key in ("testing_full", "testing_leak_free",
                                                                            "validation")}
    full = found["testing_full"]
    if full is None:  # no class means "no tumour"
        return []

    def misses(f: dict) -> str:
        return f"{f['missed']} of {f['with_finding']} ({f['missed_confident']} shown as confident)"

    files = " (`" + "`, `".join(full["missed_files"]) + "`)" if full["missed"] else ""
    top = f" (up to {full['max_confidence']:.1%})" if full["missed_confident"] else ""
    return ["", f"**Tumours read as no tumour**, the error that matters most to a reader. On the full Testing split, "
                f"{full['missed']} of the {full['with_finding']} tumour slices were read as no tumour{files}; "
                f"{full['missed_confident']} of them at or above the dashboard's {threshold:.0%} threshold{top}, so the "
                "page shows them as confident, not uncertain. Leakage-free subset: "
                f"{misses(found['testing_leak_free'])}; validation: {misses(found['validation'])}. The other way, "
                f"{full['false_alarms']} of the {full['without_finding']} no-tumour Testing slices were given a "
                "tumour class. A \"no tumour\" result is therefore not a negative read; the *Misclassified* tab of "
                "the metrics page shows these slices."]


def render_model_results(weights: Path = WEIGHTS) -> str:
    card = json.loads((weights / "model_card.json").read_text())
    metrics = json.loads((weights / "metrics.json").read_text())
    sets, names = metrics["sets"], metrics["class_names"]
    full, free, val = sets["testing_full"], sets["testing_leak_free"], sets["validation"]
    w = card["weights"]
    training = card["training"]
    commands, missing = _commands(training)
    epochs = [training.get("epochs_run") or 0]
    node = training.get("init_from")
    while node:
        epochs.append(node.get("epochs_run") or 0)
        node = node.get("init_from")
    lines = [
        f"Shipped model `weights/{w['file']}` ({w['bytes'] / 1e6:.1f} MB, SHA-256 `{w['sha256'][:8]}…`, version "
        f"{card['version']}), trained from scratch by `train.py` (seed {training['seed']}, {sum(epochs)} epochs over "
        f"{sum(1 for e in epochs if e)} training run(s)"
        + (f", then {epochs.count(0)} re-fit(s) of calibration without training" if 0 in epochs else "")
        + ") on the Training split of the public Kaggle \"Brain Tumor MRI Dataset\" (axial, "
        "coronal and sagittal T1, T1-contrast and T2 slices from figshare, SARTAJ and Br35H). The figures below are "
        "rendered from `weights/metrics.json`, which `train.py` wrote by reloading the saved weights and running them "
        "through the same code the dashboard uses (95 % bootstrap intervals in brackets)"
        + ("; every figure averages each slice with its left–right mirror, as the dashboard does (test-time "
           "augmentation, `--tta hflip`)" if model_identity(card)["tta"] == "hflip" else "") + ":",
        "",
        "| set | images | accuracy | macro-F1 | ECE before → after calibration |",
        "|---|---:|---|---|---|",
    ]
    for label, m in (("Testing, full", full), ("Testing, leakage-free subset¹", free),
                     ("Validation (carved out of Training)", val)):
        # Four decimals: at three, 0.9897 would print as 0.990 beside a 0.99 target it misses.
        lines.append(f"| {label} | {m['n']} | **{m['accuracy']:.4f}** {_ci(m['accuracy_ci95'])} | "
                     f"**{m['macro_f1']:.4f}** {_ci(m['macro_f1_ci95'])} | {m['ece_uncalibrated']:.3f} → "
                     f"**{m['ece']:.3f}** |")
    cross = metrics["audit_summary"]["cross_split"]["Testing_in_Training"]
    lines += [
        "",
        f"¹ Testing images with no exact (SHA-256) or near (perceptual hash of the head crop) copy in Training: "
        f"{cross['Testing_files_with_exact_or_near_copy_in_Training']} of the {full['n']} Testing images have one, "
        f"{cross['Testing_files_with_exact_copy_in_Training']} of them byte-identical. The full-split figure is the "
        "one published work reports; the leakage-free figure is the honest one for unseen patients' slices.",
        "",
    ]
    pc = full["per_class"]
    cm = np.asarray(full["confusion_matrix"])
    off = cm - np.diag(np.diag(cm))
    t, p = np.unravel_index(int(off.argmax()), off.shape)
    lines.append(
        "Per class on the full Testing split (precision / recall): "
        + ", ".join(f"{n} {pc[n]['precision']:.3f} / {pc[n]['recall']:.3f}" for n in names)
        + f"; ROC AUC ≥ {math.floor(min(full['roc_auc'].values()) * 1000) / 1000:.3f} for every class. The most frequent confusion is "
        f"{names[t]} read as {names[p]} ({int(off[t, p])} slices). Calibration temperature "
        f"T = {card['calibration']['temperature']:.2f}, fitted on the validation split.")
    lines += _missed_findings_paragraph(sets, names)
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    for label, key, metric, bound, op in TARGETS:
        v = sets[key][metric]
        ok = v >= bound if op == ">=" else v <= bound
        lines.append(f"| {label} | {v:.4f} | {'yes' if ok else '**no**'} |")
    size_mb = w["bytes"] / 1e6
    lines.append(f"| weights file ≤ {MAX_WEIGHTS_MB} MB | {size_mb:.1f} MB | "
                 f"{'yes' if size_mb <= MAX_WEIGHTS_MB else '**no**'} |")
    if any("**no**" in line for line in lines[-len(TARGETS) - 1:]):
        lines += ["", "**Where a target is missed** (**no** above): the model is a small network trained from scratch "
                      "on two CPU cores, with no internet (so no ImageNet initialisation). A GPU was lent once, for 15 "
                      "minutes, but the 166 MB dataset exceeds what can be sent to it (64 MiB); there `train.py` ran at "
                      "thousands of images per second (the Training line under Benchmarks), so a long schedule would "
                      "take minutes on a GPU that holds the data. Further "
                      "runs of this recipe now move validation and Testing by a few images either way, inside the "
                      "95 % intervals above, and not always in the same direction (the card's `history` holds every "
                      "epoch's validation scores). The last run (a head crop that holds on darker scans, `--head-search "
                      "gamma_otsu`) was chosen for robustness, not to move these figures. Two cheaper routes scored "
                      "lower on the validation split and were not shipped: fine-tuning the previous model at 224 px "
                      "for 8 epochs on the CPU (`train.py --init-from weights --image-size 224`), and averaging more "
                      "views at test time (zoomed or rotated copies besides the mirror). What would likely close the gap: training at 192–224 px from the start "
                      "with a long schedule, or a wider network, on a GPU, or `--arch resnet18 --pretrained` on a "
                      "machine with internet access — each chosen on the validation split, never tuned on Testing."]
    ood = metrics.get("ood") or {}
    if ood:
        lines += ["", f"**Outside intended use.** Images that are blank, coloured, or whose features are far from "
                      "every training class (Mahalanobis distance above the "
                      f"{card['ood']['threshold_percentile_of_validation']:g}th percentile of validation slices) are "
                      f"flagged. On {ood['non_mri_images']} generated non-MRI images (noise, blank frames, gradients, "
                      "charts, documents, shapes, photo-like scenes, checkerboards) the flag catches "
                      f"**{ood['non_mri_flagged_rate']:.0%}** (AUROC {ood['auroc_testing_vs_non_mri']:.2f} against "
                      f"Testing); it also flags **{ood['testing_flagged_rate']:.1%}** of real Testing slices "
                      f"({full['ood_flagged']} of {full['n']}). These probes are synthetic: real photographs or "
                      "other body parts were not available offline, so treat the flag as a safety net, not a "
                      "guarantee."]
    lines += ["", "Commands that produced it, in order (from the card's `training` record; each run after the first "
                  "continued from the previous one with `--init-from` (its output copied to `weights/` first), same seed and "
                  "therefore the same split; `make reproduce-weights` runs them into `runs/reproduce/`):",
              "", "```bash", *commands, "```"]
    if missing:
        lines.append(f"The first of these continued from an earlier model; the card of model `{missing[:12]}…` "
                     "(in this repository's history) holds the command that produced it.")
    return "\n".join(lines)


def _without_heading(path: Path) -> str:
    # Each file starts with its own "## Benchmarks" heading; the README keeps its headings outside.
    text = path.read_text().strip()
    return "\n".join(text.splitlines()[1:]).strip() if text.startswith("## ") else text


def render_bench() -> str:
    text = _without_heading(BENCH_SECTION)
    if BENCH_GPU_SECTION.is_file():
        text += "\n\n### On a GPU\n\n" + _without_heading(BENCH_GPU_SECTION)
    return text


def render_shift_eval(report_path: Path = SHIFT_REPORT, weights: Path = WEIGHTS) -> str:
    if not report_path.is_file():
        return "Not measured yet: run `python -m tools.shift_eval`."
    report = json.loads(report_path.read_text())
    card = json.loads((weights / "model_card.json").read_text())
    shipped = model_identity(card)
    shifts = report["shifts"]
    ref = shifts.get("none")
    sample = f"an evenly spaced sample of {report['limit']}" if report["limit"] else "all"
    lines = [
        f"Measured by `python -m tools.shift_eval` on {sample} readable images of `{Path(report['data']).name}` "
        f"(model `{report['model']['sha256'][:8]}…` version {report['model'].get('version')}, "
        f"{report['precision']}{', mirror-averaged' if report['model'].get('tta') == 'hflip' else ''}, "
        f"{report['seconds'] / 60:.0f} min). Each row "
        "changes every image in one way and runs the serving path again. Models are selected on the validation split "
        "only, never on this table.",
        "",
        "| change to every image | images | accuracy | Δ accuracy | macro-F1 | flagged outside intended use |",
        "|---|---:|---|---|---|---|",
    ]
    for name, r in shifts.items():
        delta = "" if ref is None or name == "none" else f"{r['accuracy'] - ref['accuracy']:+.3f}"
        lines.append(f"| {r['description']} | {r['n']} | {r['accuracy']:.3f} | {delta} | {r['macro_f1']:.3f} | "
                     f"{r['ood_flagged_rate']:.1%} |")
    aug = AugmentConfig()
    gamma = card.get("training", {}).get("hyperparameters", {}).get("gamma_range") or aug.gamma_range
    lines += ["", f"The shipped model's last training run augmented with gamma {gamma[0]:g}–{gamma[1]:g}, rotation "
                  f"±{aug.max_rotation_deg:g}°, scale {aug.scale_range[0]:g}–{aug.scale_range[1]:g} and left–right "
                  "flips (`core/augment.py`, `train.py --gamma-range`); rows beyond that are the ones to watch."]
    if report["model"] != shipped:
        lines += ["", f"**Stale:** these figures are for model `{report['model']['sha256'][:8]}…` version "
                      f"{report['model'].get('version')}, not the shipped `{shipped['sha256'][:8]}…` version "
                      f"{shipped['version']}; re-run `python -m tools.shift_eval`."]
    return "\n".join(lines)


def blocks() -> dict[str, str]:
    return {"model-results": render_model_results(), "bench": render_bench(), "shift-eval": render_shift_eval()}


def apply(text: str, rendered: dict[str, str]) -> str:
    for name, body in rendered.items():
        start, end = f"<!-- generated:{name} start -->", f"<!-- generated:{name} end -->"
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            raise SystemExit(f"README.md has no '{start}' … '{end}' block")
        text = text[:i + len(start)] + "\n" + body + "\n" + text[j:]
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="only compare; exit 1 when README.md is out of date")
    args = p.parse_args(argv)
    old = README.read_text()
    new = apply(old, blocks())
    if args.check:
        if new != old:
            print("README.md is out of date: run `python -m tools.readme_sections`", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    print("README.md blocks rewritten" if new != old else "README.md already up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
