"""Train / validation / test parts of every declared source, by group, so that nothing leaks.

Groups are the connected components of three relations over all records of all sources:
exact copies (SHA-256), near copies (256-bit pHash of the head crop within ``near_distance`` bits, single
images only) and the case (every slice of a volume patient or subject, all its sequences). A group lies
wholly in one part of one split, with one exception kept from the published layout: a fixed test tree
(Kaggle Testing) is the test part as published, and its records whose group reaches training are marked
not leak-free instead.

Sources are split in declaration order; a group that spans sources is split by the first source that holds
it. Single-image sources are split with ``StratifiedGroupKFold`` stratified by the source's folder (type x
sequence), so every folder is represented in validation and test; volume sources by their case lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from core.evaluation.data_audit import _UnionFind, near_pairs
from core.data.dataset import FileRecord, fingerprint
from core.data.sources import IndexedSource, index_sources
from core.data.spec import DataSpec
from core.model.card import ModelCard

PARTS = ("train", "val", "test")


@dataclass
class DataSplit:
    """All records of all sources, index-aligned arrays, and the part each record belongs to.

    ``images``: uint8 (N, S, S); ``part``: "train" / "val" / "test" per record; ``groups``: int group id;
    ``leak_free``: True unless the record's group also has a record in a train or val part (only test
    records of a fixed test tree can be False); ``fixed_test``: record of a source's ``test_root``.
    """

    records: list[FileRecord]
    images: np.ndarray
    part: np.ndarray
    groups: np.ndarray
    leak_free: np.ndarray
    fixed_test: np.ndarray
    sources: list[str]

    def select(self, part: str | None = None, source: str | None = None) -> np.ndarray:
        """Indices of the records of one part and/or one source, in record order."""
        keep = np.ones(len(self.records), bool)
        if part is not None:
            keep &= self.part == part
        if source is not None:
            keep &= np.array([r.source == source for r in self.records])
        return np.flatnonzero(keep)

    def labels(self, idx: np.ndarray | None = None) -> np.ndarray:
        recs = self.records if idx is None else [self.records[i] for i in idx]
        return np.array([r.label for r in recs], int)


def _held_out_fold(strata: list[str], groups: list[int], fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of one ``StratifiedGroupKFold`` fold holding about ``fraction`` of the items."""
    held = np.zeros(len(strata), bool)
    if fraction <= 0 or len(set(groups)) < 2:
        return held
    n_splits = max(2, min(round(1 / fraction), len(set(groups))))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, fold = next(sgkf.split(np.zeros(len(strata)), strata, groups))
    held[fold] = True
    return held


def split_sources(indexed: list[IndexedSource], near_distance: int, seed: int) -> DataSplit:
    """Group every record of every source and assign each group to one part (module docstring).

    The same inputs give the same split: ``train.py --init-from`` and ``tools.validation_split`` rely on it.
    """
    records = [r for s in indexed for r in s.records]
    images = np.concatenate([s.images for s in indexed]) if indexed else np.zeros((0, 1, 1), np.uint8)
    fixed = np.concatenate([s.fixed_test for s in indexed]) if indexed else np.zeros(0, bool)
    n = len(records)
    uf = _UnionFind(n)
    first_of: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.error:
            continue
        key = f"case:{r.source}:{r.case}" if r.case else f"sha:{r.sha256}"
        if key in first_of:
            uf.union(first_of[key], i)
        else:
            first_of[key] = i
        if r.case and r.sha256:  # a slice equal to another file is still one group with it
            if f"sha:{r.sha256}" in first_of:
                uf.union(first_of[f"sha:{r.sha256}"], i)
            else:
                first_of[f"sha:{r.sha256}"] = i
    for a, b in near_pairs([r.phash if not r.case else "" for r in records], near_distance):
        uf.union(a, b)
    groups = np.array([uf.find(i) for i in range(n)])

    part = np.full(n, "", dtype=object)
    part[fixed] = "test"
    unreadable = np.array([bool(r.error) for r in records])
    offset = 0
    for s in indexed:
        idx = np.arange(offset, offset + len(s.records))
        offset += len(s.records)
        free = idx[(part[idx] == "") & ~unreadable[idx] & ~fixed[idx]]
        # Groups already placed by an earlier source pull their records of this source along.
        placed = {g: p for g, p, f in zip(groups, part, fixed) if p and not f}
        for i in free:
            if groups[i] in placed:
                part[i] = placed[groups[i]]
        free = free[part[free] == ""]
        if not len(free):
            continue
        src = s.spec
        if src.kind == "volumes":
            assigned = np.array([src.split_of_case(records[i].case) for i in free], dtype=object)
        else:
            strata = [records[i].detail for i in free]
            g = [int(groups[i]) for i in free]
            test = _held_out_fold(strata, g, src.test_fraction, seed)
            rest = np.flatnonzero(~test)
            val_share = src.val_fraction / (1 - src.test_fraction) if src.test_fraction else src.val_fraction
            val = np.zeros(len(free), bool)
            val[rest] = _held_out_fold([strata[i] for i in rest], [g[i] for i in rest], val_share, seed)
            assigned = np.where(test, "test", np.where(val, "val", "train")).astype(object)
        for i, p in zip(free, assigned):
            part[i] = p
        # Every record of a group follows the part of the group (other sources' records included).
        by_group = {groups[i]: part[i] for i in free}
        for j in range(n):
            if part[j] == "" and not fixed[j] and groups[j] in by_group:
                part[j] = by_group[groups[j]]
    part[unreadable & (part == "")] = "unreadable"
    trained_groups = {g for g, p in zip(groups, part) if p in ("train", "val")}
    leak_free = np.array([not (p == "test" and g in trained_groups) for g, p in zip(groups, part)])
    _check_no_straddle(groups, part, fixed)
    return DataSplit(records, images, part.astype(str), groups, leak_free, fixed, [s.spec.name for s in indexed])


def _check_no_straddle(groups: np.ndarray, part: np.ndarray, fixed: np.ndarray) -> None:
    """Outside a fixed test tree, no group may have records in two parts."""
    seen: dict[int, str] = {}
    for g, p, f in zip(groups, part, fixed):
        if f or p == "unreadable":
            continue
        if seen.setdefault(int(g), p) != p:
            raise AssertionError(f"group {g} straddles the {seen[int(g)]} and {p} parts")


def trainable(split: DataSplit, part: str, leave_out: list[str]) -> np.ndarray:
    """Indices of ``part`` used for training or selection: not of a left-out source, and not a volume slice
    with only a sliver of tumour (labelled tumour, but under the source's ``min_tumour_mm2``)."""
    return np.array([i for i in split.select(part) if split.records[i].source not in leave_out
                     and split.records[i].detail != "small tumour"], int)


def split_of_model(card: ModelCard, data_root: str | Path | None = None, cache_dir: str | Path | None = ".cache",
                   workers: int = 2) -> tuple[DataSpec, Path, DataSplit]:
    """Rebuild the split a model was trained with, from the data spec recorded in its card, and verify it
    against the card's fingerprints of every part. Raises ``ValueError`` with the reason when it cannot."""
    if not card.data.spec:
        raise ValueError("this model card records no data spec (trained before multi-source training), so its "
                         "held-out parts cannot be rebuilt")
    data = DataSpec.from_dict(card.data.spec)
    root = Path(data_root or card.data.root or "")
    if not root.is_dir():
        raise ValueError(f"data root not found: {root} (pass the folder the data spec's sources live in)")
    seed = int(card.training.seed if card.training.seed is not None else 42)
    split = split_sources(index_sources(data, root, card.split_spec, cache_dir, workers), data.near_distance, seed)
    for key, fp in card.training.data_fingerprint.items():
        source, _, part = key.partition("/")
        if fingerprint([split.records[i] for i in split.select(part, source)]) != fp:
            raise ValueError(f"the rebuilt {key} part does not match the card's fingerprint (different data "
                             "under the data root, or a different split configuration)")
    return data, root, split
