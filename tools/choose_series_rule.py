"""Choose the series-level tumour rule on the VALIDATION volumes, then report the held-out volumes as measured.

Rule written before any figure was looked at:
    candidates: k (``min_run``) in 1..10 contiguous slices, t (``threshold``) in 0.50, 0.55, ..., 0.95;
    score: balanced accuracy over the validation series (mean of the share of BraTS series called tumour and
    the share of healthy series called no tumour); every sequence of a case is its own series;
    choice: the highest score; among ties the smallest k; for that k, the middle of the tied thresholds
    (the median of the tied t, rounded down to the grid) so the choice sits away from both edges.
The held-out (test) cases are then reviewed with the chosen rule and reported; they play no part in the choice.

Validation and test cases are the data spec's ``val_cases`` / ``test_cases`` of the volume sources (the same
split the model was trained with). Writes ``reports/series_rule.json`` with relative ids only.

    python -m tools.choose_series_rule [--data-root ../shared/data] [--out reports/series_rule.json]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from core.inference.study import SeriesRule, decide, predict_series, summarise  # noqa: E402

KS = list(range(1, 11))
TS = [round(0.50 + 0.05 * i, 2) for i in range(10)]
RULE_TEXT = __doc__.split("Rule written before any figure was looked at:")[1].split("The held-out")[0].strip()


def volume_cases(spec: dict, data_root: Path, part: str) -> list[dict]:
    """Every series of the ``part`` cases of the volume sources: {id, source, path, label path, tumour}."""
    out = []
    for src in spec["sources"]:
        if src.get("kind") != "volumes":
            continue
        root = data_root / src["root"]
        cases = set(src.get(f"{part}_cases", []))
        if src.get("layout") == "case_folders":
            for case in sorted(cases):
                for key in src["images"]:
                    p = root / case / f"{key}.nii.gz"
                    out.append({"id": f"{src['name']}/{case}/{key}", "source": src["name"], "path": p,
                                "labels": root / case / f"{src['label_volume']}.nii.gz", "tumour": True})
        else:
            pat = re.compile(src["case_pattern"])
            for p in sorted(root.iterdir()):
                m = pat.match(p.name)
                if m and m.group("case") in cases:
                    out.append({"id": f"{src['name']}/{p.name}", "source": src["name"], "path": p, "labels": None,
                                "tumour": False})
    return out


def balanced_accuracy(rows: list[dict], rule: SeriesRule) -> float:
    pos = [decide(r["tumour_prob"], r["ood"], rule)[0] for r in rows if r["tumour"]]
    neg = [not decide(r["tumour_prob"], r["ood"], rule)[0] for r in rows if not r["tumour"]]
    parts = [float(np.mean(x)) for x in (pos, neg) if x]
    return float(np.mean(parts)) if parts else float("nan")


def choose(rows: list[dict]) -> tuple[SeriesRule, float, dict]:
    grid = {(k, t): balanced_accuracy(rows, SeriesRule(k, t)) for k in KS for t in TS}
    best = max(grid.values())
    k = min(k for (k, _), v in grid.items() if v == best)
    tied = sorted(t for (kk, t), v in grid.items() if kk == k and v == best)
    t = tied[(len(tied) - 1) // 2]
    return SeriesRule(k, t), best, {f"k={k},t={t:.2f}": v for (k, t), v in grid.items()}


def run_case(predictor, c: dict, read_paths) -> dict:
    series = read_paths([c["path"]])[0].series
    t0 = time.perf_counter()
    probs, ood, blank, reasons, scale = predict_series(predictor, series)
    row = dict(c, probs=probs, ood=ood, blank=blank, seconds=time.perf_counter() - t0, n=len(probs))
    review = summarise(probs, ood, blank, predictor.class_names, SeriesRule())
    row["tumour_prob"] = review.tumour_prob
    if c["labels"] is not None and Path(c["labels"]).is_file():
        lab = read_paths([c["labels"]])[0].series
        z = np.flatnonzero((lab.volume > 0).any(axis=(0, 1)))
        row["label_range"] = (int(z.min()), int(z.max())) if len(z) else None
    return row


def report(rows: list[dict], rule: SeriesRule, class_names: list[str]) -> list[dict]:
    out = []
    for r in rows:
        rv = summarise(r["probs"], r["ood"], r["blank"], class_names, rule)
        rec = {"id": r["id"], "truth": "tumour" if r["tumour"] else "no tumour", "called": rv.verdict_text(),
               "correct": bool(rv.tumour == r["tumour"] and not rv.series_ood), "n_slices": r["n"],
               "positive_range": [rv.run[0] + 1, rv.run[1] + 1] if rv.run else None,
               "longest_run": (rv.run[1] - rv.run[0] + 1) if rv.run else 0, "uncertain": rv.uncertain,
               "outside_intended_use": rv.series_ood, "n_ood_slices": int(rv.ood.sum())}
        if r.get("label_range") is not None:
            lo, hi = r["label_range"]
            rec["labelled_tumour_range"] = [lo + 1, hi + 1]
            rec["range_overlaps_label"] = bool(rv.run is not None and rv.run[0] <= hi and rv.run[1] >= lo)
        out.append(rec)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--spec", default=str(REPO / "data_specs" / "multisource.json"))
    ap.add_argument("--weights", default=str(REPO / "weights"))
    ap.add_argument("--out", default=str(REPO / "reports" / "series_rule.json"))
    args = ap.parse_args(argv)
    import torch

    from core.model.checkpoint import load_bundle
    from core.model.device import select_device
    from core.inference.predictor import Predictor
    from core.io.read_series import read_paths

    torch.set_num_threads(2)
    data_root, spec = Path(args.data_root), json.loads(Path(args.spec).read_text())
    val, test = volume_cases(spec, data_root, "val"), volume_cases(spec, data_root, "test")
    if not val or not all(Path(c["path"]).is_file() for c in val + test):
        print(f"volumes not found under {data_root}", file=sys.stderr)
        return 2
    predictor = Predictor(load_bundle(args.weights), select_device("cpu"))
    val_rows = [run_case(predictor, c, read_paths) for c in val]
    rule, score, grid = choose(val_rows)  # test rows are not even computed before the choice
    test_rows = [run_case(predictor, c, read_paths) for c in test]
    names = predictor.class_names
    held = report(test_rows, rule, names)
    record = {
        "rule_text": RULE_TEXT, "chosen": {"min_run": rule.min_run, "threshold": rule.threshold,
                                           "description": rule.describe()},
        "model": {"name": predictor.bundle.name, "version": predictor.bundle.version,
                  "sha256": predictor.bundle.sha256, "tta": predictor.tta},
        "data_spec": spec["name"],
        "validation": {"balanced_accuracy": score, "series": report(val_rows, rule, names), "grid": grid},
        "test": {"series": held,
                 "tumour_series_called_tumour": f"{sum(r['correct'] for r in held if r['truth'] == 'tumour')} of "
                                                f"{sum(r['truth'] == 'tumour' for r in held)}",
                 "healthy_series_called_no_tumour": f"{sum(r['correct'] for r in held if r['truth'] != 'tumour')} of "
                                                    f"{sum(r['truth'] != 'tumour' for r in held)}",
                 "positive_range_overlaps_label": f"{sum(bool(r.get('range_overlaps_label')) for r in held)} of "
                                                  f"{sum('labelled_tumour_range' in r for r in held)}"},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("chosen",)} | {"val": record["validation"]["balanced_accuracy"],
                                                            "test": record["test"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
