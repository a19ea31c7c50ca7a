"""What defines a training run (``TrainConfig``), in a module of its own that imports no torch:
``rnnenc train --help`` and the workflow files' validation read its defaults without paying for
torch (about 1.5 s), which ``pipeline.train`` imports at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rnnenc.pipeline.errors import UserError


@dataclass
class TrainConfig:
    """Everything that defines a training run (the model's sizes included)."""

    updates: int = 100_000
    batch_size: int = 64
    embedding: int = 100
    hidden: int = 1000
    maxout: int = 500
    output_rank: int = 100
    init_std: float = 0.01  # the paper's, for 1000 units; small models learn faster with ~0.1
    max_length: int = 30  # tokens per side, </s> excluded
    valid_pairs: int = 1000
    valid_every: int = 1000
    checkpoint_every: int = 1000
    early_stopping: int = 0  # stop after this many validations without improvement; 0 = never
    log_every: int = 10  # updates per training-loss row of metrics.csv / TensorBoard
    seed: int = 1234
    rho: float = 0.95
    eps: float = 1e-6
    clip_norm: float = 1.0
    device: str = "auto"
    threads: int = 0  # CPU threads; 0 = all cores
    compile: bool = False  # torch.compile the clip + Adadelta step into one pass over memory

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain data (for checkpoints, the report and the manifest)."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Raise UserError for a count that must be positive and is not."""
        for name in ("updates", "batch_size", "valid_every", "checkpoint_every", "max_length", "log_every"):
            value = getattr(self, name)
            if value < 1:
                raise UserError(f"{name} must be at least 1 (got {value})")


__all__ = ["TrainConfig"]
