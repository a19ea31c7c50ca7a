"""Add the RNN score and the unknown-word count (+WP) to a Parquet phrase table.

Writes a new Parquet phrase table OUT (the input is never modified): the input's columns and
schema metadata, plus two float32 columns, by default ``rnn_logp`` = log p(target | source)
under the model (summed over target tokens incl. </s>, no length normalisation, as GroundHog's
score.py) and ``rnn_unk`` = source words unknown to the model's source vocabulary + target
words unknown to its target vocabulary. Both are declared with domain ``log`` in the
``rnnenc.scores`` metadata, so the Moses export writes exp(value).

The table's rows, in their global order, are cut into groups of --group-rows consecutive rows
scored together, and into work units of whole groups (--rows-per-unit); each Dask task
scores one unit with the model loaded once per worker process (CUDA with bf16 when the worker
has a GPU; tasks ask for the ``GPU`` resource when workers declare it) and commits one output
part atomically. Units are staged in OUT.partial/: after an interruption, rerun the same
command and it resumes with the units not yet committed. OUT/report.json and, last,
OUT/manifest.json are written once every part exists. Scores are identical bit for bit whatever
the files, row groups, units and number of workers, by construction: a pair always meets the same
pairs in the same batch shapes (for a given machine, group and batch configuration).
The table, the model and OUT must be on a filesystem the workers share.

example:
  rnnenc rescore --phrase-table artifacts/run/phrase-table --model artifacts/run/train/model.pt \\
      --out artifacts/run/rescored
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from distributed import Client

from pipeline.artifacts import (
    OWNER_NAME,
    check_output_target,
    file_hash,
    model_path,
    output_lock,
    output_stage,
    phrase_table_path,
    read_manifest,
    replace_output,
    write_json_atomic,
    write_manifest,
)
from pipeline.errors import UserError
from pipeline.model import EncoderDecoderConfig, load_model, model_flops
from pipeline.moses import export_stage
from pipeline.rescore import (
    UNITS_DIR,
    RescoreConfig,
    WorkUnit,
    completed_record,
    output_schema,
    plan_units,
    read_unit,
    rescore_unit,
    vocabulary_mismatch,
)
from workflows.cli import add_cluster_arguments
from workflows.cluster import DaskExecutor, dask_client, gpu_resources
from workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")
DEFAULT_ROWS_PER_UNIT = 100_000
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


def rescore(client: Client, table: str | os.PathLike, out: str | os.PathLike, config: RescoreConfig, *,
            rows_per_unit: int = DEFAULT_ROWS_PER_UNIT, max_unknown_rate: float = 0.5,
            quiet: bool = False) -> dict[str, Any]:
    """Rescore ``table`` into ``out`` on the cluster, resuming a previous interrupted run; return the report.

    ``out`` is checked (never a foreign directory or one holding an input) and locked for the run.
    """
    table = Path(table)
    if Path(os.path.abspath(out)) == Path(os.path.abspath(table)):
        raise UserError(f"{out}: the output must differ from the input (the input is never modified)")
    out = check_output_target(out, "rescore", [table, config.model])
    with output_lock(out):
        return _rescore(client, table, out, config, rows_per_unit=rows_per_unit, max_unknown_rate=max_unknown_rate,
                        quiet=quiet)


def _rescore(client: Client, table: Path, out: Path, config: RescoreConfig, *, rows_per_unit: int,
             max_unknown_rate: float, quiet: bool) -> dict[str, Any]:
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
    resources = gpu_resources(client)
    results = DaskExecutor(client, quiet=quiet, key_prefix="rescore").map(
        rescore_unit, todo, desc="rescore", resources=resources, staging=str(staging), config=config)
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
    write_json_atomic(staging / "report.json", report)
    publish(staging, out)
    write_manifest(out, stage="rescore", inputs=[table, config.model],
                   config={"rescore": config.to_dict(), "rows_per_unit": rows_per_unit,
                           "max_unknown_rate": max_unknown_rate, "source_lang": langs["source"],
                           "target_lang": langs["target"]},
                   counts={k: report[k] for k in ("rows", "units", "units_resumed", "pairs_with_unknown",
                                                  "unknown_source_tokens", "unknown_target_tokens")})
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "--phrase-table", required=True, metavar="DIR",
                        help="Parquet phrase table (directory of part-*.parquet)")
    input_path(parser, "--model", required=True, metavar="FILE", help="trained model (model.pt of rnnenc train)")
    output_path(parser, "--out", required=True, metavar="DIR", help="output phrase table (replaced atomically)")
    output_path(parser, "--export", metavar="DIR",
                        help="then also write the rescored table as a Moses phrase table DIR/phrase-table.gz "
                             "(C-sorted, gzip; log-domain columns written as exp(value))")
    columns = parser.add_argument_group("new columns")
    columns.add_argument("--logp-column", default=RescoreConfig.logp_column, help="log p(target | source) (default: %(default)s)")
    columns.add_argument("--unk-column", default=RescoreConfig.unk_column, help="unknown-word count (default: %(default)s)")
    speed = parser.add_argument_group("speed and memory (batch sizes change the last bits of the scores)")
    speed.add_argument("--device", default=RescoreConfig.device,
                       help="auto (CUDA when a worker has it), cpu, cuda or cuda:N (default: %(default)s)")
    speed.add_argument("--encoder-batch", type=int, metavar="N",
                       help="distinct sources per encoder batch (default: 256 on CPU, 2048 on GPU)")
    speed.add_argument("--decoder-batch", type=int, metavar="N",
                       help="pairs per decoder batch (default: 512 on CPU, 2048 on GPU)")
    speed.add_argument("--readout-rows", type=int, metavar="N",
                       help="rows per vocabulary-wide softmax chunk, divides --decoder-batch "
                            "(default: 64 on CPU, the whole batch on GPU)")
    speed.add_argument("--group-rows", type=int, default=RescoreConfig.group_rows, metavar="N",
                       help="consecutive rows of the table scored together: a pair's bits depend on its "
                            "group, never on the files, units or workers (default: %(default)s; memory: "
                            "about 20 KB per distinct source at the paper's sizes)")
    speed.add_argument("--no-bf16", action="store_true", help="GPU: compute in float32, not bf16")
    speed.add_argument("--threads", type=int, metavar="N",
                       help="torch threads per worker while scoring (default: the worker's; Dask runs 1)")
    parser.add_argument("--rows-per-unit", type=int, default=DEFAULT_ROWS_PER_UNIT, metavar="N",
                        help="rows per Dask task and output part, rounded up to whole --group-rows "
                             "(default: %(default)s)")
    parser.add_argument("--max-unknown-rate", type=float, default=0.5, metavar="R",
                        help="refuse a model whose vocabularies miss more than this share of a side's "
                             "tokens in a sample of the table (default: %(default)s)")
    add_cluster_arguments(parser)


def config_from_args(args: argparse.Namespace) -> RescoreConfig:
    return RescoreConfig(model=args.model, logp_column=args.logp_column, unk_column=args.unk_column,
                         device=args.device, encoder_batch=args.encoder_batch, decoder_batch=args.decoder_batch,
                         readout_rows=args.readout_rows, group_rows=args.group_rows, bf16=not args.no_bf16,
                         threads=args.threads)


def print_report(report: dict[str, Any], out: str) -> None:
    print(f"rescored {report['rows']:,} pairs in {report['units']} unit(s) ({report['units_resumed']} resumed) "
          f"into {out}: {report['pairs_per_second']:,} pairs/s, {report['source_reuse']} pairs per encoded "
          f"source, {report['pairs_with_unknown']:,} pairs with unknown words")


def main(args: argparse.Namespace) -> int:
    # a phrases output stands for its table/, a train output for its model.pt
    args.phrase_table, args.model = str(phrase_table_path(args.phrase_table)), str(model_path(args.model))
    config = config_from_args(args)
    with dask_client(args.scheduler, args.workers) as client:
        report = rescore(client, args.phrase_table, args.out, config, rows_per_unit=args.rows_per_unit,
                         max_unknown_rate=args.max_unknown_rate, quiet=args.quiet)
        print_report(report, args.out)
        if args.export:
            # the same export as `rnnenc export` (one Moses export stage, one manifest)
            counts = export_stage(args.out, args.export, executor=DaskExecutor(client, quiet=args.quiet,
                                                                              key_prefix="export"))
            print(f"exported {counts['rows']:,} lines to {Path(args.export) / 'phrase-table.gz'}"
                  + (f" ({counts['clipped_total']} scores clipped to Moses's floor)" if counts["clipped_total"] else ""))
    return 0
