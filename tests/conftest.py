"""Shared fixtures. Tests make their own synthetic images; real data is optional."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHIPPED_WEIGHTS = REPO / "weights"
DATA_ROOT = Path(os.environ.get("MRI_DATA_ROOT", REPO.parent / "shared" / "data" / "brain-tumor-mri"))

# Two cores on CI: keep each test process to one intra-op thread so parallel work stays predictable.
torch.set_num_threads(1)
# Tests that call ray.init themselves get what core.review.ray_engine.import_ray sets: no usage statistics, whose
# collector threads would log tracebacks beside Streamlit's page compiles (see import_ray).
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_app_data(tmp_path_factory):
    """Audit trails and app data written by tests go to a temp folder, never the repo's data/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MRI_APP_DATA", str(tmp_path_factory.mktemp("appdata")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _no_batch_review_outlives_its_test():
    """Stop any dashboard batch review a test left running: its worker thread would otherwise go on reading
    files (and allocating) during later tests, e.g. the flat-memory checks."""
    yield
    from ui.batch_job import cancel_all

    cancel_all()


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory) -> Path:
    """A model folder produced by ``train.py --dry-run`` (seconds on CPU)."""
    import train

    out = tmp_path_factory.mktemp("tiny-model")
    data = tmp_path_factory.mktemp("tiny-data")  # kept: tests rebuild the model's split from it
    assert train.main(["--dry-run", "--out", str(out), "--workers", "1", "--data-root", str(data)]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_predictor(tiny_bundle_dir):
    from core.model.checkpoint import load_bundle
    from core.inference.predictor import Predictor

    return Predictor(load_bundle(tiny_bundle_dir), torch.device("cpu"))


@pytest.fixture(scope="session")
def tiny_explainer(tiny_predictor):
    """The heatmaps of :func:`tiny_predictor` (one per predictor, as the dashboard keeps)."""
    from core.explain.cam import Explainer

    return Explainer(tiny_predictor)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture
def scan_u8(rng) -> np.ndarray:
    """A synthetic grey 'head' slice, uint8 (256, 256)."""
    from core.data.synthetic import fake_scan

    return fake_scan(rng, 256, 1)


def require_real_data() -> Path:
    if not (DATA_ROOT / "Testing").is_dir():
        pytest.skip(f"real dataset not found at {DATA_ROOT} (set MRI_DATA_ROOT); skipping real-data test")
    return DATA_ROOT


def require_shipped_weights() -> Path:
    if not (SHIPPED_WEIGHTS / "model_card.json").is_file():
        pytest.skip("no shipped weights in weights/ yet (run train.py)")
    return SHIPPED_WEIGHTS
