"""Smoke test of the benchmark suite: ``python -m bench --quick`` on generated images.

Checks that every section ran and produced positive numbers; it never asserts speed
(speed is reported by the benchmark itself, in one run, as ratios).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and x > 0


def test_quick_benchmark_writes_complete_json(tmp_path):
    out = tmp_path / "bench.json"
    readme = tmp_path / "section.md"
    # A timing run's card, as bench/gpu_check.sh passes it: its epochs are reported beside the shipped model's.
    card = tmp_path / "timing-card.json"
    card.write_text(json.dumps({"training": {
        "device": "cuda", "train_files": 1000, "data_root": "data", "train_dir": "Training",
        "hyperparameters": {"image_size": 160}, "history": [{"seconds": 4.0}, {"seconds": 2.0}, {"seconds": 2.0}]}}))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "bench", "--quick", "--generated", "--weights", "random",
                        "--device", "cpu", "--out", str(out), "--readme", str(readme), "--cold-runs", "2",
                        "--train-card", str(card)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert not out.with_suffix(".partial.json").exists()  # the complete file replaces the section-by-section one
    assert res["single_scan_cold"]["predict_total"]["n"] == 2
    timing = next(v for v in res["training_epochs"].values() if v["device"] == "cuda")
    assert timing["median_epoch_s"] == 2.0 and timing["images_per_s"] == 500.0 and timing["epochs"] == 3
    for key in ("machine", "config", "backends", "single_scan_warm", "single_scan_cold", "single_scan_vgg16_warm",
                "pipeline_tuning", "throughput", "cam_throughput", "cam_engines", "profile", "memory",
                "single_scan_memory", "targets"):
        assert key in res, key
        assert "error" not in res[key], (key, res[key])
    assert res["machine"]["cores"] >= 1 and res["machine"]["torch"]
    for stage in ("decode", "preprocess", "forward", "cam", "predict_total", "with_cam_total"):
        assert _positive(res["single_scan_warm"][stage]["p50"]), stage
        assert _positive(res["single_scan_cold"][stage]["p50"]), stage
    assert _positive(res["single_scan_vgg16_warm"]["predict_total"]["p50"])
    rows = res["backends"]["rows"]
    assert _positive(rows["fp32 channels_last"]["images_per_s"]) and _positive(rows["VGG16 baseline"]["images_per_s"])
    thr = res["throughput"]
    for row in thr["rows"]:
        assert row["ours"]["errors"] == 0 and row["ours"]["images"] > 0
        assert _positive(row["ours"]["images_per_s"]) and _positive(row["vgg16"]["images_per_s"])
        assert _positive(row["ratio_vs_vgg16"])
    assert _positive(thr["ratio_best_vs_best"])
    assert all(_positive(x["images_per_s"]) for x in res["cam_throughput"]["rows"])
    assert res["cam_engines"]["max_abs_difference"] < 1e-3  # native batched CAM == grad-cam package
    mem = res["memory"]
    assert mem["images"] > 0 and _positive(mem["rss_at_end"]["main_mb"]) and _positive(mem["peak_rss"]["self_mb"])
    sm = res["single_scan_memory"]
    assert sm["calls"] > 0 and _positive(sm["rss_end_mb"]) and len(sm["samples"]) == 10
    assert sm["growth_second_half_mb"] is not None
    assert res["profile"]["top_ops"]
    text = readme.read_text()
    assert text.startswith("## Benchmarks") and res["machine"]["cpu"] in text
    assert "cuda: median epoch 2.0 s over 3 epochs of 1000 160 px images" in text
    # --render re-draws the same section from the results file without measuring anything.
    again = tmp_path / "again.md"
    r2 = subprocess.run([sys.executable, "-m", "bench", "--render", str(out), "--readme", str(again)],
                        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert again.read_text() == text
    assert "Single scan" in r.stdout and "Batch throughput" in r.stdout


def test_gpu_check_script_parses_and_names_its_usage():
    """bench/gpu_check.sh runs only where a GPU is (rehearsed on a CPU with DEVICE=cpu); here: its syntax."""
    script = REPO / "bench" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "usage: bench/gpu_check.sh OUT_DIR DATA_DIR" in r.stderr
