"""A stage pays for a Dask cluster only when it has work for one: inputs are checked first, a
single task on the embedded local cluster runs in this process, an up-to-date workflow starts none."""

from __future__ import annotations

import subprocess
import sys

import dask.config
import pytest

from rnnenc.workflows import cli, cluster

TABLE = "a ||| b ||| 0.5 0.5 0.5 0.5 ||| 0-0 ||| 1 1 1\nc ||| d ||| 0.5 0.5 0.5 0.5 ||| 0-0 ||| 1 1 1\n"


@pytest.fixture
def no_local_cluster(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a local Dask cluster was started")

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "LocalCluster", refuse)


def test_a_two_line_import_starts_no_cluster(tmp_path, no_local_cluster, capsys):
    (tmp_path / "pt.txt").write_text(TABLE)
    assert cli.main(["phrase-table", str(tmp_path / "pt.txt"), "--out", str(tmp_path / "out")]) == 0
    assert "imported 2 of 2 lines" in capsys.readouterr().out
    assert cli.main(["export", "--table", str(tmp_path / "out"), "--out", str(tmp_path / "export"), "--quiet"]) == 0


def test_bad_inputs_are_refused_before_any_cluster_starts(tmp_path, no_local_cluster, capsys):
    (tmp_path / "pt.txt").write_text("a ||| b ||| 0.5 x\n")
    assert cli.main(["phrase-table", str(tmp_path / "pt.txt"), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    assert "pt.txt:1" in capsys.readouterr().err
    assert cli.main(["filter", "--table", str(tmp_path / "pt.txt"), "--input", str(tmp_path / "pt.txt"),
                     "--out", str(tmp_path / "f"), "--quiet"]) == 1
    assert "not a Parquet table" in capsys.readouterr().err


def test_a_given_scheduler_gets_even_a_single_task(tmp_path, dask_address, capsys):
    from distributed import Client

    (tmp_path / "pt.txt").write_text(TABLE)
    assert cli.main(["phrase-table", str(tmp_path / "pt.txt"), "--out", str(tmp_path / "out"), "--scheduler",
                     dask_address, "--quiet"]) == 0
    with Client(dask_address) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes))
    assert any(p.startswith("phrase-table") for p in prefixes)


def test_a_two_line_import_in_a_subprocess_says_it_started_no_cluster(tmp_path):
    """Its wall time (1.4 s here, the issue's target 3 s) is measured in benchmarks/cli_help.py,
    not asserted: this checks what makes it short."""
    (tmp_path / "pt.txt").write_text(TABLE)
    done = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "phrase-table", str(tmp_path / "pt.txt"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "one task, run in this process (no cluster started)" in done.stderr
    assert "starting a local Dask cluster" not in done.stderr


def test_an_up_to_date_workflow_starts_no_cluster(tmp_path, monkeypatch, capsys):
    (tmp_path / "pt.txt").write_text(TABLE)
    (tmp_path / "flow.yaml").write_text("run: r\nartifacts: out\nlanguages: {source: en, target: fr}\nstages:\n"
                                        "  table: {command: phrase-table, input: [pt.txt]}\n")
    assert cli.main(["run", str(tmp_path / "flow.yaml"), "--quiet"]) == 0  # runs it (a cluster, once)

    def refuse(*args, **kwargs):
        raise AssertionError("a local Dask cluster was started")

    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.setattr(cluster, "LocalCluster", refuse)
    assert cli.main(["run", str(tmp_path / "flow.yaml"), "--quiet"]) == 0


def test_default_parts_are_sized_from_the_input_alone(tmp_path):
    """A 58k-pair pool gets 6 equal parts (it got 1), a 98k-row table 6 rescore units, a 101 MB table 7
    ranges; caps keep big inputs' parts bounded; no worker count enters (outputs must not depend
    on it)."""
    from rnnenc.pipeline.corpus import CorpusInput, estimate_pairs
    from rnnenc.pipeline.ingest import default_rows_per_part
    from rnnenc.pipeline.partitioning import default_size
    from rnnenc.pipeline.phrase_table import default_split_bytes, plan_ranges

    assert default_size(58_000, floor=10_000, cap=100_000, step=1000) == 10_000
    assert default_size(98_000, floor=16_384, cap=100_000, step=8192) == 16_384
    assert default_size(101e6, floor=16 << 20, cap=256 << 20) == 16 << 20
    assert default_size(2e9, floor=10_000, cap=100_000) == 100_000
    assert default_size(400_000, floor=10_000, cap=100_000, step=1000) == 25_000
    line = b"the cat sat on the mat .\n"
    (tmp_path / "pool.en").write_bytes(line * 58_000)
    (tmp_path / "pool.fr").write_bytes(line * 58_000)
    pool = CorpusInput("text", (str(tmp_path / "pool.en"), str(tmp_path / "pool.fr")), "pool")
    assert estimate_pairs(pool) == 58_000
    assert default_rows_per_part([pool]) == 9_667  # 6 equal parts, not 5 of 10k and one of 8k
    (tmp_path / "small.en").write_bytes(line * 5_000)
    (tmp_path / "small.fr").write_bytes(line * 5_000)
    small = CorpusInput("text", (str(tmp_path / "small.en"), str(tmp_path / "small.fr")), "small")
    assert default_rows_per_part([small]) == 10_000  # one part, with the floor's margin for a miss
    (tmp_path / "pt.txt").write_bytes(b"a ||| b ||| 0.5 0.5 0.5 0.5\n" * 1_200_000)  # 33.6 MB
    assert default_split_bytes([tmp_path / "pt.txt"]) == 16 << 20
    assert len(plan_ranges([tmp_path / "pt.txt"], None)) == 3


def test_light_parts_share_tasks_evenly_and_heavy_parts_run_alone():
    """A 58k-pair pool's six 10k parts: one task per worker (3 + 3 parts), four tasks on 4 workers;
    parts of 36k pairs, or fewer parts than workers, one task each."""
    from rnnenc.pipeline.partitioning import group_consecutive

    pool = [10_000] * 5 + [7_942]
    assert group_consecutive(pool, floor=25_000, workers=2) == [range(0, 3), range(3, 6)]
    assert group_consecutive(pool, floor=25_000, workers=1) == [range(0, 3), range(3, 6)]
    assert [len(g) for g in group_consecutive(pool, floor=25_000, workers=4)] == [1, 2, 1, 2]
    assert group_consecutive([36_000] * 16, floor=25_000, workers=2) == [range(i, i + 1) for i in range(16)]
    assert group_consecutive([10_000] * 3, floor=25_000, workers=8) == [range(0, 1), range(1, 2), range(2, 3)]
    assert [len(g) for g in group_consecutive([10_000] * 17, floor=25_000, workers=2)] == [3, 3, 2, 3, 3, 3]
    many = group_consecutive([1_000] * 5_000, floor=25_000, workers=32)
    assert len(many) == 192 and {len(g) for g in many} <= {26, 27}
    for weights in ([5, 0, 0, 100, 1], [0, 0, 0], [1] * 7, [9, 1, 1, 1, 1, 1, 1, 1, 9]):
        for workers in (1, 2, 3):
            groups = group_consecutive(weights, floor=3, workers=workers)
            assert [i for g in groups for i in g] == list(range(len(weights))) and all(groups)
    assert group_consecutive([], floor=10, workers=2) == []


def test_grouped_tasks_give_each_items_result_in_order_and_the_first_failure():
    from rnnenc.pipeline.executor import SERIAL, map_grouped

    class Recording:
        """A serial executor of 2 'workers' that records each map's items."""

        workers = 2

        def __init__(self):
            self.calls = []

        def map(self, func, items, *, desc="", resources=None, **kwargs):
            self.calls.append(list(items))
            return [func(item, **kwargs) for item in items]

    def square(x, offset=0):
        if x == 13:
            raise ValueError(f"item {x}")
        return x * x + offset

    executor = Recording()
    items = list(range(12))
    assert map_grouped(executor, square, items, [1] * 12, floor=3, offset=1) == [x * x + 1 for x in items]
    assert [len(group) for group in executor.calls[0]] == [3, 3, 3, 3]  # 12 rows, 3 a task, 2 workers: 4 tasks
    assert map_grouped(executor, square, items, [100] * 12, floor=3) == [x * x for x in items]
    assert executor.calls[1] == items  # heavy items: one task each
    assert map_grouped(SERIAL, square, [], [], floor=3) == []
    with pytest.raises(ValueError, match="item 13"):
        map_grouped(executor, square, [12, 13, 14, 15], [1] * 4, floor=1, offset=0)
    with pytest.raises(ValueError, match="3 items but 2 weights"):
        map_grouped(SERIAL, square, [1, 2, 3], [1, 1], floor=1)


def test_a_small_tables_default_units_keep_two_workers_busy(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rnnenc.pipeline.rescore import default_rows_per_unit, plan_units

    (tmp_path / "t").mkdir()
    pq.write_table(pa.table({"source": ["a"] * 98_000, "target": ["b"] * 98_000}), tmp_path / "t" / "part-00000.parquet")
    rows = default_rows_per_unit(tmp_path / "t", 8192)
    assert rows == 16_384
    units, _ = plan_units(tmp_path / "t", rows, 8192)
    assert len(units) == 6


def _timer_settings() -> tuple[object, object]:
    return dask.config.get("distributed.worker.profile.enabled"), dask.config.get("distributed.admin.tick.interval")


def test_embedded_workers_run_without_the_profiler_and_the_fast_tick_unless_the_user_set_them(monkeypatch):
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv("RNNENC_DASHBOARD", raising=False)
    before = _timer_settings()
    with cluster.dask_client(None, 1) as client:
        assert list(client.run(_timer_settings).values()) == [(False, "1s")]
    # a dashboard address asked for keeps the Profile page's samples; a tick the user chose is theirs
    with dask.config.set({"distributed.admin.tick.interval": "50ms"}), \
            cluster.dask_client(None, 1, dashboard="127.0.0.1:0") as client:
        assert list(client.run(_timer_settings).values()) == [(True, "50ms")]
    assert _timer_settings() == before  # this process's configuration as it was


def test_the_worker_count_for_grouping_is_asked_of_the_scheduler_once_per_few_seconds(dask_client, monkeypatch):
    """Any call to the scheduler just before a pass's tasks delays their start by ~10 ms."""
    executor = cluster.DaskExecutor(dask_client, quiet=True)
    asked = []
    ask = dask_client.scheduler_info
    monkeypatch.setattr(dask_client, "scheduler_info", lambda **kw: asked.append(kw) or ask(**kw))
    workers = len(ask(n_workers=-1)["workers"])
    assert [executor.workers for _ in range(3)] == [workers] * 3 and len(asked) == 1
    monkeypatch.setattr(cluster, "WORKER_COUNT_SECONDS", 0.0)
    assert executor.workers == workers and len(asked) == 2
