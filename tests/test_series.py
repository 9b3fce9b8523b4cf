"""Series reading (NIfTI in any axis order, DICOM series, multi-frame DICOM, broken series) and the series verdict."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.io.read_series import read_series
from core.inference.study import SeriesRule, longest_run, review_series, summarise
from core.explain.study_cams import slice_cam
from tests.study_support import (SECRETS, dicom_series, display_slices, enhanced_mr, localiser, nifti_bytes,
                                 synthetic_brain, zip_bytes)

ZOOMS = (1.0, 1.2, 2.5)
AFFINE = np.diag([*ZOOMS, 1.0])
AFFINE[:3, 3] = (-30, -40, -20)


def _only(loads):
    assert len(loads) == 1, [(l.label, l.error) for l in loads]
    assert loads[0].error is None, loads[0].error
    return loads[0].series


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_nifti_axis_orders_give_the_same_slices(plane):
    vol = synthetic_brain()
    series = {codes: _only(read_series([(f"brain_{''.join(codes)}.nii.gz", nifti_bytes(vol, AFFINE, codes))]))
              for codes in [("R", "A", "S"), ("L", "P", "S"), ("P", "S", "R")]}
    ref = series[("R", "A", "S")]
    assert ref.zooms == pytest.approx(ZOOMS)
    for codes, s in series.items():
        assert s.n_slices(plane) == ref.n_slices(plane), codes
        assert s.zooms == pytest.approx(ZOOMS), codes
        for k in range(0, ref.n_slices(plane), 5):
            np.testing.assert_array_equal(s.plane_image(k, plane), ref.plane_image(k, plane), err_msg=str(codes))


def test_axial_display_orientation_is_radiological():
    vol = synthetic_brain()
    s = _only(read_series([("b.nii", nifti_bytes(vol, np.diag([1.0, 1.0, 1.0, 1.0]), ("L", "P", "S"), gz=False))]))
    # The blob is right, anterior, superior: on a superior axial slice it is at the top (anterior) and on the
    # image's left (the patient's right), as radiologists read.
    k = int(np.argmax((vol > 1000).sum(axis=(0, 1))))
    img = s.plane_image(k)
    ys, xs = np.nonzero(img > 1000)
    h, w = img.shape
    assert ys.mean() < h / 2 and xs.mean() < w / 2
    assert s.acquired_plane == "axial"


def test_nifti_non_square_pixels_are_resampled_in_plane_only():
    vol = synthetic_brain()
    s = _only(read_series([("b.nii.gz", nifti_bytes(vol, AFFINE))]))
    assert s.n_slices() == vol.shape[2]  # never a new slice
    img = s.plane_image(3)
    assert img.shape == (round(vol.shape[1] * 1.2), vol.shape[0])  # rows: Y at 1.2 mm -> 1 mm pixels


def _dicom_volume():
    vol = synthetic_brain((64, 64, 18))
    return vol, display_slices(vol)


def test_dicom_series_shuffled_gives_ordered_slices_and_no_patient_tag():
    vol, slices = _dicom_volume()
    files = dicom_series(slices, spacing=(2.5, 1.0, 1.0))
    s = _only(read_series(files))
    assert s.n_slices() == len(slices) and s.zooms == pytest.approx((1.0, 1.0, 2.5))
    for k in range(len(slices)):
        np.testing.assert_allclose(s.plane_image(k), slices[k].astype(np.uint16).astype(np.float32))
    assert s.source_format == "DICOM series" and s.acquired_plane == "axial"
    text = repr(s.tags) + s.name + " ".join(s.warnings) + s.key
    assert "FLAIR" in s.name and not any(x in text for x in SECRETS)
    # The key is the content's, not the file order's.
    assert _only(read_series(files[::-1])).key == s.key


def test_dicom_same_volume_as_nifti():
    vol, slices = _dicom_volume()
    dic = _only(read_series(dicom_series(slices, spacing=(1.0, 1.0, 1.0))))
    nii = _only(read_series([("v.nii.gz", nifti_bytes(np.round(vol), np.diag([1.0, 1.0, 1.0, 1.0]), ("P", "S", "R")))]))
    for plane in ("axial", "coronal", "sagittal"):
        np.testing.assert_allclose(dic.plane_image(5, plane), nii.plane_image(5, plane), atol=1.0)


def test_zip_of_two_series_and_a_nifti_each_read():
    _, slices = _dicom_volume()
    a = dicom_series(slices, uid="1.2.3.1", number=1, desc="AX T1")
    b = dicom_series(slices[:10], uid="1.2.3.2", number=2, desc="AX T2")
    loads = read_series([("study.zip", zip_bytes([(f"t1/{n}", d) for n, d in a] + [(f"t2/{n}", d) for n, d in b])), ("vol.nii.gz", nifti_bytes(synthetic_brain(), AFFINE))])
    assert sorted(l.series.n_slices() for l in loads if l.series) == [10, 18, 24]
    assert all(l.error is None for l in loads)


def test_multiframe_enhanced_mr():
    _, slices = _dicom_volume()
    s = _only(read_series([("enhanced.dcm", enhanced_mr(slices))]))
    assert s.source_format == "DICOM multi-frame" and s.n_slices() == len(slices)
    for k in (0, 7, len(slices) - 1):
        np.testing.assert_allclose(s.plane_image(k), slices[k].astype(np.uint16).astype(np.float32))


def test_monochrome1_series_reads_as_the_same_volume():
    _, slices = _dicom_volume()
    a = _only(read_series(dicom_series(slices)))
    b = _only(read_series(dicom_series(slices, monochrome1=True)))
    for k in (0, 9):
        np.testing.assert_allclose(a.plane_image(k), b.plane_image(k))


def test_instance_number_fallback_with_warning():
    _, slices = _dicom_volume()
    s = _only(read_series(dicom_series(slices, positions=False)))
    np.testing.assert_allclose(s.plane_image(4), slices[4].astype(np.uint16).astype(np.float32))
    assert any("InstanceNumber" in w for w in s.warnings)


def test_localiser_is_dropped_with_a_warning():
    _, slices = _dicom_volume()
    s = _only(read_series(dicom_series(slices) + [localiser()]))
    assert s.n_slices() == len(slices)
    assert any("localiser" in w for w in s.warnings)


# -- broken series: one clear message each, and the other series of the upload still read -----------------------

def _broken(files_fn):
    _, slices = _dicom_volume()
    good = dicom_series(slices[:8], uid="9.9.9", number=9, desc="GOOD")
    loads = read_series(files_fn(slices) + good)
    ok = [l for l in loads if l.series is not None]
    bad = [l for l in loads if l.error is not None]
    assert len(ok) == 1 and ok[0].series.n_slices() == 8  # the other series is unaffected
    assert len(bad) == 1
    assert not any(x in bad[0].error for x in SECRETS)
    return bad[0].error


def test_missing_slice():
    err = _broken(lambda s: [f for i, f in enumerate(dicom_series(s, shuffle=False)) if i != 6])
    assert "missing slice" in err and "2.50 mm apart" in err


def test_duplicated_slice():
    err = _broken(lambda s: dicom_series(s, shuffle=False) + [("COPY.dcm", dicom_series(s, shuffle=False)[4][1])])
    assert "duplicated slice" in err


def test_mixed_orientation():
    def mixed(s):
        a = dicom_series(s[:9], shuffle=False)
        b = [localiser(size=64)[1] for _ in range(6)]
        return a + [(f"S{i}.dcm", x) for i, x in enumerate(b)]
    assert "mixed orientation" in _broken(mixed)


def test_mixed_size():
    def mixed(s):
        big = np.pad(s[:9], ((0, 0), (0, 16), (0, 16)))
        return dicom_series(s[:9]) + [(f"B{n}", d) for n, d in dicom_series(big, seed=2)]
    assert "mixed size" in _broken(mixed)


def test_slice_that_will_not_decode():
    def corrupt(s):
        files = dicom_series(s, shuffle=False)
        name, data = files[3]
        files[3] = (name, data[:-3000])  # pixel data cut short
        return files
    err = _broken(corrupt)
    assert "will not decode" in err and "slice 4 of 18" in err


def test_unreadable_files_and_archives():
    loads = read_series([("notes.txt", b"hello"), ("bad.zip", b"PK\x03\x04garbage"),
                         ("v.nii.gz", b"\x1f\x8b not gzip")])
    assert len(loads) == 3 and all(l.error for l in loads)


# -- the verdict -----------------------------------------------------------------------------------------------

def test_rule_and_summary():
    names = ["glioma", "meningioma", "notumor", "other_lesion", "pituitary"]
    z = 12
    probs = np.zeros((z, 5), np.float32)
    probs[:, 2] = 1.0
    probs[4:8] = [0.8, 0.05, 0.1, 0.03, 0.02]
    ood = np.zeros(z, bool)
    r = summarise(probs, ood, np.zeros(z, bool), names, SeriesRule(3, 0.5))
    assert r.tumour and r.tumour_type == "glioma" and r.run == (4, 7) and r.top_slices[0] in range(4, 8)
    assert r.summary()["positive_range"] == [5, 8]
    assert not summarise(probs, ood, np.zeros(z, bool), names, SeriesRule(5, 0.5)).tumour
    ood[5] = True  # an OOD slice breaks the run
    assert not summarise(probs, ood, np.zeros(z, bool), names, SeriesRule(3, 0.5)).tumour
    assert longest_run(np.array([0, 1, 1, 0, 1, 1, 1], bool)) == (4, 6)
    json.dumps(r.summary())


def test_review_and_cam_on_tiny_model(tiny_predictor, tiny_explainer):
    s = _only(read_series(dicom_series(_dicom_volume()[1])))
    seen = []
    r = review_series(tiny_predictor, s, SeriesRule(2, 0.5), chunk=8, progress=lambda d, n: seen.append(d))
    assert r.probabilities.shape == (18, len(tiny_predictor.class_names))
    np.testing.assert_allclose(r.probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert not r.blank.any()
    assert seen == [8, 16, 18]
    # Chunked and single-pass predictions agree (the last chunk is padded, not a new shape).
    r1 = review_series(tiny_predictor, s, SeriesRule(2, 0.5), chunk=64)
    np.testing.assert_allclose(r.probabilities, r1.probabilities, atol=1e-4)
    cam, item = slice_cam(tiny_explainer, s, r, 9)
    assert cam.heatmap.shape == s.plane_image(9).shape and 0 <= cam.heatmap.min() and cam.heatmap.max() <= 1
    assert not any(x in json.dumps(r.summary()) for x in SECRETS)


def test_blank_slices_are_not_predicted_and_never_positive(tiny_predictor, tiny_explainer):
    vol = synthetic_brain((64, 64, 16))
    vol[:, :, :4] = 0.0  # empty slices below the head, as in a skull-stripped volume
    s = _only(read_series([("b.nii.gz", nifti_bytes(vol, np.eye(4)))]))
    r = review_series(tiny_predictor, s, SeriesRule(1, 0.0), chunk=8)
    assert r.blank[:4].all() and not r.blank[4:].any()
    assert np.isnan(r.probabilities[:4]).all() and r.ood[:4].all() and not r.positive[:4].any()
    assert (r.tumour_prob[:4] == 0).all() and all("blank" in x for x in r.ood_reasons[:4])
    assert r.run is None or r.run[0] >= 4
    cam, _ = slice_cam(tiny_explainer, s, r, 2)  # a blank slice can still be shown
    assert cam.heatmap.shape == s.plane_image(2).shape


def test_real_brats_volume_with_the_shipped_model_matches_the_record():
    """On ../shared (skipped without it): a held-out BraTS FLAIR series reviewed with the shipped model and the
    recorded rule gives the verdict and positive range written in reports/series_rule.json."""
    from pathlib import Path

    from conftest import require_shipped_weights
    from core.model.checkpoint import load_bundle
    from core.model.device import select_device
    from core.inference.predictor import Predictor
    from core.io.read_series import read_paths
    from core.inference.study import RULE_FILE, load_rule, rule_model_sha256

    case = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes" / "brats2013" / "brats2013_pat0005_1"
    if not (case / "flair.nii.gz").is_file():
        pytest.skip(f"shared volumes not found at {case}; skipping the real-volume check")
    bundle = load_bundle(require_shipped_weights())
    if rule_model_sha256() != bundle.sha256:
        pytest.skip("reports/series_rule.json was recorded for another model")
    record = next(s for s in json.loads(RULE_FILE.read_text())["test"]["series"]
                  if s["id"] == "brats/brats2013_pat0005_1/flair")
    s = _only(read_paths([case / "flair.nii.gz"]))
    assert s.volume.shape == (240, 240, 155)
    r = review_series(Predictor(bundle, select_device("cpu")), s, load_rule())
    assert r.verdict_text() == record["called"]
    # Within two slices: another CPU may run fp32 where this one ran bf16, which can move a slice over t.
    got = r.summary()["positive_range"]
    assert got and all(abs(a - b) <= 2 for a, b in zip(got, record["positive_range"]))
    lo, hi = record["labelled_tumour_range"]
    assert got[0] <= hi and got[1] >= lo  # overlaps the labelled tumour


def test_slice_cams_keep_maps_and_compute_the_neighbours_ahead(tiny_predictor, tiny_explainer):
    from core.explain.study_cams import SliceCams

    s = _only(read_series(dicom_series(_dicom_volume()[1])))
    r = review_series(tiny_predictor, s, SeriesRule(2, 0.5), chunk=8)
    cams = SliceCams(tiny_explainer, s, r, "gradcam", limit=5)
    assert cams.neighbours(0) == [1, 2, 3] and cams.neighbours(9) == [10, 8, 11, 7, 12, 6]
    cam, item = cams.get(9)
    ref, _ = slice_cam(tiny_explainer, s, r, 9, "gradcam")
    np.testing.assert_array_equal(cam.heatmap, ref.heatmap)
    assert cams.get(9)[0] is cam  # kept: the second look computes nothing
    cams.prefetch(cams.neighbours(9, around=2))
    assert cams.wait(timeout=120)
    assert all(cams.cached(j) for j in (10, 8, 11, 7))
    np.testing.assert_array_equal(cams.get(10)[0].heatmap, slice_cam(tiny_explainer, s, r, 10, "gradcam")[0].heatmap)
    cams.prefetch([0, 1, 2])  # over the limit of 5: the least recently shown are dropped
    assert cams.wait(timeout=120)
    assert cams.cached(2) and not cams.cached(9)
