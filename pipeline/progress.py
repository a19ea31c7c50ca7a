"""Progress of long work: a tqdm bar on a terminal, plain log lines anywhere else.

Off a terminal (a log file, a cluster job's output) tqdm's carriage-return refreshes make lines
of thousands of characters and glue results to bars, so there a ``PlainProgress`` writes one
line every ``interval`` seconds and one at the end instead: what, how many of how many, the
rate and the time left. The interface is the part of tqdm rnnenc uses.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

#: seconds between two plain progress lines
DEFAULT_INTERVAL = 30.0


class PlainProgress:
    """tqdm's ``update``/``set_postfix``/``refresh``/``close`` and ``total``, as plain lines.

    Parameters:
        total: how many units the work has (may grow: set ``total``), or None.
        desc: what the work is.
        unit: the units' name.
        initial: units already done (a resumed run).
        interval: seconds between lines.
        stream: where the lines go (stderr).
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 interval: float = DEFAULT_INTERVAL, stream: TextIO | None = None):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self.stream = interval, stream or sys.stderr
        self._initial = initial
        self._started = self._last = time.monotonic()
        self._postfix = ""
        self._closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self._last >= self.interval:
            self._write()

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def refresh(self) -> None:
        """Nothing to redraw off a terminal: lines come at intervals."""

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.n > self._initial:
                self._write()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> None:
        now = time.monotonic()
        self._last = now
        elapsed = max(now - self._started, 1e-9)
        rate = (self.n - self._initial) / elapsed
        done = f"{self.n:,}/{self.total:,}" if self.total else f"{self.n:,}"
        line = f"{self.desc}: {done} {self.unit}, {rate:,.2f} {self.unit}/s, {elapsed:,.0f}s"
        if self.total and rate > 0 and self.n < self.total:
            line += f", about {(self.total - self.n) / rate:,.0f}s left"
        if self._postfix:
            line += f" ({self._postfix})"
        print(line, file=self.stream, flush=True)


class _Silent(PlainProgress):
    """``quiet``: counts, prints nothing."""

    def _write(self) -> None:
        self._last = time.monotonic()


def progress(total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0,
             quiet: bool = False, leave: bool = False) -> Any:
    """A progress display for ``total`` units: tqdm on a terminal, ``PlainProgress`` elsewhere.

    Parameters:
        total: how many units (may be set later through ``.total``).
        desc: what the work is.
        unit: the units' name.
        initial: units already done.
        quiet: show nothing.
        leave: keep tqdm's finished bar on the terminal.
    """
    if quiet:
        return _Silent(total, desc, unit, initial)
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=unit, initial=initial, leave=leave)
    return PlainProgress(total, desc, unit, initial)


__all__ = ["DEFAULT_INTERVAL", "PlainProgress", "progress"]
