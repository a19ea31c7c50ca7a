"""Workflow files and `rnnenc run`: validation, skipping, reruns, a worker killed midway."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import _start_cluster
from rnnenc.pipeline.artifacts import REPORT_NAME, read_manifest
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows.config import load_workflow
from rnnenc.workflows.run import run_workflow

TINY = DemoConfig(seed=7, pool_size=3000, in_domain_size=600, dev_size=100, phrase_table_pairs=300)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wfdata")
    generate_demo(root / "data", TINY)
    return root


def write_workflow(root: Path, body: str, name: str = "wf.yaml") -> Path:
    path = root / name
    path.write_text(body)
    return path


WORKFLOW = """
run: {run}
artifacts: artifacts
languages: {{source: en, target: fr}}
stages:
  pool: {{command: ingest, src: data/pool.en, tgt: data/pool.fr, rows_per_part: 700}}
  in_domain: {{command: ingest, src: data/in_domain.en, tgt: data/in_domain.fr}}
  select: {{command: select, pool: "${{pool}}", in_domain: "${{in_domain}}", fraction: {fraction}}}
"""

FULL_CHAIN = """
  dev: {command: ingest, src: data/dev.en, tgt: data/dev.fr}
  phrases: {command: phrases, corpus: "${select}", max_phrase_length: 3}
  vocab: {command: vocab, phrase_table: "${phrases}/table", size: 500}
  train: {command: train, phrase_table: "${phrases}/table", src_vocab: "${vocab}/vocab.en.txt",
          tgt_vocab: "${vocab}/vocab.fr.txt", hidden: 16, embedding: 8, maxout: 8, updates: 20,
          valid_pairs: 50, valid_every: 10, checkpoint_every: 10}
  rescore: {command: rescore, phrase_table: "${phrases}/table", model: "${train}/model.pt"}
  export: {command: export, table: "${rescore}", moses_ini: moses.ini}
  moses: {command: moses, moses_ini: "${export}/moses.ini", dev: "${dev}", skip_without_moses: true}
"""


@pytest.mark.parametrize("body,message", [
    ("run: r\nlanguages: {source: en, target: fr}\nstages: {a: {command: ingest}}\nextra: 1\n",
     r"wf\.yaml: extra: unknown key$"),
    ("run: r\nlanguages: {source: en, target: fr}\nstages: {}\n", r"wf\.yaml: stages: a workflow needs at least one stage$"),
    ("run: r\nlanguages: {source: en}\nstages: {a: {command: ingest}}\n", r"wf\.yaml: languages\.target: Field required"),
    ("run: r\nlanguages: {source: en, target: fr}\ncluster: {workers: two}\nstages: {a: {command: ingest}}\n",
     r"cluster\.workers: Input should be a valid integer"),
    ("run: r\nlanguages: {source: en, target: fr}\nstages:\n  a: {command: ingest, srcc: x}\n",
     r"stages\.a\.srcc: unknown key \(options of this command: .*src"),
    ("run: r\nlanguages: {source: en, target: fr}\nstages:\n  a: {command: ingest, src: nope.en, tgt: nope.fr}\n",
     r"stages\.a\.src: .*nope\.en: no such file or directory"),
    ("run: r\nlanguages: {source: en, target: fr}\nstages:\n  a: {command: ingest, src: data/pool.en, tgt: data/pool.fr, "
     "rows_per_part: many}\n", r"stages\.a: argument --rows-per-part: invalid int value: 'many'"),
    ("run: r\nlanguages: {source: en, target: fr}\nstages:\n  a: {command: select, pool: '${b}', in_domain: x}\n",
     r"stages\.a\.pool: \$\{b\} refers to no earlier stage"),
    ("run: r\nlanguages: {source: en, target: fr}\nstages:\n  a: {command: frobnicate}\n", r"unknown command 'frobnicate'"),
    ("run: r\nlanguages: [en\n", r"wf\.yaml:\d+: not valid YAML"),
    ("run: r\nlanguages: {source: en, target: fr}\nstages:\n  a: {command: ingest, out: x}\n",
     r"stages\.a\.out: set by the workflow runner"),
])
def test_invalid_workflows_give_one_clear_line(demo_data, body, message):
    with pytest.raises(UserError, match=message):
        load_workflow(write_workflow(demo_data, body))


def test_cli_reports_workflow_errors_without_traceback(demo_data):
    path = write_workflow(demo_data, "run: r\nlanguages: {source: en, target: fr}\nstages: {a: {command: ingest}}\nbogus: 1\n",
                          "bad.yaml")
    result = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "run", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == f"rnnenc: error: {path}: bogus: unknown key"


def test_whole_chain_through_two_workers_skips_and_reruns_downstream(demo_data, dask_address, monkeypatch):
    from rnnenc.workflows.demo import write_baseline_moses_ini

    monkeypatch.delenv("MOSES_HOME", raising=False)
    # the chain without Moses (the stage's no-op path); tests/test_moses_stage.py tunes with real Moses
    monkeypatch.setattr("rnnenc.workflows.moses.find_moses", lambda _home: None)
    write_baseline_moses_ini(demo_data / "data", demo_data / "artifacts" / "r1")
    (demo_data / "moses.ini").write_text((demo_data / "data" / "moses.ini").read_text())
    path = write_workflow(demo_data, WORKFLOW.format(run="r1", fraction=0.1) + FULL_CHAIN)
    records = run_workflow(load_workflow(path), scheduler=dask_address, quiet=True)
    statuses = {r["stage"]: r["status"] for r in records}
    assert statuses == {"pool": "ran", "in_domain": "ran", "select": "ran", "dev": "ran", "phrases": "ran",
                        "vocab": "ran", "train": "ran", "rescore": "ran", "export": "ran", "moses": "no-op"}
    root = demo_data / "artifacts" / "r1"
    for record in records[:-1]:
        manifest = read_manifest(record["out"])
        assert manifest is not None and manifest["outputs"], record
        assert all(len(item["hash"]) == 32 for item in manifest["outputs"]), record
        assert (Path(record["out"]) / REPORT_NAME).is_file(), record
    assert not (root / "moses").exists()
    assert read_manifest(root / "pool")["counts"]["pairs_written"] > 2900
    assert (root / "train" / "model.pt").is_file()
    ini = (root / "export" / "moses.ini").read_text()
    assert "num-features=6" in ini and str(root / "export" / "phrase-table.gz") in ini
    import gzip

    with gzip.open(root / "export" / "phrase-table.gz", "rt") as table:
        first = table.readline().split(" ||| ")
    assert len(first[2].split()) == 6
    pool_manifest = read_manifest(root / "pool")
    selected_before = read_manifest(root / "select")

    records = run_workflow(load_workflow(path), scheduler=dask_address, quiet=True)
    assert all(r["status"] in ("skipped", "no-op") for r in records)

    # Only the budget changes: ingestion is skipped, selection and everything downstream reruns.
    path = write_workflow(demo_data, WORKFLOW.format(run="r1", fraction=0.2) + FULL_CHAIN)
    records = run_workflow(load_workflow(path), scheduler=dask_address, quiet=True)
    statuses = {r["stage"]: r["status"] for r in records}
    assert statuses == {"pool": "skipped", "in_domain": "skipped", "select": "ran", "dev": "skipped",
                        "phrases": "ran", "vocab": "ran", "train": "ran", "rescore": "ran", "export": "ran",
                        "moses": "no-op"}
    assert read_manifest(root / "pool") == pool_manifest
    assert read_manifest(root / "select")["counts"] != selected_before["counts"]


def test_changed_input_reruns_its_stage_and_downstream_only(demo_data, dask_address):
    path = write_workflow(demo_data, WORKFLOW.format(run="r2", fraction=0.1))
    assert [r["status"] for r in run_workflow(load_workflow(path), scheduler=dask_address, quiet=True)] == \
        ["ran", "ran", "ran"]
    in_domain = demo_data / "data" / "in_domain.en"
    original = in_domain.read_bytes()
    try:
        in_domain.write_bytes(original.replace(b".\n", b" .\n", 1))
        records = run_workflow(load_workflow(path), scheduler=dask_address, quiet=True)
        assert [r["status"] for r in records] == ["skipped", "ran", "ran"]
    finally:
        in_domain.write_bytes(original)


@pytest.mark.determinism
def test_killing_a_worker_midway_leaves_outputs_identical(demo_data, tmp_path):
    body = ("run: {run}\nartifacts: artifacts\nlanguages: {{source: en, target: fr}}\nstages:\n"
            "  pool: {{command: ingest, src: data/pool.en, tgt: data/pool.fr, rows_per_part: 100}}\n")
    reference = run_workflow(load_workflow(write_workflow(demo_data, body.format(run="calm"), "calm.yaml")),
                             workers=1, quiet=True)
    address, procs = _start_cluster(tmp_path, n_workers=2)
    try:
        stormy = load_workflow(write_workflow(demo_data, body.format(run="stormy"), "stormy.yaml"))
        errors: list[BaseException] = []

        def run() -> None:
            try:
                run_workflow(stormy, scheduler=address, quiet=True)
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.time() + 120
        while len(list((demo_data / "artifacts").glob("stormy.tmp-*/part-*.parquet"))) < 3 and \
                len(list((demo_data / "artifacts" / "stormy").glob("pool.tmp-*/part-*.parquet"))) < 3:
            assert time.time() < deadline and thread.is_alive(), "the stage did not start"
            time.sleep(0.02)
        os.kill(procs[1].pid, signal.SIGKILL)  # one of the two workers dies mid-stage
        thread.join(timeout=300)
        assert not errors, errors
    finally:
        for proc in procs:
            proc.kill()
    calm = Path(reference[0]["out"])
    stormy_out = demo_data / "artifacts" / "stormy" / "pool"
    calm_parts = sorted(calm.glob("part-*.parquet"))
    assert len(calm_parts) == 30
    for a in calm_parts:
        assert a.read_bytes() == (stormy_out / a.name).read_bytes(), a.name
    assert sorted(p.name for p in stormy_out.glob("part-*")) == [p.name for p in calm_parts]
    calm_report = json.loads((calm / REPORT_NAME).read_text())
    stormy_report = json.loads((stormy_out / REPORT_NAME).read_text())
    for key in ("pairs_written", "dropped_by_reason", "source_words", "target_words"):
        assert calm_report[key] == stormy_report[key]


def test_openmp_waiters_spin_in_training_commands_and_never_in_local_workers():
    """`train`/`run`/`demo` let OpenMP waiters spin briefly (they own the cores); other commands
    and the embedded cluster's workers, which fill every core, keep them sleeping."""
    # importing the CLI (as Dask workers import workflows modules) changes nothing; main() sets them
    probe = ("import os, sys; import workflows.cli as cli; before = os.environ.get('OMP_WAIT_POLICY'); "
             "cli.set_openmp_waiters(sys.argv[1]); assert before is None, before; "
             "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))")
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    for command, expected in (("train", "10000 PASSIVE"), ("demo", "10000 PASSIVE"), ("select", "None PASSIVE")):
        out = subprocess.run([sys.executable, "-c", probe, command], env=env, capture_output=True, text=True,
                             check=True, cwd=Path(__file__).parent.parent).stdout.strip()
        assert out == expected, command
    from rnnenc.workflows.cluster import dask_client

    with dask_client(None, 1) as client:
        assert list(client.run(lambda: os.environ.get("GOMP_SPINCOUNT")).values()) == ["0"]


def test_a_copied_project_reruns_nothing_and_check_says_why(tmp_path, dask_address, capsys):
    """Stage keys hold paths relative to the workflow's directory: after `cp -r` nothing reruns;
    `rnnenc run --check` says which stages would run and why, and runs nothing."""
    import shutil

    from rnnenc.workflows import cli
    from rnnenc.workflows.run import plan_workflow

    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    generate_demo(project / "data", DemoConfig(seed=8, pool_size=800, in_domain_size=200, dev_size=20,
                                               phrase_table_pairs=50))
    write_workflow(project, WORKFLOW.format(run="r", fraction=0.2))
    assert {r["status"] for r in run_workflow(load_workflow(project / "wf.yaml"), scheduler=dask_address,
                                             quiet=True)} == {"ran"}
    moved = tmp_path / "moved"
    shutil.copytree(project, moved)
    assert [p["action"] for p in plan_workflow(load_workflow(moved / "wf.yaml"))] == ["skip"] * 3
    records = run_workflow(load_workflow(moved / "wf.yaml"), scheduler=dask_address, quiet=True)
    assert [r["status"] for r in records] == ["skipped"] * 3

    (moved / "data" / "in_domain.en").write_text((moved / "data" / "in_domain.en").read_text() + "One more line .\n")
    (moved / "data" / "in_domain.fr").write_text((moved / "data" / "in_domain.fr").read_text() + "Une ligne de plus .\n")
    capsys.readouterr()
    assert cli.main(["run", str(moved / "wf.yaml"), "--check"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("pool: up to date: rnnenc ingest")
    assert lines[1].startswith("in_domain: would run (its options, input contents or upstream outputs changed)")
    assert lines[2].startswith("select: would run (upstream in_domain reruns)")
    assert [p["action"] for p in plan_workflow(load_workflow(moved / "wf.yaml"), {"pool"})] == ["run"] * 3
    assert [r["status"] for r in run_workflow(load_workflow(moved / "wf.yaml"), scheduler=dask_address,
                                              quiet=True)] == ["skipped", "ran", "ran"]
