"""Batch runner: one row per file, streaming CSV, resume after an interruption."""
from __future__ import annotations

import csv
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.batch import main as batch_main
from core.review.folder import csv_columns, run_batch
from core.review.results_csv import done_paths
from core.data.synthetic import fake_scan
from tests.conftest import REPO


def _folder(root, rng, n=10):
    for i in range(n):
        d = root / ("glioma" if i % 2 else "notumor") / ("deep" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fake_scan(rng, 128 + i, i % 4)).save(d / f"img{i:02d}.png")
    (root / "notes.txt").write_text("not an image and not listed")
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return n + 1


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_rows_and_columns(tmp_path, rng, tiny_predictor):
    n = _folder(tmp_path / "in", rng)
    out = tmp_path / "r.csv"
    rows = list(run_batch(tiny_predictor, tmp_path / "in", out, cam_method="gradcam", chunk_size=4))
    assert len(rows) == n
    on_disk = _rows(out)
    assert len(on_disk) == n and list(on_disk[0]) == csv_columns(tiny_predictor.class_names)
    bad = [r for r in on_disk if r["error"]]
    assert len(bad) == 1 and bad[0]["path"] == "broken.jpg" and "truncated" in bad[0]["error"]
    good = [r for r in on_disk if not r["error"]]
    for r in good:
        probs = [float(r[f"p_{c}"]) for c in tiny_predictor.class_names]
        assert abs(sum(probs) - 1) < 1e-4
        assert 0 <= float(r["cam_peak_x"]) <= 1 and 0 <= float(r["cam_peak_y"]) <= 1
        assert r["true_label"] in {"glioma", "notumor"} and r["correct"] in {"True", "False"}
        assert len(r["file_sha256"]) == 64


def test_a_folder_named_after_a_class_labels_its_files(tmp_path, rng, tiny_predictor):
    """Reviewing Testing/meningioma (not Testing) still gives every row its ground truth; a class folder inside
    the reviewed one wins, and a folder named after no class gives none."""
    folder = tmp_path / "Testing" / "Meningioma"
    (folder / "glioma").mkdir(parents=True)  # a mislabelled sub-folder: its own name is the more specific label
    for i, d in enumerate((folder, folder, folder / "glioma")):
        Image.fromarray(fake_scan(rng, 128, 1)).save(d / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rows = {r["path"]: r for r in run_batch(tiny_predictor, folder)}
    assert {p: r["true_label"] for p, r in rows.items()} == {
        "img0.png": "meningioma", "img1.png": "meningioma", "glioma/img2.png": "glioma", "broken.jpg": "meningioma"}
    assert all(isinstance(rows[p]["correct"], bool) for p in ("img0.png", "img1.png", "glioma/img2.png"))
    plain = tmp_path / "scans"
    plain.mkdir()
    Image.fromarray(fake_scan(rng, 128, 0)).save(plain / "a.png")
    assert [r["true_label"] for r in run_batch(tiny_predictor, plain)] == [""]


def test_interrupted_run_resumes_without_redoing(tmp_path, rng, tiny_predictor):
    n = _folder(tmp_path / "in", rng)
    out = tmp_path / "r.csv"
    gen = run_batch(tiny_predictor, tmp_path / "in", out, chunk_size=3)
    first = [next(gen) for _ in range(4)]
    gen.close()  # the consumer stops (Ctrl-C, crash): rows handed out are already on disk
    saved = done_paths(out)
    assert {r["path"] for r in first} <= saved and len(saved) < n
    resumed = list(run_batch(tiny_predictor, tmp_path / "in", out, resume=True, chunk_size=3))
    assert not {r["path"] for r in resumed} & saved
    all_rows = _rows(out)
    assert len(all_rows) == n and len({r["path"] for r in all_rows}) == n


def test_killed_process_keeps_finished_rows(tmp_path, rng, tiny_bundle_dir):
    """A hard kill (SIGKILL) of the CLI loses at most the chunk in flight; --resume completes."""
    n = _folder(tmp_path / "in", rng, n=40)
    out = tmp_path / "r.csv"
    cmd = [sys.executable, "-m", "core.batch", str(tmp_path / "in"), "--out", str(out), "--weights",
           str(tiny_bundle_dir), "--chunk-size", "4"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import time

    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(done_paths(out)) < 8):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    partial = done_paths(out)
    assert len(partial) >= 8
    assert batch_main([str(tmp_path / "in"), "--out", str(out), "--weights", str(tiny_bundle_dir), "--resume"]) == 0
    rows = _rows(out)
    assert len(rows) == n and len({r["path"] for r in rows}) == n


def test_cancel_event_keeps_finished_rows(tmp_path, rng, tiny_predictor):
    import threading

    _folder(tmp_path / "in", rng)
    cancel = threading.Event()
    got = []
    for row in run_batch(tiny_predictor, tmp_path / "in", tmp_path / "r.csv", chunk_size=2, cancel=cancel):
        got.append(row)
        cancel.set()
    assert 1 <= len(got) < 11 and len(_rows(tmp_path / "r.csv")) == len(got)


def test_cli_empty_folder(tmp_path, tiny_bundle_dir, capsys):
    (tmp_path / "empty").mkdir()
    assert batch_main([str(tmp_path / "empty"), "--out", str(tmp_path / "r.csv"), "--weights", str(tiny_bundle_dir)]) == 0
    assert "no image files" in capsys.readouterr().out
    assert _rows(tmp_path / "r.csv") == []


def test_cli_csv_names_the_model_and_threshold(tmp_path, rng, tiny_bundle_dir, tiny_predictor):
    """The CLI writes the columns of ``csv_columns`` (the dashboard's too): model name, version, SHA-256 and the
    uncertainty threshold on every row; CAM columns only with --cam-method."""
    n = _folder(tmp_path / "in", rng, n=4)
    out = tmp_path / "r.csv"
    assert batch_main([str(tmp_path / "in"), "--out", str(out), "--weights", str(tiny_bundle_dir),
                       "--uncertain-below", "0.75", "--no-audit"]) == 0
    rows = _rows(out)
    assert len(rows) == n and list(rows[0]) == csv_columns(tiny_predictor.class_names)
    b = tiny_predictor.bundle
    for r in rows:  # unreadable rows too: they say which run they belong to
        assert (r["model_name"], r["model_version"], r["model_sha256"]) == (b.name, b.version, b.sha256)
        assert r["uncertain_below"] == "0.75"
        assert r["cam_method"] == r["cam_peak_x"] == ""
        if not r["error"]:
            assert r["uncertain"] == str(float(r["confidence"]) < 0.75)


def test_resume_refuses_a_csv_with_other_columns(tmp_path, rng, tiny_bundle_dir, tiny_predictor, capsys):
    """Appending under another header would put values in the wrong columns (e.g. a CSV from before the model
    columns existed)."""
    _folder(tmp_path / "in", rng, n=2)
    out = tmp_path / "old.csv"
    old = [c for c in csv_columns(tiny_predictor.class_names) if c not in ("model_name", "uncertain_below")]
    out.write_text(",".join(old) + "\n")
    with pytest.raises(ValueError, match="other columns"):
        list(run_batch(tiny_predictor, tmp_path / "in", out, resume=True))
    assert batch_main([str(tmp_path / "in"), "--out", str(out), "--weights", str(tiny_bundle_dir), "--resume",
                       "--no-audit"]) == 2
    assert "other columns" in capsys.readouterr().err
    assert out.read_text() == ",".join(old) + "\n"  # untouched
