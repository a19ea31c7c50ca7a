"""Each stage's log also lands in its output directory (_rnnenc.log), --quiet or not; a failed
stage's log is kept beside the output (OUT.failed.log)."""

from __future__ import annotations

from rnnenc.pipeline.artifacts import LOG_NAME
from rnnenc.workflows import cli

TABLE = "a ||| b ||| 0.5 0.5 0.5 0.5\nc ||| d ||| 0.5 0.5 0.5 0.5\n"


def test_a_stage_log_goes_into_its_output_and_a_failure_writes_nothing(tmp_path, capsys):
    (tmp_path / "pt.txt").write_text(TABLE)
    out = tmp_path / "out"
    assert cli.main(["phrase-table", str(tmp_path / "pt.txt"), "--out", str(out), "--quiet"]) == 0
    log = (out / LOG_NAME).read_text()
    assert "INFO import: one task, run in this process" in log  # INFO in the file ...
    assert "INFO" not in capsys.readouterr().err                 # ... while --quiet keeps the terminal quiet
    before = sorted(p.name for p in tmp_path.iterdir())
    (tmp_path / "bad.txt").write_text("a ||| b ||| x\n")
    assert cli.main(["phrase-table", str(tmp_path / "bad.txt"), "--out", str(out), "--quiet"]) == 1
    assert capsys.readouterr().err.count("bad.txt:1") == 1        # the terminal: one line, once
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*before, "bad.txt"])  # nothing written beside
    assert (out / LOG_NAME).read_text() == log  # the earlier output, and its log, are kept


def test_a_workflow_writes_each_stages_log(tmp_path):
    (tmp_path / "pt.txt").write_text(TABLE)
    (tmp_path / "flow.yaml").write_text("run: r\nartifacts: out\nlanguages: {source: en, target: fr}\nstages:\n"
                                        "  table: {command: phrase-table, input: [pt.txt]}\n"
                                        "  export: {command: export, table: \"${table}\"}\n")
    assert cli.main(["run", str(tmp_path / "flow.yaml"), "--quiet"]) == 0
    for stage in ("table", "export"):
        assert "INFO" in (tmp_path / "out" / "r" / stage / LOG_NAME).read_text()
