"""The optional Moses stage: skipped with a clear message without Moses; BLEU on detokenised text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pipeline.errors import UserError
from workflows.moses import bleu, find_moses, mert_command


def test_skipped_without_moses(tmp_path, monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if k != "MOSES_HOME"}
    (tmp_path / "x").write_text("a\n")
    result = subprocess.run([sys.executable, "-m", "workflows.cli", "moses", "--moses-ini", "x", "--dev-src", "x",
                             "--dev-ref", "x", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "skipped" in result.stdout and "MOSES_HOME" in result.stdout
    assert not (tmp_path / "out").exists()


def test_a_directory_without_moses_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a Moses installation .*bin/moses is missing"):
        find_moses(str(tmp_path))


def test_mert_command_and_bleu(tmp_path):
    (tmp_path / "bin").mkdir()
    command = mert_command(tmp_path, tmp_path / "d.en", tmp_path / "d.fr", tmp_path / "moses.ini", tmp_path / "w", 2)
    assert command[0].endswith("scripts/training/mert-moses.pl")
    assert command[3].endswith("bin/moses") and "--working-dir" in command
    refs = ["le chat est sur le tapis .", "c &apos; est la vie ."]
    assert bleu(refs, refs, "fr")["bleu"] == 100.0
    assert bleu(["le chien"] * 2, refs, "fr")["bleu"] < 10
