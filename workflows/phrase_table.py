r"""Import a Moses phrase table (text or .gz/.bz2/.xz/.zst) into a Parquet phrase table.

Reads `source ||| target ||| scores ||| alignment ||| counts` lines (and any further fields),
streaming, into OUT/part-NNNNN.parquet with the schema of CONTRIBUTING.md ("Phrase table
(Parquet)"): source, target, one float32 column per dense score (score0, score1, ...),
alignment, counts, extra (further fields verbatim), line; row groups of --rows-per-group rows.
Plain text is split into byte ranges of --split-size (aligned to line starts; line numbers stay
exact); a compressed file is decompressed once, here, into chunks of that size, each a task as
soon as it is written (the staging space holds up to the decompressed size); tasks run on Dask.

Bad lines (invalid UTF-8, a wrong number of fields, an empty phrase, a non-numeric score,
another number of scores than the first line, a negative score, or one of the first
--prob-scores scores outside [0, 1]) stop the import with FILE:LINE: reason, or with
--on-error skip are counted by reason in OUT/_report.json and written to OUT/_rejects.tsv.gz
(file, line, reason, detail, text; text is the line's exact bytes with a backslash written
\\, a byte that is not UTF-8 \xNN, a tab \t, a CR \r). A truncated or corrupt compressed
input stops the import with FILE:LINE whatever --on-error says: the rest of the file is lost.
OUT/_manifest.json is written last. OUT opens as one Parquet dataset by its name
(pandas.read_parquet("OUT"), pyarrow.dataset, Dask; DuckDB: 'OUT/*.parquet').

example:
  rnnenc phrase-table train/model/phrase-table.gz --src-lang en --tgt-lang fr --out artifacts/run/phrase-table
"""

from __future__ import annotations

import argparse
from typing import Any

from rnnenc.pipeline.phrase_table import (
    DEFAULT_PROB_SCORES,
    DEFAULT_ROWS_PER_GROUP,
    import_moses,
)
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.stages import input_path, output_path


def parse_size(text: str) -> int:
    """'256M' -> 268435456 (K, M, G: powers of 1024)."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    try:
        if text and text[-1] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "input", nargs="+",
               help="Moses phrase table file(s), plain or compressed, or a moses-train output")
    output_path(parser, "--out", required=True, help="output directory (replaced atomically)")
    parser.add_argument("--src-lang", help="source language, recorded in the manifest (e.g. en)")
    parser.add_argument("--tgt-lang", help="target language, recorded in the manifest (e.g. fr)")
    parser.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                        help="bad lines: stop with file:line (fail) or count them and write them to the "
                             "rejects file (skip) (default: %(default)s)")
    output_path(parser, "--rejects", metavar="FILE",
                        help="where rejected lines go (default: OUT/_rejects.tsv.gz)")
    parser.add_argument("--num-scores", type=int, metavar="N",
                        help="expected number of scores a line (default: that of the first valid line)")
    parser.add_argument("--score-names", metavar="NAME,...",
                        help="the score columns' names, in the line's order (default: Moses's standard four, "
                             "p_f_given_e,lex_f_given_e,p_e_given_f,lex_e_given_f, for a table of four scores; "
                             "score0, score1, ... otherwise)")
    parser.add_argument("--prob-scores", type=int, default=DEFAULT_PROB_SCORES, metavar="N",
                        help="how many leading scores are probabilities, refused outside [0, 1] (default: "
                             "%(default)s, Moses's phi(f|e) lex(f|e) phi(e|f) lex(e|f); 0: none). Any "
                             "negative score is refused: Moses takes the log")
    parser.add_argument("--split-size", type=parse_size, metavar="BYTES",
                        help="bytes per task and per part, of plain text or of a compressed file once "
                             "decompressed (default: the plain input in 16 parts, 16M to 256M each)")
    parser.add_argument("--rows-per-group", type=int, default=DEFAULT_ROWS_PER_GROUP,
                        help="rows per Parquet row group (default: %(default)s)")
    add_cluster_arguments(parser)


def describe(report: dict[str, Any]) -> str:
    rejected = ", ".join(f"{k}: {v}" for k, v in report["rejected_by_reason"].items()) or "none"
    text = (f"imported {report['rows_written']:,} of {report['lines_read']:,} lines "
            f"({report['num_scores']} scores, {report['num_fields']} fields) into {report['parts']} part(s); "
            f"rejected {report['rejected']:,} ({rejected}); {report['lines_per_second']:,.0f} lines/s")
    if report["rejects_file"]:
        text += f"\nrejects: {report['rejects_file']}"
    return text


def main(args: argparse.Namespace) -> int:
    from rnnenc.pipeline.artifacts import moses_table_path, read_artifact
    from rnnenc.workflows.cluster import cluster_executor

    # a moses-train output stands for its table, and tells the languages
    for path in args.input:
        languages = read_artifact(path).languages
        if languages and not (args.src_lang or args.tgt_lang):
            args.src_lang, args.tgt_lang = languages
    args.input = [str(moses_table_path(p)) for p in args.input]
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet, key_prefix="phrase-table") as executor:
        report = import_moses(args.input, args.out, source_lang=args.src_lang, target_lang=args.tgt_lang,
                              on_error=args.on_error, rejects_path=args.rejects, split_bytes=args.split_size,
                              rows_per_group=args.rows_per_group, num_scores=args.num_scores,
                              executor=executor,
                              prob_scores=args.prob_scores,
                              score_names=args.score_names.split(",") if args.score_names else None)
    print(describe(report))
    return 0
