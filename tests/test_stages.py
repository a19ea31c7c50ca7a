"""The stage registry: the CLI, workflow validation, stage keys and the runner come from it. A toy
stage registered here runs from the command line and in a workflow, its input option is checked
before the run and content-hashed into the stage key, and its output rule is the shared one."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from rnnenc.pipeline.artifacts import MANIFEST_NAME
from rnnenc.pipeline.errors import UserError
from rnnenc.workflows import cli
from rnnenc.workflows.config import load_workflow
from rnnenc.workflows.run import run_workflow, stage_key
from rnnenc.workflows.stages import STAGES, StageSpec, path_roles, register

TOY = textwrap.dedent('''
    """Count the lines of a file (a toy stage)."""
    from pathlib import Path

    from rnnenc.pipeline.artifacts import atomic_output_dir, write_manifest
    from rnnenc.workflows.stages import input_path, output_path


    def add_arguments(parser):
        input_path(parser, "--text", required=True, metavar="FILE", help="a text file")
        parser.add_argument("--factor", type=int, default=1, help="multiply the count (default %(default)s)")
        output_path(parser, "--out", required=True, help="output directory")


    def main(args):
        lines = len(Path(args.text).read_text().splitlines()) * args.factor
        with atomic_output_dir(args.out, stage="toy-count", inputs=[args.text]) as tmp:
            (tmp / "count.txt").write_text(f"{lines}\\n")
        write_manifest(args.out, stage="toy-count", inputs=[args.text], config={"factor": args.factor},
                       counts={"lines": lines})
        print(f"counted {lines}")
        return 0
''')


@pytest.fixture
def toy_stage(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "toy_count.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(package))
    register(StageSpec("toy-count", "toy_count", "count the lines of a file"))
    yield
    STAGES.pop("toy-count")
    sys.modules.pop("toy_count", None)


def test_a_registered_stage_runs_from_the_cli_and_in_a_workflow(toy_stage, tmp_path, capsys, monkeypatch):
    (tmp_path / "a.txt").write_text("one\ntwo\nthree\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["toy-count", "--text", "a.txt", "--out", "cli-out"]) == 0  # relative paths made absolute
    assert "counted 3" in capsys.readouterr().out
    assert (tmp_path / "cli-out" / "count.txt").read_text() == "3\n"

    flow = tmp_path / "flow.yaml"
    flow.write_text("run: toy\nartifacts: art\nlanguages: {source: en, target: fr}\n"
                    "stages:\n  count: {command: toy-count, text: a.txt, factor: 2}\n")
    workflow = load_workflow(flow)
    stage = workflow.stages[0]
    assert stage.input_paths == [tmp_path / "a.txt"]
    records = run_workflow(workflow, workers=1, quiet=True)
    assert [r["status"] for r in records] == ["ran"]
    assert (tmp_path / "art" / "toy" / "count" / "count.txt").read_text() == "6\n"
    assert [r["status"] for r in run_workflow(load_workflow(flow), workers=1, quiet=True)] == ["skipped"]
    key = stage_key(load_workflow(flow).stages[0], {})
    (tmp_path / "a.txt").write_text("one\n")  # same path, new content: the key changes, the stage reruns
    assert stage_key(load_workflow(flow).stages[0], {}) != key
    assert [r["status"] for r in run_workflow(load_workflow(flow), workers=1, quiet=True)] == ["ran"]
    assert json.loads((tmp_path / "art" / "toy" / "count" / MANIFEST_NAME).read_text())["counts"] == {"lines": 2}


def test_workflow_validation_comes_from_the_declarations(toy_stage, tmp_path):
    (tmp_path / "a.txt").write_text("x\n")
    base = "run: toy\nlanguages: {source: en, target: fr}\nstages:\n"
    with pytest.raises(UserError, match=r"stages.count.text: .*missing.txt: no such file or directory"):
        load_workflow(text=base + "  count: {command: toy-count, text: missing.txt}\n", base=tmp_path)
    with pytest.raises(UserError, match=r"stages.count.lines: unknown key \(options of this command: factor, text\)"):
        load_workflow(text=base + "  count: {command: toy-count, text: a.txt, lines: 3}\n", base=tmp_path)
    with pytest.raises(UserError, match=r"unknown command 'regenerate' \(the commands a stage can run: .*toy-count"):
        load_workflow(text=base + "  again: {command: regenerate, manifest: a.txt}\n", base=tmp_path)


def test_every_registered_stage_declares_its_paths():
    """Each workflow stage's options that name files say whether they are inputs or outputs."""
    import argparse

    for name, spec in STAGES.items():
        module = spec.load()
        if module is None or not spec.workflow_stage:
            continue
        parser = argparse.ArgumentParser()
        module.add_arguments(parser)
        roles = path_roles(parser)
        assert roles.get("out") == "output", name
        assert "input" in roles.values(), name


def test_selects_language_models_are_hashed_into_its_key(tmp_path):
    """--in-lm/--out-lm were once missing from the stage key: a changed LM at the same path did not rerun select."""
    for name in ("pool", "indomain"):
        (tmp_path / name).mkdir()
    (tmp_path / "in.en.arpa").write_text("model\n")
    text = ("run: r\nlanguages: {source: en, target: fr}\nstages:\n"
            "  select: {command: select, pool: pool, in_domain: indomain, budget_pairs: 10, method: moore-lewis,"
            " in_lm: en=in.en.arpa, out_lm: en=in.en.arpa}\n")
    stage = load_workflow(text=text, base=tmp_path).stages[0]
    assert tmp_path / "in.en.arpa" in stage.input_paths
    key = stage_key(stage, {})
    (tmp_path / "in.en.arpa").write_text("another model\n")
    assert stage_key(load_workflow(text=text, base=tmp_path).stages[0], {}) != key


def test_help_imports_only_the_command_it_describes():
    """`rnnenc --help` imports no stage module (no torch, no distributed); `rnnenc ingest --help` only ingest's
    (and not distributed, which its main() loads: tests/test_cli_help.py checks every command)."""
    import subprocess

    probe = ("import sys, workflows.cli as cli\n"
             "try:\n    cli.main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('torch', 'distributed', 'rnnenc.workflows.train', 'rnnenc.workflows.ingest') if m in sys.modules))")
    for argv, expected in ((["--help"], "[]"), (["ingest", "--help"], "['rnnenc.workflows.ingest']")):
        out = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, check=True,
                             timeout=60).stdout.strip().splitlines()[-1]
        assert out == expected, argv  # never torch, never another stage's module


def test_stage_outputs_stand_for_their_main_output_and_inner_paths_still_work(tmp_path):
    from rnnenc.pipeline.artifacts import (
        model_path,
        moses_ini_path,
        phrase_table_path,
        read_artifact,
        vocabulary_path,
        write_manifest,
    )

    phrases, vocab, train, export = (tmp_path / name for name in ("phrases", "vocab", "train", "export"))
    (phrases / "table").mkdir(parents=True)
    write_manifest(phrases, stage="phrases", inputs=[], config={"source_lang": "en", "target_lang": "fr"}, counts={})
    vocab.mkdir()
    for lang in ("en", "fr"):
        (vocab / f"vocab.{lang}.txt").write_text("<pad>\n<unk>\n</s>\n")
    write_manifest(vocab, stage="vocab", inputs=[], config={"source_lang": "en", "target_lang": "fr"}, counts={})
    train.mkdir()
    (train / "model.pt").write_bytes(b"weights")
    write_manifest(train, stage="train", inputs=[], config={}, counts={})
    export.mkdir()
    (export / "moses.ini").write_text("[feature]\n")
    write_manifest(export, stage="export", inputs=[], config={}, counts={})

    assert phrase_table_path(phrases) == phrase_table_path(phrases / "table") == phrases / "table"
    assert vocabulary_path(vocab, "source") == vocabulary_path(vocab / "vocab.en.txt", "source") == vocab / "vocab.en.txt"
    assert vocabulary_path(vocab, "target") == vocab / "vocab.fr.txt"
    assert model_path(train) == model_path(train / "model.pt") == train / "model.pt"
    assert moses_ini_path(export) == export / "moses.ini"
    artifact = read_artifact(phrases)
    assert (artifact.kind, artifact.languages) == ("phrase-table", ("en", "fr"))
    manifest = json.loads((vocab / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "vocabularies" and manifest["languages"] == ["en", "fr"]
    with pytest.raises(UserError, match=r"the output of rnnenc vocab \(vocabularies\), where model is expected"):
        model_path(vocab)
