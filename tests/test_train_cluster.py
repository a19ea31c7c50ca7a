"""`rnnenc train` on a cluster whose worker declares a GPU: it runs there as one task."""

from __future__ import annotations

from distributed import Client, get_task_stream

from conftest import _start_cluster, tiny_phrase_table
from rnnenc.pipeline.artifacts import read_manifest
from rnnenc.workflows.cli import build_parser
from rnnenc.workflows.train import main


def test_train_runs_as_a_task_on_the_gpu_worker(tmp_path):
    table, src_vocab, tgt_vocab = tiny_phrase_table(tmp_path, rows=40)
    address, procs = _start_cluster(tmp_path / "dask", n_workers=1, worker_args=("--resources", "GPU=1"))
    try:
        args = build_parser("train").parse_args([
            "train", "--phrase-table", str(table), "--src-vocab", str(src_vocab),
            "--tgt-vocab", str(tgt_vocab), "--out", str(tmp_path / "model"), "--hidden", "8",
            "--embedding", "4", "--maxout", "4", "--updates", "4", "--valid-pairs", "5", "--valid-every", "2",
            "--checkpoint-every", "2", "--threads", "1", "--scheduler", address, "--quiet"])
        with Client(address) as client, get_task_stream(client) as stream:
            assert main(args) == 0
        assert [task["key"].split("-")[0] for task in stream.data] == ["train"]
        assert read_manifest(tmp_path / "model")["counts"]["updates"] == 4
    finally:
        for proc in procs:
            proc.kill()
