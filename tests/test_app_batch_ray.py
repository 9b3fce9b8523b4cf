"""AppTest: the batch page's engine choice. Local stays the default; a review sent to a Ray cluster (a real one,
started here with ``ray start --head --port``) shows its progress and rows like a local one, and Stop ends it;
no address, an address where nothing answers and a missing Ray are messages on the page, never tracebacks."""
from __future__ import annotations

import builtins
import time

import pytest

from app_support import make_app_env, make_labelled_folder
from ray_support import free_port, ray_cluster
from test_app_batch import batch_page, finish, run_folder

RAY = "Ray cluster"


@pytest.fixture
def app_env(tiny_bundle_dir, tmp_path, monkeypatch):
    return make_app_env(tmp_path, tiny_bundle_dir, monkeypatch)


def _start_on_ray(at, folder: str):
    at.text_input(key="batch_folder").input(folder).run()
    at.radio(key="batch_engine").set_value(RAY).run()
    return at.button(key="batch_start").click().run()


def _refused(at) -> str:
    assert not at.exception and "batch_job" not in at.session_state  # nothing started, no traceback
    return " ".join(e.value for e in at.error)


def test_local_is_the_default_and_a_cluster_that_cannot_be_used_is_a_message(app_env, monkeypatch):
    make_labelled_folder(app_env.root / "set", per_class=1)
    at = batch_page()
    assert at.radio(key="batch_engine").value == "Local (default)"
    assert "No Ray cluster is configured" in _refused(_start_on_ray(at, "set"))

    monkeypatch.setenv("MRI_RAY_ADDRESS", f"127.0.0.1:{free_port()}")  # nothing listens there
    at = batch_page()
    assert "no Ray cluster answers at 127.0.0.1:" in _refused(_start_on_ray(at, "set"))

    real_import = builtins.__import__

    def no_ray(name, *a, **kw):  # this process without Ray installed
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    at = batch_page()
    assert "install ray[data]" in _refused(_start_on_ray(at, "set"))
    monkeypatch.setattr(builtins, "__import__", real_import)
    at = run_folder(batch_page(), "set")  # the local engine (the default) is untouched by all this
    assert any("Reviewed **5** files" in s.value for s in at.success)


def test_a_review_runs_on_a_real_ray_cluster_with_progress_rows_audit_and_stop(app_env, monkeypatch,
                                                                               tiny_predictor):
    ray = pytest.importorskip("ray", reason="ray[data] is not installed")
    from core.review.audit_trail import AuditTrail
    from core.review.folder import run_batch

    make_labelled_folder(app_env.root / "set", per_class=2)  # 8 slices + one corrupt JPEG
    make_labelled_folder(app_env.root / "big", per_class=40, size=96)  # 161 files
    with ray_cluster(nodes=1, cpus_per_node=2) as address:
        monkeypatch.setenv("MRI_RAY_ADDRESS", address)
        try:
            at = _start_on_ray(batch_page(), "set")
            job = at.session_state["batch_job"]
            assert job.engine_label == f"the Ray cluster at {address}"
            at = finish(at)
            assert not at.exception
            assert any("Reviewed **9** files" in s.value and "1 unreadable" in s.value and address in s.value
                       for s in at.success)
            table = at.dataframe(key="batch_table").value
            local = {r["path"]: r for r in run_batch(tiny_predictor, app_env.root / "set")}
            assert sorted(table["path"]) == sorted(local)
            for _, r in table.iterrows():
                assert r["predicted"] == local[r["path"]]["predicted"] and bool(r["error"]) == bool(
                    local[r["path"]]["error"])
            assert AuditTrail(app_env.audit_path).count() == 9  # written by this (driver) process

            # The cluster predicts 161 small files in a second or two, before a Stop could land; this process
            # (the driver) writes each chunk of rows to the audit trail, so a slow trail keeps the run going.
            record_many = AuditTrail.record_many

            def slow_record_many(self, *a, **k):
                time.sleep(1.0)
                return record_many(self, *a, **k)

            monkeypatch.setattr(AuditTrail, "record_many", slow_record_many)
            at = _start_on_ray(at, "big")  # Stop as soon as it runs
            job = at.session_state["batch_job"]
            assert job.running and at.button(key="batch_stop")  # the progress panel, as for a local review
            deadline = time.monotonic() + 120  # Stop once the cluster's first rows are in (a Stop before any row
            while job.done == 0 and job.running and time.monotonic() < deadline:  # is test_app_units' case)
                time.sleep(0.05)
            at.button(key="batch_stop").click().run()
            assert job.wait(120) and job.status == "cancelled" and job.done < job.total == 161
            at = at.run()
            assert any("Stopped after" in w.value for w in at.warning) and not at.exception
            assert len(at.dataframe(key="batch_table").value) == job.done
        finally:
            from ui.batch_job import cancel_all

            cancel_all()
            ray.shutdown()  # this process leaves the cluster before the cluster stops


def test_the_ray_address_comes_from_the_config_file_or_the_environment(tmp_path):
    from app_config import load_config

    assert load_config({}, config_file=tmp_path / "none.toml").ray_address is None  # local only by default
    toml = tmp_path / "app.toml"
    toml.write_text('ray_address = "10.0.0.1:6379"\n')
    assert load_config({}, config_file=toml).ray_address == "10.0.0.1:6379"
    assert load_config({"MRI_RAY_ADDRESS": " head:6380 "}, config_file=toml).ray_address == "head:6380"
