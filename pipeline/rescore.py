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
import shutil
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

from rnnenc.pipeline.artifacts import (
    OWNER_NAME,
    REPORT_NAME,
    check_output_target,
    file_hash,
    output_lock,
    output_stage,
    read_manifest,
    replace_output,
    write_json_atomic,
    write_manifest,
)
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import Executor
from rnnenc.pipeline.model import EncoderDecoderConfig, load_model, model_flops, resolve_device
from rnnenc.pipeline.phrase_table import (
    RESERVED_COLUMNS,
    list_parts,
    read_score_columns,
    with_score_columns,
    with_scores_metadata,
)
from rnnenc.pipeline.rescore_config import DEFAULT_ROWS_PER_UNIT, MIN_ROWS_PER_UNIT, RescoreConfig
from rnnenc.pipeline.scorer import PhraseScorer, scoring_flops
from rnnenc.pipeline.vocab import Vocabulary

log = logging.getLogger("rnnenc")

UNITS_DIR = ".units"
REQUIRED_COLUMNS = ("source", "target")
# Batch sizes by measurement (benchmarks/rescore.py, whose docstring has the grid): on the CPU
# the readout's vocabulary-wide logits must stay in cache, so the readout runs in chunks
# smaller than the decoder batch; a decoder batch of 512 feeds the recurrence's product better
# than 256, 1024 no longer helps.
CPU_BATCH = {"encoder_batch": 256, "decoder_batch": 512, "readout_rows": 64}
GPU_BATCH = {"encoder_batch": 2048, "decoder_batch": 2048, "readout_rows": 2048}


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
                                                  {"name": config.unk_column, "domain": "log", "penalty": True}])


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
    schema = output_schema(table.schema, config, unit.where)  # fails before scoring, not after
    sources, targets = _check_pairs(table, unit)
    scorer = scorer_for(config)
    with torch_threads(config.threads):
        logp, unk, stats = scorer.score(sources, targets)
    out = with_score_columns(table, {config.logp_column: (logp.astype(np.float32), "log"),
                                     config.unk_column: (unk.astype(np.float32), "log")})
    out = out.replace_schema_metadata(schema.metadata)  # the declarations, rnn_unk's penalty flag included
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



# ---------------------------------------------------------------------------------------------
# The stage: staging, resumption, publication (the command line is workflows.rescore)

def default_rows_per_unit(table: str | os.PathLike, group_rows: int) -> int:
    """Rows per unit when none is given: the table in ``pipeline.partitioning.TARGET_TASKS`` units
    of whole groups, from 16,384 to 100,000 rows (a 98k-row table: 6 units, not 1)."""
    from rnnenc.pipeline.partitioning import default_size

    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in list_parts(table))
    return default_size(rows, floor=MIN_ROWS_PER_UNIT, cap=DEFAULT_ROWS_PER_UNIT, step=max(1, group_rows))


SAMPLE_ROWS = 20_000
RUN_FILE = "run.json"


def staging_dir(out: Path) -> Path:
    return out.with_name(f"{out.name}.partial")


def check_model_fits(table: Path, units: Sequence[WorkUnit], config: RescoreConfig,
                     max_unknown_rate: float) -> tuple[dict[str, str], EncoderDecoderConfig]:
    """Languages of the model vs the table's manifest, and its vocabularies vs a sample of pairs.

    Returns the model's languages and sizes.
    """
    model, src_vocab, tgt_vocab = load_model(config.model)  # on the client: vocabularies and a readable file
    manifest_config = (read_manifest(table) or {}).get("config", {}) if table.is_dir() else {}
    table_langs = (manifest_config.get("source_lang"), manifest_config.get("target_lang"))
    model_langs = (src_vocab.lang, tgt_vocab.lang)
    for side, table_lang, model_lang in zip(("source", "target"), table_langs, model_langs, strict=True):
        if table_lang and model_lang and table_lang != model_lang:
            raise UserError(f"{config.model}: the model's {side} language is '{model_lang}' but the phrase "
                            f"table's is '{table_lang}' (model {model_langs[0]}->{model_langs[1]}, table "
                            f"{table_langs[0]}->{table_langs[1]})")
    sample = read_unit(units[0], columns=["source", "target"]).slice(0, SAMPLE_ROWS)
    reason = vocabulary_mismatch([s or "" for s in sample.column("source").to_pylist()],
                                 [t or "" for t in sample.column("target").to_pylist()],
                                 src_vocab, tgt_vocab, max_unknown_rate)
    if reason:
        raise UserError(f"{config.model}: does not fit the phrase table {table}: {reason}")
    return {"source": src_vocab.lang, "target": tgt_vocab.lang}, model.config


def run_identity(config: RescoreConfig, rows_per_unit: int) -> tuple[RescoreConfig, dict[str, Any]]:
    """(config with the model's absolute path, what a resumed run must share with the interrupted one)."""
    config = RescoreConfig(**(config.to_dict() | {"model": str(Path(config.model).resolve())}))
    return config, {"config": config.to_dict(), "model_hash": file_hash(config.model), "rows_per_unit": rows_per_unit}


def prepare_staging(staging: Path, run: dict[str, Any], units: Sequence[WorkUnit]) -> None:
    """Keep a previous attempt's parts only if it was the same run; drop anything else."""
    previous = staging / RUN_FILE
    if staging.exists() and output_stage(staging) != "rescore":
        raise UserError(f"{staging}: exists and was not written by rnnenc rescore; move it away and rerun")
    if staging.exists():
        try:
            same = json.loads(previous.read_text()) == run
        except (OSError, ValueError):
            same = False
        if not same:
            log.info("%s: an interrupted run with another model or config; starting over", staging)
            shutil.rmtree(staging)
    (staging / UNITS_DIR).mkdir(parents=True, exist_ok=True)
    write_json_atomic(staging / OWNER_NAME, {"stage": "rescore"})
    planned = {unit.name for unit in units}
    for path in staging.glob("part-*.parquet"):
        if path.name not in planned:  # the input changed shape since: not part of this table
            path.unlink()
    for path in list(staging.glob(".part-*.tmp-*")) + list((staging / UNITS_DIR).glob(".*.tmp-*")):
        path.unlink(missing_ok=True)  # left by a killed task
    write_json_atomic(previous, run)


def publish(staging: Path, out: Path) -> None:
    """Turn the complete staging directory into ``out`` (replacing an older output)."""
    shutil.rmtree(staging / UNITS_DIR)
    (staging / RUN_FILE).unlink()
    replace_output(staging, out)


def rescore(executor: Executor, table: str | os.PathLike, out: str | os.PathLike, config: RescoreConfig, *,
            rows_per_unit: int | None = None, max_unknown_rate: float = 0.5,
            resources: dict[str, float] | None = None) -> dict[str, Any]:
    """The rescore stage: score ``table`` into ``out`` unit by unit on ``executor``, resuming an
    interrupted run of the same identity; return the report.

    Parameters:
        executor: runs ``rescore_unit`` per work unit (``pipeline.executor``).
        table: a Parquet phrase table.
        out: the new table (checked: never a foreign directory or one holding an input; locked).
        config: the model and how to score (part of the run's identity).
        rows_per_unit: rows per task and output part (rounded up to whole groups; default:
            ``default_rows_per_unit``).
        max_unknown_rate: refuse a model whose vocabularies miss more of a sample's tokens.
        resources: what each task asks of a worker (``{"GPU": 1}`` on a cluster with GPU workers).
    """
    table = Path(table)
    if Path(os.path.abspath(out)) == Path(os.path.abspath(table)):
        raise UserError(f"{out}: the output must differ from the input (the input is never modified)")
    out = check_output_target(out, "rescore", [table, config.model])
    if rows_per_unit is None:
        rows_per_unit = default_rows_per_unit(table, config.group_rows)
    with output_lock(out):
        return _rescore(executor, table, out, config, rows_per_unit=rows_per_unit,
                        max_unknown_rate=max_unknown_rate, resources=resources)


def _rescore(executor: Executor, table: Path, out: Path, config: RescoreConfig, *, rows_per_unit: int,
             max_unknown_rate: float, resources: dict[str, float] | None) -> dict[str, Any]:
    started = time.perf_counter()
    config.validate()
    units, schema = plan_units(table, rows_per_unit, config.group_rows)
    output_schema(schema, config, table)  # metadata and column names, checked before any work
    langs, model_config = check_model_fits(table, units, config, max_unknown_rate)
    config, run = run_identity(config, rows_per_unit)

    staging = staging_dir(out)
    prepare_staging(staging, run, units)
    records: dict[str, dict[str, Any]] = {}
    for unit in units:
        record = completed_record(staging, unit)
        if record is not None:
            records[unit.name] = record
    todo = [unit for unit in units if unit.name not in records]
    if records:
        log.info("resuming: %d of %d unit(s) already committed in %s", len(records), len(units), staging)
    results = executor.map(rescore_unit, todo, desc="rescore", resources=resources, staging=str(staging),
                           config=config)
    for unit, record in zip(todo, results, strict=True):
        records[unit.name] = record

    totals: dict[str, int] = {}
    rows = 0
    device_units: dict[str, int] = {}
    for unit in units:
        record = records[unit.name]
        if record["rows"] != unit.rows:
            raise RuntimeError(f"{unit.name}: {record['rows']} rows written for {unit.rows} read")
        rows += record["rows"]
        for key, value in record["stats"].items():
            totals[key] = totals.get(key, 0) + value
        device_units[record["device"]] = device_units.get(record["device"], 0) + 1
    expected = sum(unit.rows for unit in units)
    assert rows == expected == totals.get("pairs", 0), (rows, expected, totals)
    seconds = time.perf_counter() - started
    scored_rows = sum(unit.rows for unit in todo)
    report = {
        "stage": "rescore",
        "languages": langs,
        "rows": rows,
        "units": len(units),
        "units_resumed": len(units) - len(todo),
        "units_scored": len(todo),
        "columns": {"logp": config.logp_column, "unk": config.unk_column},
        "devices": device_units,
        "gpu_tasks": resources is not None,
        **totals,
        "source_reuse": round(rows / max(1, totals["sources_encoded"]), 3),
        "padding_fraction": round(totals["padded_rows"] / max(1, totals["padded_rows"] + totals["sources_encoded"]
                                                              + totals["pairs"]), 4),
        "model_flops_forward": model_flops(model_config, totals["source_tokens"], totals["target_tokens"], rows),
        "seconds": round(seconds, 3),
        "pairs_per_second": round(scored_rows / seconds, 1),
    }
    write_json_atomic(staging / REPORT_NAME, report)
    publish(staging, out)
    write_manifest(out, stage="rescore", inputs=[table, config.model],
                   config={"rescore": config.to_dict(), "rows_per_unit": rows_per_unit,
                           "max_unknown_rate": max_unknown_rate, "source_lang": langs["source"],
                           "target_lang": langs["target"]},
                   counts={k: report[k] for k in ("rows", "units", "units_resumed", "pairs_with_unknown",
                                                  "unknown_source_tokens", "unknown_target_tokens")})
    return report


__all__ = ["DEFAULT_ROWS_PER_UNIT", "MIN_ROWS_PER_UNIT", "RescoreConfig", "default_rows_per_unit", "RowRange", "WorkUnit", "batch_sizes", "check_model_fits",
           "check_schema", "completed_record", "output_schema", "plan_units", "prepare_staging", "publish",
           "read_unit", "rescore", "rescore_unit", "run_identity", "scorer_for", "staging_dir", "torch_threads",
           "unit_rows", "vocabulary_mismatch"]
