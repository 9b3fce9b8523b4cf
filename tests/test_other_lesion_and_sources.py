"""The fifth outcome ("other_lesion") end to end, and the per-source figures: detection metrics with known
answers, the pointing game, the acceptance targets, and the multi-source dry run of train.py."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from app_support import APP, all_text, make_app_env, other_lesion_bundle, scan_png
from core.evaluation.metrics import class_recall_as, detection_metrics
from core.evaluation.source_eval import pointing_hit
from core.evaluation.targets import TARGETS, evaluate_targets
from core.model.card import ModelCard, WeightsRecord

NAMES = ["glioma", "meningioma", "notumor", "other_lesion", "pituitary"]


def test_detection_metrics_known_answers():
    g, m, n, o = 0, 1, 2, 3
    labels = np.array([g, g, o, o, m, n, n, n])
    pred = np.array([g, n, o, n, m, n, n, g])  # a glioma and an other lesion missed, one false alarm
    conf = np.array([.9, .95, .8, .55, .9, .9, .9, .7])
    probs = np.full((8, 5), 0.0)
    for i, (p, c) in enumerate(zip(pred, conf)):
        probs[i] = (1 - c) / 4
        probs[i, p] = c
    ood = np.array([False, False, False, False, False, False, False, False])
    seqs = ["T1", "T2", "T1C+", "FLAIR", "T1", "T2", "T1", "T2"]
    d = detection_metrics(labels, probs, NAMES, 0.6, ood, seqs, files=[f"f{i}" for i in range(8)])
    assert d["n_tumour"] == 5 and d["sensitivity"] == pytest.approx(3 / 5)
    assert d["n_no_tumour"] == 3 and d["specificity"] == pytest.approx(2 / 3)
    # the glioma miss is confident (0.95); the other-lesion miss (0.55) is below the threshold
    assert d["confident_misses"] == 1 and d["confident_miss_files"] == ["f1"]
    assert d["confident_miss_rate"] == pytest.approx(1 / 5)
    assert d["sensitivity_ci95"][0] < 0.6 < d["sensitivity_ci95"][1]
    # T2 and FLAIR are reported together
    assert set(d["by_sequence"]) == {"T1", "T1C+", "T2/FLAIR"}
    t2 = d["by_sequence"]["T2/FLAIR"]
    assert t2["n_tumour"] == 2 and t2["sensitivity"] == 0.0 and t2["n_no_tumour"] == 2
    # a flagged miss is not a confident miss: the reader was told not to trust the class
    assert detection_metrics(labels, probs, NAMES, 0.6, ood | (np.arange(8) == 1))["confident_misses"] == 0
    other = class_recall_as(labels, probs, NAMES, "other_lesion", ["notumor"])
    assert other["n"] == 2 and other["count"] == 1 and other["rate"] == 0.5
    # volumes: sensitivity on slices with enough tumour
    from core.evaluation.metrics import per_class_by_sequence

    pcs = per_class_by_sequence(labels, probs, NAMES, seqs)
    assert set(pcs) == {"T1", "T1C+", "T2/FLAIR"}
    assert pcs["T2/FLAIR"]["glioma"] == {"precision": 0.0, "recall": 0.0, "support": 1}
    assert pcs["T1"]["meningioma"]["recall"] == 1.0 and "other_lesion" not in pcs["T1"]
    area = np.array([150, 20, 200, 300, 120, -1, -1, -1], float)
    d = detection_metrics(labels, probs, NAMES, 0.6, tumour_mm2=area, min_tumour_mm2=100)
    assert d["n_tumour_at_least_min"] == 4 and d["sensitivity_at_least_min"] == pytest.approx(3 / 4)


def test_pointing_game_hit_uses_the_dilated_mask():
    mask = np.zeros((100, 100), bool)
    mask[40:50, 40:50] = True
    assert pointing_hit((0.45, 0.45), mask)
    assert pointing_hit((0.53, 0.45), mask)  # 4 px outside: inside the 5 px dilation
    assert not pointing_hit((0.60, 0.45), mask)


def test_targets_read_the_metrics_and_say_not_measured_when_absent():
    metrics = {"sets": {
        "feltrin_test": {"part": "test", "ece": 0.02, "detection": {
            "sensitivity": 0.98, "specificity": 0.9, "confident_miss_rate": 0.004,
            "by_sequence": {"T1": {"sensitivity": 0.96}, "T2/FLAIR": {"sensitivity": 0.94}}},
            "other_lesion_called_no_tumour": {"rate": 0.03}},
        "kaggle_test": {"part": "test", "accuracy": 0.99, "ece": 0.05, "detection": {"confident_miss_rate": 0.02}}}}
    card = ModelCard(weights=WeightsRecord(bytes=20e6))
    rows = {r["target"]: r for r in evaluate_targets(metrics, {"card": card})}
    assert len(rows) == len(TARGETS)
    assert rows["tumour sensitivity ≥ 0.97"]["met"] is True
    assert rows["tumour sensitivity ≥ 0.95 in each sequence (lowest shown)"]["measured"] == 0.94
    assert rows["specificity ≥ 0.95"]["met"] is False
    assert rows["other lesions called \"no tumour\" ≤ 5 %"]["met"] is True
    worst = rows["confident misses ≤ 1 % of tumour slices (worst part shown)"]
    assert worst["measured"] == 0.02 and worst["met"] is False
    assert rows["ECE ≤ 0.03 on each held-out part (worst part shown)"]["measured"] == 0.05
    assert rows["Grad-CAM pointing game ≥ 0.80"]["shown"] == "not measured"
    assert rows["weights file ≤ 50 MB"]["met"] is True



def test_the_44_class_targets_read_the_merged_views():
    from core.evaluation.targets import FINE_TARGETS

    metrics = {"sets": {"feltrin_test": {"part": "test", "macro_f1": 0.88, "collapsed": {
        "type": {"accuracy": 0.95}, "sequence": {"accuracy": 0.96}}}}}
    card = ModelCard(weights=WeightsRecord(bytes=60e6))
    rows = {r["target"]: r for r in evaluate_targets(metrics, {"card": card}, FINE_TARGETS)}
    assert len(rows) == len(FINE_TARGETS) == 4
    assert rows["macro-F1 ≥ 0.90 over the 44 classes"]["met"] is False
    assert rows["tumour-type accuracy ≥ 0.93 (sequences merged)"]["met"] is True
    assert rows["sequence accuracy ≥ 0.97 (types merged)"]["measured"] == 0.96
    assert rows["weights file ≤ 50 MB"]["met"] is False

def test_other_lesion_reaches_the_batch_csv(tiny_bundle_dir, tmp_path, rng):
    import torch
    from PIL import Image

    from core.review.folder import run_batch
    from core.model.checkpoint import load_bundle
    from core.inference.predictor import Predictor
    from core.data.synthetic import fake_scan

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(fake_scan(rng, 140, i)).save(folder / f"s{i}.png")
    predictor = Predictor(load_bundle(other_lesion_bundle(tiny_bundle_dir, tmp_path / "m")), torch.device("cpu"))
    out = tmp_path / "r.csv"
    list(run_batch(predictor, folder, out))
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {r["predicted"] for r in rows} == {"other_lesion"}
    assert "p_other_lesion" in rows[0] and float(rows[0]["p_other_lesion"]) > 0.99


def test_other_lesion_on_the_single_scan_and_metrics_pages(tiny_bundle_dir, tmp_path, monkeypatch):
    make_app_env(tmp_path, other_lesion_bundle(tiny_bundle_dir, tmp_path / "model"), monkeypatch)
    at = AppTest.from_file(str(APP), default_timeout=180).run()
    at.file_uploader(key="single_upload").set_value(("scan.png", scan_png(), "image/png")).run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["Predicted class"] == "other_lesion"
    assert any("Other lesion." in str(i.value) and "does not name the type" in str(i.value) for i in at.info)
    at.switch_page("pages/3_Model_metrics.py").run()
    assert not at.exception
    overview = at.dataframe[0].value
    assert list(overview["set"]) == ["Feltrin 44-class held-out"]
    assert overview["other lesions → no tumour"].iloc[0] == "1 of 3"
    assert overview["tumour sensitivity"].iloc[0] == pytest.approx(2 / 3)
    text = all_text(at)
    assert "T2/FLAIR" in text  # the per-sequence table


def test_multi_source_dry_run_writes_per_source_sets_and_the_data_spec(tiny_bundle_dir):
    card = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    metrics = json.loads((tiny_bundle_dir / "metrics.json").read_text())
    assert {s["name"] for s in card["data"]["spec"]["sources"]} == {"synthetic", "volumes"}
    assert set(card["data"]["parts"]) >= {"synthetic/train", "volumes/test"}
    assert set(metrics["sets"]) >= {"synthetic_test", "synthetic_test_leak_free", "volumes_test", "validation"}
    vol = metrics["sets"]["volumes_test"]
    assert vol["cases"] == ["case3"] and vol["part"] == "test" and vol["title"] == "Synthetic volumes held-out"
    assert 0 <= vol["pointing_game"]["rate"] <= 1 and vol["pointing_game"]["n"] > 0
    assert vol["detection"]["n_tumour_at_least_min"] > 0
    core = vol["detection"]["core"]  # every synthetic tumour voxel is core (label 1): the same slices
    assert core["labels"] == [1] and core["n_tumour"] == vol["detection"]["n_tumour_at_least_min"]
    assert core["sensitivity"] == vol["detection"]["sensitivity_at_least_min"] and "T1C+" in core["by_sequence"]
    assert "selection_rule" in card["training"] and "mean over validation sources" in card["training"]["selection_rule"]
    assert metrics["audit_summary"]["leakage"]["volumes/test"]["with_copy_in_learnt_parts"] == 0
