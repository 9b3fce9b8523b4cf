"""A Ray cluster on this host for tests: a head started with ``ray start --head --port`` (and more nodes joining
it), each a ``ray start --block`` process the test owns and stops, so no Ray outlives its test."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict[str, str]:
    """The environment of the nodes and of a driver subprocess: workers import ``core`` from this checkout.

    Token authentication off: ``ray start`` turns it on when ``~/.ray/auth_token`` exists (any earlier local
    ``ray.init`` writes one) and a driver given an explicit address does not, so a test's cluster would
    otherwise refuse drivers depending on what ran before it. A cluster without it accepts any driver."""
    return {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    """Until the head's GCS accepts connections (how long it takes varies with the machine's load)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the Ray head on port {port} did not start")


@contextmanager
def ray_cluster(nodes: int = 1, cpus_per_node: int = 1) -> Iterator[str]:
    """A head (plus ``nodes - 1`` nodes joining it) on localhost; yields its address "127.0.0.1:PORT"."""
    ray_bin = str(Path(sys.executable).with_name("ray"))
    port, env, procs = free_port(), ray_env(), []
    try:
        procs.append(subprocess.Popen([ray_bin, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                                       f"--num-cpus={cpus_per_node}", "--include-dashboard=false", "--block"],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        _wait_for_port(port, procs[0])
        time.sleep(2)  # the GCS answers before the head's raylet has registered
        for _ in range(nodes - 1):
            procs.append(subprocess.Popen([ray_bin, "start", f"--address=127.0.0.1:{port}",
                                           "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--block"],
                                          env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True))
        if nodes > 1:
            time.sleep(6)  # the second raylet registers with the head
        yield f"127.0.0.1:{port}"
    finally:
        for p in reversed(procs):  # SIGTERM to `ray start --block` stops the processes of its node
            p.terminate()
        for p in reversed(procs):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        # `ray start` leaves the head's address on record, where a later ray.init() would look for it
        record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
        if record.exists() and str(port) in record.read_text():
            record.unlink()


def shard_rows_as_csv_text(folder: Path) -> list[dict]:
    """The rows of the Parquet shards in ``folder`` as the CSV writer writes their cells (None -> "", bools
    and floats as ``str``), to compare them with the CSV's rows read back."""
    import pyarrow.parquet as pq

    rows = pq.read_table(sorted(Path(folder).glob("part-*.parquet"))).to_pylist() if any(
        Path(folder).glob("part-*.parquet")) else []
    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in rows]
