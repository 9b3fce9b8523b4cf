"""The Ray Data engine against a real local Ray (no mocks): same rows as the local engine, resume across
engines, a killed worker, and a two-node cluster on this host joined through ``--ray-address``.

Small on purpose (tens of generated images): Ray's start-up dominates. Every Ray process a test starts is
stopped by it (``ray.shutdown()``, or the ``ray start --block`` processes it owns)."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray", reason="ray[data] is not installed (pip install -r requirements.txt)")
pytest.importorskip("ray.data", reason="Ray Data is not installed (ray[data])")

from core.review.folder import csv_columns, local_engine, run_batch  # noqa: E402
from core.review.ray_engine import REPO, RayEngine  # noqa: E402
from core.data.synthetic import fake_scan  # noqa: E402
from ray_support import free_port, ray_cluster, ray_env, shard_rows_as_csv_text  # noqa: E402

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def _folder(root: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(11)
    for i in range(n):
        d = root / CLASSES[i % 4]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fake_scan(rng, int(rng.integers(120, 200)), i % 4)).save(d / f"s{i:03d}.png")
    (root / "glioma" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # every bad file is still a row
    (root / "notumor" / "empty.png").write_bytes(b"")
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _same_rows(a: list[dict], b: list[dict], class_names: list[str]) -> None:
    assert [r["path"] for r in a] == [r["path"] for r in b]
    probs = {f"p_{c}" for c in class_names} | {"confidence"}
    for x, y in zip(a, b):
        for k in x:
            if k in probs and x[k] != "":
                assert abs(float(x[k]) - float(y[k])) <= 1e-5, (x["path"], k)
            else:
                assert x[k] == y[k], (x["path"], k)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("ray-in"))


def test_ray_rows_equal_local_rows_and_only_the_driver_audits(local_ray, folder, tiny_predictor, tiny_bundle_dir,
                                                              tmp_path):
    from core.review.audit_trail import AuditTrail

    local = list(run_batch(tiny_predictor, folder, tmp_path / "local.csv", chunk_size=8))
    audit = AuditTrail(tmp_path / "audit.sqlite3")
    engine = RayEngine(tiny_bundle_dir, num_workers=1)
    on_ray = list(run_batch(tiny_predictor, folder, tmp_path / "ray.csv", chunk_size=8, engine=engine, audit=audit))
    assert len(on_ray) == 42 and sum(bool(r["error"]) for r in on_ray) == 2
    _same_rows(local, on_ray, tiny_predictor.class_names)
    _same_rows(_rows(tmp_path / "local.csv"), _rows(tmp_path / "ray.csv"), tiny_predictor.class_names)
    assert list(_rows(tmp_path / "ray.csv")[0]) == csv_columns(tiny_predictor.class_names)
    assert audit.count() == 42 and {r["file_sha256"] for r in audit.recent(-1)} == {r["file_sha256"] for r in on_ray}


def test_a_list_file_of_paths_and_uris_on_ray_gives_the_local_rows_and_shards(local_ray, folder, tiny_predictor,
                                                                               tiny_bundle_dir, tmp_path):
    """Paths, ``file://`` URIs (read through fsspec) and URIs that cannot be read: the same rows on both engines,
    the bad ones as error rows in place, and the Parquet shards hold the CSV's rows."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lst = tmp_path / "files.txt"
    lst.write_text("\n".join([f.as_uri() for f in files[:10]] + [str(f) for f in files[10:20]]
                             + ["unknown://bucket/a.png", (folder / "gone.png").as_uri()]))
    local = list(run_batch(tiny_predictor, lst, tmp_path / "local.csv", chunk_size=8))
    on_ray = list(run_batch(tiny_predictor, lst, tmp_path / "ray.csv", chunk_size=8, parquet_dir=tmp_path / "pq",
                            engine=RayEngine(tiny_bundle_dir, num_workers=1)))
    _same_rows(local, on_ray, tiny_predictor.class_names)
    assert [r["path"] for r in on_ray][:10] == [f.as_uri() for f in files[:10]]
    errors = {r["path"]: r["error"] for r in on_ray if r["error"]}
    assert "unsupported URI scheme unknown://" in errors["unknown://bucket/a.png"]
    assert "gone.png: not found" in errors[(folder / "gone.png").as_uri()]
    assert shard_rows_as_csv_text(tmp_path / "pq") == _rows(tmp_path / "ray.csv")


def test_the_bench_section_measures_both_parts_on_the_running_ray(local_ray, folder, tiny_predictor,
                                                                  tiny_bundle_dir):
    """``bench.sections.ray`` (small here): engine throughputs with identical rows, and the driver's RSS over a
    generated list file; it uses the Ray this process is on and leaves it running."""
    from bench.sections.ray import ray_vs_local

    files = sorted(p for p in folder.rglob("*.png") if p.stat().st_size)[:12]
    r = ray_vs_local(tiny_predictor, str(tiny_bundle_dir), files, batch_size=4, local_workers=(0,), rounds=1,
                memory_files=60)
    assert r["engines"]["identical_rows"] and set(r["engines"]["images_per_s"]) == {"local, in-process", "ray"}
    # Where the overhead lies: seconds to the first row, and the rate from there on, per engine.
    assert set(r["engines"]["first_row_s"]) == set(r["engines"]["images_per_s_after_first_row"]) == \
        {"local, in-process", "ray"}
    assert r["engines"]["ratio_ray_to_best_local_after_first_row"] > 0
    mem = r["driver_memory"]
    assert mem["rows"] == 60 and mem["error_rows"] == 0 and len(mem["rss_samples"]) >= 2
    assert ray.is_initialized()


def test_a_model_actor_imports_the_heatmap_library_only_for_heatmaps(tiny_bundle_dir):
    """Each actor is a new process, and its imports are most of a run's start-up: without --cam-method it never
    loads the CAM library (and scikit-learn under it)."""
    code = ("import sys; from core.model.checkpoint import load_bundle; from core.review.ray_engine import "
            "_PredictStage; w = sys.argv[1]; sha = load_bundle(w).sha256; _PredictStage(w, sha, 'cpu', 'auto', 4, "
            "None); plain = 'pytorch_grad_cam' in sys.modules; s = _PredictStage(w, sha, 'cpu', 'auto', 4, "
            "'gradcam'); print(plain, 'pytorch_grad_cam' in sys.modules, s.explainer is not None)")
    out = subprocess.run([sys.executable, "-c", code, str(tiny_bundle_dir)], cwd=REPO, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "True", "True"]


def test_resume_works_across_engines(local_ray, folder, tiny_predictor, tiny_bundle_dir, tmp_path):
    out = tmp_path / "r.csv"
    gen = run_batch(tiny_predictor, folder, out, chunk_size=4)
    first = [next(gen) for _ in range(10)]
    gen.close()  # the local run stops part-way
    rest = list(run_batch(tiny_predictor, folder, out, chunk_size=4, resume=True,
                          engine=RayEngine(tiny_bundle_dir, num_workers=1)))
    assert not {r["path"] for r in first} & {r["path"] for r in rest}
    rows = _rows(out)
    assert len(rows) == 42 and len({r["path"] for r in rows}) == 42
    full = list(run_batch(tiny_predictor, folder, tmp_path / "full.csv", engine=local_engine()))
    by_path = {r["path"]: r for r in rows}
    _same_rows(_rows(tmp_path / "full.csv"), [by_path[r["path"]] for r in full], tiny_predictor.class_names)


def _map_workers() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any("MapWorker" in part for part in (p.info["cmdline"] or []))]


def test_a_killed_worker_loses_and_duplicates_no_row(local_ray, tmp_path, tiny_predictor, tiny_bundle_dir):
    folder = _folder(tmp_path / "in", n=120)
    out = tmp_path / "r.csv"
    killed = []
    for n, _ in enumerate(run_batch(tiny_predictor, folder, out, chunk_size=4,
                                    engine=RayEngine(tiny_bundle_dir, num_workers=1)), start=1):
        if n == 8 and not killed:
            killed = _map_workers()
            for pid in killed:
                os.kill(pid, signal.SIGKILL)
    assert killed, "no Ray Data worker process found to kill"
    rows = _rows(out)
    assert len(rows) == 122 and len({r["path"] for r in rows}) == 122
    assert {r["path"] for r in rows if r["error"]} == {"glioma/broken.jpg", "notumor/empty.png"}


def test_two_nodes_on_one_host_through_ray_address(local_ray, folder, tiny_predictor, tiny_bundle_dir, tmp_path):
    """A head (``ray start --head --port``) and a second node joining it; the CLI runs there through
    ``--ray-address``, and a killed driver's run is finished by ``--resume``; the Parquet shards, which the
    killed driver had not written yet, are caught up from the CSV."""
    ray.shutdown()  # this process leaves the module's local Ray; the CLI joins the cluster below
    with ray_cluster(nodes=2) as address:
        out, shards = tmp_path / "cluster.csv", tmp_path / "shards"
        cmd = [sys.executable, "-m", "core.batch", str(folder), "--out", str(out), "--weights", str(tiny_bundle_dir),
               "--engine", "ray", "--ray-address", address, "--num-workers", "2", "--chunk-size", "4",
               "--no-audit", "--parquet-dir", str(shards)]
        driver = subprocess.Popen(cmd, cwd=REPO, env=ray_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and driver.poll() is None and (not out.exists() or len(_rows(out)) < 6):
            time.sleep(0.1)
        driver.kill()  # the driver dies mid-run
        driver.wait()
        partial = {r["path"] for r in _rows(out)}
        assert partial
        done = subprocess.run(cmd + ["--resume"], cwd=REPO, env=ray_env(), capture_output=True, text=True,
                              timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
    rows = _rows(out)
    assert len(rows) == 42 and len({r["path"] for r in rows}) == 42
    local = list(run_batch(tiny_predictor, folder, tmp_path / "local.csv"))
    by_path = {r["path"]: r for r in rows}
    _same_rows(_rows(tmp_path / "local.csv"), [by_path[r["path"]] for r in local], tiny_predictor.class_names)
    assert shard_rows_as_csv_text(shards) == rows


def test_an_unreachable_address_is_a_message_not_a_traceback(tiny_bundle_dir, tmp_path):
    cmd = [sys.executable, "-m", "core.batch", str(_folder(tmp_path / "in", n=4)), "--out", str(tmp_path / "r.csv"),
           "--weights", str(tiny_bundle_dir), "--engine", "ray", "--ray-address", f"127.0.0.1:{free_port()}",
           "--no-audit"]
    done = subprocess.run(cmd, cwd=REPO, env=ray_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "no Ray cluster answers at 127.0.0.1:" in done.stderr and "Traceback" not in done.stderr
