"""Build a Moses-style phrase table from a corpus: eflomal alignment, extraction, scoring.

Input: a corpus directory of part-*.parquet with tokenised source/target columns (an
`rnnenc ingest` output, or an `rnnenc select` output whose selected/ parts are used).
Steps, each a Dask map: align every part in both directions with eflomal and symmetrise
with grow-diag-final-and (or reuse --alignment DIR); extract every phrase pair consistent
with the alignment (up to --max-phrase-length tokens a side); score them as Moses's
score/consolidate do, by distributed group-bys over on-disk buckets (by target phrase for
p(f|e), by source range for p(e|f)); export the Moses text table.

Outputs in --out: table/part-*.parquet (Parquet phrase table, scores p(f|e) lex(f|e) p(e|f)
lex(e|f), alignment, counts "c(e) c(f) c(f,e)", in LC_ALL=C order), phrase-table.gz (Moses
text, sorted), alignment/part-*.parquet (line-aligned with the corpus parts: alignment,
forward, reverse, line), lex.f2e / lex.e2f (Moses lexical tables) and lex.parquet,
_report.json and, last, _manifest.json. The corpus and --out must be on a filesystem the
workers share. The Parquet table to open is OUT/table (pandas.read_parquet("OUT/table"),
pyarrow.dataset, Dask; DuckDB: 'OUT/table/*.parquet').

eflomal seeds itself from /dev/urandom, so a new alignment differs slightly from run to
run; given the same alignment (--alignment), the table is byte-identical whatever the
partitioning or the number of workers.

example:
  rnnenc phrases artifacts/run/select --out artifacts/run/phrases --min-count 2
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from rnnenc.pipeline.errors import UserError
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.stages import input_path, output_path

if TYPE_CHECKING:  # pandas, eflomal's wrapper and distributed load in main(), never for --help
    from rnnenc.pipeline.alignment import AlignConfig
    from rnnenc.pipeline.phrases import PhraseConfig

log = logging.getLogger("rnnenc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "corpus", help="corpus directory (part-*.parquet, or a select output with selected/)")
    output_path(parser, "--out", required=True, help="output directory")
    input_path(parser, "--alignment", metavar="DIR",
                        help="reuse this alignment (part-*.parquet with an 'alignment' column, one part per "
                             "corpus part, e.g. OUT/alignment of an earlier run) instead of running eflomal")
    parser.add_argument("--max-phrase-length", type=int, default=7, metavar="N",
                        help="longest phrase, in tokens, on either side (default: 7, as Moses)")
    parser.add_argument("--min-count", type=int, default=1, metavar="N",
                        help="drop pairs seen fewer than N times, after scoring (2 removes singletons; default: 1)")
    parser.add_argument("--buckets", type=int, metavar="N",
                        help="shuffle buckets (default: one per 500k source tokens); each must fit in a "
                             "worker's memory")
    align = parser.add_argument_group("eflomal")
    align.add_argument("--align-model", type=int, choices=(1, 2, 3), default=3,
                       help="1 = IBM1, 2 = HMM, 3 = HMM + fertility (default)")
    align.add_argument("--align-iterations", metavar="I1,I2,I3",
                       help="sampling iterations for the IBM1, HMM and fertility stages (default: eflomal's)")
    align.add_argument("--align-samplers", type=int, default=2, metavar="N",
                       help="independent samplers per shard, each a thread (default: 2)")
    input_path(align, "--priors", metavar="FILE", help="eflomal priors file passed to every shard")
    add_cluster_arguments(parser)


def _iterations(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise UserError(f"--align-iterations: want three counts like 4,4,4, not '{text}'")
    return values  # type: ignore[return-value]


def config_from_args(args: argparse.Namespace) -> tuple[PhraseConfig, AlignConfig]:
    from rnnenc.pipeline.alignment import AlignConfig
    from rnnenc.pipeline.phrases import PhraseConfig

    phrases = PhraseConfig(max_length=args.max_phrase_length, min_count=args.min_count, buckets=args.buckets)
    align = AlignConfig(model=args.align_model, iterations=_iterations(args.align_iterations),
                        samplers=args.align_samplers, priors=args.priors)
    if align.samplers < 1:
        raise UserError("--align-samplers must be at least 1")
    return phrases, align


def main(args: argparse.Namespace) -> int:
    from rnnenc.pipeline.phrase_table import list_parts
    from rnnenc.pipeline.phrases import corpus_parts, run_phrases
    from rnnenc.workflows.cluster import cluster_executor

    phrases, align = config_from_args(args)
    # Input mistakes are reported before a cluster is started.
    _, parts = corpus_parts(args.corpus)
    if args.alignment and len(list_parts(args.alignment)) != len(parts):
        raise UserError(f"{args.alignment}: {len(list_parts(args.alignment))} alignment parts for the "
                        f"{len(parts)} corpus parts")
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet) as executor:
        manifest = run_phrases(executor, args.corpus, args.out, phrases, align,
                               alignment=args.alignment)
    counts = manifest["counts"]
    print(f"{counts['phrase_pairs']:,} phrase pairs from {counts['pairs']:,} sentence pairs into {args.out}")
    return 0

