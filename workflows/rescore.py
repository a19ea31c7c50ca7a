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
command and it resumes with the units not yet committed. OUT/_report.json and, last,
OUT/_manifest.json are written once every part exists. Scores are identical bit for bit whatever
the files, row groups, units and number of workers, by construction: a pair always meets the same
pairs in the same batch shapes (for a given machine, group and batch configuration).
The table, the model and OUT must be on a filesystem the workers share. OUT opens as one
Parquet dataset by its name (pandas.read_parquet("OUT"), pyarrow.dataset, Dask; DuckDB:
'OUT/*.parquet').

example:
  rnnenc rescore --phrase-table artifacts/run/phrase-table --model artifacts/run/train/model.pt \\
      --out artifacts/run/rescored
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rnnenc.pipeline.artifacts import model_path, phrase_table_path
from rnnenc.pipeline.rescore_config import DEFAULT_ROWS_PER_UNIT, MIN_ROWS_PER_UNIT, RescoreConfig
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.stages import input_path, output_path


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
    parser.add_argument("--rows-per-unit", type=int, metavar="N",
                        help="rows per Dask task and output part, rounded up to whole --group-rows (default: "
                             f"the table in 16 units, {MIN_ROWS_PER_UNIT:,} to {DEFAULT_ROWS_PER_UNIT:,} rows each)")
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
    # here, not at the top: torch (pipeline.rescore) and distributed would slow down --help
    from rnnenc.pipeline.moses import export_stage
    from rnnenc.pipeline.rescore import rescore
    from rnnenc.workflows.cluster import cluster_executor

    # a phrases output stands for its table/, a train output for its model.pt
    args.phrase_table, args.model = str(phrase_table_path(args.phrase_table)), str(model_path(args.model))
    config = config_from_args(args)
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet, key_prefix="rescore") as executor:
        report = rescore(executor, args.phrase_table, args.out,
                         config, rows_per_unit=args.rows_per_unit, max_unknown_rate=args.max_unknown_rate,
                         resources=executor.gpu_resources())
        print_report(report, args.out)
        if args.export:
            # the same export as `rnnenc export` (one Moses export stage, one manifest)
            counts = export_stage(args.out, args.export, executor=executor.named("export"))
            print(f"exported {counts['rows']:,} lines to {Path(args.export) / 'phrase-table.gz'}"
                  + (f" ({counts['clipped_total']} scores clipped to Moses's floor)" if counts["clipped_total"] else ""))
    return 0
