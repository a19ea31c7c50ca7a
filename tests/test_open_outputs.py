"""Every Parquet output opens as a dataset by its directory name, with the tools people use:
pandas, pyarrow.dataset, DuckDB and Dask. The stage directories also hold _manifest.json,
_report.json and _rejects.tsv.gz; those names start with "_", which Parquet readers skip."""

from __future__ import annotations

import gzip
from pathlib import Path

import dask
import dask.dataframe as dd
import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from rnnenc.pipeline.artifacts import MANIFEST_NAME, REJECTS_NAME, REPORT_NAME, read_manifest
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows.config import load_workflow
from rnnenc.workflows.run import run_workflow

TINY = DemoConfig(seed=11, pool_size=2000, in_domain_size=400, dev_size=60, phrase_table_pairs=300)

# Every stage that writes Parquet, the filter and rescore on the filtered table to stay small.
WORKFLOW = """
run: open
artifacts: artifacts
languages: {source: en, target: fr}
stages:
  pool: {command: ingest, src: data/pool.en, tgt: data/pool.fr, rows_per_part: 500, on_error: skip}
  in_domain: {command: ingest, src: data/in_domain.en, tgt: data/in_domain.fr}
  dev: {command: ingest, src: data/dev.en, tgt: data/dev.fr, no_clean: true}
  select: {command: select, pool: "${pool}", in_domain: "${in_domain}", fraction: 0.2}
  phrases: {command: phrases, corpus: "${select}", max_phrase_length: 3}
  phrase_table: {command: phrase-table, input: [data/phrase-table.txt], on_error: skip}
  filter: {command: filter, table: "${phrases}/table", input: ["${dev}"]}
  vocab: {command: vocab, phrase_table: "${phrases}/table", size: 300}
  train: {command: train, phrase_table: "${phrases}/table", src_vocab: "${vocab}/vocab.en.txt",
          tgt_vocab: "${vocab}/vocab.fr.txt", hidden: 8, embedding: 4, maxout: 4, updates: 4,
          valid_pairs: 20, valid_every: 4, checkpoint_every: 4}
  rescore: {command: rescore, phrase_table: "${filter}", model: "${train}/model.pt"}
"""

#: each Parquet dataset a user opens, relative to the run's directory: (path, stage directory)
DATASETS = {"pool": "pool", "in_domain": "in_domain", "dev": "dev", "select/selected": "select",
            "select/scores": "select", "phrases/table": "phrases", "phrase_table": "phrase_table",
            "filter": "filter", "rescore": "rescore"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, dask_address) -> Path:
    root = tmp_path_factory.mktemp("open")
    generate_demo(root / "data", TINY)
    # the demo's Moses table and a line it rejects, so that its output holds a rejects file too
    with gzip.open(root / "data" / "phrase-table.gz", "rt", encoding="utf-8") as table:
        (root / "data" / "phrase-table.txt").write_text(table.read() + "a line without fields\n")
    (root / "wf.yaml").write_text(WORKFLOW)
    records = run_workflow(load_workflow(root / "wf.yaml"), scheduler=dask_address, quiet=True)
    assert {r["status"] for r in records} == {"ran"}, records
    return root / "artifacts" / "open"


def expected_rows(directory: Path) -> int:
    """Rows of the parts, from their footers: what every reader must find, no more."""
    parts = sorted(directory.glob("part-*.parquet"))
    assert parts, directory
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def test_the_datasets_sit_beside_sidecars_and_hold_what_the_manifests_count(run_dir):
    for stage in sorted(set(DATASETS.values())):
        assert (run_dir / stage / MANIFEST_NAME).is_file() and (run_dir / stage / REPORT_NAME).is_file(), stage
    assert (run_dir / "pool" / REJECTS_NAME).is_file() and (run_dir / "phrase_table" / REJECTS_NAME).is_file()
    pool = read_manifest(run_dir / "pool")["counts"]["pairs_written"]
    assert expected_rows(run_dir / "pool") == pool == expected_rows(run_dir / "select" / "scores")
    assert expected_rows(run_dir / "select" / "selected") == read_manifest(run_dir / "select")["counts"]["selected_pairs"]
    assert expected_rows(run_dir / "phrase_table") == read_manifest(run_dir / "phrase_table")["counts"]["rows_written"]
    assert expected_rows(run_dir / "filter") == read_manifest(run_dir / "filter")["counts"]["kept"]
    assert expected_rows(run_dir / "rescore") == read_manifest(run_dir / "rescore")["counts"]["rows"]


def _pandas(directory: Path) -> int:
    return len(pd.read_parquet(directory))


def _pyarrow_dataset(directory: Path) -> int:
    return ds.dataset(directory, format="parquet").count_rows()


def _duckdb(directory: Path) -> int:
    with duckdb.connect() as connection:
        return connection.execute("SELECT count(*) FROM read_parquet(?)", [f"{directory}/*.parquet"]).fetchone()[0]


def _dask(directory: Path) -> int:
    with dask.config.set(scheduler="sync"):  # here, not on whatever cluster a client left as default
        return len(dd.read_parquet(directory))


@pytest.mark.parametrize("reader", [_pandas, _pyarrow_dataset, _duckdb, _dask],
                         ids=["pandas", "pyarrow.dataset", "duckdb", "dask"])
@pytest.mark.parametrize("dataset", sorted(DATASETS))
def test_each_parquet_output_opens_by_its_directory_name(run_dir, dataset, reader):
    directory = run_dir / dataset
    assert reader(directory) == expected_rows(directory)
