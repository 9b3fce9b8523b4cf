"""Data audit: exact and near duplicates within and across splits, unreadable files,
size and channel mix. Run alone with ``python -m core.audit ROOT --out report.json``.

Exact duplicates share a SHA-256; near duplicates have 256-bit perceptual hashes of
the head crop (pHash) within ``near_distance`` bits. On this dataset no pair within 30
bits carries two labels; the default 20 is on the cautious side for leakage. Groups are the connected components of both
relations, so a chain of near copies forms one group.

Files that are not MRI at all (CT slices in the Kaggle set) are not found here but by ``python -m tools.ct_audit``
(a skull-ring measure, then by eye); its report, ``reports/kaggle_ct_audit.json``, lists them, and the audit
counts the listed files of each audited split under ``non_mri``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from core.paths import REPORTS_DIR
from core.data.dataset import FileRecord, fingerprint

DEFAULT_NEAR_DISTANCE = 20
NON_MRI_REPORT = REPORTS_DIR / "kaggle_ct_audit.json"


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def near_pairs(phashes: list[str], max_distance: int, block: int = 1024) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hex pHashes (any multiple of 64 bits) differ in <= ``max_distance`` bits."""
    valid = [i for i, h in enumerate(phashes) if h]
    if not valid:
        return []
    words = np.array([np.frombuffer(bytes.fromhex(phashes[i]), dtype=np.uint64) for i in valid])  # (M, W)
    pairs = []
    for start in range(0, len(words), block):
        chunk = words[start:start + block]
        dist = np.zeros((len(chunk), len(words)), np.uint16)
        for w in range(words.shape[1]):
            dist += np.bitwise_count(chunk[:, w, None] ^ words[None, :, w]).astype(np.uint16)
        ii, jj = np.nonzero(dist <= max_distance)
        for a, b in zip(ii + start, jj):
            if a < b:
                pairs.append((valid[a], valid[b]))
    return pairs


def duplicate_groups(records: list[FileRecord], near_distance: int = DEFAULT_NEAR_DISTANCE) -> list[int]:
    """Group id per record: records in one group are exact or near copies of each other."""
    uf = _UnionFind(len(records))
    by_hash: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.sha256:
            if r.sha256 in by_hash:
                uf.union(by_hash[r.sha256], i)
            else:
                by_hash[r.sha256] = i
    for a, b in near_pairs([r.phash for r in records], near_distance):
        uf.union(a, b)
    return [uf.find(i) for i in range(len(records))]


def load_non_mri(path: str | Path = NON_MRI_REPORT) -> dict:
    """What ``tools.ct_audit``'s report says about files that are not MRI.

    Returns ``{"labels": {"<class folder>/<file>": label}, "gate_missed": set of those keys, "report": path}``
    for the files labelled other than MRI (e.g. "CT"); empty labels when the report is absent or unreadable.
    Keys drop the split folder (``Testing/notumor/Te-no_0010.jpg`` -> ``notumor/Te-no_0010.jpg``): Kaggle file
    names are unique across its splits, and an audited part (``kaggle/train``) holds files of one tree.
    """
    def key(p: str) -> str:
        return "/".join(p.split("/")[-2:])

    try:
        report = json.loads(Path(path).read_text())
        labels = {key(e["path"]): e["label"] for e in report.get("labels", []) if e.get("label") != "MRI"}
        missed = {key(p) for p in (report.get("gate") or {}).get("ct_missed", [])}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {"labels": {}, "gate_missed": set(), "report": str(path)}
    return {"labels": labels, "gate_missed": missed, "report": str(path)}


def non_mri_entry(splits: dict[str, list[FileRecord]], class_names: list[str], non_mri: dict) -> dict | None:
    """Per audited split, how many of its files ``non_mri`` (see :func:`load_non_mri`) lists as not MRI, by
    label and class; None when it lists none of them. Only records of the Kaggle tree (``source`` "kaggle",
    or "" for a plain folder tree) are matched."""
    labels = non_mri.get("labels") or {}
    per_split: dict[str, dict[str, dict[str, int]]] = {}
    found, missed = Counter(), 0
    for name, records in splits.items():
        for r in records:
            if r.source not in ("", "kaggle"):
                continue
            k = "/".join(r.path.split("/")[-2:])
            lab = labels.get(k)
            if lab is None:
                continue
            cls = class_names[r.label] if 0 <= r.label < len(class_names) else str(r.label)
            per_split.setdefault(name, {}).setdefault(lab, Counter())[cls] += 1
            found[lab] += 1
            missed += k in (non_mri.get("gate_missed") or set())
    if not found:
        return None
    report = Path(non_mri.get("report", NON_MRI_REPORT))
    return {
        "report": str(report.relative_to(NON_MRI_REPORT.parent.parent)) if report.is_relative_to(
            NON_MRI_REPORT.parent.parent) else str(report),
        "files": dict(found),
        "per_split": {s: {lab: dict(sorted(c.items())) for lab, c in d.items()} for s, d in per_split.items()},
        "flagged_by_ct_gate": int(sum(found.values()) - missed),
        "note": "Found by tools.ct_audit (skull-ring measure, then by eye). The dashboard flags them as outside "
                "intended use with core.inference.ood.ct_gate; a model trained on these parts learnt them under the "
                "class their folder gives.",
    }


def audit_splits(splits: dict[str, list[FileRecord]], class_names: list[str],
                 near_distance: int = DEFAULT_NEAR_DISTANCE,
                 non_mri: dict | None = None) -> tuple[dict, dict[str, list[int]]]:
    """Audit several splits together.

    Returns the JSON-ready report and, per split, the group id of each record (group ids
    are shared across splits, so equal ids across splits mean leakage). ``non_mri``: the listed non-MRI
    files (:func:`load_non_mri`; default: read from ``reports/kaggle_ct_audit.json``), counted per split
    under ``report["non_mri"]`` when any audited file is listed.
    """
    names = list(splits)
    flat = [(s, r) for s in names for r in splits[s]]
    recs = [r for _, r in flat]
    groups = duplicate_groups(recs, near_distance)
    sha_groups = Counter(r.sha256 for r in recs if r.sha256)
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    dup_groups = [m for m in members.values() if len(m) > 1]
    exact_groups = [h for h, c in sha_groups.items() if c > 1]
    report: dict = {
        "class_names": class_names,
        "near_duplicate_max_hamming_bits": near_distance,
        "splits": {},
        "exact_duplicate_groups": len(exact_groups),
        "exact_duplicate_files": int(sum(sha_groups[h] for h in exact_groups)),
        "duplicate_groups_exact_or_near": len(dup_groups),
        "duplicate_files_exact_or_near": int(sum(len(m) for m in dup_groups)),
        "label_conflict_groups": sum(1 for m in dup_groups if len({recs[i].label for i in m}) > 1),
        "cross_split": {},
        "unreadable": [{"split": s, "path": r.path, "error": r.error} for s, r in flat if r.error],
        "examples": [[f"{flat[i][0]}/{recs[i].path}" for i in m[:4]] for m in dup_groups[:20]],
    }
    per_split_groups: dict[str, list[int]] = {}
    offset = 0
    for s in names:
        n = len(splits[s])
        per_split_groups[s] = groups[offset:offset + n]
        sr = splits[s]
        report["splits"][s] = {
            "files": n,
            "per_class": {class_names[k]: v for k, v in sorted(Counter(r.label for r in sr).items())},
            "unreadable": sum(1 for r in sr if r.error),
            "distinct_sizes": len({(r.width, r.height) for r in sr if not r.error}),
            "non_square": sum(1 for r in sr if not r.error and r.width != r.height),
            "min_side": min((min(r.width, r.height) for r in sr if not r.error), default=0),
            "max_side": max((max(r.width, r.height) for r in sr if not r.error), default=0),
            "modes": dict(Counter(r.mode for r in sr if not r.error)),
            "fingerprint": fingerprint(sr),
        }
        offset += n
    for a in names:
        for b in names:
            if a == b:
                continue
            ga = set(per_split_groups[a])
            sha_a = {r.sha256 for r in splits[a]}
            report["cross_split"][f"{b}_in_{a}"] = {
                f"{b}_files_with_exact_or_near_copy_in_{a}": sum(1 for g in per_split_groups[b] if g in ga),
                f"{b}_files_with_exact_copy_in_{a}": sum(1 for r in splits[b] if r.sha256 in sha_a),
            }
    entry = non_mri_entry(splits, class_names, load_non_mri() if non_mri is None else non_mri)
    if entry is not None:
        report["non_mri"] = entry
    return report, per_split_groups
