"""Batch review of a folder of studies (``core.review.studies`` and ``python -m core.batch --studies``): a row per
series, a per-slice CSV, broken series as error rows, resume, Stop, the audit trail, and no patient tag out."""
from __future__ import annotations

import csv
import threading
from pathlib import Path

import numpy as np
import pytest

from core.io.read_series import read_series
from core.inference.study import predict_series, slice_inputs
from core.review.studies import SERIES_COLUMNS, count_study_inputs, iter_study_inputs, run_studies, slice_columns
from tests.study_support import (SECRETS, dicom_series, display_slices, enhanced_mr, nifti_bytes, synthetic_brain,
                                 zip_bytes)


def _write(folder: Path, files: list[tuple[str, bytes]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files:
        (folder / name).write_bytes(data)


@pytest.fixture
def studies(tmp_path) -> Path:
    """Five inputs, seven series: a NIfTI, a DICOM folder (patient tags set), a zip of two series, a multi-frame
    file, a broken series (a slice missing) and a damaged NIfTI."""
    root = tmp_path / "studies"
    vol = synthetic_brain((64, 64, 12))
    slices = display_slices(vol)
    _write(root / "p1", [("flair.nii.gz", nifti_bytes(vol, np.diag([1.0, 1.0, 2.0, 1.0]), ("L", "P", "S")))])
    _write(root / "p2" / "dicom", dicom_series(slices, uid="1.2.3.10", number=2, desc="AX FLAIR"))
    two = (dicom_series(slices, uid="1.2.3.11", number=3, desc="AX T1")
           + [(f"t2_{n}", d) for n, d in dicom_series(slices[:9], uid="1.2.3.12", number=4, desc="AX T2")])
    _write(root / "p3", [("study.zip", zip_bytes(two))])
    _write(root / "p4", [("enhanced.dcm", enhanced_mr(slices))])
    broken = [f for i, f in enumerate(dicom_series(slices, uid="1.2.3.13", number=5, desc="AX BROKEN",
                                                   shuffle=False)) if i != 4]
    _write(root / "p5" / "series", broken)
    _write(root / "p6", [("damaged.nii.gz", b"\x1f\x8b not a volume")])
    (root / "notes.txt").write_text("not a study")
    return root


def _read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_of_studies_gives_a_row_per_series_and_a_slice_csv(tiny_predictor, studies, tmp_path):
    from core.review.audit_trail import AuditTrail

    assert [i.path.relative_to(studies).as_posix() for i in iter_study_inputs(studies)] == [
        "p1/flair.nii.gz", "p2/dicom", "p3/study.zip", "p4", "p5/series", "p6/damaged.nii.gz"]
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    out, sl = tmp_path / "series.csv", tmp_path / "slices.csv"
    rows = list(run_studies(tiny_predictor, studies, out, sl, audit=audit, chunk=8))
    assert rows == [{k: r[k] for k in SERIES_COLUMNS} for r in rows]
    written = _read(out)
    assert [r["path"] for r in written] == [r["path"] for r in rows]
    assert len(written) == 7 and list(written[0]) == list(SERIES_COLUMNS)
    ok = [r for r in written if not r["error"]]
    bad = [r for r in written if r["error"]]
    assert len(ok) == 5 and len(bad) == 2
    assert {r["path"] for r in bad} == {"p5/series", "p6/damaged.nii.gz"}
    assert "missing slice" in next(r["error"] for r in bad if r["path"] == "p5/series")
    assert "not a readable NIfTI" in next(r["error"] for r in bad if r["path"] == "p6/damaged.nii.gz")
    for r in ok:  # the series verdict, type, positive range, top slices, flags and the model
        assert r["verdict"].startswith(("Tumour", "No tumour", "Outside intended use"))
        assert r["n_slices"] in ("12", "9") and r["top_slices"] and r["uncertain"] in ("True", "False")
        assert r["model_sha256"] == tiny_predictor.bundle.sha256 and "contiguous slices" in r["rule"]
        assert (r["positive_first"] == "") == (r["positive_last"] == "")
    assert sorted(r["series"] for r in ok if r["path"] == "p3/study.zip") == ["Series 3 · AX T1", "Series 4 · AX T2"]
    assert next(r for r in ok if r["path"] == "p4")["format"] == "DICOM multi-frame"
    slices = _read(sl)
    assert list(slices[0]) == slice_columns(tiny_predictor.class_names)
    assert len(slices) == sum(int(r["n_slices"]) for r in ok)
    by_series = {}
    for s in slices:
        by_series.setdefault(s["series_sha256"], []).append(int(s["slice"]))
    assert all(v == list(range(1, len(v) + 1)) for v in by_series.values())
    # One audit record per series, identified by content hash; no names and no patient tag anywhere.
    assert audit.count() == 7
    blob = out.read_text() + sl.read_text() + audit.export_csv()
    assert "AX FLAIR" in blob
    assert not any(s in blob for s in SECRETS)
    assert "damaged.nii.gz" not in audit.export_csv() and "flair.nii.gz" not in audit.export_csv()


def test_the_rows_are_what_the_study_page_shows(tiny_predictor, studies, tmp_path):
    from core.io.read_series import read_paths
    from core.inference.study import load_rule, review_series

    rows = list(run_studies(tiny_predictor, studies / "p1", tmp_path / "s.csv", chunk=8))
    review = review_series(tiny_predictor, read_paths([studies / "p1" / "flair.nii.gz"])[0].series, load_rule(),
                           chunk=8)
    assert len(rows) == 1 and rows[0]["verdict"] == review.verdict_text()
    assert rows[0]["max_tumour_probability"] == round(float(review.tumour_prob.max()), 6)
    slices = _read(tmp_path / "s_slices.csv")
    np.testing.assert_allclose([float(s["tumour_probability"]) for s in slices], review.tumour_prob, atol=1e-6)


def test_stop_then_resume_completes_without_duplicates(tiny_predictor, studies, tmp_path):
    out = tmp_path / "series.csv"
    cancel = threading.Event()
    first = []
    for row in run_studies(tiny_predictor, studies, out, cancel=cancel, chunk=8):
        first.append(row)
        cancel.set()  # Stop after the first input: its rows are kept, nothing else is read
    assert [r["path"] for r in first] == ["p1/flair.nii.gz"] and len(_read(out)) == 1
    rest = list(run_studies(tiny_predictor, studies, out, resume=True, chunk=8))
    assert "p1/flair.nii.gz" not in [r["path"] for r in rest]
    rows = _read(out)
    assert len(rows) == 7 and len({(r["path"], r["series"]) for r in rows}) == 7
    slices = _read(tmp_path / "series_slices.csv")
    assert len(slices) == len({(s["series_sha256"], s["path"], s["slice"]) for s in slices})
    # Resuming into a CSV of other columns is refused before anything is written.
    other = tmp_path / "other.csv"
    other.write_text("path,predicted\nx,y\n")
    with pytest.raises(ValueError, match="other columns"):
        list(run_studies(tiny_predictor, studies, other, resume=True))
    assert other.read_text() == "path,predicted\nx,y\n"


def test_outside_the_allowed_roots_is_refused(tiny_predictor, studies, tmp_path):
    from core.io.files import PathNotAllowedError

    with pytest.raises(PathNotAllowedError):
        list(run_studies(tiny_predictor, studies, allowed_roots=[tmp_path / "elsewhere"]))


def test_cli_detects_a_folder_of_studies(tiny_bundle_dir, studies, tmp_path, capsys):
    from core import batch

    out = tmp_path / "cli.csv"
    assert count_study_inputs(studies) == 6
    code = batch.main([str(studies), "--out", str(out), "--weights", str(tiny_bundle_dir), "--no-audit",
                       "--device", "cpu", "--chunk-size", "8"])
    assert code == 0
    assert len(_read(out)) == 7 and len(_read(tmp_path / "cli_slices.csv")) > 0
    assert "7 series rows (2 unreadable)" in capsys.readouterr().out
    code = batch.main([str(studies), "--studies", "--out", str(out), "--weights", str(tiny_bundle_dir),
                       "--no-audit", "--device", "cpu", "--resume"])
    assert code == 0 and len(_read(out)) == 7  # everything was done: resume adds nothing


def test_series_predictions_through_the_pipeline_match_a_direct_forward_pass(tiny_predictor):
    """``core.inference.study`` predicts through the one pipeline's stages; the probabilities and flags are those of a
    plain forward pass over the same preprocessed slices, in padded batches of the same shape."""
    s = read_series(dicom_series(display_slices(synthetic_brain((64, 64, 20)))))[0].series
    chunk = 8
    probs, ood, blank, reasons, scale = predict_series(tiny_predictor, s, "axial", chunk)
    items = slice_inputs(tiny_predictor, s, "axial", scale, range(s.n_slices()))
    assert not blank.any()
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        preds = tiny_predictor.predict_preprocessed(part + [part[-1]] * (chunk - len(part)))[:len(part)]
        for k, p in enumerate(preds, start=start):
            expected = np.float32([p.probabilities[c] for c in tiny_predictor.class_names])
            np.testing.assert_array_equal(probs[k], expected)
            assert ood[k] == p.ood and reasons[k] == p.ood_reason


# -- the Batch review page, "Folder of studies" mode ----------------------------------------------------------

def _series_table(at):
    return next(d.value for d in at.dataframe if "verdict" in d.value.columns)


def _study_page_run(app_env, studies_src: Path, wait: bool = True):
    import shutil

    from test_app_batch import batch_page, finish

    shutil.copytree(studies_src, app_env.root / "studies")
    at = batch_page()
    at.segmented_control(key="batch_mode").set_value("Folder of studies").run()
    at.text_input(key="batch_folder").input("studies").run()
    at.button(key="batch_start").click().run()
    assert not at.exception, at.exception
    return finish(at) if wait else at


def test_batch_page_reviews_a_folder_of_studies(tiny_bundle_dir, studies, tmp_path, monkeypatch):
    from app_support import all_text, make_app_env
    from core.review.audit_trail import AuditTrail

    env = make_app_env(tmp_path / "app", tiny_bundle_dir, monkeypatch)
    at = _study_page_run(env, studies)
    assert not at.exception, at.exception
    job = at.session_state["batch_job"]
    assert job.status == "done" and job.done == 6 and job.n_series == 7 and job.n_errors == 2
    table = _series_table(at)
    assert len(table) == 7 and (table["error"] != "").sum() == 2
    assert any("missing slice" in e for e in table["error"])
    text = all_text(at)
    assert "Reviewed **6** studies (7 series)" in text
    assert [b.label for b in at.get("download_button")] == ["Series CSV", "Per-slice CSV"]
    series_csv, slices_csv = job.series_csv(), job.slices_csv()
    assert series_csv.splitlines()[0].split(",")[:3] == ["path", "series", "series_sha256"]
    assert len(slices_csv.splitlines()) - 1 == int(table["n_slices"].sum())
    audit = AuditTrail(env.audit_path).export_csv()
    assert not any(s in text + series_csv + slices_csv + audit for s in SECRETS)


def test_batch_page_stop_keeps_the_finished_studies(tiny_bundle_dir, studies, tmp_path, monkeypatch):
    from app_support import make_app_env
    from test_app_batch import slow_predictions, wait_until

    env = make_app_env(tmp_path / "app", tiny_bundle_dir, monkeypatch)
    slow_predictions(monkeypatch, 1.0)
    at = _study_page_run(env, studies, wait=False)
    job = at.session_state["batch_job"]
    wait_until(lambda: job.done >= 1)
    at.button(key="batch_stop").click().run()
    assert not at.exception and not job.running
    assert 1 <= job.done < 6
    assert any(f"Stopped after **{job.done}** of 6 studies" in w.value for w in at.warning)
    assert len(_series_table(at)) == job.n_series
