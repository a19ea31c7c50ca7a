r"""Tokenise, clean and shard parallel corpora into Parquet.

Reads text pairs (--src/--tgt, .gz/.bz2/.xz/.zst transparently), two-column TSV (--tsv),
Parquet (--parquet) and Hugging Face datasets (--hf, a save_to_disk directory or a hub name);
normalises punctuation and tokenises with sacremoses (Moses escaping; tokenizer.perl's -a and
-no-escape as options), optionally lowercases or truecases (a Moses truecaser trained on the
corpus, or a given truecase-model), cleans as Moses clean-corpus-n.perl does and, as options,
drops pairs whose sides py3langid finds in another language (--langid) and exact duplicate
pairs (--dedup, the first occurrence kept). Writes OUT/part-NNNNN.parquet (source, target,
source_tokens, target_tokens, corpus, line, and source_raw, target_raw: each side's original
text), OUT/_truecase-model.<lang> with --truecase,
OUT/_report.json and, last, OUT/_manifest.json.
OUT is one Parquet dataset: pandas.read_parquet("OUT"), pyarrow.dataset.dataset("OUT"),
dask.dataframe.read_parquet("OUT") and DuckDB's read_parquet('OUT/*.parquet') read its parts
alone (the other files' names start with "_" or ".", which Parquet readers skip).

Rejected pairs (with --on-error skip: OUT/_rejects.tsv.gz, or --rejects FILE) are written one a
line: corpus, line, reason, source, target (the text; tabs, CRs, newlines as spaces), raw_source,
raw_target: the exact original bytes of each side, a backslash written \\, a byte that is not
UTF-8 \xNN, a tab \t, a CR \r, a newline \n (pipeline.corpus.unescape_bytes, or bash's
printf '%b', gives them back). A TSV line rejected before it was split (invalid UTF-8, another
number of columns) has all its bytes in raw_source. A truncated or corrupt compressed input
stops the run with FILE:LINE, whatever --on-error says: the rest of that file is lost.

The reader streams each input once on the client in batches of --rows-per-part pairs and
hands every batch to a Dask worker as soon as it is read; outputs are identical whatever the
number of workers. Inputs and OUT must be on a filesystem the workers share.

example:
  rnnenc ingest --src europarl.en --tgt europarl.fr --src-lang en --tgt-lang fr --out artifacts/run/ingest
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnenc.pipeline.corpus import CorpusInput
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.ingest import DEFAULT_ROWS_PER_PART, MIN_ROWS_PER_PART, corpus_name, ingest
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.stages import input_path, output_path

if TYPE_CHECKING:  # sacremoses: loaded to run, not for --help
    from rnnenc.pipeline.preprocess import PreprocessConfig


def inputs_from_args(args: argparse.Namespace) -> list[CorpusInput]:
    src, tgt = args.src or [], args.tgt or []
    if len(src) != len(tgt):
        raise UserError(f"ingest: {len(src)} --src file(s) but {len(tgt)} --tgt file(s); give them in pairs")
    inputs = [CorpusInput("text", (s, t), corpus_name(s, args.src_lang)) for s, t in zip(src, tgt, strict=True)]
    inputs += [CorpusInput("tsv", (p,), corpus_name(p)) for p in args.tsv or []]
    inputs += [CorpusInput("parquet", (p,), corpus_name(p), args.source_column, args.target_column)
               for p in args.parquet or []]
    inputs += [CorpusInput("hf", (p,), corpus_name(p.replace("/", "_")), args.source_column, args.target_column,
                           args.hf_config, args.hf_split) for p in args.hf or []]
    seen: Counter = Counter()
    unique = []
    for corpus in inputs:
        seen[corpus.name] += 1
        name = corpus.name if seen[corpus.name] == 1 else f"{corpus.name}-{seen[corpus.name]}"
        unique.append(CorpusInput(corpus.kind, corpus.paths, name, corpus.source_column, corpus.target_column,
                                  corpus.hf_config, corpus.hf_split))
    return unique


def add_arguments(parser: argparse.ArgumentParser) -> None:
    inputs = parser.add_argument_group("inputs (repeat to ingest several corpora into one output)")
    input_path(inputs, "--src", action="append", metavar="FILE", help="source side of a text pair")
    input_path(inputs, "--tgt", action="append", metavar="FILE", help="target side of a text pair")
    input_path(inputs, "--tsv", action="append", metavar="FILE", help="source<TAB>target lines")
    input_path(inputs, "--parquet", action="append", metavar="PATH", help="Parquet file or directory")
    inputs.add_argument("--hf", action="append", metavar="NAME_OR_DIR",
                        help="Hugging Face dataset: save_to_disk directory or hub name (e.g. wmt14)")
    inputs.add_argument("--hf-config", help="hub dataset configuration (e.g. fr-en)")
    inputs.add_argument("--hf-split", default="train", help="dataset split (default: %(default)s)")
    inputs.add_argument("--source-column", help="Parquet/HF source column (default: the language code, "
                                                "then 'source')")
    inputs.add_argument("--target-column", help="Parquet/HF target column (default: language code, then 'target')")
    parser.add_argument("--src-lang", required=True, help="source language code, e.g. en")
    parser.add_argument("--tgt-lang", required=True, help="target language code, e.g. fr")
    output_path(parser, "--out", required=True, help="output directory (replaced atomically)")
    processing = parser.add_argument_group("processing")
    processing.add_argument("--lowercase", action="store_true", help="lowercase both sides")
    processing.add_argument("--no-normalize-punctuation", action="store_true",
                            help="skip Moses punctuation normalisation")
    processing.add_argument("--aggressive-dash-splits", action="store_true",
                            help="split hyphens inside words, as tokenizer.perl -a: well-known -> well @-@ known")
    processing.add_argument("--no-escape", action="store_true",
                            help="leave | < > & ' \" [ ] unescaped, as tokenizer.perl -no-escape; Moses itself "
                                 "needs them escaped (| separates factors and ||| phrase-table fields), so "
                                 "only for tools other than Moses")
    processing.add_argument("--truecase", action="store_true",
                            help="train a Moses truecaser on each side's tokenised text (OUT/_truecase-model.<lang>, "
                                 "as train-truecaser.perl writes it) and truecase both sides with it")
    input_path(processing, "--truecase-model", action="append", metavar="LANG=PATH",
                            help="truecase that side with this Moses truecase model instead (copied to "
                                 "OUT/_truecase-model.<lang>); repeat per language")
    processing.add_argument("--dedup", action="store_true",
                            help="drop every pair identical (after tokenising and truecasing) to an earlier one, "
                                 "keeping the first in input order; counted as 'duplicate'")
    processing.add_argument("--langid", action="store_true",
                            help="drop a pair when py3langid does not identify a side's raw text as its language "
                                 "(--src-lang/--tgt-lang); counted as 'wrong language'")
    processing.add_argument("--langid-min-prob", type=float, default=0.0, metavar="P",
                            help="with --langid: also drop a side identified with a probability below P "
                                 "(0 to 1; default: %(default)s)")
    processing.add_argument("--min-tokens", type=int, default=1, help="drop sides shorter (default: %(default)s)")
    processing.add_argument("--max-tokens", type=int, default=80, help="drop sides longer (default: %(default)s)")
    processing.add_argument("--no-clean", action="store_true",
                            help="tuning and test sets: keep every line (no empty-side, length or ratio "
                                 "filter), so hypotheses stay aligned with the references")
    processing.add_argument("--max-ratio", type=float, default=9.0,
                            help="drop pairs whose length ratio exceeds this (default: %(default)s)")
    processing.add_argument("--invalid-utf8", choices=["replace", "reject"], default="replace",
                            help="invalid UTF-8: replace bytes with U+FFFD, or reject the line "
                                 "(default: %(default)s); counted either way")
    processing.add_argument("--on-error", choices=["fail", "skip"], default="fail",
                            help="malformed lines: stop with file:line (fail) or count and write them to "
                                 "the rejects file (skip) (default: %(default)s)")
    output_path(processing, "--rejects", metavar="FILE",
                            help="write every dropped pair here (TSV.gz; default with --on-error skip: "
                                 "OUT/_rejects.tsv.gz)")
    processing.add_argument("--rows-per-part", type=int, metavar="N",
                            help="pairs per Parquet part and per Dask task (default: the input in 16 parts, "
                                 f"{MIN_ROWS_PER_PART:,} to {DEFAULT_ROWS_PER_PART:,} pairs each, from its size)")
    add_cluster_arguments(parser)


def truecase_models_from_args(args: argparse.Namespace) -> dict[str, str]:
    """--truecase-model LANG=PATH options as {lang: absolute path}."""
    models = {}
    for value in args.truecase_model or []:
        lang, sep, path = value.partition("=")
        if not sep or not lang or not path:
            raise UserError(f"--truecase-model {value}: expected LANG=PATH")
        models[lang] = str(Path(path).resolve())
    return models


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    from rnnenc.pipeline.preprocess import PreprocessConfig

    if args.langid_min_prob and not args.langid:
        raise UserError("--langid-min-prob: only with --langid")
    if not 0 <= args.langid_min_prob <= 1:
        raise UserError(f"--langid-min-prob {args.langid_min_prob}: a probability, 0 to 1")
    given = truecase_models_from_args(args)
    truecased = [lang for lang in (args.src_lang, args.tgt_lang) if args.truecase or lang in given]
    return PreprocessConfig(source_lang=args.src_lang, target_lang=args.tgt_lang, lowercase=args.lowercase,
                            normalize_punctuation=not args.no_normalize_punctuation,
                            min_tokens=args.min_tokens, max_tokens=args.max_tokens, max_ratio=args.max_ratio,
                            clean=not args.no_clean, aggressive_dash_splits=args.aggressive_dash_splits,
                            escape=not args.no_escape, truecase=tuple(truecased), langid=args.langid,
                            langid_min_prob=args.langid_min_prob)


def print_report(report: dict[str, Any]) -> None:
    dropped = ", ".join(f"{k}: {v}" for k, v in report["dropped_by_reason"].items()) or "none"
    print(f"ingested {report['pairs_written']:,} of {report['lines_read']:,} pairs into {report['parts']} "
          f"part(s); dropped {report['pairs_dropped']:,} ({dropped}); "
          f"{report['source_words'] + report['target_words']:,} words at "
          f"{report['words_per_second']:,.0f} words/s")
    if report["rejects_file"]:
        print(f"rejects: {report['rejects_file']}")


def main(args: argparse.Namespace) -> int:
    from rnnenc.workflows.cluster import cluster_executor  # distributed: not for --help

    inputs = inputs_from_args(args)
    config = config_from_args(args)
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet, key_prefix="ingest") as executor:
        report = ingest(executor, inputs, args.out, config,
                        rows_per_part=args.rows_per_part, invalid_utf8=args.invalid_utf8, on_error=args.on_error,
                        rejects_path=args.rejects, deduplicate=args.dedup,
                        truecase_models=truecase_models_from_args(args))
    print_report(report)
    return 0
