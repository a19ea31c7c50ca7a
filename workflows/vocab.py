"""Build the source and target vocabularies: the K most frequent words of each side.

Counts words with Dask, one task per Parquet part, over a corpus (the output of `rnnenc
ingest` or `rnnenc select`: running words of the source and target columns) or over a Parquet
phrase table (`rnnenc phrase-table`: the words of each side's distinct phrases, so a phrase
listed with many translations counts once). Keeps the --size most frequent words per side (15,000
in the paper), ties broken by byte order, after the special symbols <pad>=0, <unk>=1, </s>=2.

Writes OUT/vocab.<lang>.txt (one token a line, the line index is the id) and
OUT/vocab.<lang>.json (counts, coverage) per side, OUT/counts.<lang>.tsv.gz (every word and
its count, in vocabulary order, to cut another size without counting again), OUT/_report.json
and, last, OUT/_manifest.json. Coverage = share of the running words (as counted) that the
vocabulary covers; the paper reports about 93 % at 15,000 words.

example:
  rnnenc vocab --corpus artifacts/run/select --out artifacts/run/vocab
  rnnenc vocab --phrase-table artifacts/run/phrase-table --size 15000 --out artifacts/run/vocab
"""

from __future__ import annotations

import argparse
from typing import Any

from rnnenc.pipeline.artifacts import phrase_table_path
from rnnenc.pipeline.vocab import DEFAULT_SIZE, build_vocabularies
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.stages import input_path, output_path


def describe(report: dict[str, Any]) -> list[str]:
    lines = []
    for side, info in report["sides"].items():
        line = (f"{side} ({info['lang']}): {info['words']:,} words of {info['types']:,} "
                f"(+3 specials), coverage {100 * info['coverage']:.2f} % of {info['running_words']:,} "
                f"running words")
        if "pair_coverage" in info:
            line += f" ({100 * info['pair_coverage']:.2f} % over the table's pairs)"
        lines.append(line + f" -> {info['file']}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    input_path(source, "--corpus", metavar="DIR", help="a corpus: rnnenc ingest or select output")
    input_path(source, "--phrase-table", metavar="DIR", help="a Parquet phrase table (rnnenc phrase-table)")
    output_path(parser, "--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE,
                        help="words per side, besides the specials (default: %(default)s)")
    parser.add_argument("--src-size", type=int, help="source words (default: --size)")
    parser.add_argument("--tgt-size", type=int, help="target words (default: --size)")
    parser.add_argument("--src-lang", help="source language (default: the one in the input's manifest)")
    parser.add_argument("--tgt-lang", help="target language (default: the one in the input's manifest)")
    parser.add_argument("--buckets", type=int, default=0,
                        help="phrase tables: hash buckets for finding distinct phrases (default: one per "
                             "64 MB of Parquet)")
    add_cluster_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from rnnenc.workflows.cluster import cluster_executor

    kind, path = ("corpus", args.corpus) if args.corpus else ("phrase-table", str(phrase_table_path(args.phrase_table)))
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet, key_prefix="vocab") as executor:
        report = build_vocabularies(kind, path, args.out, src_lang=args.src_lang, tgt_lang=args.tgt_lang, size=args.size,
                       src_size=args.src_size, tgt_size=args.tgt_size, buckets=args.buckets,
                       executor=executor)
    print("\n".join(describe(report)))
    return 0
