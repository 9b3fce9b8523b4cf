"""CT (non-MRI) slices in the Kaggle Brain Tumor MRI set, and how the CT gate (``core.inference.ood.ct_gate``) and the
shipped model treat them. Writes ``reports/kaggle_ct_audit.json``; ``core.evaluation.data_audit`` reads its counts.

    python -m tools.ct_audit --data-root ../shared/data              # re-measure (about 15 min on 2 CPU cores)
    python -m tools.ct_audit --data-root ../shared/data --sheets /tmp/ct_sheets   # + contact sheets to review

Which file is a CT slice is a human judgement: the ``labels`` of the report (paths relative to the
``brain-tumor-mri`` folder, CT or MRI, set by eye on contact sheets) are the input and are kept as they are;
everything else in the report is measured again by this tool: the CT gate's five measures on every slice of
every declared source (the same preprocessed head crop the model sees), the cut-offs the declared rule gives
(and whether they are the ones ``core.inference.ood.CT_RULE`` ships), what the gate flags per source, and what the shipped
model answers for each CT slice (class, confidence, Mahalanobis score against its threshold, final flag).

Contact sheets go outside the repository only (images of the data set are never committed).
"""
from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from core.data.dataset import FileRecord

REPO = Path(__file__).resolve().parent.parent
REPORT = REPO / "reports" / "kaggle_ct_audit.json"
KAGGLE = "brain-tumor-mri"
SPLITS = ("Training", "Testing")
# The MRI slices the rule's cut-offs never saw: where its false-flag rate is reported.
HELD_OUT = ("kaggle Testing MRI", "feltrin", "brats", "healthy")


def kaggle_key(fixed_test: bool, path: str) -> str:
    """A Kaggle record's path relative to the brain-tumor-mri folder: ``Testing/notumor/Te-no_0010.jpg``."""
    return f"{SPLITS[1] if fixed_test else SPLITS[0]}/{path}"


def choose_rule(ct: dict[str, np.ndarray], mri: dict[str, np.ndarray], ops: dict[str, str],
                tighten: str = "ring_closure") -> dict[str, tuple[str, float]]:
    """The declared rule for the cut-offs, applied to Kaggle *Training* slices only.

    Each cut-off is the range of the CT slices rounded outward (to 0.05; to 0.01 for ``ring_thickness``):
    the minimum for ">=" measures, the maximum for "<=" ones. ``tighten`` is then raised in 0.05 steps until
    no MRI slice is flagged (the ring closure: a head-holder arc or a cut-off crop breaks the ring of a few CT
    slices, while a T1 scalp-fat ring closes on some MRI).
    """
    rule: dict[str, tuple[str, float]] = {}
    for name, op in ops.items():
        step = 0.01 if name == "ring_thickness" else 0.05
        v = ct[name]
        cut = math.floor(v.min() / step + 1e-9) * step if op == ">=" else math.ceil(v.max() / step - 1e-9) * step
        rule[name] = (op, round(cut, 2))
    while flags(mri, rule).any() and rule[tighten][1] < 1.0:
        rule[tighten] = (rule[tighten][0], round(rule[tighten][1] + 0.05, 2))
    return rule


def flags(measures: dict[str, np.ndarray], rule: dict[str, tuple[str, float]]) -> np.ndarray:
    """bool (N,): every cut-off of ``rule`` holds."""
    n = len(next(iter(measures.values())))
    out = np.ones(n, bool)
    for name, (op, cut) in rule.items():
        v = measures[name]
        out &= (v >= cut) if op == ">=" else (v <= cut)
    return out


def auroc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    if not len(pos) or not len(neg):
        return None
    from sklearn.metrics import roc_auc_score

    return round(float(roc_auc_score(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg])), 4)


def contact_sheets(images: np.ndarray, names: list[str], out_dir: Path, per_sheet: int = 100, cols: int = 10,
                   side: int = 128) -> list[Path]:
    """PNG contact sheets of uint8 (N, S, S) crops with index captions; refuses a folder inside the repo."""
    import cv2

    out_dir = out_dir.resolve()
    if out_dir == REPO or REPO in out_dir.parents:
        raise SystemExit(f"--sheets {out_dir}: contact sheets of the data set must not go inside the repository")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(images), per_sheet):
        chunk = images[start:start + per_sheet]
        rows = math.ceil(len(chunk) / cols)
        sheet = np.zeros((rows * (side + 16), cols * side), np.uint8)
        for j, im in enumerate(chunk):
            r, c = divmod(j, cols)
            sheet[r * (side + 16) + 16:(r + 1) * (side + 16), c * side:(c + 1) * side] = cv2.resize(im, (side, side))
            cv2.putText(sheet, str(start + j), (c * side + 2, r * (side + 16) + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        255, 1)
        p = out_dir / f"sheet_{start // per_sheet:03d}.png"
        cv2.imwrite(str(p), sheet)
        paths.append(p)
    (out_dir / "index.json").write_text(json.dumps(names, indent=1))
    return paths


def build_parser() -> argparse.ArgumentParser:
    """Every option of ``python -m tools.ct_audit``."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(REPO.parent / "shared" / "data"),
                   help="folder holding brain-tumor-mri/ and the other sources of the data spec")
    p.add_argument("--data-spec", default=str(REPO / "data_specs" / "multisource.json"))
    p.add_argument("--report", default=str(REPORT), help="read its labels, write the measured report back")
    p.add_argument("--weights", default=str(REPO / "weights"))
    p.add_argument("--cache-dir", default=str(REPO / ".cache"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-model", action="store_true", help="skip the shipped model (gate measures only)")
    p.add_argument("--sheets", help="write contact sheets of the unlabelled Kaggle slices the CT score ranks "
                                    "highest to this folder (outside the repository), for review")
    p.add_argument("--sheet-count", type=int, default=200)
    p.add_argument("--shifts", action="store_true",
                   help="also measure the gate on every Kaggle Testing file under each shift of tools.shift_eval")
    return p


@dataclass
class Slices:
    """Every slice of every declared source, index-aligned, and the five CT-gate measures of each."""

    group: np.ndarray  # str (N,): the source's name, or "kaggle <Training|Testing> <CT|MRI>" for Kaggle slices
    keys: list[str]  # Kaggle: relative to the brain-tumor-mri folder (kaggle_key); others: "<source>/<path>"
    images: list[np.ndarray]  # uint8 (S, S) cached head crops: the model's input rounded to 8 bits
    kaggle: list[tuple[str, FileRecord]]  # (key, record) of every Kaggle slice
    measures: dict[str, np.ndarray]  # float (N,) per measure of core.inference.ood.CT_RULE
    margin: np.ndarray  # float (N,): core.inference.ood.skull_ring's margin; the gate flags >= 1

    @property
    def is_ct(self) -> np.ndarray:
        """bool (N,): the slices labelled CT by eye, in either Kaggle split."""
        is_ct = self.group == "kaggle Training CT"
        is_ct |= self.group == "kaggle Testing CT"
        return is_ct


def measure_slices(sources, labels: dict[str, str]) -> Slices:
    """Group, key and the five gate measures of every slice of every source (on the cached uint8 head crop: the
    model's input rounded to 8 bits, the same rounding the gate applies to a float crop). Stops when a labelled
    file is not in the data."""
    from core.inference.ood import CT_RULE, skull_ring

    group, keys, kg_records, images = [], [], [], []
    for src in sources:
        for r, fixed, img in zip(src.records, src.fixed_test, src.images):
            if src.spec.name == "kaggle":
                key = kaggle_key(bool(fixed), r.path)
                lab = labels.get(key, "MRI (not reviewed)")
                group.append(f"kaggle {SPLITS[int(bool(fixed))]} {'CT' if lab == 'CT' else 'MRI'}")
                kg_records.append((key, r))
            else:
                key = f"{src.spec.name}/{r.path}"
                group.append(src.spec.name)
            keys.append(key)
            images.append(img)
    missing = sorted(set(labels) - set(keys))
    if missing:
        raise SystemExit(f"{len(missing)} labelled files are not in the data (first: {missing[0]})")
    ring = [skull_ring(im) for im in images]
    measures = {k: np.array([getattr(s, k) for s in ring]) for k in CT_RULE}
    return Slices(np.array(group), keys, images, kg_records, measures, np.array([s.margin() for s in ring]))


def ct_files_summary(kg_records: list[tuple[str, FileRecord]], labels: dict[str, str]) -> dict:
    """The CT files per split and class, and their near-duplicate groups (the data audit's own relation: SHA-256
    or head-crop pHash): distinct slices, and Testing files with a copy in Training."""
    from core.evaluation.data_audit import duplicate_groups

    kg_groups = duplicate_groups([r for _, r in kg_records])
    ct_group = {k: g for (k, _), g in zip(kg_records, kg_groups) if labels.get(k) == "CT"}
    train_groups = {g for (k, _), g in zip(kg_records, kg_groups) if k.startswith("Training/")}
    per_split: dict[str, dict[str, int]] = {}
    for k in sorted(ct_group):
        split, cls = k.split("/")[:2]
        per_split.setdefault(split, Counter())[cls] += 1
    return {
        "files": len(ct_group),
        "per_split": {s: dict(sorted(c.items())) for s, c in per_split.items()},
        "distinct_slices": len(set(ct_group.values())),
        "testing_files_with_copy_in_training": sum(1 for k, g in ct_group.items()
                                                   if k.startswith("Testing/") and g in train_groups),
    }


def gate_report(slices: Slices) -> dict:
    """The gate's rule as the declared choice gives it (vs the shipped one), what it flags per group, and how its
    CT score separates the CT slices from each group's MRI slices."""
    from core.inference.ood import CT_REASON, CT_RULE

    group, keys, m, margin, is_ct = slices.group, slices.keys, slices.measures, slices.margin, slices.is_ct
    gate = margin >= 1.0
    rule = choose_rule({k: v[group == "kaggle Training CT"] for k, v in m.items()},
                       {k: v[group == "kaggle Training MRI"] for k, v in m.items()},
                       {k: op for k, (op, _) in CT_RULE.items()})
    per_group = {}
    for g in ["kaggle Training CT", "kaggle Testing CT", "kaggle Training MRI", "kaggle Testing MRI",
              "feltrin", "brats", "healthy"]:
        sel = group == g
        per_group[g] = {"slices": int(sel.sum()), "flagged": int(gate[sel].sum()),
                        "rate": round(float(gate[sel].mean()), 5) if sel.any() else None}
    return {
        "function": "core.inference.ood.ct_gate (five measures: core.inference.ood.skull_ring; rule: core.inference.ood.CT_RULE)",
        "reason": CT_REASON,
        "rule_shipped": {k: list(v) for k, v in CT_RULE.items()},
        "rule_from_declared_choice": {k: list(v) for k, v in rule.items()},
        "rule_reproduced": rule == CT_RULE,
        "per_group": per_group,
        "false_flag_rate_held_out": {g: per_group[g]["rate"] for g in
                                     HELD_OUT},
        "ct_missed": [keys[i] for i in np.nonzero(~gate & is_ct)[0]],
        "mri_flagged": [keys[i] for i in np.nonzero(gate & ~is_ct)[0]],
        "auroc_ct_score": {g: auroc(margin[is_ct], margin[group == g])
                           for g in ("kaggle Training MRI", "kaggle Testing MRI", "feltrin", "brats", "healthy")},
        "ct_measures_range": {k: [round(float(v[is_ct].min()), 3), round(float(v[is_ct].max()), 3)]
                              for k, v in m.items()},
    }


def print_summary(out: dict) -> None:
    """The report's headline figures (the full report is in the file)."""
    print(json.dumps({k: out[k] for k in ("non_mri",)}, indent=1))
    print(json.dumps({k: out["gate"][k] for k in ("rule_reproduced", "per_group", "auroc_ct_score")}, indent=1))
    if "model" in out:
        print(json.dumps({k: v for k, v in out["model"].items() if k != "ct_files"}, indent=1))


def write_sheets(slices: Slices, labels: dict[str, str], out_dir: str, count: int) -> None:
    """Contact sheets of the ``count`` unlabelled Kaggle slices the CT score ranks highest, for review by eye."""
    order = [i for i in np.argsort(-slices.margin) if slices.group[i].startswith("kaggle")
             and slices.keys[i] not in labels]
    order = order[:count]
    sheets = contact_sheets(np.stack([slices.images[i] for i in order]), [slices.keys[i] for i in order],
                            Path(out_dir))
    print(f"{len(sheets)} contact sheets in {out_dir}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    import torch

    from core.data.spec import DataSpec
    from core.preprocess import PreprocessSpec
    from core.data.sources import index_sources

    torch.set_num_threads(args.threads)
    t0 = time.time()
    report_path = Path(args.report)
    old = json.loads(report_path.read_text())
    labels: dict[str, str] = {e["path"]: e["label"] for e in old["labels"]}
    data = DataSpec.load(args.data_spec)
    sources = index_sources(data, args.data_root, PreprocessSpec(), args.cache_dir, args.workers)
    slices = measure_slices(sources, labels)
    print(f"measured {len(slices.keys)} slices in {time.time() - t0:.0f} s", flush=True)

    out = {k: v for k, v in old.items() if k not in ("measured", "labels")}
    out["non_mri"] = {"CT": ct_files_summary(slices.kaggle, labels),
                      "other": sum(1 for v in labels.values() if v not in ("CT", "MRI"))}
    out["gate"] = gate_report(slices)
    if not args.no_model:
        out["model"] = measure_model(args, sources, slices.images, slices.group, labels, slices.is_ct)
    if args.shifts:
        out["gate_under_shifts"] = gate_under_shifts(Path(args.data_root) / KAGGLE / SPLITS[1], labels)
    out.pop("runtime_s", None)
    out["last_run"] = {"seconds": round(time.time() - t0), "model": "kept from an earlier run" if args.no_model
                       else "measured", "gate_under_shifts": "measured" if args.shifts else "kept from an earlier run"}
    out["labels"] = [{"path": k, "label": v} for k, v in sorted(labels.items())]
    report_path.write_text(json.dumps(out, indent=1) + "\n")
    print_summary(out)
    if args.sheets:
        write_sheets(slices, labels, args.sheets, args.sheet_count)
    return 0


def gate_under_shifts(root: Path, labels: dict[str, str]) -> dict:
    """The gate on every Testing file changed in each way ``tools.shift_eval`` changes them: CT slices still
    flagged, MRI slices newly flagged."""
    from core.errors import ImageLoadError
    from core.io.decode import decode_image
    from core.inference.ood import ct_gate
    from core.preprocess import PreprocessSpec, preprocess
    from tools.shift_eval import SHIFTS

    spec, rng = PreprocessSpec(), np.random.default_rng(0)
    counts = {s: Counter() for s in SHIFTS}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        key = f"{SPLITS[1]}/{path.relative_to(root).as_posix()}"
        kind = "CT" if labels.get(key) == "CT" else "MRI"
        try:
            base = decode_image(path).pixels
        except ImageLoadError:
            continue
        for name, (_, shift) in SHIFTS.items():
            try:
                flagged = ct_gate(preprocess(shift(base, rng), spec).image) is not None
            except ImageLoadError:
                continue
            counts[name][kind] += 1
            counts[name][f"{kind} flagged"] += flagged
    return {name: {"description": SHIFTS[name][0], "ct_flagged": f"{c['CT flagged']}/{c['CT']}",
                   "mri_flagged": f"{c['MRI flagged']}/{c['MRI']}"} for name, c in counts.items()}


def measure_model(args, sources, images, group, labels, is_ct) -> dict:
    """What the shipped model answers for every CT slice (through the serving path, from the file), and how its
    Mahalanobis score separates the CT slices from each source's MRI slices."""
    import torch

    from core.model.checkpoint import load_bundle
    from core.model.device import select_device
    from core.inference.ood import CT_REASON
    from core.inference.predictor import Predictor
    from core.data.sources import source_root

    bundle = load_bundle(args.weights)
    pred = Predictor(bundle, select_device("auto"))
    threshold = float(pred.ood.threshold) if pred.ood is not None else float("inf")
    confident_at = 0.6
    kaggle = next(s for s in sources if s.spec.name == "kaggle")
    rows = []
    for k in sorted(k for k, v in labels.items() if v == "CT"):
        split, rel = k.split("/", 1)
        path = source_root(kaggle.spec, args.data_root, fixed_test=split == SPLITS[1]) / rel
        p, _ = pred.predict(path)
        rows.append({"path": k, "predicted": p.label, "confidence": round(p.confidence, 4),
                     "mahalanobis": round(p.ood_score, 1), "mahalanobis_flag": bool(p.ood_score > threshold),
                     "ood": p.ood, "ood_reason": p.ood_reason})
    # Mahalanobis scores of every slice, from the cached crops (batched; the same network and features).
    scores = []
    for i in range(0, len(images), 64):
        x = pred.standardise(torch.from_numpy(np.stack(images[i:i + 64]).astype(np.float32) / 255))
        scores.append(pred.logits_and_scores(x)[1])
    scores = np.concatenate(scores)
    conf = np.array([r["confidence"] for r in rows])
    return {
        "model": {"sha256": bundle.sha256[:12], "version": bundle.card.version,
                  "precision": pred.precision, "tta": pred.tta},
        "ct_predicted_class": dict(Counter(r["predicted"] for r in rows)),
        "ct_confident": int((conf >= confident_at).sum()),
        "confident_at": confident_at,
        "ct_confidence_median": round(float(np.median(conf)), 4),
        "mahalanobis_threshold": round(threshold, 1),
        "ct_mahalanobis_flagged": int(sum(r["mahalanobis_flag"] for r in rows)),
        "ct_mahalanobis_median": round(float(np.median([r["mahalanobis"] for r in rows])), 1),
        "ct_flagged_outside_intended_use": int(sum(r["ood"] for r in rows)),
        "ct_flagged_as_ct": int(sum(r["ood_reason"] == CT_REASON for r in rows)),
        "auroc_mahalanobis": {g: auroc(scores[is_ct], scores[group == g])
                              for g in ("kaggle Training MRI", "kaggle Testing MRI", "feltrin", "brats", "healthy")},
        "mri_mahalanobis_flagged_rate": {g: round(float((scores[group == g] > threshold).mean()), 4)
                                         for g in ("kaggle Training MRI", "kaggle Testing MRI", "feltrin", "brats",
                                                   "healthy")},
        "ct_files": rows,
    }


if __name__ == "__main__":
    raise SystemExit(main())
