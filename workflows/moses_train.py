"""Build a Moses baseline with Moses's own train-model.perl: the table, lexicalised reordering
model and moses.ini a Moses user would have, from a corpus or a selection.

The word alignment is --alignment (a symmetrised Pharaoh 'i-j' file, one line per pair of the
corpus, in its order) or, by default, fast_align in both directions symmetrised with atools'
grow-diag-final-and. train-model.perl then runs its steps 4-9 (lexical tables, extraction up to
--max-phrase-length words, the four standard scores, the --reordering model, moses.ini with
distortion, word penalty, phrase penalty, the table, the reordering model and --lm).
Needs a Moses installation with its training programs and fast_align (scripts/build_moses.sh
builds them), found through --moses-home, $MOSES_HOME, then that build's cache.

Writes OUT/model/{phrase-table.gz, reordering-table.*.gz, moses.ini, lex.*, aligned.*},
OUT/logs/, OUT/_report.json and, last, OUT/_manifest.json. 'rnnenc phrase-table OUT' imports its
table; 'rnnenc export --moses-ini OUT' updates its moses.ini.

example:
  rnnenc moses-train --corpus artifacts/run/select --lm artifacts/run/lm --src-lang en --tgt-lang de \\
      --out artifacts/run/moses_baseline
"""

from __future__ import annotations

import argparse
import os

from rnnenc.workflows.stages import input_path, output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "--corpus", required=True, metavar="PATH",
               help="the training corpus: an ingest or select output")
    input_path(parser, "--lm", required=True, metavar="PATH",
               help="the target language model: an 'rnnenc lm' output or a KenLM file")
    input_path(parser, "--alignment", metavar="FILE",
               help="a symmetrised word alignment of the corpus (Pharaoh i-j, one line per pair; "
                    "default: fast_align + grow-diag-final-and)")
    parser.add_argument("--src-lang", default="en", help="source language (default: %(default)s)")
    parser.add_argument("--tgt-lang", default="fr", help="target language (default: %(default)s)")
    parser.add_argument("--reordering", default="msd-bidirectional-fe",
                        help="train-model.perl's lexicalised reordering model, or 'none' (default: %(default)s)")
    parser.add_argument("--max-phrase-length", type=int, default=7, metavar="N",
                        help="longest phrase extracted (default: %(default)s)")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                        help="train-model.perl's -cores (default: the machine's cores)")
    parser.add_argument("--moses-home", help="Moses installation (default: $MOSES_HOME, then the build's cache)")
    output_path(parser, "--out", required=True, help="output directory (replaced atomically)")


def main(args: argparse.Namespace) -> int:
    from rnnenc.pipeline.errors import UserError
    from rnnenc.pipeline.moses_train import train_moses_baseline
    from rnnenc.workflows.moses import find_moses

    moses = find_moses(args.moses_home)
    if moses is None:
        raise UserError("moses-train: no Moses installation found. Build one with scripts/build_moses.sh, or set "
                        "MOSES_HOME (or --moses-home) to a Moses directory")
    report = train_moses_baseline(args.corpus, args.out, moses=moses, lm=args.lm, source_lang=args.src_lang,
                                  target_lang=args.tgt_lang, alignment=args.alignment,
                                  reordering=args.reordering, max_phrase_length=args.max_phrase_length,
                                  cores=args.cores)
    print(f"moses-train: {report['phrase_table_entries']:,} phrase pairs from {report['pairs']:,} sentence pairs "
          f"({report['alignment']}; reordering {report['reordering']}) into {args.out}/model")
    return 0
