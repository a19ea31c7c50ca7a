"""Fault injection: stages run against a real external ``dask scheduler`` with two workers on
127.0.0.1 (started as the shared loopback fixture starts them), and workers or the scheduler are
killed at set points. Every run must end by itself with one line naming what was lost, leave no
trusted output (no manifest, no temporary), and a later run must produce the full output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import _start_cluster
from rnnenc.pipeline.artifacts import MANIFEST_NAME, REPORT_NAME

EN = "the cat sat on the mat near the door of the little house ."
FR = "le chat était assis sur le tapis près de la porte de la petite maison ."
LINES = 20_000
TIMEOUT = "20"  # RNNENC_LOST_WORKERS_TIMEOUT: the bounded wait once no worker is left (a loaded machine starts a worker in 5-10 s)


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path]:
    src, tgt = tmp_path / "c.en", tmp_path / "c.fr"
    src.write_text("".join(f"{EN} {i}\n" for i in range(LINES)))
    tgt.write_text("".join(f"{FR} {i}\n" for i in range(LINES)))
    return src, tgt


@pytest.fixture
def cluster(tmp_path: Path):
    """A scheduler and two workers without nannies (a killed worker stays dead)."""
    address, procs = _start_cluster(tmp_path / "cluster", n_workers=2, worker_args=("--no-nanny",))
    yield address, procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def ingest(corpus: tuple[Path, Path], out: Path, address: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "rnnenc.workflows.cli", "ingest", "--src", str(corpus[0]), "--tgt", str(corpus[1]),
            "--src-lang", "en", "--tgt-lang", "fr", "--out", str(out), "--scheduler", address,
            "--rows-per-part", "250", "--quiet"]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"RNNENC_LOST_WORKERS_TIMEOUT": TIMEOUT})


def when_parts_are_written(out: Path, proc: subprocess.Popen, count: int = 3) -> None:
    """Wait until the run has committed ``count`` parts into its temporary output."""
    deadline = time.time() + 120
    while len(list(out.parent.glob(f"{out.name}.tmp-*/**/*.parquet"))) < count:
        assert proc.poll() is None, f"the run ended early: {proc.communicate()}"
        assert time.time() < deadline, "the run wrote no parts"
        time.sleep(0.01)


def ends_with_one_line(proc: subprocess.Popen, within: float) -> str:
    started = time.monotonic()
    _, err = proc.communicate(timeout=within)
    assert time.monotonic() - started < within
    assert proc.returncode == 1, err
    # the one warning that says the wait began (not silenced by --quiet) may come before it
    lines = [line for line in err.strip().splitlines() if "rnnenc WARNING no Dask worker left" not in line]
    assert len(lines) == 1 and lines[0].startswith("rnnenc: error: ") and "Traceback" not in err, err
    return lines[0]


def nothing_trusted(out: Path) -> None:
    assert not (out / MANIFEST_NAME).exists()
    assert not list(out.parent.glob(f"{out.name}.tmp-*"))


KILLS: dict[str, Callable[[list[subprocess.Popen]], None]] = {
    "every worker": lambda procs: [os.kill(p.pid, signal.SIGKILL) for p in procs[1:]],
    "the scheduler": lambda procs: os.kill(procs[0].pid, signal.SIGKILL),
}


@pytest.mark.parametrize("what", list(KILLS))
def test_losing_the_cluster_mid_ingest_ends_with_one_line(what, corpus, cluster, tmp_path):
    address, procs = cluster
    out = tmp_path / "out"
    proc = ingest(corpus, out, address)
    when_parts_are_written(out, proc)
    KILLS[what](procs)
    line = ends_with_one_line(proc, within=90)
    if what == "every worker":
        assert f"every Dask worker was lost and none came back within {TIMEOUT} s" in line
    else:
        assert "lost the Dask scheduler at tcp://127.0.0.1:" in line
    nothing_trusted(out)


def test_workers_that_come_back_in_time_finish_the_stage(corpus, cluster, tmp_path):
    """All workers die, a new one joins within the wait: the stage completes, every line once."""
    address, procs = cluster
    out = tmp_path / "out"
    proc = ingest(corpus, out, address)
    when_parts_are_written(out, proc)
    KILLS["every worker"](procs)
    time.sleep(1.0)
    replacement = subprocess.Popen([str(Path(sys.executable).parent / "dask"), "worker", address, "--nthreads", "1",
                                    "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
    finally:
        replacement.kill()
        replacement.wait(timeout=30)
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["pairs_written"] == LINES and (out / MANIFEST_NAME).is_file()


def test_one_worker_killed_mid_ingest_costs_only_its_tasks(corpus, cluster, tmp_path):
    address, procs = cluster
    out, calm = tmp_path / "out", tmp_path / "calm"
    proc = ingest(corpus, out, address)
    when_parts_are_written(out, proc)
    os.kill(procs[2].pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    again = ingest(corpus, calm, address)
    _, err = again.communicate(timeout=180)
    assert again.returncode == 0, err
    parts = sorted(p.name for p in calm.glob("part-*.parquet"))
    assert parts and parts == sorted(p.name for p in out.glob("part-*.parquet"))
    assert all((out / name).read_bytes() == (calm / name).read_bytes() for name in parts)


def test_an_unreachable_scheduler_is_one_line(corpus, tmp_path):
    proc = ingest(corpus, tmp_path / "out", "tcp://127.0.0.1:9")  # nothing listens on the discard port
    line = ends_with_one_line(proc, within=90)
    assert "could not reach the Dask scheduler at tcp://127.0.0.1:9" in line
    nothing_trusted(tmp_path / "out")


def test_the_first_failing_item_in_input_order_is_reported_whatever_finishes_first(dask_client):
    """Items 3 and 5 fail at once, item 1 late: the error is item 1's, every run."""
    from rnnenc.pipeline.errors import UserError
    from rnnenc.workflows.cluster import map_partitions

    def _fails_after(item: tuple[int, float]) -> int:  # nested: the workers get it by value
        import time

        from rnnenc.pipeline.errors import UserError

        index, delay = item
        time.sleep(delay)
        if index in (1, 3, 5):
            raise UserError(f"table.txt:{index * 100}: bad line")
        return index

    items = [(0, 0.0), (1, 1.5), (2, 0.0), (3, 0.0), (4, 0.0), (5, 0.0)]
    for _ in range(2):
        with pytest.raises(UserError, match=r"^table.txt:100: bad line$"):
            map_partitions(dask_client, _fails_after, items, desc="t", quiet=True)
    assert map_partitions(dask_client, _fails_after, [(0, 0.0), (2, 0.0)], desc="t", quiet=True) == [0, 2]
