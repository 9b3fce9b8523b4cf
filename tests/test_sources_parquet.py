"""List-file sources (paths and URIs read through fsspec) and Parquet shards, on the local engine (the Ray
engine's runs of both are in test_ray_engine.py)."""
from __future__ import annotations

import csv
import subprocess
import sys
import textwrap

import pytest

from app_support import make_labelled_folder
from core.batch import main
from core.review.folder import csv_columns, run_batch
from ray_support import REPO, shard_rows_as_csv_text

pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed")


def _rows(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def labelled(tmp_path):
    return make_labelled_folder(tmp_path / "lab", per_class=3)  # 12 slices + one corrupt JPEG


def test_a_list_of_paths_and_uris_reviews_each_and_bad_uris_become_error_rows(labelled, tiny_bundle_dir,
                                                                             tiny_predictor, tmp_path):
    files = sorted(p for p in labelled.rglob("*") if p.is_file())
    entries = ([files[0].relative_to(labelled).as_posix()]  # relative to the list file's folder
               + [f.as_uri() for f in files[1:]]  # file:// URIs, read through fsspec
               + ["s3://no-such-bucket/scan.png", "unknown://host/scan.png", (labelled / "gone.png").as_uri()])
    lst = labelled / "list.txt"
    lst.write_text("# an archive's slices\n" + "\n".join(entries) + "\n")
    out, shards = tmp_path / "r.csv", tmp_path / "shards"
    assert main([str(lst), "--out", str(out), "--weights", str(tiny_bundle_dir), "--no-audit",
                 "--parquet-dir", str(shards), "--chunk-size", "4"]) == 0
    rows = _rows(out)
    assert [r["path"] for r in rows] == entries  # in list order, every entry a row
    by_path = {r["path"]: r for r in rows}
    errors = {p: r["error"] for p, r in by_path.items() if r["error"]}
    corrupt = entries[files.index(labelled / "glioma" / "corrupt.jpg")]
    assert set(errors) == {corrupt, *entries[-3:]} and "corrupt.jpg" in errors[corrupt]
    assert errors["s3://no-such-bucket/scan.png"].startswith("scan.png: s3:// is not readable here")
    assert "unsupported URI scheme unknown://" in errors["unknown://host/scan.png"]
    assert errors[entries[-1]] == "gone.png: not found at its URI"
    assert "no-such-bucket" not in errors["s3://no-such-bucket/scan.png"]  # messages name the file only
    # a URI row predicts what the folder run predicts for the same file
    folder_rows = {r["path"]: r for r in run_batch(tiny_predictor, labelled)}
    for f in files[1:]:
        got, want = by_path[f.as_uri()], folder_rows[f.relative_to(labelled).as_posix()]
        assert (got["predicted"], got["file_sha256"], got["true_label"]) == (
            want["predicted"], want["file_sha256"], want["true_label"])
    # the shards hold the CSV's rows and columns, typed
    assert shard_rows_as_csv_text(shards) == rows
    table = pq.read_table(shards)
    assert table.column_names == csv_columns(tiny_predictor.class_names)
    assert str(table.schema.field("confidence").type) == "double" and str(table.schema.field("ood").type) == "bool"


def test_shards_split_continue_on_resume_and_refuse_other_columns(tmp_path):
    from core.review.shards import ParquetShards

    cols = csv_columns(["a", "b"])
    rows = [dict.fromkeys(cols, "") | {"path": f"f{i}.png", "p_a": i / 10, "ood": i % 2 == 0} for i in range(7)]
    shards = ParquetShards(tmp_path / "s", cols, rows_per_shard=3)
    shards.add(rows[:5])
    assert [f.name for f in shards.shards()] == ["part-00000.parquet"]  # 2 rows still buffered
    shards.close()
    again = ParquetShards(tmp_path / "s", cols, resume=True, rows_per_shard=3)
    again.add(rows[5:])
    again.close()
    assert [f.name for f in again.shards()] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert pq.read_table(tmp_path / "s").column("path").to_pylist() == [r["path"] for r in rows]
    with pytest.raises(ValueError, match="other columns"):
        ParquetShards(tmp_path / "s", csv_columns(["a", "b", "c"]), resume=True)
    ParquetShards(tmp_path / "s", cols)  # a new run (no resume) starts the folder afresh
    assert not list((tmp_path / "s").glob("*.parquet"))


def test_resume_after_a_killed_driver_catches_the_shards_up_from_the_csv(labelled, tiny_bundle_dir,
                                                                         tiny_predictor, tmp_path):
    out, shards = tmp_path / "r.csv", tmp_path / "shards"
    # A driver that dies (os._exit: no finally, no buffered shard written) after handing out 6 rows.
    script = textwrap.dedent(f"""
        import os, torch
        from core.review.folder import run_batch
        from core.model.checkpoint import load_bundle
        from core.inference.predictor import Predictor
        p = Predictor(load_bundle({str(tiny_bundle_dir)!r}), torch.device("cpu"))
        for n, _ in enumerate(run_batch(p, {str(labelled)!r}, {str(out)!r}, chunk_size=3,
                                        parquet_dir={str(shards)!r}), start=1):
            if n == 6:
                os._exit(9)
    """)
    killed = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert len(_rows(out)) == 6 and not list(shards.glob("*.parquet"))
    rest = list(run_batch(tiny_predictor, labelled, out, chunk_size=3, resume=True, parquet_dir=shards))
    assert len(rest) == 7
    rows = _rows(out)
    assert len({r["path"] for r in rows}) == 13
    assert shard_rows_as_csv_text(shards) == rows


def test_without_pyarrow_the_shards_are_a_message(monkeypatch, tmp_path):
    import builtins

    from core.review.shards import PYARROW_HINT, ParquetShards

    real_import = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError("No module named 'pyarrow'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(RuntimeError, match="needs pyarrow"):
        ParquetShards(tmp_path / "s", csv_columns(["a"]))
    assert "pip install pyarrow" in PYARROW_HINT
