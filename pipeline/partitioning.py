"""How much work a task gets by default: sized from the input alone.

A stage's default part (ingest's rows per part, rescore's rows per unit, phrase-table's bytes
per range) is the input's size divided into ``TARGET_TASKS`` tasks, between a floor (a task
costs scheduling and a file: tiny tasks waste more than they parallelise) and a cap (memory is
bounded by the part, never by the input). So a 58k-pair pool becomes 6 parts where one
100k-row default made one part for one of two workers, and a billion-word corpus still gets
100k-row parts.

The worker count is deliberately not an input: outputs are written part for part, and the same
input and options must give byte-identical outputs on 2 workers or 32 (see README,
Reproducibility). 16 tasks keep up to 16 workers busy on an input that fills only the floor.

A pass that costs little per row (select's scoring: a 10k-row part in ~45 ms) would pay Dask's
few milliseconds per task on every part: ``group_consecutive`` runs consecutive parts in one task
there, as many tasks as the workers can share evenly. Each part still writes its own file, so the
outputs are those of one task per part.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

TARGET_TASKS = 16


def default_size(total: float, *, floor: int, cap: int, step: int = 1, tasks: int = TARGET_TASKS) -> int:
    """``total / tasks`` rounded up to a multiple of ``step``, clamped to [``floor``, ``cap``].

    Parameters:
        total: the input's size (rows, pairs or bytes; an estimate is fine).
        floor: the smallest task worth scheduling.
        cap: the largest task memory allows.
        step: the size is a multiple of this (e.g. rescore's group of rows).
        tasks: how many tasks the input is cut into when neither bound applies.
    """
    size = math.ceil(max(0.0, total) / max(1, tasks))
    size = math.ceil(size / step) * step if step > 1 else size
    return int(min(max(size, floor), cap))


def group_consecutive(weights: Sequence[int], *, floor: int, workers: int) -> list[range]:
    """Consecutive items (parts) in groups, one task each: ``workers`` times as many groups as
    the total weight fills with ``floor`` per worker (at least ``workers``), never more groups
    than items, each group's weight as near the mean as the items allow.

    Parameters:
        weights: each item's weight (its rows), in order.
        floor: the least weight worth a task (at which Dask's per-task cost stops mattering).
        workers: how many tasks run at once (1 for a serial run).

    Returns the groups as index ranges covering ``range(len(weights))`` in order, none empty; one
    group per item when the items are heavy enough (or too few) to group.
    """
    count, workers = len(weights), max(1, workers)
    total = sum(weights)
    groups = min(count, workers * max(1, total // (max(1, floor) * workers)))
    if groups >= count:
        return [range(i, i + 1) for i in range(count)]
    running = list(itertools.accumulate(weights))
    bounds = [0]
    for k in range(1, groups):
        # the cut after item i-1 whose running weight is nearest k/groups of the total, leaving
        # at least one item for each group still to come
        lo, hi = bounds[-1] + 1, count - (groups - k)
        target = total * k / groups
        near = bisect.bisect_left(running, target, lo - 1, hi) + 1
        candidates = [i for i in (near - 1, near) if lo <= i <= hi] or [min(max(near, lo), hi)]
        bounds.append(min(candidates, key=lambda i: (abs(running[i - 1] - target), i)))
    bounds.append(count)
    return [range(a, b) for a, b in itertools.pairwise(bounds)]


__all__ = ["TARGET_TASKS", "default_size", "group_consecutive"]
