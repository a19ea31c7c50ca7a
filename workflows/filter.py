"""Filter a Parquet phrase table to the source phrases of given input text (a tuning set, a test
set), as Moses's filter-model-given-input.pl filters a text table: a row is kept when its source
phrase is an n-gram (up to --max-phrase-length tokens) of one of the input sentences. The decoder
never looks up any other row, so a table filtered to the tuning and test sets translates them
exactly as the whole table does, and rescoring it (one RNN pass per row) and exporting it cost a
fraction. Rows are kept unchanged (scores, alignments, counts, line numbers).

Inputs are corpus directories written by 'rnnenc ingest' (their source column), which must
record the preprocessing of the corpus the table was built from (found through the manifests:
phrases -> select -> pool; another is refused in one line), or text files, preprocessed as that
corpus records (give them untokenised; taken as they are, tokenised, when the table's manifests
lead to no record, e.g. an imported Moses table). Writes a phrase table OUT (part for part of the
input), OUT/_report.json (rows read and kept) and, last, OUT/_manifest.json. OUT opens as one
Parquet dataset by its name (pandas.read_parquet("OUT"), pyarrow.dataset, Dask; DuckDB:
'OUT/*.parquet').

example:
  rnnenc filter --table artifacts/run/phrases --input artifacts/run/dev --input artifacts/run/test \\
      --out artifacts/run/filtered
"""

from __future__ import annotations

import argparse

from rnnenc.pipeline.phrase_filter import DEFAULT_MAX_PHRASE_LENGTH
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.stages import input_path, output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "--table", required=True, metavar="DIR",
               help="the Parquet phrase table (a phrase-table, phrases or rescore output)")
    input_path(parser, "--input", action="append", required=True, metavar="PATH",
               help="a corpus directory written by 'rnnenc ingest', or a source text file (preprocessed as "
                    "the table's corpus records); repeat")
    parser.add_argument("--max-phrase-length", type=int, default=DEFAULT_MAX_PHRASE_LENGTH, metavar="N",
                        help="longest source phrase looked up (default: %(default)s)")
    output_path(parser, "--out", required=True, help="output directory (replaced atomically)")
    add_cluster_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from rnnenc.pipeline.phrase_filter import filter_table
    from rnnenc.workflows.cluster import cluster_executor

    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet, key_prefix="filter") as executor:
        report = filter_table(args.table, args.out, args.input, max_length=args.max_phrase_length,
                              executor=executor)
    print(f"filter: kept {report['kept']:,} of {report['rows']:,} rows ({100 * report['kept_fraction']:.2f} %) "
          f"whose source phrase occurs in the input ({report['input_phrases']:,} distinct phrases) into {args.out}")
    return 0
