"""Train the decoder's target language model: a binarised KenLM n-gram on the target side of the
selection (and the in-domain target text), as Cho et al. built their Moses LM from the selected
data. `rnnenc export --lm` writes it into the moses.ini, so no hand step stands between
selection and tuning.

Text files are preprocessed as the outputs given record (a select output: its pool's
preprocessing; an ingest output: its own); two that record different preprocessing are
refused in one line; with no output given, text files are taken as they are (tokenised).

Writes OUT/lm.binary, OUT/_report.json and, last, OUT/_manifest.json.

example:
  rnnenc lm --corpus artifacts/run/select --corpus artifacts/run/newstest --lang fr --out artifacts/run/lm
"""

from __future__ import annotations

import argparse

from rnnenc.workflows.stages import input_path, output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "--corpus", action="append", required=True, metavar="PATH",
               help="a select output (its selected.<lang>), an ingest output or a text file (preprocessed as "
                    "the outputs given record); repeat")
    parser.add_argument("--lang", "--tgt-lang", dest="lang", required=True,
                        help="the language modelled: the target side, e.g. fr")
    parser.add_argument("--order", type=int, default=5, help="n-gram order (default: %(default)s)")
    parser.add_argument("--lm-memory", default="1G", metavar="SIZE",
                        help="lmplz's sorting memory, e.g. 4G or 20%% (default: %(default)s)")
    output_path(parser, "--out", required=True, help="output directory")


def main(args: argparse.Namespace) -> int:
    from rnnenc.pipeline.lm import LM_NAME, build_target_lm

    report = build_target_lm(args.corpus, args.lang, args.out, order=args.order, memory=args.lm_memory)
    print(f"trained a {report['order']}-gram '{report['lang']}' language model on {report['sentences']:,} "
          f"sentences into {args.out}/{LM_NAME}")
    return 0
