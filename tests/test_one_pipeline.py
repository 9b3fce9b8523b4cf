"""One pipeline: every consumer predicts through ``core.inference.pipeline.stream``, and they all agree."""
from __future__ import annotations

import csv
import threading

import numpy as np
import pytest

import core.inference.pipeline as pipeline
from core.preprocess import preprocess
from app_support import make_labelled_folder


@pytest.fixture
def labelled(tmp_path):
    root = make_labelled_folder(tmp_path / "lab", per_class=3)  # 15 slices + one corrupt JPEG
    (root / "glioma" / "empty.png").write_bytes(b"")
    return root


@pytest.fixture
def spy(monkeypatch, tiny_predictor):
    """Counts the files each :func:`core.inference.pipeline.predict_batch` call predicts, and fails any forward pass made
    outside it (a second, duplicated loop)."""
    seen = {"files": 0, "calls": 0}
    inside = threading.local()
    real_batch, real_predict = pipeline.predict_batch, type(tiny_predictor).predict_preprocessed

    def counting(predictor, batch, *a, **kw):
        seen["calls"] += 1
        seen["files"] += len(batch.items)
        inside.on = True
        try:
            return real_batch(predictor, batch, *a, **kw)
        finally:
            inside.on = False

    def guarded(self, items, batch=None):
        assert getattr(inside, "on", False), "a forward pass outside core.inference.pipeline.predict_batch"
        return real_predict(self, items, batch)

    monkeypatch.setattr(pipeline, "predict_batch", counting)
    monkeypatch.setattr(type(tiny_predictor), "predict_preprocessed", guarded)
    return seen


def _readable(root) -> int:
    return sum(1 for p in root.rglob("*.png") if p.stat().st_size)


def test_every_consumer_goes_through_the_one_stream(labelled, tiny_predictor, spy, tmp_path):
    from core.review.folder import run_batch
    from core.evaluation.evaluate import run_labelled
    from tools.shift_eval import evaluate_shifts
    from ui.batch_job import BatchJob

    n = _readable(labelled)
    list(run_batch(tiny_predictor, labelled, tmp_path / "r.csv", chunk_size=4))
    assert spy["files"] == n and spy["calls"] == 4  # 17 files in batches of 4 (two of them unreadable)
    run_labelled(tiny_predictor, labelled)
    assert spy["files"] == 2 * n
    evaluate_shifts(tiny_predictor, labelled, ["none", "blur"], batch_size=8)
    assert spy["files"] == 4 * n
    job = BatchJob.start(tiny_predictor, labelled, label="lab", audit=None, uncertain_below=0.6)
    job._thread.join(60)
    assert spy["files"] == 5 * n


def test_consumers_agree_with_the_serial_path(labelled, tiny_predictor, tmp_path):
    """The rows of the CSV writer, the metrics accumulator, the stress test's unchanged row and the worker
    pipeline all equal a plain one-file-at-a-time prediction."""
    from core.review.folder import run_batch
    from core.evaluation.evaluate import run_labelled
    from tools.shift_eval import evaluate_shifts

    files = sorted(p for p in labelled.rglob("*") if p.is_file())
    serial = {}
    for f in files:
        try:
            serial[f.relative_to(labelled).as_posix()] = tiny_predictor.predict_preprocessed(
                [preprocess(f, tiny_predictor.spec)])[0]
        except Exception:  # noqa: BLE001 - unreadable: an error row below
            serial[f.relative_to(labelled).as_posix()] = None
    rows = {r["path"]: r for r in run_batch(tiny_predictor, labelled, tmp_path / "r.csv", chunk_size=4)}
    assert set(rows) == set(serial)
    for rel, s in serial.items():
        if s is None:
            assert rows[rel]["error"] and rows[rel]["predicted"] == ""
        else:
            assert rows[rel]["predicted"] == s.label
            for c, p in s.probabilities.items():
                assert float(rows[rel][f"p_{c}"]) == pytest.approx(p, abs=1e-5)
    run = run_labelled(tiny_predictor, labelled, batch_size=5)
    for rel, lg in zip(run.files, run.logits):
        np.testing.assert_allclose(lg, serial[rel].logits, atol=1e-5)
    assert len(run.errors) == 2
    shifted = evaluate_shifts(tiny_predictor, labelled, ["none"], batch_size=3)["none"]
    assert shifted["accuracy"] == pytest.approx(float((run.logits.argmax(1) == run.labels).mean()))
    in_workers = list(pipeline.stream(tiny_predictor, files, root=labelled, batch_size=4, num_workers=2))
    assert [r.path for r in in_workers] == [f.relative_to(labelled).as_posix() for f in files]
    for r in in_workers:
        assert (r.prediction is None) == (serial[r.path] is None)
        if r.prediction is not None:
            np.testing.assert_allclose(r.prediction.logits, serial[r.path].logits, atol=1e-5)


def test_transform_applies_to_decoded_pixels_and_errors_say_where(labelled, tiny_predictor):
    files = sorted(labelled.rglob("*.png"))
    seen = []

    def flip(pixels: np.ndarray, index: int) -> np.ndarray:
        seen.append(index)
        assert pixels.dtype == np.float32 and pixels.ndim == 2
        return pixels[:, ::-1]

    flipped = list(pipeline.stream(tiny_predictor, files, root=labelled, transform=flip))
    assert [r.index for r in flipped] == list(range(len(files)))
    plain = {r.path: r for r in pipeline.stream(tiny_predictor, files, root=labelled)}
    readable = [r for r in flipped if r.prediction is not None]
    assert sorted(seen) == [r.index for r in readable]
    assert any(not np.allclose(r.prediction.logits, plain[r.path].prediction.logits) for r in readable)
    empty = next(r for r in flipped if r.path.endswith("empty.png"))
    assert empty.failed_at == "read" and empty.sha256 == ""

    def broken(pixels, index):
        raise RuntimeError("boom")

    two = [labelled / r.path for r in readable[:2]]
    out = list(pipeline.stream(tiny_predictor, two, root=labelled, transform=broken))
    assert all(r.failed_at == "transform" and "boom" in r.error for r in out)


def test_cancel_stops_reading_and_memory_stays_bounded(labelled, tiny_predictor):
    cancel = threading.Event()
    files = sorted(labelled.rglob("*.png"))
    got = []
    for r in pipeline.stream(tiny_predictor, iter(files), root=labelled, batch_size=2, cancel=cancel):
        got.append(r)
        cancel.set()
    assert len(got) == 2  # the batch in hand is finished, nothing more is read
    assert all(r.item is None for r in got)  # images are dropped once predicted


def test_a_list_file_is_a_source_and_resume_skips_what_is_done(labelled, tiny_predictor, tmp_path):
    from core.batch import main
    from core.review.folder import run_batch

    listed = sorted(p.relative_to(labelled).as_posix() for p in labelled.rglob("*.png"))
    lst = labelled / "files.txt"
    lst.write_text("# slices to review\n" + "\n".join(listed[:5]) + "\n\n")
    out = tmp_path / "r.csv"
    rows = list(run_batch(tiny_predictor, lst, out))
    assert [r["path"] for r in rows] == listed[:5]
    lst.write_text("\n".join(listed))
    more = list(run_batch(tiny_predictor, lst, out, resume=True))
    assert [r["path"] for r in more] == listed[5:]
    with open(out, newline="") as f:
        assert sorted(r["path"] for r in csv.DictReader(f)) == listed
    (tmp_path / "blob.txt").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="not a folder or a text file"):
        list(run_batch(tiny_predictor, tmp_path / "blob.txt"))
    assert main([str(tmp_path / "missing"), "--out", str(out), "--no-audit"]) == 2


def test_core_imports_and_explains_without_ray(monkeypatch):
    """``--engine ray`` without Ray installed is a clear message, not a traceback."""
    import builtins

    import core.review.ray_engine as ray_engine

    real_import = builtins.__import__

    def no_ray(name, *a, **kw):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(RuntimeError, match=r"install ray\[data\]==" + ray_engine.RAY_PIN.replace(".", r"\.")):
        ray_engine.import_ray()
