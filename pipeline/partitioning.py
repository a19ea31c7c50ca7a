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
"""

from __future__ import annotations

import math

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


__all__ = ["TARGET_TASKS", "default_size"]
