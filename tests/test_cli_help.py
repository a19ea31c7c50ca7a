"""`rnnenc COMMAND --help` is quick for every command: building a command's parser imports its
module, and no module imports torch or distributed at its top (they load in its main()).
benchmarks/cli_help.py measures the times; the bound here is generous, for a busy machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnenc.workflows.stages import STAGES

ROOT = Path(__file__).resolve().parents[1]
ENV = os.environ | {"PYTHONPATH": str(ROOT)}
HEAVY = ("torch", "distributed")
# Builds one command's parser in a fresh interpreter; prints which heavy modules that imported.
PROBE = ("import json, sys; from workflows.cli import build_parser; build_parser(sys.argv[1]); "
         f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")


@pytest.mark.parametrize("command", sorted(STAGES))
def test_building_a_commands_parser_imports_neither_torch_nor_distributed(command):
    result = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True,
                            env=ENV, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [], f"rnnenc {command} --help imports {result.stdout.strip()}"


@pytest.mark.parametrize("command", ["", *sorted(STAGES)])
def test_help_of_every_command_is_quick(command):
    argv = [sys.executable, "-m", "rnnenc.workflows.cli", *([command] if command else []), "--help"]
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    seconds = time.perf_counter() - started
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: rnnenc {command}".rstrip()), result.stdout[:200]
    assert seconds < 5.0, f"rnnenc {command} --help took {seconds:.2f} s"  # generous: CI machines are loaded
