"""The shipped weights on real Testing slices from ../shared (skipped when absent)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import require_real_data, require_shipped_weights


@pytest.fixture(scope="module")
def shipped_predictor():
    from core.model.checkpoint import load_bundle
    from core.inference.predictor import Predictor

    return Predictor(load_bundle(require_shipped_weights()), torch.device("cpu"))


def test_shipped_weights_accuracy_on_a_testing_sample(shipped_predictor):
    root = require_real_data() / "Testing"
    from core.data.dataset import list_labelled_files
    from core.preprocess import preprocess

    files = list_labelled_files(root, shipped_predictor.class_names)
    rng = np.random.default_rng(0)
    sample = [files[i] for i in sorted(rng.choice(len(files), 240, replace=False))]
    items = [preprocess(root / rel, shipped_predictor.spec) for rel, _ in sample]
    preds = []
    for i in range(0, len(items), 48):
        preds += shipped_predictor.predict_preprocessed(items[i:i + 48])
    acc = np.mean([p.index == lab for p, (_, lab) in zip(preds, sample)])
    flagged = np.mean([p.ood for p in preds])
    # The sample must agree with the full Testing accuracy that train.py recorded, within three binomial
    # standard errors of 240 slices: a model or preprocessing that no longer matches its card fails here.
    recorded = json.loads((require_shipped_weights() / "metrics.json").read_text())["sets"]["kaggle_test"]["accuracy"]
    floor = recorded - 3 * np.sqrt(recorded * (1 - recorded) / len(sample))
    assert acc >= floor, f"accuracy {acc:.3f} on 240 Testing slices; the card's full-Testing {recorded:.3f} allows {floor:.3f}"
    assert flagged <= 0.05, f"{flagged:.1%} of real MRI slices flagged as outside intended use"


def test_shipped_weights_flag_non_mri_images(shipped_predictor):
    from core.data.synthetic import non_mri_image

    rng = np.random.default_rng(7)
    for kind in ("noise", "photo", "chart", "document", "blank"):
        pred, _ = shipped_predictor.predict(non_mri_image(kind, rng))
        assert pred.ood, f"{kind} image not flagged (score {pred.ood_score:.0f})"


def test_shipped_card_is_complete_and_honest():
    w = require_shipped_weights()
    card = json.loads((w / "model_card.json").read_text())
    metrics = json.loads((w / "metrics.json").read_text())
    assert card["weights"]["bytes"] <= 50 * 2**20
    assert card["metrics"]["kaggle_test"]["accuracy"] == metrics["sets"]["kaggle_test"]["accuracy"]
    assert card["metrics"]["kaggle_test"]["n"] == 1311
    # every declared source has a held-out part with its tumour / no-tumour figures
    for source in card["data"]["spec"]["sources"]:
        held = metrics["sets"][f"{source['name']}_test"]
        assert held["part"] == "test" and held["n"] > 0 and held["detection"] is not None
    assert "--seed" in card["training"]["command"] or card["training"]["seed"] == 42
