"""Write a Parquet phrase table as a Moses phrase table, and an updated moses.ini.

OUT/phrase-table.gz holds one line per row, `source ||| target ||| scores ||| alignment |||
counts` (and any extra fields), every score column in the table's order (the imported ones,
then the added ones such as rnn_logp and rnn_unk), each as Moses expects it before it takes
the natural log: a prob column as is, a log column as exp(value). Moses floors logs at -100:
smaller values are written as exp(-100) and counted ("clipped" in the report). Scores are
written %.6g (what Moses writes; --precision 9 for every float32 digit). Lines are sorted as
`LC_ALL=C sort` sorts them, out of core (sorted runs per part on disk, then a merge), as
processPhraseTableMin and CreateOnDiskPt require.

--scores chooses the columns written (e.g. a system without rnn_unk); --filter-to keeps only the
rows a tuning or test set can use (as filter-model-given-input.pl; see also 'rnnenc filter').

With --moses-ini, OUT/moses.ini is a copy in which the phrase dictionary (TranslationModel0, or
--feature) points at the new table, has num-features raised by the number of added columns
and one initial weight per added column (--initial-weight, or --weight NAME=VALUE) appended
to its [weight] line: ready for mert-moses.pl. With --lm and no --moses-ini, OUT/moses.ini is
a new one in train-model.perl's layout (distortion, word and phrase penalties, the table, the
LM) with its initial weights. OUT/_report.json; OUT/_manifest.json last.

example:
  rnnenc export --table artifacts/run/rescore --moses-ini train/model/moses.ini --out artifacts/run/export
"""

from __future__ import annotations

import argparse
from typing import Any

from rnnenc.pipeline.artifacts import phrase_table_path
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.moses import DEFAULT_INITIAL_WEIGHT, export_stage
from rnnenc.pipeline.phrase_table import DEFAULT_RUN_BYTES, ExportConfig
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.phrase_table import parse_size
from rnnenc.workflows.stages import input_path, output_path


def parse_weights(items: list[str] | None) -> dict[str, float]:
    weights = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        try:
            if not sep or not name:
                raise ValueError
            weights[name] = float(value)
        except ValueError:
            raise UserError(f"--weight {item!r}: expected NAME=VALUE, e.g. rnn_unk=-0.2") from None
    return weights


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "--table", required=True, metavar="DIR",
                        help="the Parquet phrase table (rnnenc phrase-table or rescore output)")
    output_path(parser, "--out", required=True, help="output directory (replaced atomically)")
    input_path(parser, "--moses-ini", metavar="FILE",
               help="the moses.ini to update for the exported table (or a moses-train or export output); "
                    "without it, --lm makes a new one in train-model.perl's layout")
    input_path(parser, "--lm", metavar="PATH",
               help="the language model the moses.ini reads: an 'rnnenc lm' output or a KenLM file (its "
                    "KENLM feature's path and order are set, or one is added)")
    parser.add_argument("--scores", metavar="NAME,...",
                        help="the score columns written, e.g. p_f_given_e,lex_f_given_e,p_e_given_f,lex_e_given_f,"
                             "rnn_logp for a "
                             "system without rnn_unk (default: all, in the table's order)")
    input_path(parser, "--filter-to", action="append", metavar="PATH",
               help="write only the rows whose source phrase occurs in this input (a corpus directory or "
                    "text, preprocessed as the table's corpus records, as 'rnnenc filter' reads it: a tuning "
                    "or test set), as filter-model-given-input.pl does; repeat")
    parser.add_argument("--max-phrase-length", type=int, default=7, metavar="N",
                        help="with --filter-to: the longest source phrase looked up (default: %(default)s)")
    parser.add_argument("--feature", metavar="NAME",
                        help="the phrase dictionary to update (default: the only one, else TranslationModel0)")
    parser.add_argument("--initial-weight", type=float, default=DEFAULT_INITIAL_WEIGHT,
                        help="initial weight of each added column (default: %(default)s)")
    parser.add_argument("--weight", action="append", metavar="NAME=VALUE",
                        help="initial weight of one added column (repeatable), e.g. rnn_unk=-0.2")
    parser.add_argument("--precision", type=int, default=6,
                        help="significant digits of the scores (default: %(default)s, as Moses writes)")
    parser.add_argument("--sorter", choices=["auto", "python", "sort"], default="auto",
                        help="merge of the sorted runs: Python heapq.merge, or 'LC_ALL=C sort -m' "
                             "(default: sort when present)")
    parser.add_argument("--compress-level", type=int, choices=range(1, 10), default=ExportConfig.compresslevel,
                        metavar="1-9", help="gzip level of the table (default: %(default)s, gzip's; 4 deflates twice "
                                            "as fast for a file about 6%% larger)")
    parser.add_argument("--run-size", type=parse_size, default=DEFAULT_RUN_BYTES, metavar="BYTES",
                        help="bytes of lines sorted in memory per run: a worker holds about twice that "
                             "(default: 16M)")
    add_cluster_arguments(parser)


def describe(report: dict[str, Any]) -> str:
    names = ", ".join(f"{s['name']} ({s['domain']})" for s in report["scores"])
    text = f"wrote {report['rows']:,} lines to {report['table']} with scores {names}"
    clipped = {k: v for k, v in report["clipped"].items() if v}
    text += (f"\nclipped at exp(-100): {report['clipped_total']:,} value(s) ("
             + ", ".join(f"{k}: {v}" for k, v in clipped.items()) + ")") if clipped else "\nclipped: none"
    ini = report.get("moses_ini")
    if ini:
        if ini.get("new"):
            text += (f"\nmoses.ini: {ini['path']} (new, train-model.perl's layout; {ini['feature']} initial "
                     f"weights {' '.join(f'{w:g}' for w in ini['weights'])})")
            return text
        text += (f"\nmoses.ini: {ini['path']} ({ini['feature']} num-features {ini['num_features'][0]} -> "
                 f"{ini['num_features'][1]}, weights added: {' '.join(f'{w:g}' for w in ini['weights']) or 'none'})")
        if ini["binarise"]:
            text += f"\nbinarise before decoding: {ini['binarise']}"
    return text


def main(args: argparse.Namespace) -> int:
    from rnnenc.pipeline.artifacts import moses_ini_path
    from rnnenc.workflows.cluster import cluster_executor

    args.table = str(phrase_table_path(args.table))  # a phrases output stands for its table/
    if args.moses_ini:
        args.moses_ini = str(moses_ini_path(args.moses_ini))
    scores = tuple(n.strip() for n in args.scores.split(",") if n.strip()) if args.scores else None
    config = ExportConfig(precision=args.precision, run_bytes=args.run_size, sorter=args.sorter, scores=scores,
                          compresslevel=args.compress_level)
    weights = parse_weights(args.weight)
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet, key_prefix="export") as executor:
        report = export_stage(args.table, args.out, moses_ini=args.moses_ini, config=config, feature=args.feature,
                              initial_weight=args.initial_weight, weights=weights,
                              executor=executor, lm=args.lm,
                              filter_to=args.filter_to or (), max_phrase_length=args.max_phrase_length)
    print(describe(report))
    return 0
