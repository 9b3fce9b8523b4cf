"""The batch review on Ray Data: the same two pipeline stages, spread over a cluster.

    python -m core.batch SOURCE --engine ray [--ray-address ADDR] [--num-workers N] [--gpus-per-worker G]

Stage 1, :func:`core.inference.pipeline.load_file` (read, SHA-256, decode, preprocess), runs as Ray tasks on any CPU of
the cluster; stage 2, :func:`core.inference.pipeline.predict_batch`, runs in a pool of actors that each load the model
once (:func:`core.model.checkpoint.load_bundle`, weights SHA-256 verified, and refused unless it is the driver's
model). Ray Data streams blocks between them with back-pressure and keeps input order, and the driver turns
results into rows: only the driver writes the CSV and the audit trail (``core.review.folder.run_batch``), so there is
one writer and resume works whichever engine wrote a row.

Ray is optional: ``core`` never imports it at module level, and :class:`RayEngine` says how to install it.
Every node needs the project at the same path as the driver (workers import ``core`` from it) and the weights
folder at the same path; nothing is uploaded. Files are read where stage 1 runs: paths from storage every node
mounts at the same path, URIs of a list file through fsspec (each node then needs the scheme's fsspec package and
its credentials). The dashboard's batch page joins the cluster it is configured with (``ray_address``) through
:meth:`RayEngine.connect` and keeps the connection for the server's life. Results travel between stages as
:class:`core.inference.pipeline.Result` objects in a Python-object column (a 160 px float32 image, about 100 kB, per
readable file until it is predicted).
"""
from __future__ import annotations

import os
import socket
import threading
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from core.paths import REPO_ROOT
from core.io.files import is_uri
from core.io.types import DEFAULT_LIMITS, DecodeLimits
from core.inference.pipeline import PipelineBatch, Result, Source, load_file, predict_batch

RAY_PIN = "2.60.0"  # the version requirements.txt installs
REPO = REPO_ROOT
WINDOW = 8192  # paths handed to Ray per dataset: the driver never holds a whole archive's list


class RayUnavailableError(RuntimeError):
    """Ray is not installed, or the cluster cannot be joined. ``str(err)`` is user-facing (CLI and dashboard)."""


def import_ray():
    """The ``ray`` module with Ray Data, or a :class:`RayUnavailableError` that says how to install it.

    Ray's usage statistics are switched off first (unless the environment says otherwise): a clinical tool sends
    nothing home, and Ray Data's collector threads query a Prometheus that is not there and log each failure with
    a traceback; on CPython 3.11 formatting a traceback in one thread while Streamlit compiles a page in another
    can fail the page ("AST constructor recursion depth mismatch").
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DATA_USAGE_DISABLED", "1")
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate extra
    except ImportError:
        raise RayUnavailableError(f"install ray[data]=={RAY_PIN} to use --engine ray "
                           f"(.venv/bin/pip install 'ray[data]=={RAY_PIN}')") from None
    return ray


def _load_stage(batch: dict[str, np.ndarray], spec, root: str | None, limits: DecodeLimits,
                hash_files: bool) -> dict[str, np.ndarray]:
    """Stage 1 (a Ray task): {"i": int64 (n,), "path": str (n,)} -> {"i", "result": object (n,) of Result}."""
    return {"i": batch["i"], "result": _objects(
        [load_file(str(p) if is_uri(p) else Path(p), spec, root, limits, hash_file=hash_files, index=int(i))
         for i, p in zip(batch["i"], batch["path"])])}


def _objects(items: list) -> np.ndarray:
    """A 1-D object array (np.array would try to unpack dataclasses' fields). Ray Data carries it as a Python
    object column: Ray serialises it between processes, this module never unpickles anything itself."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class _PredictStage:
    """Stage 2 (a Ray actor): loads the model once, then predicts blocks of loaded files."""

    def __init__(self, weights: str, model_sha256: str, device: str, precision: str, batch_size: int,
                 cam_method: str | None):
        from core.model.checkpoint import load_bundle
        from core.model.device import select_device
        from core.errors import CheckpointError
        from core.inference.predictor import Predictor

        bundle = load_bundle(weights)  # the weights' SHA-256 is checked against their card here
        if bundle.sha256 != model_sha256:
            raise CheckpointError(f"{weights} on this node holds model {bundle.sha256[:12]}…, the driver serves "
                                  f"{model_sha256[:12]}…: copy the same weights to every node")
        # Ray hides the GPUs an actor did not reserve, so "auto" is CPU on a CPU actor.
        self.predictor = Predictor(bundle, select_device(device), precision, batch_size)
        self.cam_method = cam_method
        self.explainer = None
        if cam_method:  # imported only then: the CAM library (and scikit-learn under it) adds ~1.3 s per actor
            from core.explain.cam import Explainer

            self.explainer = Explainer(self.predictor)  # this actor's own, for its model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = predict_batch(self.predictor, PipelineBatch(list(batch["result"]), None), self.cam_method,
                            explainer=self.explainer)
        return {"i": batch["i"], "result": _objects(out)}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise :class:`RayUnavailableError` unless something accepts a TCP connection at ``address`` ("host:port",
    or "ray://host:port"); "auto" (the cluster ``ray start`` left on record here) is left to Ray."""
    target = address.split("://", 1)[-1].strip()
    if target == "auto" or not target:
        return
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnavailableError(f"the Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise RayUnavailableError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one with "
                                  "`ray start --head --port=PORT` on the head node, or fix the address") from None


class RayEngine:
    """A :data:`core.review.folder.Engine` that runs the pipeline on Ray Data (local Ray, or a cluster's address).

    Args:
        weights: the model folder, at the same path on every node.
        address: a running cluster to join (``ray start --head``'s address, or "auto"); None starts Ray
            on this machine (unless this process already called ``ray.init``).
        num_workers: model actors (default: one per GPU with ``gpus_per_worker``, else one per CPU).
        gpus_per_worker: GPUs each actor reserves (0: CPU).
        device: the actors' device ("auto": CUDA where the actor has a GPU, else CPU).
        num_cpus: with no address, the CPUs the local Ray may use (default: all).
    """

    def __init__(self, weights: str | Path, *, address: str | None = None, num_workers: int | None = None,
                 gpus_per_worker: float = 0.0, device: str = "auto", num_cpus: int | None = None):
        self.ray = import_ray()
        self.weights = str(Path(weights).resolve())
        self.address, self.num_workers, self.gpus = address, num_workers, float(gpus_per_worker)
        self.device, self.num_cpus = device, num_cpus
        self._started = False

    def connect(self) -> None:
        """Join the cluster at ``address`` (or start Ray on this machine) unless this process already is on one.

        Raises :class:`RayUnavailableError` with a plain message when nothing answers at the address (checked
        with a TCP connection first, so a wrong address fails in seconds, not after Ray's retries) or Ray
        refuses to connect (e.g. another Ray version on the cluster)."""
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address:
            check_reachable(self.address)
        # Workers import core from the project at the driver's path (the same path on every node).
        env = {"env_vars": {"PYTHONPATH": str(REPO)}}
        try:
            # "local": a new Ray on this machine, never a stale one that an earlier `ray start` left on record.
            ray.init(address=self.address or "local", num_cpus=None if self.address else self.num_cpus,
                     include_dashboard=False, log_to_driver=False, runtime_env=env)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError… all mean "cannot join"
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray"
            # Ray turns token authentication on for `ray start` when ~/.ray/auth_token exists, and a driver given
            # an explicit address only sends a token when told to: the commonest reason a reachable head refuses.
            hint = (" If the cluster uses token authentication, set RAY_AUTH_MODE=token for this process and give "
                    "it the cluster's token (~/.ray/auth_token or RAY_AUTH_TOKEN).") if self.address else ""
            raise RayUnavailableError(f"cannot start or join {where}: {type(exc).__name__}: {exc}.{hint}") from None
        self._started = True

    def close(self) -> None:
        """Disconnect (and stop the local Ray this engine started)."""
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
        self._started = False

    def _actors(self) -> int:
        if self.num_workers:
            return int(self.num_workers)
        if self.gpus:
            return max(1, int(self.ray.cluster_resources().get("GPU", 0) // self.gpus))
        # CPU-only, each actor decodes and predicts (fused stages, one CPU each): one per CPU keeps all busy.
        return max(1, int(self.ray.cluster_resources().get("CPU", 1)))

    def __call__(self, predictor, files: Iterable[Source], *, root: str | Path | None = None,
                 cam_method: str | None = None, batch_size: int | None = None,
                 limits: DecodeLimits = DEFAULT_LIMITS, cancel: threading.Event | None = None,
                 hash_files: bool = True) -> Iterator[Result]:
        """Results in input order, as :func:`core.inference.pipeline.stream` yields them."""
        ray = self.ray
        self.connect()
        ray.data.DataContext.get_current().execution_options.preserve_order = True
        bs = batch_size or predictor.batch_size
        actors = self._actors()
        files = iter(files)
        start = 0
        while not (cancel is not None and cancel.is_set()):
            window = [{"i": start + k, "path": str(f)} for k, f in enumerate(islice(files, WINDOW))]
            if not window:
                return
            start += len(window)
            ds = ray.data.from_items(window, override_num_blocks=max(1, len(window) // bs))
            ds = ds.map_batches(_load_stage, batch_size=bs, num_cpus=1, fn_kwargs={
                "spec": predictor.spec, "root": str(root) if root is not None else None, "limits": limits,
                "hash_files": hash_files})
            # With GPUs the stages differ in resources and stay apart (decode tasks on every CPU feed the GPU
            # actors); CPU-only, Ray fuses them into each actor, which saves a copy between processes.
            ds = ds.map_batches(_PredictStage, batch_size=bs, compute=ray.data.ActorPoolStrategy(size=actors),
                                num_gpus=self.gpus or None,
                                num_cpus=1, fn_constructor_kwargs={
                                    "weights": self.weights, "model_sha256": predictor.bundle.sha256,
                                    "device": self.device, "precision": predictor.precision, "batch_size": bs,
                                    "cam_method": cam_method})
            for batch in ds.iter_batches(batch_size=bs, batch_format="numpy"):
                yield from batch["result"]
                if cancel is not None and cancel.is_set():
                    return
