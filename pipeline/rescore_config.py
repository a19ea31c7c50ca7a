"""What a rescore run computes and how (``RescoreConfig``, ``DEFAULT_ROWS_PER_UNIT``), in a module
that imports no torch: ``rnnenc rescore --help`` and the workflow files' validation read the
defaults without paying for torch (about 1.5 s), which ``pipeline.rescore`` imports at once."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from rnnenc.pipeline.errors import UserError

DEFAULT_ROWS_PER_UNIT = 100_000  # the largest default unit (memory); smaller tables get smaller units
MIN_ROWS_PER_UNIT = 16_384       # the smallest default unit: two groups of 8,192 rows


@dataclass(frozen=True)
class RescoreConfig:
    """What to compute and how; every field that can change a float is part of the run's identity."""

    model: str
    logp_column: str = "rnn_logp"
    unk_column: str = "rnn_unk"
    device: str = "auto"  # auto (CUDA when the worker has it) | cpu | cuda | cuda:N
    encoder_batch: int | None = None  # distinct sources per encoder batch (None: by device)
    decoder_batch: int | None = None  # pairs per decoder batch
    readout_rows: int | None = None  # rows per vocabulary-wide softmax chunk (divides decoder_batch)
    group_rows: int = 8192  # consecutive rows of the table scored together (the determinism unit)
    bf16: bool = True  # GPU only: bf16 autocast for the matrix products
    threads: int | None = None  # torch intra-op threads while scoring (None: leave as is)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if not self.logp_column or not self.unk_column or self.logp_column == self.unk_column:
            raise UserError("rescore: the two new column names must be distinct and non-empty")
        for name in ("encoder_batch", "decoder_batch", "readout_rows", "group_rows", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"rescore: {name.replace('_', '-')} must be at least 1")
        if self.decoder_batch and self.readout_rows and self.decoder_batch % self.readout_rows:
            raise UserError("rescore: --readout-rows must divide --decoder-batch")


__all__ = ["DEFAULT_ROWS_PER_UNIT", "MIN_ROWS_PER_UNIT", "RescoreConfig"]
