"""Shared fixtures: a real Dask scheduler and two single-threaded workers on 127.0.0.1."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does: see workflows/cli.py

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from distributed import Client

BIN = Path(sys.executable).parent


def _start_cluster(tmp: Path, n_workers: int, worker_args: tuple[str, ...] = ()) -> tuple[str, list[subprocess.Popen]]:
    tmp.mkdir(parents=True, exist_ok=True)
    scheduler_file = tmp / "scheduler.json"
    env = os.environ | {"DASK_DISTRIBUTED__WORKER__DAEMON": "False", "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(scheduler_file)],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "scheduler.log", "w"), env=env)]
    deadline = time.time() + 60
    while not scheduler_file.exists():
        if time.time() > deadline or procs[0].poll() is not None:
            raise RuntimeError("dask scheduler did not start: " + (tmp / "scheduler.log").read_text())
        time.sleep(0.1)
    for i in range(n_workers):
        procs.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
             "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}",
             "--memory-limit", "4GiB", *worker_args],
            stdout=subprocess.DEVNULL, stderr=open(tmp / f"worker{i}.log", "w"), env=env))
    import json

    address = json.loads(scheduler_file.read_text())["address"]
    with Client(address, timeout="60s") as client:
        client.wait_for_workers(n_workers, timeout=120)
    return address, procs


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Address of a real scheduler with two worker processes on loopback, started as subprocesses."""
    address, procs = _start_cluster(tmp_path_factory.mktemp("dask"), n_workers=2)
    yield address
    for proc in reversed(procs):
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture()
def dask_client(dask_address: str) -> Iterator[Client]:
    with Client(dask_address, timeout="60s") as client:
        yield client


def tiny_phrase_table(root: Path, rows: int = 400) -> tuple[Path, Path, Path]:
    """A learnable toy phrase table (part-00000.parquet) and its two vocabularies, under ``root``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rnnenc.pipeline.vocab import Vocabulary

    table = root / "table"
    table.mkdir(parents=True)
    sources = [f"w{i} w{(i * 7) % 50}" for i in range(rows)]
    targets = [f"m{(i * 7) % 50} m{i % 50}" for i in range(rows)]
    pq.write_table(pa.table({"source": sources, "target": targets}), table / "part-00000.parquet")
    Vocabulary([f"w{i}" for i in range(rows)], lang="en").save(root / "vocab.en.txt")
    Vocabulary([f"m{i}" for i in range(50)], lang="fr").save(root / "vocab.fr.txt")
    return table, root / "vocab.en.txt", root / "vocab.fr.txt"
