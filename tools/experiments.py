"""Write ``reports/experiments.json``: the experiments behind the shipped model, from the models' own files.

    python -m tools.experiments --shipped weights --leave-one-out runs/loso-feltrin \
        --compare runs/ms-slimresnet

* **Leave one source out**: a model trained with ``train.py --leave-out SOURCE`` (same data spec, seed and
  therefore the same split) against the shipped model, on that source's held-out part. The model never saw
  the source, not even for selection: its figure is the one to expect at a site the model has never seen.
* **Candidates**: other models trained on the same split (e.g. from scratch against the ImageNet start),
  compared on the validation selection score recorded in their cards (the rule in ``train.selection_score``),
  which is what decides; their held-out figures are listed beside it, for the record, not for choosing.

Every figure is read from the ``metrics.json`` and ``model_card.json`` that ``train.py`` wrote; nothing is
typed in. ``python -m tools.readme_sections`` renders the report into the README.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.model.card import ModelCard

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "reports" / "experiments.json"


def _load(folder: Path) -> tuple[ModelCard, dict]:
    return (ModelCard.from_dict(json.loads((folder / "model_card.json").read_text())),
            json.loads((folder / "metrics.json").read_text()))


def _fmt(v, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def _label(card: ModelCard) -> str:
    arch = card.architecture
    start = "ImageNet start" if arch.pretrained else "from scratch"
    left = card.data.left_out
    tr = card.training
    more = (f", {tr.epochs_run} more epochs from `{tr.init_from.sha256[:8]}…` with "
            f"`--augment {tr.hyperparameters.get('augment')}`" if tr.init_from and tr.epochs_run else "")
    return (f"`{arch.name}`, {start}" + (f", without {', '.join(left)}" if left else "") + more
            + f" (`{card.weights.sha256[:8]}…`)")


def _same_parts(a: ModelCard, b: ModelCard) -> bool:
    """Whether two models were trained on the same split: equal fingerprints of every part both record (a data
    spec may gain a field that does not move a file, so its SHA-256 alone would say no)."""
    fa, fb = a.training.data_fingerprint, b.training.data_fingerprint
    shared = set(fa) & set(fb)
    return bool(shared) and all(fa[k] == fb[k] for k in shared)


def _selection(card: ModelCard) -> tuple[float | None, dict, int | None, float]:
    """How the model's weights were chosen: (selection score of the kept epoch, that epoch's validation row,
    epochs trained, training seconds). A re-fit (``--epochs 0``, possibly of a re-fit) reports the epochs of the
    ancestor that trained the weights it keeps, and the seconds of the whole chain."""
    tr = card.training
    kept = tr.kept_validation()
    epochs, seconds, node = tr.epochs_run, tr.duration_s or 0, tr.init_from
    while not epochs and node is not None:  # a chain of re-fits: the epochs are the nearest trained ancestor's
        epochs, seconds, node = node.epochs_run, seconds + (node.duration_s or 0), node.init_from
    return kept.get("score"), kept, epochs, seconds


def _det(metrics: dict, key: str, field: str):
    m = metrics["sets"].get(key) or {}
    if field == "accuracy":
        return m.get("accuracy")
    if field == "other":
        return (m.get("other_lesion_called_no_tumour") or {}).get("rate")
    if field == "pointing":
        return (m.get("pointing_game") or {}).get("rate")
    d = m.get("detection") or {}
    if field == "sensitivity":
        return d.get("sensitivity_at_least_min", d.get("sensitivity"))
    return d.get(field)


def leave_one_out(shipped: Path, loso: Path) -> dict:
    card_s, met_s = _load(shipped)
    card_l, met_l = _load(loso)
    left = card_l.data.left_out
    if len(left) != 1:
        raise ValueError(f"{loso} was not trained with exactly one --leave-out source (got {left})")
    if not _same_parts(card_l, card_s):
        raise ValueError("the two models were trained on different splits: their held-out parts differ")
    src = left[0]
    key = f"{src}_test"
    title = met_s["sets"][key]["title"]
    sequences = sorted((met_s["sets"][key].get("detection") or {}).get("by_sequence") or {})
    columns = (["tumour sensitivity"] + [f"sensitivity {q}" for q in sequences]
               + ["specificity", "other lesions → no tumour", "accuracy", "confident misses", "epochs"])

    def cells(card: ModelCard, m: dict) -> list[str]:
        d = m["sets"][key].get("detection") or {}
        by_seq = d.get("by_sequence") or {}
        return ([_fmt(_det(m, key, "sensitivity"))] + [_fmt((by_seq.get(q) or {}).get("sensitivity")) for q in sequences]
                + [_fmt(_det(m, key, "specificity")), _fmt(_det(m, key, "other")), _fmt(_det(m, key, "accuracy")),
                   f"{d.get('confident_misses', '–')} of {d.get('n_tumour', '–')}", str(_selection(card)[2])])

    return {
        "title": f"Leave one source out: {title}",
        "text": (f"A model trained with the shipped recipe but with `--leave-out {src}` never saw a slice of that "
                 "source, neither for training nor for choosing the epoch (same data spec, seed and split; its "
                 "schedule is in the epochs column). Its figures on the same held-out part are the honest estimate "
                 "for a site the model has never seen; the shipped model, which trained on the source's other parts, "
                 f"is beside it. Command: `{card_l.training.command}`."),
        "columns": columns,
        "rows": [{"model": f"{_label(card_l)}: **never saw {src}**", "cells": cells(card_l, met_l)},
                 {"model": f"{_label(card_s)}: shipped", "cells": cells(card_s, met_s)}],
    }


def candidates(shipped: Path, others: list[Path]) -> dict:
    runs = [(shipped, *_load(shipped))] + [(p, *_load(p)) for p in others]
    sources = [s["name"] for s in runs[0][1].data.spec["sources"]]
    columns = ["validation selection score"] + [f"validation macro-F1 {s}" for s in sources] + [
        "held-out: Feltrin sensitivity", "BraTS sensitivity", "Kaggle Testing accuracy", "pointing game",
        "epochs", "training time"]
    rows = []
    for path, card, metrics in runs:
        if not _same_parts(card, runs[0][1]):
            raise ValueError(f"{path} was trained on another split")
        score, best, epochs, seconds = _selection(card)
        rows.append({"model": _label(card) + (": shipped" if path == shipped else ""), "cells": [
            f"**{_fmt(score, '.4f')}**",
            *[_fmt(best.get(f"val_macro_f1_{s}")) for s in sources],
            _fmt(_det(metrics, "feltrin_test", "sensitivity")), _fmt(_det(metrics, "brats_test", "sensitivity")),
            _fmt(_det(metrics, "kaggle_test", "accuracy"), ".4f"), _fmt(_det(metrics, "brats_test", "pointing")),
            str(epochs), f"{seconds / 60:.0f} min"]})
    return {
        "title": "Candidates on the same split",
        "text": ("Candidates trained on the same split, on the same 2-core CPU: the ImageNet start against "
                 "training from scratch, and continuations of the shipped weights. The one with the higher validation "
                 "selection score (the mean over sources of the validation macro-F1, the rule fixed in "
                 "`train.selection_score` before any figure existed) is shipped; the held-out columns are reported "
                 "for the record and played no part in the choice."),
        "columns": columns, "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shipped", default=str(REPO / "weights"), help="the shipped model folder")
    p.add_argument("--leave-one-out", action="append", default=[], help="model folder trained with --leave-out")
    p.add_argument("--compare", action="append", default=[], help="another candidate model folder")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="report path")
    args = p.parse_args(argv)
    try:
        shipped = Path(args.shipped)
        experiments = [leave_one_out(shipped, Path(x)) for x in args.leave_one_out]
        if args.compare:
            experiments.append(candidates(shipped, [Path(x) for x in args.compare]))
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    card, _ = _load(shipped)
    report = {"shipped": card.weights.sha256, "experiments": experiments}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out} ({len(experiments)} experiment(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
