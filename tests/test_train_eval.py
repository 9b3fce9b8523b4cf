"""train.py --dry-run end to end, the evaluation command, and the metric set."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from core.inference.calibration import fit_temperature, reliability, softmax
from core.evaluate import main as evaluate_main
from core.evaluation.metrics import evaluate_predictions, missed_findings, no_finding_classes
from tests.conftest import REPO


def test_dry_run_cli_writes_weights_card_and_metrics(tmp_path):
    out = tmp_path / "w"
    res = subprocess.run([sys.executable, "train.py", "--dry-run", "--out", str(out), "--workers", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert {p.name for p in out.iterdir()} >= {"model.safetensors", "model_card.json", "metrics.json", "data_audit.json"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["sets"]) == {"synthetic_test", "synthetic_test_leak_free", "volumes_test", "validation",
                                    "synthetic_val", "volumes_val"}
    full = metrics["sets"]["synthetic_test"]
    for key in ("confusion_matrix", "per_class", "accuracy_ci95", "macro_f1_ci95", "roc_auc", "ece", "misclassified"):
        assert key in full
    assert np.array(full["confusion_matrix"]).sum() == full["n"]
    assert "auroc_heldout_vs_non_mri" in metrics["ood"]


def test_help_shows_defaults():
    res = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    flat = " ".join(res.stdout.split())
    assert res.returncode == 0 and "augmentation (default: 42)" in flat and "--dry-run" in flat


def test_missing_training_folder_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "train.py", "--data-root", str(tmp_path), "--out", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "training folder not found" in res.stderr and "Traceback" not in res.stderr
    import train

    assert train.main(["--data-root", str(tmp_path), "--device", "gpu0"]) == 2  # unknown device: a message


def test_evaluate_command_on_a_labelled_folder(tmp_path, tiny_bundle_dir, rng):
    from PIL import Image

    from core.data.synthetic import fake_scan

    for k, name in enumerate(["glioma", "meningioma", "notumor", "pituitary"]):
        (tmp_path / "lab" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(fake_scan(rng, 150, k)).save(tmp_path / "lab" / name / f"{i}.png")
    (tmp_path / "lab" / "glioma" / "bad.png").write_bytes(b"")
    out = tmp_path / "m.json"
    assert evaluate_main([str(tmp_path / "lab"), "--weights", str(tiny_bundle_dir), "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["n"] == 12 and len(m["unreadable"]) == 1 and "empty" in m["unreadable"][0]["error"]
    # Not a labelled folder, a bad model folder, an unknown device: a message and exit code 2, no traceback.
    assert evaluate_main([str(tmp_path), "--weights", str(tiny_bundle_dir)]) == 2
    assert evaluate_main([str(tmp_path / "lab"), "--weights", str(tmp_path / "nope")]) == 2
    assert evaluate_main([str(tmp_path / "lab"), "--weights", str(tiny_bundle_dir), "--device", "gpu0"]) == 2


def test_metrics_match_known_answers():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.9 + 0.1 / 3
    m = evaluate_predictions(labels, probs, ["a", "b", "c"], [f"f{i}" for i in range(6)], n_boot=200)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3) and m["per_class"]["b"]["recall"] == 1.0
    lo, hi = m["accuracy_ci95"]
    assert 0 <= lo <= m["accuracy"] <= hi <= 1
    assert {x["file"] for x in m["misclassified"]} == {"f1", "f5"}


def test_missed_findings_count_tumours_read_as_no_tumour():
    names = ["glioma", "meningioma", "notumor", "pituitary"]
    labels = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    preds = np.array([2, 0, 2, 2, 3, 2, 0, 3])  # 3 tumours read as notumor, 1 notumor read as glioma
    confidence = np.array([0.95, 0.9, 0.55, 0.7, 0.8, 0.9, 0.9, 0.9])
    probs = np.full((8, 4), 0.0)
    probs[np.arange(8), preds] = confidence
    probs[np.arange(8), (preds + 1) % 4] = 1 - confidence
    m = evaluate_predictions(labels, probs, names, [f"f{i}" for i in range(8)], n_boot=50)
    got = missed_findings(m, names, confident_at=0.6)
    assert got == {"with_finding": 6, "missed": 3, "missed_confident": 2, "max_confidence": pytest.approx(0.95),
                   "missed_files": ["f0", "f2", "f3"], "without_finding": 2, "false_alarms": 1}
    assert missed_findings(m, names, confident_at=0.99)["missed_confident"] == 0
    # No class means "no tumour": nothing to report. The 44-class variant's normal classes do count.
    assert missed_findings(m, ["a", "b", "c", "d"], 0.6) is None
    assert no_finding_classes(["Glioma T1", "_NORMAL T1", "_NORMAL T2", "No_Tumour", "abnormal"]) == \
        ["_NORMAL T1", "_NORMAL T2", "No_Tumour"]


def test_temperature_scaling_reduces_ece():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 4000)
    logits = rng.normal(0, 1, (4000, 4))
    logits[np.arange(4000), labels] += 2.0
    over = logits * 4  # an over-confident model
    t = fit_temperature(over, labels)
    assert t > 1.5  # an over-confident model is cooled down
    assert reliability(softmax(over, t), labels)["ece"] < reliability(softmax(over), labels)["ece"] / 3


def test_class_count_comes_from_folder_names(tmp_path, rng):
    """The same code trains e.g. the 44-class variant: here 6 classes from 6 folders."""
    import train
    from PIL import Image

    from core.data.synthetic import fake_scan

    names = [f"{t}_{s}" for t in ("glioma", "meningioma") for s in ("T1", "T1C+", "T2")]
    for split, n in (("Training", 6), ("Testing", 2)):
        for k, name in enumerate(names):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(fake_scan(rng, 100, k)).save(tmp_path / split / name / f"{i}.png")
    out = tmp_path / "w"
    assert train.main(["--data-root", str(tmp_path), "--out", str(out), "--epochs", "1", "--max-steps", "1",
                       "--image-size", "64", "--workers", "1", "--cache-dir", str(tmp_path / "c"),
                       "--val-fraction", "0.34"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["class_names"] == sorted(names) and card["architecture"]["num_classes"] == 6
    metrics = json.loads((out / "metrics.json").read_text())
    assert np.array(metrics["sets"]["tree_test"]["confusion_matrix"]).shape == (6, 6)


def test_init_from_continues_a_model_and_records_its_parent(tmp_path, tiny_bundle_dir):
    import train

    parent = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    out = tmp_path / "child"
    assert train.main(["--dry-run", "--out", str(out), "--workers", "1", "--init-from", str(tiny_bundle_dir)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["training"]["init_from"]["sha256"] == parent["weights"]["sha256"]
    assert card["input_spec"] == parent["input_spec"]
    # A grandchild carries the whole chain of commands back to the model trained from scratch.
    grandchild = tmp_path / "grandchild"
    assert train.main(["--dry-run", "--out", str(grandchild), "--workers", "1", "--init-from", str(out)]) == 0
    chain = json.loads((grandchild / "model_card.json").read_text())["training"]["init_from"]
    assert chain["sha256"] == card["weights"]["sha256"] and chain["command"] == card["training"]["command"]
    assert chain["init_from"]["sha256"] == parent["weights"]["sha256"]
    assert chain["init_from"]["init_from"] == parent["training"]["init_from"]
    assert card["training"]["validation_fingerprint"] == parent["training"]["validation_fingerprint"]


def test_init_from_at_another_size_fine_tunes_on_the_parents_split(tmp_path, tiny_bundle_dir):
    import train
    from core.model.checkpoint import load_bundle

    parent = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    out = tmp_path / "bigger"
    assert train.main(["--dry-run", "--out", str(out), "--workers", "1", "--image-size", "48",
                       "--init-from", str(tiny_bundle_dir)]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["input_spec"] == {**parent["input_spec"], "image_size": 48}
    assert card["training"]["hyperparameters"]["image_size"] == 48
    # Same validation files as the parent: hashes for the split come from the parent's geometry.
    assert card["training"]["validation_fingerprint"] == parent["training"]["validation_fingerprint"]
    assert load_bundle(out).spec.image_size == 48
    # Likewise a new head search: fine-tuned on the new crop, same validation files.
    old_crop = tmp_path / "old-crop"
    assert train.main(["--dry-run", "--out", str(old_crop), "--workers", "1", "--head-search", "otsu"]) == 0
    steady = tmp_path / "steady"
    assert train.main(["--dry-run", "--out", str(steady), "--workers", "1", "--head-search", "gamma_otsu",
                       "--init-from", str(old_crop)]) == 0
    old_card, new_card = (json.loads((d / "model_card.json").read_text()) for d in (old_crop, steady))
    assert new_card["input_spec"] == {**old_card["input_spec"], "head_search": "gamma_otsu", "version": 3}
    assert new_card["training"]["validation_fingerprint"] == old_card["training"]["validation_fingerprint"]
    # A different architecture or class list is still refused.
    assert train.main(["--dry-run", "--out", str(tmp_path / "x"), "--workers", "1", "--arch", "resnet18",
                       "--init-from", str(tiny_bundle_dir)]) == 2


def test_a_continued_run_on_another_crop_records_and_rebuilds_its_ancestors_split(tmp_path, tiny_bundle_dir):
    """A child fine-tuned on a new head search keeps its parent's split; its card says which crop that split
    was computed on, so the tools that rebuild a model's held-out parts (``split_of_model``) still match the
    card's fingerprints, and a grandchild keeps the same split."""
    import train
    from core.data.splits import split_of_model
    from core.model.card import ModelCard

    parent = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    root = parent["data"]["root"]
    child, grandchild = tmp_path / "child", tmp_path / "grandchild"
    assert train.main(["--dry-run", "--out", str(child), "--data-root", root, "--head-search", "gamma_hist",
                       "--init-from", str(tiny_bundle_dir)]) == 0
    assert train.main(["--dry-run", "--out", str(grandchild), "--data-root", root, "--epochs", "0",
                       "--init-from", str(child)]) == 0
    for folder in (child, grandchild):
        card = ModelCard.from_dict(json.loads((folder / "model_card.json").read_text()))
        assert card.input_spec.head_search == "gamma_hist"
        assert card.training.split_input_spec == parent["input_spec"]
        assert card.training.validation_fingerprint == parent["training"]["validation_fingerprint"]
        split_of_model(card, root)  # raises ValueError if a rebuilt part's fingerprint differed
    assert "split_input_spec" not in parent["training"] or parent["training"]["split_input_spec"] is None


def test_epochs_zero_refits_calibration_for_a_new_tta_without_touching_the_weights(tmp_path, tiny_bundle_dir):
    import train
    from core.model.checkpoint import load_bundle

    parent = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    out = tmp_path / "tta"
    assert train.main(["--dry-run", "--out", str(out), "--workers", "1", "--init-from", str(tiny_bundle_dir),
                       "--epochs", "0", "--tta", "hflip"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["inference"] == {"tta": "hflip"} and load_bundle(out).tta == "hflip"
    assert card["weights"]["sha256"] == parent["weights"]["sha256"]  # same tensors, OOD statistics included
    tr = card["training"]
    assert tr["epochs_run"] == 0 and tr["history"] == [] and tr["best_weights"] == "parent"
    assert tr["init_from"]["sha256"] == parent["weights"]["sha256"] and tr["hyperparameters"]["tta"] == "hflip"
    assert tr["hyperparameters"]["gamma_range"] == parent["training"]["hyperparameters"]["gamma_range"]
    # A re-fit still says how its weights were chosen (the parent's kept epoch and selection score), and the
    # experiments report compares it with other candidates on that score.
    ptr = parent["training"]
    kept = ptr["history"][ptr["best_epoch"] - 1]
    score = kept["ema_score" if ptr["best_weights"] == "ema" else "score"]
    assert tr["init_from"]["selection_score"] == score and tr["init_from"]["best_epoch"] == ptr["best_epoch"]
    from tools.experiments import candidates

    rows = candidates(out, [tiny_bundle_dir])["rows"]
    assert rows[0]["cells"][0] == rows[1]["cells"][0] == f"**{score:.4f}**"
    # Validation scoring and calibration see the logits the predictor serves under the same TTA.
    import torch

    from core.inference.predictor import Predictor
    from core.preprocess import to_model_tensor

    bundle = load_bundle(out)
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 64, 64), dtype=np.uint8))
    served, _ = Predictor(bundle, torch.device("cpu"), "fp32").logits_and_scores(
        to_model_tensor(images.float() / 255, bundle.spec))
    fitted, _ = train.predict_arrays(bundle.model, images, bundle.spec, torch.device("cpu"), "hflip")
    assert np.allclose(served, fitted, atol=1e-4)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"synthetic_test", "volumes_test", "validation"} <= set(metrics["sets"])
    # Nothing to re-fit without a parent; a negative epoch count is refused too.
    assert train.main(["--dry-run", "--out", str(tmp_path / "x"), "--workers", "1", "--epochs", "0"]) == 2
    assert train.main(["--dry-run", "--out", str(tmp_path / "y"), "--workers", "1", "--epochs", "-1",
                       "--init-from", str(tiny_bundle_dir)]) == 2
    with pytest.raises(SystemExit):  # argparse: invalid choice
        train.parse_args(["--tta", "rot90"])


def test_evaluation_predictions_are_audited(tmp_path, tiny_predictor, rng):
    from PIL import Image

    from core.review.audit_trail import AuditTrail
    from core.evaluation.evaluate import run_labelled
    from core.data.synthetic import fake_scan

    (tmp_path / "lab" / "glioma").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(fake_scan(rng, 120, 0)).save(tmp_path / "lab" / "glioma" / f"{i}.png")
    audit = AuditTrail(tmp_path / "a.sqlite3")
    run = run_labelled(tiny_predictor, tmp_path / "lab", audit=audit)
    rows = audit.recent(10)
    assert len(run.files) == 3 and len(rows) == 3
    assert {r["source"] for r in rows} == {"evaluate"} and all(len(r["file_sha256"]) == 64 for r in rows)


def test_gamma_range_reaches_the_augmentation(monkeypatch):
    import torch

    import train
    from core.model.architectures import build_model
    from core.preprocess import PreprocessSpec

    seen = []

    def spy(images, cfg, generator=None, has_skull=None):
        seen.append(cfg.gamma_range)
        return images

    monkeypatch.setattr(train, "augment_batch", spy)
    args = train.parse_args(["--batch-size", "8", "--epochs", "1", "--max-steps", "1", "--gamma-range", "0.5", "2"])
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (16, 32, 32), dtype=np.uint8))
    labels = np.arange(16) % 2
    train.train_model(build_model("slimresnet", 1, 2), images, torch.from_numpy(labels), images[:4], labels[:4],
                      PreprocessSpec(image_size=32), args, torch.device("cpu"), train.seed_everything(0))
    assert seen == [(0.5, 2.0)]
    assert train.main(["--dry-run", "--gamma-range", "2", "1"]) == 2  # LO > HI is refused


def test_weight_averaging_keeps_the_weights_that_scored_best_on_validation():
    """With --ema each epoch scores the raw and the averaged weights; the kept weights are the ones whose
    validation loss is recorded for the best epoch (the loss tells raw and averaged weights apart)."""
    import torch

    import train
    from core.model.architectures import build_model
    from core.preprocess import PreprocessSpec

    gen = train.seed_everything(0)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 96)
    images = rng.integers(0, 60, (96, 48, 48)).astype(np.uint8)
    images[labels == 1, 12:36, 12:36] = 220  # a bright square makes class 1 learnable in a few steps
    spec = PreprocessSpec(image_size=48, mean=0.2, std=0.3)
    model = build_model("slimresnet", 1, 2)
    args = train.parse_args(["--batch-size", "16", "--lr", "3e-3", "--weight-decay", "0", "--epochs", "3",
                             "--patience", "3", "--label-smoothing", "0", "--ema", "0.7"])
    result = train.train_model(model, torch.from_numpy(images[:64]), torch.from_numpy(labels[:64]),
                               torch.from_numpy(images[64:]), labels[64:], spec, args, torch.device("cpu"), gen)
    rows = result["history"]
    assert len(rows) == 3 and all("ema_val_loss" in r and r["weights"] in {"raw", "ema"} for r in rows)
    best = rows[result["best_epoch"] - 1]
    assert result["best_weights"] == best["weights"]
    prefix = "ema_" if best["weights"] == "ema" else ""
    kept = train.validation_scores(model, torch.from_numpy(images[64:]), labels[64:], spec, torch.device("cpu"))
    assert kept["val_loss"] == pytest.approx(best[prefix + "val_loss"], rel=1e-5)
    assert best["ema_val_loss"] != pytest.approx(best["val_loss"], rel=1e-5)


def test_evaluate_held_out_repeats_the_per_source_evaluation(tiny_bundle_dir, tmp_path):
    out = tmp_path / "held.json"
    assert evaluate_main(["--held-out", "--weights", str(tiny_bundle_dir), "--out", str(out), "--device", "cpu"]) == 0
    again = json.loads(out.read_text())["sets"]
    shipped = json.loads((tiny_bundle_dir / "metrics.json").read_text())["sets"]
    assert {k for k, m in shipped.items() if m.get("part") == "test"} == set(again)
    for key, m in again.items():
        assert m["n"] == shipped[key]["n"] and m["accuracy"] == pytest.approx(shipped[key]["accuracy"])
    # a model without a recorded data spec, or neither / both of FOLDER and --held-out: a clear error
    with pytest.raises(SystemExit):
        evaluate_main(["--weights", str(tiny_bundle_dir)])
    card = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_bundle_dir, old)
    del card["data"]
    (old / "model_card.json").write_text(json.dumps(card))
    assert evaluate_main(["--held-out", "--weights", str(old)]) == 2


def test_leave_one_source_out_is_reported_against_the_shipped_model(tmp_path, tiny_bundle_dir):
    """`--leave-out` trains without a source (nor selects on it) but still evaluates its held-out part, and
    tools.experiments puts that figure beside the model that trained on it."""
    import train
    from tools.experiments import leave_one_out

    parent = json.loads((tiny_bundle_dir / "model_card.json").read_text())
    out = tmp_path / "loso"
    assert train.main(["--dry-run", "--out", str(out), "--workers", "1", "--data-root", parent["data"]["root"],
                       "--leave-out", "volumes"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["data"]["left_out"] == ["volumes"] and card["data"]["spec_sha256"] == parent["data"]["spec_sha256"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert "volumes_test" in metrics["sets"] and "volumes_val" not in metrics["sets"]  # never selected on
    report = leave_one_out(tiny_bundle_dir, out)
    never, shipped = report["rows"]
    assert "never saw volumes" in never["model"] and shipped["model"].endswith("shipped")
    assert len(never["cells"]) == len(report["columns"]) == len(shipped["cells"])
    with pytest.raises(ValueError, match="exactly one --leave-out"):
        leave_one_out(tiny_bundle_dir, tiny_bundle_dir)


def test_44_class_metrics_have_collapsed_type_and_sequence_views_with_intervals():
    """Classes named "<type> <sequence>": the evaluation adds exact merged views and Wilson intervals."""
    import numpy as np

    from core.evaluation.metrics import collapsed_view, evaluate_predictions, type_and_sequence

    names = [f"{t} {q}" for t in ("Astrocitoma", "Meningioma", "_NORMAL") for q in ("T1", "T1C+", "T2")]
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 3])
    preds = np.array([1, 1, 2, 3, 5, 5, 8, 7, 8, 3, 3])  # 0->1: same type, other sequence; 0->3: other type
    probs = np.full((len(labels), 9), 0.01)
    probs[np.arange(len(labels)), preds] = 0.92
    m = evaluate_predictions(labels, probs, names, [str(i) for i in range(len(labels))], n_boot=20)
    t, q = m["collapsed"]["type"], m["collapsed"]["sequence"]
    assert t["groups"] == ["Astrocitoma", "Meningioma", "_NORMAL"] and q["groups"] == ["T1", "T1C+", "T2"]
    assert t["accuracy"] == 10 / 11  # only 0 -> 3 changes the type
    assert q["accuracy"] == 8 / 11  # 0 -> 1, 4 -> 5 and 6 -> 8 change the sequence
    assert np.asarray(t["confusion_matrix"]).sum() == 11 and t["accuracy_ci95"][0] < t["accuracy"] < 1
    lo, hi = m["per_class"]["Astrocitoma T1"]["recall_ci95"]
    assert m["per_class"]["Astrocitoma T1"]["recall"] == 0 and lo == 0 and 0.5 < hi < 1  # 0 of 2: wide interval
    assert "collapsed" not in evaluate_predictions(labels % 4, probs[:, :4] / probs[:, :4].sum(1, keepdims=True),
                                                   ["glioma", "meningioma", "notumor", "pituitary"],
                                                   [str(i) for i in range(len(labels))], n_boot=20)
    assert type_and_sequence("_NORMAL T2") == ("_NORMAL", "T2")
    merged = collapsed_view([[2, 1], [0, 3]], ["a x", "b x"], lambda n: "all")
    assert merged["confusion_matrix"] == [[6]] and merged["accuracy"] == 1.0


def test_experiments_report_the_epochs_of_the_ancestor_that_trained_a_chain_of_refits(tmp_path, tiny_bundle_dir):
    """The shipped model is a re-fit of a re-fit (new head search on top of a new evaluation): its candidate row
    still says how many epochs trained its weights, and the chain's time."""
    import train
    from core.model.card import ModelCard
    from tools.experiments import _selection

    parent = ModelCard.from_dict(json.loads((tiny_bundle_dir / "model_card.json").read_text()))
    root = str(parent.data.root)
    one, two = tmp_path / "refit1", tmp_path / "refit2"
    assert train.main(["--dry-run", "--out", str(one), "--data-root", root, "--epochs", "0",
                       "--init-from", str(tiny_bundle_dir)]) == 0
    assert train.main(["--dry-run", "--out", str(two), "--data-root", root, "--epochs", "0", "--head-search",
                       "gamma_hist", "--init-from", str(one)]) == 0
    card = ModelCard.from_dict(json.loads((two / "model_card.json").read_text()))
    score, _, epochs, seconds = _selection(card)
    assert epochs == parent.training.epochs_run > 0
    assert score == _selection(parent)[0] and seconds >= parent.training.duration_s
