"""`rnnenc COMMAND --help` wall time, every command, against `python -c pass`.

Each round runs `python -c pass` (the interpreter's own start-up, the baseline) and then
`python -m rnnenc.workflows.cli COMMAND --help` for every command, each in a fresh process, back to
back; ratios to the baseline are taken within a round, then the median over rounds (the CPUs
here are shared and change speed from minute to minute). A command's --help imports its module
only (workflows.cli), so the figure is the cost of that module's imports at the top level:
torch (about 1.5 s) and distributed (about 0.4 s) load in its main(), never for --help.

usage: PYTHONPATH=. python benchmarks/cli_help.py [--rounds 5]

One run each (2 vCPUs shared with a training run and a test suite, load average 7-9, so every
figure is 2-3x an idle machine's; 5 rounds; median seconds and median ratio to `python -c pass`),
before (torch and distributed imported at the top of the stage modules) and after:

    command              before s  ratio   after s  ratio
    rnnenc --help           0.161   2.5x     0.099   1.8x
    ingest                  1.880  35.4x     0.471   7.3x
    select                  0.551  11.8x     0.572  12.2x
    vocab                   0.725  12.6x     0.560   8.0x
    phrase-table            0.555   9.6x     0.556   8.4x
    phrases                 2.247  39.7x     0.128   2.6x
    moses-train             0.140   2.6x     0.124   1.8x
    filter                  0.650   9.0x     0.535   9.0x
    lm                      0.145   2.0x     0.128   1.9x
    train                   5.450  75.4x     0.201   3.1x
    rescore                 5.854  96.9x     0.219   3.4x
    export                  0.671  12.6x     0.623   7.5x
    moses                   0.214   3.8x     0.206   2.4x
    generate                4.851  88.8x     0.179   2.3x
    embed                   5.266  90.4x     0.360   6.4x
    run                     1.700  26.1x     0.430   6.3x
    regenerate              0.683  12.5x     0.565   7.0x
    demo                    1.936  30.9x     0.219   2.1x

What is left is numpy and pyarrow (select, vocab, phrase-table, filter, export, regenerate:
pipeline modules that use them at the top), kenlm's module (select, regenerate), pydantic and
yaml (run: workflow validation). tests/test_cli_help.py checks that no command imports torch or
distributed for --help.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rnnenc.workflows.stages import STAGES

ROOT = Path(__file__).resolve().parent.parent


def wall_seconds(argv: list[str], env: dict[str, str]) -> float:
    """Seconds ``argv`` takes from start to exit (its output discarded); it must succeed.

    Parameters:
        argv: the command line.
        env: its environment.
    """
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of every command (default: %(default)s)")
    args = parser.parse_args()
    # this checkout's code, whatever is installed
    env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    commands = ["", *STAGES]  # "": the top-level `rnnenc --help`
    baseline: list[float] = []
    seconds: dict[str, list[float]] = {c: [] for c in commands}
    ratios: dict[str, list[float]] = {c: [] for c in commands}
    # and a whole small command: a 2-line phrase-table import (one task: no cluster is started)
    work = Path(tempfile.mkdtemp(prefix="cli-bench-"))
    (work / "pt.txt").write_text("a ||| b ||| 0.5 0.5 0.5 0.5\nc ||| d ||| 0.5 0.5 0.5 0.5\n")
    small = "phrase-table (2-line import)"
    seconds[small], ratios[small] = [], []
    for round_ in range(args.rounds):
        base = wall_seconds([sys.executable, "-c", "pass"], env)
        baseline.append(base)
        for command in commands:
            took = wall_seconds([sys.executable, "-m", "rnnenc.workflows.cli", *([command] if command else []), "--help"], env)
            seconds[command].append(took)
            ratios[command].append(took / base)
        took = wall_seconds([sys.executable, "-m", "rnnenc.workflows.cli", "phrase-table", str(work / "pt.txt"),
                             "--out", str(work / f"out-{round_}"), "--quiet"], env)
        seconds[small].append(took)
        ratios[small].append(took / base)
    shutil.rmtree(work)
    commands.append(small)
    print(f"python -c pass: median {statistics.median(baseline):.3f} s over {args.rounds} rounds "
          f"({', '.join(f'{b:.3f}' for b in baseline)})")
    print()
    print(f"{'command':<28} {'median s':>9} {'max s':>7} {'x python -c pass':>17}")
    for command in commands:
        name = (f"rnnenc {command}" if command == small else f"rnnenc {command} --help" if command
                else "rnnenc --help")
        print(f"{name:<28} {statistics.median(seconds[command]):>9.3f} {max(seconds[command]):>7.3f} "
              f"{statistics.median(ratios[command]):>16.1f}x")


if __name__ == "__main__":
    main()
