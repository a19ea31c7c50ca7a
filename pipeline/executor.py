"""How a stage runs its per-partition tasks: one interface, two implementations.

A stage body in ``pipeline/`` never talks to Dask: it hands its tasks to an executor,
``executor.map(func, items, desc=..., resources=..., **kwargs)``, which returns
``[func(item, **kwargs) for item in items]`` in input order. ``SerialExecutor`` runs them here,
one after the other (tests, small inputs); ``workflows.cluster.DaskExecutor`` runs them on a Dask
cluster with a progress bar. The first failing item (in input order) raises its exception.
``map_grouped`` runs cheap per-part work a group of consecutive parts per task
(``pipeline.partitioning.group_consecutive``), with the same results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from rnnenc.pipeline.partitioning import group_consecutive

log = logging.getLogger("rnnenc")

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

    @property
    def workers(self) -> int:
        """How many tasks run at once (1 when serial)."""
        ...


class SerialExecutor:
    """Every task in this process, in order."""

    def map(self, func: Callable[..., T], items: Iterable[Any], *, desc: str = "",
            resources: dict[str, float] | None = None, **kwargs: Any) -> list[T]:
        return [func(item, **kwargs) for item in items]

    @property
    def workers(self) -> int:
        return 1


SERIAL = SerialExecutor()


def run_each(items: Sequence[Any], *, item_func: Callable[..., T], **kwargs: Any) -> list[T]:
    """One grouped task: ``item_func`` over its items, in order (the first failure stops it)."""
    return [item_func(item, **kwargs) for item in items]


def map_grouped(executor: Executor, func: Callable[..., T], items: Sequence[Any], weights: Sequence[int], *,
                floor: int, desc: str = "", resources: dict[str, float] | None = None, **kwargs: Any) -> list[T]:
    """``executor.map(func, items, ...)``'s results, with consecutive items run in one task where
    they are light (``group_consecutive(weights, floor=floor, workers=executor.workers)``).

    Parameters:
        executor: where the tasks run.
        func, items, desc, resources, kwargs: as ``Executor.map``.
        weights: each item's weight (a part's rows).
        floor: the least weight worth a task of its own.
    """
    if len(weights) != len(items):
        raise ValueError(f"{len(items)} items but {len(weights)} weights")
    groups = group_consecutive(weights, floor=floor, workers=executor.workers)
    if len(groups) == len(items):
        return executor.map(func, items, desc=desc, resources=resources, **kwargs)
    log.info("%s: %d parts in %d tasks", desc or getattr(func, "__name__", "tasks"), len(items), len(groups))
    results = executor.map(run_each, [items[g.start:g.stop] for g in groups], desc=desc, resources=resources,
                           item_func=func, **kwargs)
    return [result for group in results for result in group]


__all__ = ["SERIAL", "Executor", "SerialExecutor", "map_grouped", "run_each"]
