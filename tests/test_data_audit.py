"""The data audit finds planted exact and near duplicates, within and across splits."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from core.audit import main as audit_main
from core.evaluation.data_audit import audit_splits, near_pairs
from core.data.dataset import class_names_of, index_tree
from core.preprocess import PreprocessSpec
from core.data.synthetic import fake_scan


def _tree(root, rng):
    """Training/Testing with planted copies: exact (same bytes), near (resized + re-encoded)."""
    names = ["glioma", "notumor"]
    for split in ("Training", "Testing"):
        for n in names:
            (root / split / n).mkdir(parents=True)
    base = [fake_scan(rng, 256, k % 4) for k in range(6)]
    # make each base image distinct beyond the label blob
    for i, b in enumerate(base):
        b[20 + 30 * i:40 + 30 * i, 100:160] = 255
    for i, img in enumerate(base[:4]):
        Image.fromarray(img).save(root / "Training" / names[i % 2] / f"t{i}.png")
    # exact copy inside Training and an exact copy across splits
    (root / "Training" / "glioma" / "t0_copy.png").write_bytes((root / "Training" / "glioma" / "t0.png").read_bytes())
    (root / "Testing" / "notumor" / "leak_exact.png").write_bytes((root / "Training" / "notumor" / "t1.png").read_bytes())
    # near copy across splits: resized and saved as JPEG
    Image.fromarray(base[2]).resize((300, 300)).save(root / "Testing" / "glioma" / "leak_near.jpg", quality=90)
    # clean test images
    Image.fromarray(base[4]).save(root / "Testing" / "glioma" / "clean_a.png")
    Image.fromarray(base[5]).save(root / "Testing" / "notumor" / "clean_b.png")
    (root / "Testing" / "notumor" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    return names


def test_audit_finds_planted_duplicates(tmp_path, rng):
    names = _tree(tmp_path, rng)
    spec = PreprocessSpec(image_size=96)
    splits = {s: index_tree(tmp_path / s, names, spec, workers=1)[0] for s in ("Training", "Testing")}
    report, groups = audit_splits(splits, names, near_distance=20)
    assert report["exact_duplicate_groups"] == 2 and report["exact_duplicate_files"] == 4
    cross = report["cross_split"]["Testing_in_Training"]
    assert cross["Testing_files_with_exact_copy_in_Training"] == 1
    assert cross["Testing_files_with_exact_or_near_copy_in_Training"] == 2
    assert report["splits"]["Testing"]["unreadable"] == 1
    assert report["unreadable"][0]["path"].endswith("broken.png")
    assert report["label_conflict_groups"] == 0
    test_paths = [r.path for r in splits["Testing"]]
    train_groups = set(groups["Training"])
    leaked = {p for p, g in zip(test_paths, groups["Testing"]) if g in train_groups}
    assert leaked == {"glioma/leak_near.jpg", "notumor/leak_exact.png"}


def test_near_pairs_hamming():
    a = "0" * 64
    b = "0" * 63 + "7"  # 3 bits differ
    c = "f" * 64
    assert near_pairs([a, b, c], 3) == [(0, 1)]
    assert near_pairs([a, b, c], 2) == []


def test_audit_cli_writes_report(tmp_path, rng):
    _tree(tmp_path / "data", rng)
    out = tmp_path / "audit.json"
    assert audit_main([str(tmp_path / "data"), "--out", str(out), "--workers", "1", "--cache-dir", str(tmp_path / "c")]) == 0
    rep = json.loads(out.read_text())
    assert rep["exact_duplicate_groups"] == 2 and set(rep["splits"]) == {"Testing", "Training"}
    assert class_names_of(tmp_path / "data" / "Training") == ["glioma", "notumor"]
