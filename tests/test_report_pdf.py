"""core.report.pdf: the three PDF reports hold the result, model identity, per-source figures and the notice."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from core.report.pdf import KeyImage, batch_pdf, per_source_rows, single_scan_pdf, study_pdf
from core.report.sr import ModelIdentity, SeriesFinding

REPO = Path(__file__).resolve().parent.parent
MODEL = ModelIdentity("brain-mri-slice-classifier", "2.0.0", "f66abe6a" + "0" * 56, "hflip")
METRICS = {"sets": {
    "a_test": {"part": "test", "title": "Source A held-out", "n": 120,
               "detection": {"sensitivity": 0.9, "sensitivity_at_least_min": 0.95, "specificity": 0.97}},
    "a_val": {"part": "val", "title": "Source A validation", "n": 50, "detection": {"sensitivity": 0.5}},
}}


def _text(pdf: bytes) -> str:
    assert pdf.startswith(b"%PDF-")
    return pdf.decode("latin-1")


def test_per_source_rows_use_held_out_parts_and_the_readme_sensitivity():
    assert per_source_rows(METRICS) == [["Source A held-out", "120", "0.950", "0.970"]]
    assert per_source_rows(None) == []
    shipped = REPO / "weights" / "metrics.json"
    if shipped.is_file():
        rows = per_source_rows(json.loads(shipped.read_text()))
        assert rows and all(r[0].endswith(("held-out", "Testing", "leakage-free")) for r in rows)


def test_single_scan_pdf_holds_result_model_figures_notice_and_no_file_name():
    record = {"file_name": "Doe_Jane_SECRET-ID-123.dcm", "file_sha256": "ab" * 32, "predicted": "glioma",
              "confidence": 0.91, "probabilities": {"glioma": 0.91, "notumor": 0.05, "meningioma": 0.04},
              "uncertain": False, "out_of_distribution": False, "cam_method": "layercam", "cam_target": "glioma",
              "timestamp": "2026-11-30T21:00:00Z"}
    overlay = np.zeros((64, 64, 3), np.uint8)
    text = _text(single_scan_pdf(record, MODEL, METRICS, overlay, compress=False))
    for needle in ("glioma", "91.0 % confidence", "Research use only, not for diagnosis.", MODEL.weights_sha256,
                   "2.0.0", "Source A held-out", "0.950", "layercam", "/Subtype /Image"):
        assert needle in text, needle
    assert "Doe" not in text and "SECRET" not in text


def test_single_scan_pdf_outside_intended_use_hides_probabilities():
    record = {"file_sha256": "cd" * 32, "predicted": "glioma", "confidence": 0.99, "probabilities": {"glioma": 0.99},
              "out_of_distribution": True, "ood_reason": "a colour photo"}
    text = _text(single_scan_pdf(record, MODEL, None, compress=False))
    assert "Outside intended use: a colour photo" in text and "Probabilities" not in text
    assert "performance is unknown" in text


def test_study_and_batch_pdfs():
    keys = [KeyImage(f"slice {i}: glioma 0.9{i}", np.full((48, 64, 3), 40 * i, np.uint8)) for i in range(5)]
    text = _text(study_pdf(SeriesFinding(True, "glioma", 0.97, ["1.2.3", "1.2.4"]), MODEL, METRICS, n_slices=24,
                           key_images=keys, rule="k = 9 slices at t = 0.95", series_label="series 3, T1 AX",
                           compress=False))
    for needle in ("Tumour or lesion", "Glioma", "97.0 %", "2 of 24", "slice 4: glioma 0.94", "k = 9 slices",
                   "Research use only"):
        assert needle in text, needle
    rows = [{"predicted": "glioma", "uncertain": "False", "out_of_distribution": "False"},
            {"predicted": "notumor", "uncertain": "True", "out_of_distribution": "False"},
            {"error": "cannot decode"}]
    text = _text(batch_pdf(rows, MODEL, METRICS, compress=False))
    assert "Errors" in text and "50.0 %" in text and "Research use only" in text


@pytest.mark.parametrize("n", [1, 40])
def test_many_key_images_flow_onto_more_pages_with_the_notice_on_each(n):
    keys = [KeyImage(f"slice {i}", np.zeros((64, 64, 3), np.uint8)) for i in range(n)]
    text = _text(study_pdf(SeriesFinding(False, None, 0.1, []), MODEL, METRICS, n_slices=n, key_images=keys,
                           compress=False))
    pages = len(re.findall(r"/Type /Page\b(?!s)", text))
    assert pages >= (2 if n > 12 else 1)
    assert text.count("Research use only, not for diagnosis.  Page") == pages


def test_batch_pdf_counts_the_flags_of_real_batch_rows(tiny_predictor, tmp_path):
    """Rows as the batch review makes them (``core.review.folder``: the flag column is ``ood``, booleans)."""
    from app_support import make_labelled_folder, photo_png
    from core.review.folder import run_batch

    folder = make_labelled_folder(tmp_path / "set", per_class=1)
    (folder / "notumor" / "holiday.png").write_bytes(photo_png())
    rows = list(run_batch(tiny_predictor, folder))
    assert sum(bool(r["ood"]) for r in rows) >= 1
    text = _text(batch_pdf(rows, MODEL, None, compress=False))
    flagged = sum(bool(r["ood"]) for r in rows if not r["error"])
    after = text[text.index("(Outside intended use) Tj"):]
    assert re.search(r"\((\d+)\) Tj", after).group(1) == str(flagged)  # the value cell after its label
