"""CT slices are outside intended use (issue 17, item 12): the CT gate on synthetic CT-like and MRI-like heads,
its wiring into the predictor, the declared rule for its cut-offs, the data audit's ``non_mri`` entry, and (when
../shared is present) the real Kaggle CT slices and the measured report."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.evaluation.data_audit import audit_splits, load_non_mri, non_mri_entry
from core.data.dataset import FileRecord
from core.inference.ood import CT_REASON, CT_RULE, ct_gate, skull_ring
from core.preprocess import PreprocessSpec, preprocess
from core.data.synthetic import fake_scan
from tests.conftest import REPO, require_real_data, require_shipped_weights
from tools.ct_audit import REPORT, choose_rule, contact_sheets, flags

SPEC = PreprocessSpec()


def _head(size: int = 256):
    """Normalised elliptic radius (1 at the head's edge) of a centred head filling most of the frame."""
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    return np.sqrt(xx ** 2 / 0.38 ** 2 + yy ** 2 / 0.45 ** 2), xx, yy


def synthetic_ct(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """A brain CT slice as an 8-bit JPEG holds it: thin soft scalp, a thick saturated skull, a flat grey brain
    (little grey/white contrast) with dark ventricles."""
    r, xx, yy = _head(size)
    img = np.zeros((size, size))
    img[r <= 1.0] = 0.35  # scalp
    img[r <= 0.97] = 1.0  # bone, far above the brain window
    brain = r <= 0.88
    img[brain] = 0.40 + rng.normal(0, 0.015, brain.sum())
    for cx in (-0.05, 0.05):  # lateral ventricles
        img[((xx - cx) ** 2 / 0.03 ** 2 + yy ** 2 / 0.10 ** 2) < 1] = 0.15
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def synthetic_t1(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An MRI T1 slice: a bright scalp-fat ring (the hard case), dark cortical bone inside it, grey cortex,
    brighter white matter, dark ventricles."""
    r, xx, yy = _head(size)
    img = np.zeros((size, size))
    img[r <= 1.0] = 0.95  # scalp fat
    img[r <= 0.94] = 0.06  # cortical bone: dark on MRI, a few pixels thick
    img[r <= 0.90] = 0.50 + rng.normal(0, 0.03, (r <= 0.90).sum())  # cortex
    white = r <= 0.60
    img[white] = 0.72 + rng.normal(0, 0.03, white.sum())
    for cx in (-0.05, 0.05):
        img[((xx - cx) ** 2 / 0.03 ** 2 + yy ** 2 / 0.10 ** 2) < 1] = 0.12
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def synthetic_t2(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """An MRI T2 slice: grey scalp, dark bone, a thin bright CSF rim, grey brain, bright ventricles."""
    r, xx, yy = _head(size)
    img = np.zeros((size, size))
    img[r <= 1.0] = 0.45
    img[r <= 0.93] = 0.05
    img[r <= 0.86] = 0.95  # CSF over the convexity
    brain = r <= 0.84
    img[brain] = 0.42 + rng.normal(0, 0.04, brain.sum())
    for cx in (-0.05, 0.05):
        img[((xx - cx) ** 2 / 0.03 ** 2 + yy ** 2 / 0.10 ** 2) < 1] = 0.95
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _measure(img: np.ndarray):
    return skull_ring(preprocess(img, SPEC).image)


def test_ct_like_head_is_gated(rng):
    ring = _measure(synthetic_ct(rng))
    assert ring.ring_closure == 1.0 and ring.ring_thickness >= 0.04, ring
    assert ring.below_ring > 0.9 and ring.bright_brain < 0.01 and 0.3 < ring.brain_level < 0.5, ring
    assert ring.margin() >= 1.0
    assert ct_gate(preprocess(synthetic_ct(rng), SPEC).image) == CT_REASON


@pytest.mark.parametrize("make", [synthetic_t1, synthetic_t2], ids=["t1_fat_ring", "t2_csf_rim"])
def test_mri_like_heads_are_not_gated(rng, make):
    pre = preprocess(make(rng), SPEC)
    ring = skull_ring(pre.image)
    assert ring.margin() < 1.0, ring
    assert ct_gate(pre.image) is None
    if make is synthetic_t1:  # the bright ring is there; the dark bone band inside it is what tells MRI apart
        assert ring.ring_closure == 1.0 and ring.below_ring < 0.5, ring


def test_training_phantoms_blank_and_tiny_images_are_not_gated(rng):
    for k in range(4):  # what train.py --dry-run and the other tests feed the model
        assert ct_gate(preprocess(fake_scan(rng, 256, k), SPEC).image) is None
    assert skull_ring(np.zeros((160, 160), np.float32)).margin() < 1.0
    assert ct_gate(np.zeros((160, 160), np.float32)) is None
    assert ct_gate(np.ones((40, 40), np.float32)) is None
    assert ct_gate(rng.random((160, 160)).astype(np.float32)) is None


def test_measures_are_deterministic_and_match_the_uint8_copy(rng):
    """The polar resampling must not read uninitialised memory (it did without WARP_FILL_OUTLIERS), and the
    float crop and its 8-bit copy (the training cache) must give the same measures."""
    image = preprocess(synthetic_t1(rng), SPEC).image
    u8 = (image * 255 + 0.5).astype(np.uint8)
    first = skull_ring(image)
    for _ in range(10):
        assert skull_ring(image.copy()) == first
    assert skull_ring(u8) == first


def test_predictor_flags_a_ct_slice_with_the_ct_reason(tiny_predictor, rng):
    pred, _ = tiny_predictor.predict(synthetic_ct(rng))
    assert pred.ood and pred.ood_reason == CT_REASON, pred
    photo = tiny_predictor.predict(np.dstack([synthetic_ct(rng), np.zeros((256, 256), np.uint8),
                                              np.zeros((256, 256), np.uint8)]))[0]
    assert "colour" in photo.ood_reason  # the cheaper image gates come first
    mri, _ = tiny_predictor.predict(synthetic_t1(rng))
    assert mri.ood_reason != CT_REASON


def test_declared_rule_envelope_then_tightening():
    ops = {k: op for k, (op, _) in CT_RULE.items()}
    ct = {"ring_closure": np.array([0.56, 1.0]), "ring_thickness": np.array([0.043, 0.2]),
          "below_ring": np.array([0.77, 1.3]), "bright_brain": np.array([0.0, 0.093]),
          "brain_level": np.array([0.24, 0.486])}
    # one MRI slice inside the CT envelope, with ring closure 0.62: the closure cut-off rises past it
    mri = {"ring_closure": np.array([0.62, 0.3]), "ring_thickness": np.array([0.05, 0.01]),
           "below_ring": np.array([0.9, 0.2]), "bright_brain": np.array([0.0, 0.0]),
           "brain_level": np.array([0.4, 0.4])}
    rule = choose_rule(ct, mri, ops)
    assert rule == {"ring_closure": (">=", 0.65), "ring_thickness": (">=", 0.04), "below_ring": (">=", 0.75),
                    "bright_brain": ("<=", 0.1), "brain_level": ("<=", 0.5)}
    assert not flags(mri, rule).any() and flags(ct, rule).tolist() == [False, True]


def test_contact_sheets_never_go_inside_the_repo(tmp_path):
    imgs = np.zeros((3, 32, 32), np.uint8)
    with pytest.raises(SystemExit, match="must not go inside the repository"):
        contact_sheets(imgs, ["a", "b", "c"], REPO / "reports" / "sheets")
    assert len(contact_sheets(imgs, ["a", "b", "c"], tmp_path / "s")) == 1


def test_audit_counts_listed_non_mri_files_per_split(tmp_path):
    report = tmp_path / "ct.json"
    report.write_text(json.dumps({
        "labels": [{"path": "Training/notumor/Tr-no_1.jpg", "label": "CT"},
                   {"path": "Testing/notumor/Te-no_2.jpg", "label": "CT"},
                   {"path": "Testing/glioma/Te-gl_3.jpg", "label": "MRI"}],
        "gate": {"ct_missed": ["Testing/notumor/Te-no_2.jpg"]}}))
    listing = load_non_mri(report)
    assert listing["labels"] == {"notumor/Tr-no_1.jpg": "CT", "notumor/Te-no_2.jpg": "CT"}
    classes = ["glioma", "notumor"]
    splits = {"kaggle/train": [FileRecord("notumor/Tr-no_1.jpg", 1, source="kaggle"),
                               FileRecord("glioma/Tr-gl_9.jpg", 0, source="kaggle")],
              "kaggle/test": [FileRecord("notumor/Te-no_2.jpg", 1, source="kaggle"),
                              FileRecord("glioma/Te-gl_3.jpg", 0, source="kaggle")],
              "feltrin/train": [FileRecord("notumor/Tr-no_1.jpg", 1, source="feltrin")]}  # other source: ignored
    entry = non_mri_entry(splits, classes, listing)
    assert entry["files"] == {"CT": 2} and entry["flagged_by_ct_gate"] == 1
    assert entry["per_split"] == {"kaggle/train": {"CT": {"notumor": 1}}, "kaggle/test": {"CT": {"notumor": 1}}}
    records = {k: [FileRecord(r.path, r.label, sha256=f"{k}{i}", source=r.source) for i, r in enumerate(v)]
               for k, v in splits.items()}
    assert audit_splits(records, classes, non_mri=listing)[0]["non_mri"] == entry
    assert "non_mri" not in audit_splits(records, classes, non_mri=load_non_mri(tmp_path / "absent.json"))[0]


# --- real data (../shared) --------------------------------------------------------------------------------------

def test_report_matches_the_code_on_the_real_kaggle_files():
    """Every labelled file exists; the gate flags exactly the CT slices and MRI slices the report says."""
    root = require_real_data().parent
    report = json.loads(REPORT.read_text())
    labels = {e["path"]: e["label"] for e in report["labels"]}
    assert all((root / "brain-tumor-mri" / p).is_file() for p in labels)
    ct = sorted(p for p, lab in labels.items() if lab == "CT")
    assert len(ct) == report["non_mri"]["CT"]["files"]
    assert report["gate"]["rule_reproduced"] and report["gate"]["rule_shipped"] == {k: list(v) for k, v in
                                                                                     CT_RULE.items()}
    missed = set(report["gate"]["ct_missed"])
    for p in ct:
        gated = ct_gate(preprocess(root / "brain-tumor-mri" / p, SPEC).image) is not None
        assert gated == (p not in missed), p
    for key in report["gate"]["mri_flagged"]:
        path = root / "brain-tumor-mri" / key if key.split("/")[0] in ("Training", "Testing") else \
            root / "feltrin-44c" / key.split("/", 1)[1]
        if path.is_file():
            assert ct_gate(preprocess(path, SPEC).image) == CT_REASON, key


def test_shipped_model_flags_the_issue_ct_slice():
    """Issue 17, item 12: Testing/notumor/Te-no_0010.jpg was "Confident notumor"; now outside intended use."""
    import torch

    from core.model.checkpoint import load_bundle
    from core.inference.predictor import Predictor

    root = require_real_data()
    predictor = Predictor(load_bundle(require_shipped_weights()), torch.device("cpu"))
    pred, _ = predictor.predict(root / "Testing" / "notumor" / "Te-no_0010.jpg")
    assert pred.ood and pred.ood_reason == CT_REASON, pred
