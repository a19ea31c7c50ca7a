"""`rnnenc train` on a cluster whose worker declares a GPU: it runs there as one task."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, get_task_stream

from conftest import _start_cluster
from pipeline.artifacts import read_manifest
from pipeline.vocab import Vocabulary
from workflows.cli import build_parser
from workflows.train import main


def test_train_runs_as_a_task_on_the_gpu_worker(tmp_path):
    table = tmp_path / "table"
    table.mkdir()
    sources = [f"w{i} w{i + 1}" for i in range(40)]
    targets = [f"m{i} m{i + 1}" for i in range(40)]
    pq.write_table(pa.table({"source": sources, "target": targets}), table / "part-00000.parquet")
    Vocabulary([f"w{i}" for i in range(41)], lang="en").save(tmp_path / "vocab.en.txt")
    Vocabulary([f"m{i}" for i in range(41)], lang="fr").save(tmp_path / "vocab.fr.txt")
    address, procs = _start_cluster(tmp_path / "dask", n_workers=1, worker_args=("--resources", "GPU=1"))
    try:
        args = build_parser().parse_args([
            "train", "--phrase-table", str(table), "--src-vocab", str(tmp_path / "vocab.en.txt"),
            "--tgt-vocab", str(tmp_path / "vocab.fr.txt"), "--out", str(tmp_path / "model"), "--hidden", "8",
            "--embedding", "4", "--maxout", "4", "--updates", "4", "--valid-pairs", "5", "--valid-every", "2",
            "--checkpoint-every", "2", "--threads", "1", "--scheduler", address, "--quiet"])
        with Client(address) as client, get_task_stream(client) as stream:
            assert main(args) == 0
        assert [task["key"].split("-")[0] for task in stream.data] == ["train"]
        assert read_manifest(tmp_path / "model")["counts"]["updates"] == 4
    finally:
        for proc in procs:
            proc.kill()
