"""The ``rnnenc`` command line: one subcommand per stage, generated from the stage registry.

Every command is declared once in ``workflows.stages`` (its module, summary and how the runner
treats it); the module provides a docstring (its ``--help`` text), ``add_arguments(parser)`` and
``main(args) -> int``. Only the module of the command being run is imported, so ``rnnenc
--help`` and ``rnnenc ingest`` never pay for importing torch; and a module loads torch and
distributed in its ``main()``, so ``rnnenc COMMAND --help`` does not either (tests/test_cli_help.py).
"""

from __future__ import annotations

import _thread
import argparse
import collections
import contextlib
import errno
import logging
import os
import re
import signal
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from rnnenc.pipeline.errors import UserError
from rnnenc.workflows.stages import STAGES, path_roles

log = logging.getLogger("rnnenc")

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")


def set_openmp_waiters(command: str | None) -> None:
    """OpenMP's waiting threads, set before torch loads its OpenMP runtime (so: first in ``main``).

    Spinning waiters make torch 10-30x slower as soon as another process wants the same cores (a
    Dask worker, a second job), so they sleep (PASSIVE). Sleeping has a cost too: every op that
    wakes the second thread waits for it (100+ us on a virtual machine), which left 2-thread
    training no faster than 1 thread. Commands that train in this process own the cores, so their
    waiters spin GOMP_SPINCOUNT times (a fraction of a millisecond) before sleeping: forward +
    backward about 1.7x faster on 2 cores alone, 1.5x slower beside another process on the same
    cores (then set GOMP_SPINCOUNT=0 or lower --threads). The embedded Dask cluster's workers get
    GOMP_SPINCOUNT=0 (workflows/cluster.py). A user's own settings win.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    spec = STAGES.get(command or "")
    if spec is not None and spec.trains_in_process:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def _absolute(value: str) -> str:
    if _URL.match(value):
        return value
    lang, sep, paths = value.partition("=")
    if sep and re.fullmatch(r"[A-Za-z_-]+", lang) and not os.path.exists(value):
        return f"{lang}=" + ",".join(os.path.abspath(p) for p in paths.split(","))
    return os.path.abspath(value)


def absolute_paths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Make every path option of ``args`` absolute (in place), since the workers of a --scheduler
    cluster may run in another directory; LANG=PATH values (select's --in-lm/--out-lm) have their
    path part resolved. ``--hf`` values that are local directories too (others are hub names)."""
    for dest in set(path_roles(parser)) | {"hf"}:
        value = getattr(args, dest, None)
        if dest == "hf":
            value = [v if not os.path.exists(v) else os.path.abspath(v) for v in value] if value else value
        elif isinstance(value, str):
            value = _absolute(value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            value = [_absolute(v) for v in value]
        setattr(args, dest, value)


# while a command runs: the signal that interrupted it, and the unraisable hook it replaced
_interrupting: dict = {}


def _terminate(signum: int, _frame) -> None:
    """SIGTERM and Ctrl-C end a run: temporaries removed, completed outputs kept.

    The interrupt lands wherever the main thread is, inside distributed's ``sync`` too, whose
    clean-up callback can then log a traceback from the event loop's thread (a NameError in
    distributed's own code). The run is ending and says so in one line: the cluster's loggers
    are silenced first (when the cluster was ever loaded: else it has none to log)."""
    _interrupting["signum"] = signum
    cluster = sys.modules.get("rnnenc.workflows.cluster")
    if cluster is not None:
        cluster.silence_logs()
    if not _interrupting.get("leaving"):
        raise KeyboardInterrupt


def _send_again(signum: int, sent: _thread.LockType) -> None:
    os.kill(os.getpid(), signum)
    sent.release()


def _interrupt_again(unraisable) -> None:
    """``sys.unraisablehook`` while a command runs: an interrupt raised where Python swallows
    exceptions is delivered again, not lost.

    A signal's handler runs in whatever Python code the main thread is in, distributed's
    garbage-collection callback or a finaliser too, where the KeyboardInterrupt it raises is
    printed as "Exception ignored" and dropped: the run would go on to the end after Ctrl-C.
    Sending the signal again from another thread runs the handler at one of the main thread's
    next instructions, outside the swallowing code (or inside the next such code, which hands it
    on again). Sent from here, the handler would run at once, inside this hook, and be swallowed
    too; and ``threading.Thread.start`` waits in Python code, where it would land: a bare
    ``_thread`` returns at once."""
    signum = _interrupting.get("signum")
    if signum is not None and issubclass(unraisable.exc_type, KeyboardInterrupt):
        sent = _thread.allocate_lock()
        sent.acquire()
        _interrupting.setdefault("sending", []).append(sent)
        _thread.start_new_thread(_send_again, (signum, sent))
        return
    _interrupting["previous_hook"](unraisable)


@contextlib.contextmanager
def interrupts_end_the_run() -> Iterator[None]:
    """SIGTERM and Ctrl-C raise KeyboardInterrupt in the main thread (``_terminate``), swallowed
    ones again (``_interrupt_again``); the previous handlers and hook come back on leaving.

    Ctrl-C only where Python's own handler has it (not where it is ignored or a host program's);
    nothing changes outside the main thread (rnnenc called from a thread)."""
    signals = (signal.SIGTERM, *([signal.SIGINT] if signal.getsignal(signal.SIGINT) is signal.default_int_handler
                                 else []))
    try:
        previous = {signum: signal.signal(signum, _terminate) for signum in signals}
    except ValueError:
        previous = None
    if previous is None:
        yield
        return
    saved = dict(_interrupting)  # a command run inside another's (tests, a host program)
    _interrupting.clear()
    _interrupting["previous_hook"], sys.unraisablehook = sys.unraisablehook, _interrupt_again
    try:
        yield
    finally:
        # From here an interrupt is recorded, not raised: one sent again (above) lands before
        # the handlers go (signal.signal runs pending handlers first), never after them.
        _interrupting["leaving"] = True
        for sent in _interrupting.get("sending", []):
            sent.acquire(timeout=10)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = _interrupting["previous_hook"]
        interrupted = "signum" in _interrupting
        _interrupting.clear()
        _interrupting.update(saved)
    if interrupted:  # the command ended normally, but its interrupt had been swallowed
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``rnnenc`` parser, with the full options of ``command`` only (its module is imported;
    the others are listed with their summaries). That command's own parser is ``.command_parser``."""
    parser = argparse.ArgumentParser(
        prog="rnnenc",
        description="The Cho et al. (2014) RNN Encoder-Decoder pipeline for phrase-based SMT, on Dask.",
        epilog="Run 'rnnenc COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"rnnenc {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = None
    for name, spec in STAGES.items():
        if name != command:
            subparsers.add_parser(name, help=spec.summary, add_help=False)
            continue
        module = spec.load()
        sub = subparsers.add_parser(
            name, help=spec.summary if module else f"{spec.summary} (not available yet)",
            description=(module.__doc__ or spec.summary) if module else
            f"{spec.summary}. This stage has not landed in this version of rnnenc yet.",
            formatter_class=argparse.RawDescriptionHelpFormatter)
        if module is not None:
            module.add_arguments(sub)
        add_common_arguments(sub)
        chosen = sub
    parser.command_parser = chosen  # type: ignore[attr-defined]
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (its first word that is not an option), if any."""
    for word in argv:
        if not word.startswith("-"):
            return word
    return None


def _version() -> str:
    from rnnenc.pipeline import __version__
    return __version__


def configure_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s rnnenc %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:  # the terminal's level, whatever a stage log asks of loggers
        handler.setLevel(level)
    for noisy in ("distributed", "asyncio", "fsspec", "datasets", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


class _RecentRecords(logging.Handler):
    """The last ``capacity`` formatted records, in memory: nothing is written before the stage's
    output exists (its directory may not be ours to write beside, or lie inside an input)."""

    def __init__(self, capacity: int = 20_000):
        super().__init__(logging.INFO)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def stage_log(out: str | os.PathLike | None) -> Iterator[None]:
    """Also keep the stage's log records (``rnnenc`` logger, INFO and up, with --quiet too) and
    write them into its output as ``_rnnenc.log`` (``LOG_NAME``) once the stage has published it
    (the last 20,000 records). A failed stage writes none: its error is the one line on stderr."""
    if not out:
        yield
        return
    from rnnenc.pipeline.artifacts import LOG_NAME, is_complete

    out = Path(out)
    handler = _RecentRecords()
    logger = logging.getLogger("rnnenc")
    level = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if out.is_dir() and is_complete(out):
        tmp = out / f".{LOG_NAME}.tmp-{os.getpid()}"
        tmp.write_text("".join(f"{line}\n" for line in handler.lines), encoding="utf-8")
        os.replace(tmp, out / LOG_NAME)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    set_openmp_waiters(command)
    parser = build_parser(command if command in STAGES else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    configure_logging(args.debug, args.quiet)
    if args.quiet or not sys.stderr.isatty():
        # Hugging Face datasets draws its own bars (carriage returns in a log file); set before it loads
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    module = STAGES[args.command].load()
    if module is None:
        print(f"rnnenc: error: '{args.command}' has not landed in this version of rnnenc yet", file=sys.stderr)
        return 2
    absolute_paths(args, parser.command_parser)
    if getattr(args, "dashboard", None):
        os.environ["RNNENC_DASHBOARD"] = args.dashboard  # read by workflows.cluster.dask_client
    try:
        with interrupts_end_the_run(), stage_log(getattr(args, "out", None) if STAGES[args.command].workflow_stage else None):
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


if __name__ == "__main__":
    sys.exit(main())
