"""The ``rnnenc`` command line: one subcommand per stage, each defined in its own module.

A stage module in ``workflows/`` provides a docstring (its ``--help`` text),
``add_arguments(parser)`` and ``main(args) -> int``; its one-line summary is in ``COMMANDS``. Modules are imported only when their subcommand runs, so ``rnnenc
ingest`` never pays for importing torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence

# OpenMP's waiting threads. Spinning ones make torch 10-30x slower as soon as another process
# wants the same cores (a Dask worker, a second job), so they sleep (PASSIVE). Sleeping has a
# cost too: every op that wakes the second thread waits for it (100+ us on a virtual machine),
# which left 2-thread training no faster than 1 thread. Training owns the cores, so the commands
# that train in this process let waiters spin GOMP_SPINCOUNT times (a fraction of a millisecond)
# before sleeping: forward + backward about 1.7x faster on 2 cores alone, 1.5x slower beside
# another process on the same cores (then set GOMP_SPINCOUNT=0 or lower --threads). The embedded
# Dask cluster's workers get GOMP_SPINCOUNT=0 (workflows/cluster.py). Both must be set before
# torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
TRAINS_IN_PROCESS = ("train", "run", "demo")
if len(sys.argv) > 1 and sys.argv[1] in TRAINS_IN_PROCESS:
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from pipeline.errors import UserError  # noqa: E402

# subcommand -> (module, one-line help used in the top-level listing)
COMMANDS: dict[str, tuple[str, str]] = {
    "ingest": ("workflows.ingest", "tokenise, clean and shard a parallel corpus into Parquet"),
    "select": ("workflows.select", "Moore-Lewis / Axelrod data selection with KenLM"),
    "vocab": ("workflows.vocab", "build the source and target vocabularies"),
    "phrase-table": ("workflows.phrase_table", "import a Moses phrase table into Parquet"),
    "phrases": ("workflows.phrases", "extract and score a phrase table from an aligned corpus"),
    "train": ("workflows.train", "train the RNN encoder-decoder on a phrase table"),
    "rescore": ("workflows.rescore", "add the RNN score and unknown-word count to a phrase table"),
    "export": ("workflows.export", "write a Parquet phrase table as a Moses phrase table + moses.ini"),
    "moses": ("workflows.moses", "optional: tune with mert-moses.pl, decode a test set, score with sacrebleu"),
    "run": ("workflows.run", "run a whole YAML workflow, skipping up-to-date stages"),
    "regenerate": ("workflows.regenerate", "rebuild a selected subset byte-identically from its manifest"),
    "demo": ("workflows.demo", "generate demo data and run the whole workflow on it"),
}

log = logging.getLogger("rnnenc")

# Options that name files or directories. They are made absolute before anything runs, since
# the workers of a --scheduler cluster may run in another directory. LANG=PATH values
# (select's --in-lm/--out-lm) have their path part resolved.
PATH_OPTIONS = {"src", "tgt", "tsv", "parquet", "pool", "in_domain", "dev", "phrase_table", "corpus",
                "src_vocab", "tgt_vocab", "model", "moses_ini", "input", "table", "dev_src", "dev_ref", "test",
                "test_src", "test_ref", "alignment", "priors", "out", "rejects", "cache_dir", "export", "hf",
                "in_lm", "out_lm", "workflow", "manifest"}
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def _absolute(value: str) -> str:
    if _URL.match(value):
        return value
    lang, sep, path = value.partition("=")
    if sep and re.fullmatch(r"[A-Za-z_-]+", lang) and not os.path.exists(value):
        return f"{lang}={os.path.abspath(path)}"
    return os.path.abspath(value)


def absolute_paths(args: argparse.Namespace) -> None:
    """Make every path option of ``args`` absolute (in place); --hf names that are no local
    directory stay hub names."""
    for dest in PATH_OPTIONS & set(vars(args)):
        value = getattr(args, dest)
        if dest == "hf":
            value = [v if not os.path.exists(v) else os.path.abspath(v) for v in value] if value else value
        elif isinstance(value, str):
            value = _absolute(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [_absolute(v) for v in value]
        setattr(args, dest, value)


def _terminate(signum: int, _frame) -> None:
    """SIGTERM ends a run like Ctrl-C: temporaries removed, completed outputs kept."""
    raise KeyboardInterrupt



def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    group.add_argument("--quiet", action="store_true", help="no progress bars or info logs")


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Dask cluster")
    group.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="join this Dask scheduler (default: $DASK_SCHEDULER_ADDRESS, "
                            "else start a local cluster)")
    group.add_argument("--workers", type=int, metavar="N",
                       help="local cluster only: number of worker processes (default: one per core)")
    group.add_argument("--dashboard", metavar="ADDRESS",
                       help="local cluster only: the Dask dashboard's address (default: 127.0.0.1 on a free "
                            "port; e.g. 0.0.0.0:8787 to reach it from other machines)")


def _load(command: str):
    module_name = COMMANDS[command][0]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnenc",
        description="The Cho et al. (2014) RNN Encoder-Decoder pipeline for phrase-based SMT, on Dask.",
        epilog="Run 'rnnenc COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"rnnenc {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command, (_module, summary) in COMMANDS.items():
        module = _load(command)
        available = module is not None
        sub = subparsers.add_parser(
            command, help=summary if available else f"{summary} (not available yet)",
            description=(module.__doc__ or summary) if available else
            f"{summary}. This stage has not landed in this version of rnnenc yet.",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        if available:
            module.add_arguments(sub)
        add_common_arguments(sub)
    return parser


def _version() -> str:
    from pipeline import __version__
    return __version__


def configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s rnnenc %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for noisy in ("distributed", "asyncio", "fsspec", "datasets", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    configure_logging(args.debug, args.quiet)
    module = _load(args.command)
    if module is None:
        print(f"rnnenc: error: '{args.command}' has not landed in this version of rnnenc yet", file=sys.stderr)
        return 2
    absolute_paths(args)
    if getattr(args, "dashboard", None):
        os.environ["RNNENC_DASHBOARD"] = args.dashboard  # read by workflows.cluster.dask_client
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (rnnenc called from a thread): leave signals alone
        previous = None
    try:
        return int(module.main(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"rnnenc: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        # the machine's errors (a full disk, a read-only or vanished directory, permissions):
        # one line naming the file; --debug shows where
        if args.debug or exc.errno is None:
            raise
        hint = {errno.ENOSPC: " (free some space, or choose another --out)",
                errno.EDQUOT: " (free some space, or choose another --out)",
                errno.EACCES: " (check the permissions)", errno.EROFS: " (choose a writable --out)"}
        print(f"rnnenc: error: {exc}{hint.get(exc.errno, '')}; outputs of this run were not published",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rnnenc: interrupted; completed outputs are kept, partial ones discarded", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
