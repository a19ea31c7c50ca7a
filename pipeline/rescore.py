"""Rescoring a Parquet phrase table with the RNN Encoder-Decoder: the paper's RNN and +WP features.

For every pair the stage adds two float32 columns (names configurable):

``rnn_logp``  log p(target | source) under the model, summed over the target tokens including
              ``</s>``, no length normalisation (GroundHog ``score.py``);
``rnn_unk``   the "+WP" feature: source tokens missing from the source vocabulary plus target
              tokens missing from the target vocabulary.

Both are declared with domain ``log`` in the ``rnnenc.scores`` schema metadata, so the Moses
export writes exp(value) and Moses, which takes the log of every score, sees the values as is.

How it runs. ``pipeline.scorer.PhraseScorer`` scores the pairs in groups of ``group_rows``
consecutive rows: each distinct source of a group is encoded once, targets are batched by exact
length, and a pair's bits follow from its group alone (see its docstring). This module cuts the
table's rows, in their global order (parts sorted by name, row groups, rows), into work units
of whole groups from row 0, so a pair always meets the same pairs in the same GEMM shapes,
whatever the files, row groups, units or workers: its bits follow from the table, the model and
the batch configuration alone (on one machine and one thread count per worker: Dask runs one).

Work units. Unit ``u`` covers the global rows [u*R, (u+1)*R), R being ``rows_per_unit`` rounded
up to whole groups; it may span several input parts. It writes ``part-uuuuu.parquet``
atomically (temporary file, rename) and then its record ``.units/part-uuuuu.json`` (the row
ranges it read, with each file's size and mtime, and its counts). A unit whose part and record
exist and whose record matches is done: an interrupted run resumes there. Orchestration (Dask,
manifests) lives in ``workflows/rescore.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.errors import UserError
from pipeline.model import load_model
from pipeline.phrase_table import (
    RESERVED_COLUMNS,
    list_parts,
    read_score_columns,
    with_score_columns,
    with_scores_metadata,
)
from pipeline.scorer import PhraseScorer, scoring_flops
from pipeline.vocab import Vocabulary

log = logging.getLogger("rnnenc")

UNITS_DIR = ".units"
REQUIRED_COLUMNS = ("source", "target")
# Batch sizes by measurement (benchmarks/rescore.py, whose docstring has the grid): on the CPU
# the readout's vocabulary-wide logits must stay in cache, so the readout runs in chunks
# smaller than the decoder batch; a decoder batch of 512 feeds the recurrence's product better
# than 256, 1024 no longer helps.
CPU_BATCH = {"encoder_batch": 256, "decoder_batch": 512, "readout_rows": 64}
GPU_BATCH = {"encoder_batch": 2048, "decoder_batch": 2048, "readout_rows": 2048}


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


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"rescore: device '{device}' requested but CUDA is not available on this worker")
    return resolved


def batch_sizes(config: RescoreConfig, device: torch.device) -> tuple[int, int, int]:
    """(encoder batch, decoder batch, readout rows) for ``device``, defaults filled in."""
    defaults = GPU_BATCH if device.type == "cuda" else CPU_BATCH
    encoder = config.encoder_batch or defaults["encoder_batch"]
    decoder = config.decoder_batch or defaults["decoder_batch"]
    readout = min(config.readout_rows or defaults["readout_rows"], decoder)
    if decoder % readout:
        readout = decoder  # a default that does not divide a user's batch: one chunk
    return encoder, decoder, readout


# ---------------------------------------------------------------------------------------------
# Per-worker model cache


@functools.lru_cache(maxsize=2)
def _cached_scorer(model_path: str, stamp: tuple[int, int], device: str, encoder_batch: int,
                   decoder_batch: int, readout_rows: int, group_rows: int, bf16: bool) -> PhraseScorer:
    model, src_vocab, tgt_vocab = load_model(model_path, device)
    return PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=encoder_batch, decoder_batch=decoder_batch,
                        readout_rows=readout_rows, group_rows=group_rows, bf16=bf16)


def scorer_for(config: RescoreConfig) -> PhraseScorer:
    """The scorer of ``config`` in this process, loaded once (keyed by path, size and mtime)."""
    path = Path(config.model)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    info = path.stat()
    device = resolve_device(config.device)
    encoder, decoder, readout = batch_sizes(config, device)
    return _cached_scorer(str(path.resolve()), (info.st_size, info.st_mtime_ns), str(device), encoder, decoder,
                          readout, config.group_rows, config.bf16)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# The table: metadata, validation, work units


def output_schema(schema: pa.Schema, config: RescoreConfig, where: object) -> pa.Schema:
    """The input schema with the two new float32 columns appended and declared in ``rnnenc.scores``.

    Raises UserError when the table's score metadata is broken or a new name is taken.
    """
    try:
        scores = read_score_columns(schema)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    for name in (config.logp_column, config.unk_column):
        if name in schema.names or name in RESERVED_COLUMNS:
            raise UserError(f"{where}: the table already has a column '{name}' (choose other names with "
                            "--logp-column / --unk-column)")
    schema = pa.schema(list(schema) + [pa.field(config.logp_column, pa.float32()),
                                       pa.field(config.unk_column, pa.float32())], metadata=schema.metadata)
    return with_scores_metadata(schema, scores + [{"name": config.logp_column, "domain": "log"},
                                                  {"name": config.unk_column, "domain": "log"}])


def check_schema(schema: pa.Schema, where: object) -> None:
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            raise UserError(f"{where}: missing column '{name}' (columns: {', '.join(schema.names)})")
        if not (pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type)):
            raise UserError(f"{where}: column '{name}' is {schema.field(name).type}, expected strings")


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of one row group of one input part."""

    path: str
    row_group: int
    start: int
    stop: int


@dataclass(frozen=True)
class WorkUnit:
    """Global rows [first_row, first_row + rows) of the table, whole groups; its output is ``name``."""

    index: int
    first_row: int
    rows: int
    ranges: tuple[RowRange, ...]
    files: tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns): a changed file redoes its units

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    @property
    def where(self) -> str:
        """The first input part it reads, for messages."""
        return self.ranges[0].path

    def spec(self) -> dict[str, Any]:
        return {"first_row": self.first_row, "rows": self.rows,
                "ranges": [dataclasses.asdict(r) for r in self.ranges],
                "files": [list(f) for f in self.files]}


def unit_rows(rows_per_unit: int, group_rows: int) -> int:
    """``rows_per_unit`` rounded up to whole groups: a unit never cuts a group."""
    return max(1, -(-rows_per_unit // group_rows)) * group_rows


def plan_units(table: str | os.PathLike, rows_per_unit: int, group_rows: int) -> tuple[list[WorkUnit], pa.Schema]:
    """Cut the table's global row order into work units of whole groups, from the Parquet footers
    only; return them and the common schema. The cut does not depend on how the rows are split
    into files or row groups."""
    if rows_per_unit < 1:
        raise UserError("rescore: --rows-per-unit must be at least 1")
    if group_rows < 1:
        raise UserError("rescore: --group-rows must be at least 1")
    size = unit_rows(rows_per_unit, group_rows)
    schema: pa.Schema | None = None
    row_groups: list[tuple[str, int, int]] = []  # (path, row group, rows) in global order
    stamps: dict[str, tuple[int, int]] = {}
    for path in list_parts(table):
        try:
            meta = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
        part_schema = meta.schema_arrow
        check_schema(part_schema, path)
        if schema is None:
            schema = part_schema
        elif not part_schema.equals(schema, check_metadata=True):
            raise UserError(f"{path}: schema or 'rnnenc.scores' metadata differs from the table's first part")
        resolved = str(path.resolve())
        info = path.stat()
        stamps[resolved] = (info.st_size, info.st_mtime_ns)
        row_groups += [(resolved, g, meta.metadata.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    assert schema is not None
    units: list[WorkUnit] = []
    ranges: list[RowRange] = []
    taken = 0  # rows of the current unit
    for path, g, n in row_groups:
        offset = 0
        while offset < n:
            stop = min(n, offset + size - taken)
            ranges.append(RowRange(path, g, offset, stop))
            taken += stop - offset
            offset = stop
            if taken == size:
                units.append(_unit(len(units), size, ranges, stamps))
                ranges, taken = [], 0
    if ranges:
        units.append(_unit(len(units), size, ranges, stamps))
    return units, schema


def _unit(index: int, size: int, ranges: list[RowRange], stamps: dict[str, tuple[int, int]]) -> WorkUnit:
    paths = sorted({r.path for r in ranges})
    return WorkUnit(index, index * size, sum(r.stop - r.start for r in ranges), tuple(ranges),
                    tuple((p, *stamps[p]) for p in paths))


def read_unit(unit: WorkUnit, columns: Sequence[str] | None = None) -> pa.Table:
    """The unit's rows, as one contiguous table (its bytes once written do not depend on how the
    rows were split into files)."""
    pieces = []
    files: dict[str, pq.ParquetFile] = {}
    for r in unit.ranges:
        if r.path not in files:
            files[r.path] = pq.ParquetFile(r.path)
        group = files[r.path].read_row_group(r.row_group, columns=list(columns) if columns else None)
        if group.num_rows < r.stop:
            raise UserError(f"{r.path}: changed while rescoring (row group {r.row_group} has {group.num_rows} "
                            f"rows, {r.stop} expected)")
        pieces.append(group.slice(r.start, r.stop - r.start))
    return pa.concat_tables(pieces).combine_chunks()


def unit_record_path(staging: Path, unit: WorkUnit) -> Path:
    return staging / UNITS_DIR / f"{unit.name[:-len('.parquet')]}.json"


def completed_record(staging: Path, unit: WorkUnit) -> dict[str, Any] | None:
    """The record of a unit already committed in ``staging`` with this very spec, else None."""
    record_path = unit_record_path(staging, unit)
    if not (staging / unit.name).is_file() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("unit") == unit.spec() else None


def _row_range(unit: WorkUnit, row: int) -> tuple[RowRange, int]:
    """The range holding the unit's ``row``, and the row's index in its row group."""
    for r in unit.ranges:
        if row < r.stop - r.start:
            return r, r.start + row
        row -= r.stop - r.start
    raise IndexError(row)


def _check_pairs(table: pa.Table, unit: WorkUnit) -> tuple[list[str], list[str]]:
    lines = table.column("line").to_pylist() if "line" in table.column_names else None
    for side in REQUIRED_COLUMNS:
        empty = pc.or_(pc.is_null(table.column(side)),
                       pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column(side))), 0))
        if pc.any(empty).as_py():
            row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
            line = lines[row] if lines else None
            r, index = _row_range(unit, row)
            where = f"{r.path}:{line}" if line is not None else f"{r.path} (row group {r.row_group}, row {index})"
            raise UserError(f"{where}: empty or null {side} phrase")
    return table.column("source").to_pylist(), table.column("target").to_pylist()


def rescore_unit(unit: WorkUnit, staging: str | os.PathLike, config: RescoreConfig) -> dict[str, Any]:
    """Score one unit and commit ``staging/<unit.name>`` and its record; return the record.

    Runs on a worker: loads the model once per process, reads only the unit's row groups. The
    unit is whole groups of the global row order, so ``scorer.score``'s groups are the table's.
    """
    started = time.perf_counter()
    staging = Path(staging)
    table = read_unit(unit)
    output_schema(table.schema, config, unit.where)  # fails before scoring, not after
    sources, targets = _check_pairs(table, unit)
    scorer = scorer_for(config)
    with torch_threads(config.threads):
        logp, unk, stats = scorer.score(sources, targets)
    out = with_score_columns(table, {config.logp_column: (logp.astype(np.float32), "log"),
                                     config.unk_column: (unk.astype(np.float32), "log")})
    tmp = staging / f".{unit.name}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(out, tmp, compression="zstd")
    os.replace(tmp, staging / unit.name)
    record = {"unit": unit.spec(), "name": unit.name, "rows": out.num_rows, "stats": stats.to_dict(),
              "device": str(scorer.device), "seconds": round(time.perf_counter() - started, 4),
              "flops": scoring_flops(scorer.model.config, stats)}
    record_path = unit_record_path(staging, unit)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_record = record_path.with_name(f".{record_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp_record.write_text(json.dumps(record, sort_keys=True) + "\n")
    os.replace(tmp_record, record_path)
    return record


def vocabulary_mismatch(sources: Sequence[str], targets: Sequence[str], src_vocab: Vocabulary,
                        tgt_vocab: Vocabulary, max_unknown_rate: float) -> str | None:
    """Why the model's vocabularies do not fit these pairs (a sample of the table), or None."""
    def rate(phrases: Sequence[str], vocab: Vocabulary) -> float:
        tokens = [token for phrase in phrases for token in phrase.split()]
        return sum(token not in vocab for token in tokens) / max(1, len(tokens))

    src_rate, tgt_rate = rate(sources, src_vocab), rate(targets, tgt_vocab)
    if max(src_rate, tgt_rate) <= max_unknown_rate:
        return None
    swapped = max(rate(sources, tgt_vocab), rate(targets, src_vocab))
    hint = (" (the model's vocabularies fit the table with source and target swapped: a model of the "
            "other direction?)" if swapped <= max_unknown_rate else "")
    return (f"{src_rate:.0%} of the source tokens and {tgt_rate:.0%} of the target tokens are unknown to the "
            f"model's vocabularies ('{src_vocab.lang}'/'{tgt_vocab.lang}'), more than {max_unknown_rate:.0%}"
            f"{hint}")


__all__ = ["RescoreConfig", "RowRange", "WorkUnit", "batch_sizes", "check_schema", "completed_record",
           "output_schema", "plan_units", "read_unit", "rescore_unit", "resolve_device", "scorer_for",
           "torch_threads", "unit_rows", "vocabulary_mismatch"]
