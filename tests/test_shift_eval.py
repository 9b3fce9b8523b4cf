"""tools/shift_eval.py: every shift goes through the serving path and is scored."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from core.evaluation.evaluate import run_labelled
from core.data.synthetic import fake_scan
from tools import shift_eval

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.fixture
def labelled(tmp_path, rng):
    for k, name in enumerate(CLASSES):
        (tmp_path / "lab" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(fake_scan(rng, 150, k)).save(tmp_path / "lab" / name / f"{i}.png")
    (tmp_path / "lab" / "glioma" / "bad.png").write_bytes(b"")  # unreadable originals are left out
    return tmp_path / "lab"


def test_every_shift_is_scored_and_no_shift_equals_plain_evaluation(labelled, tiny_predictor):
    out = shift_eval.evaluate_shifts(tiny_predictor, labelled, list(shift_eval.SHIFTS), batch_size=5)
    assert set(out) == set(shift_eval.SHIFTS)
    for r in out.values():
        assert r["n"] == 12 and r["unreadable"] == 0
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["macro_f1"] <= 1 and 0 <= r["ood_flagged_rate"] <= 1
    plain = run_labelled(tiny_predictor, labelled)
    expected = float((plain.logits.argmax(1) == plain.labels).mean())
    assert out["none"]["accuracy"] == pytest.approx(expected)


def test_shifts_change_the_image_as_described(rng):
    x = fake_scan(rng, 120, 0).astype(np.float32) / 255
    assert shift_eval.SHIFTS["small_128px"][1](x, rng).shape == (128, 128)
    assert shift_eval.SHIFTS["wide_fov"][1](x, rng).shape == (192, 192)
    assert shift_eval.SHIFTS["png_16bit"][1](x, rng).dtype == np.uint16
    assert shift_eval.SHIFTS["jpeg_q30"][1](x, rng)[:2] == b"\xff\xd8"
    np.testing.assert_array_equal(shift_eval.SHIFTS["flip_lr"][1](x, rng), shift_eval.SHIFTS["none"][1](x, rng)[:, ::-1])


def test_cli_writes_a_report_and_refuses_unknown_shifts(labelled, tiny_bundle_dir, tmp_path):
    out = tmp_path / "r.json"
    args = ["--weights", str(tiny_bundle_dir), "--data", str(labelled), "--out", str(out), "--device", "cpu"]
    assert shift_eval.main(args + ["--shifts", "none,blur", "--limit", "6"]) == 0
    report = json.loads(out.read_text())
    assert set(report["shifts"]) == {"none", "blur"} and report["shifts"]["blur"]["n"] <= 6
    from core.model.checkpoint import load_bundle

    assert report["model"] == load_bundle(tiny_bundle_dir).identity  # weights, version and TTA
    assert shift_eval.main(args + ["--shifts", "sharpen"]) == 2
    assert shift_eval.main(args[:2] + ["--data", str(tmp_path / "missing")]) == 2
    assert shift_eval.main(args[:-2] + ["--device", "gpu0"]) == 2


def test_clahe_row_and_a_per_sequence_breakdown_on_a_sources_held_out_part(tiny_bundle_dir, tmp_path, rng):
    import cv2

    x = fake_scan(rng, 120, 0).astype(np.float32) / 255
    clahe = shift_eval.SHIFTS["clahe"][1](x, rng)
    assert clahe.dtype == np.uint8 and not np.array_equal(clahe, shift_eval.SHIFTS["none"][1](x, rng))
    np.testing.assert_array_equal(clahe, cv2.createCLAHE(2.0, (8, 8)).apply(shift_eval.SHIFTS["none"][1](x, rng)))
    # --source: the held-out part of the model's own split (rebuilt from its card), with the sequence recorded
    out = tmp_path / "seq.json"
    assert shift_eval.main(["--weights", str(tiny_bundle_dir), "--source", "synthetic", "--out", str(out),
                            "--shifts", "none,clahe", "--device", "cpu"]) == 0
    report = json.loads(out.read_text())
    card = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    assert report["shifts"]["none"]["n"] == card["data"]["parts"]["synthetic/test"]
    assert "tumour_sensitivity" in report["shifts"]["clahe"] and "by_sequence" in report["shifts"]["clahe"]
    # a volume source has no files to change
    assert shift_eval.main(["--weights", str(tiny_bundle_dir), "--source", "volumes", "--out", str(out)]) == 2
