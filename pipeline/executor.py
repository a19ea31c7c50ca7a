"""How a stage runs its per-partition tasks: one interface, two implementations.

A stage body in ``pipeline/`` never talks to Dask: it hands its tasks to an executor,
``executor.map(func, items, desc=..., resources=..., **kwargs)``, which returns
``[func(item, **kwargs) for item in items]`` in input order. ``SerialExecutor`` runs them here,
one after the other (tests, small inputs); ``workflows.cluster.DaskExecutor`` runs them on a Dask
cluster with a progress bar. The first failing item (in input order) raises its exception.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Executor(Protocol):
    """Runs ``func(item, **kwargs)`` for every item; results in input order."""

    def map(self, func: Callable[..., T], items: Iterable[Any], *, desc: str = "",
            resources: dict[str, float] | None = None, **kwargs: Any) -> list[T]:
        """``func`` over ``items``.

        Parameters:
            func: a picklable function of one item (and ``kwargs``).
            items: the tasks' inputs (paths, small specs: never bulk data); a generator's items
                are started as they are produced.
            desc: what the tasks do, for progress displays.
            resources: Dask resources each task needs (e.g. ``{"GPU": 1}``); ignored when serial.
            kwargs: passed to every call.
        """
        ...


class SerialExecutor:
    """Every task in this process, in order."""

    def map(self, func: Callable[..., T], items: Iterable[Any], *, desc: str = "",
            resources: dict[str, float] | None = None, **kwargs: Any) -> list[T]:
        return [func(item, **kwargs) for item in items]


SERIAL = SerialExecutor()

__all__ = ["SERIAL", "Executor", "SerialExecutor"]
