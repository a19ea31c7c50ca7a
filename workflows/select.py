"""Select the in-domain part of a pool by cross-entropy difference (Moore-Lewis, Axelrod).

By default trains, per scored language, an in-domain KenLM model (from --in-domain) and an
out-of-domain model on a seeded random sample of the pool of about the in-domain size in
tokens (one per half of the pool: a pair is scored by the model that did not see it), all
restricted to the in-domain vocabulary; scores every pool pair on the Dask cluster
(H(s) = -log10 p(s </s> | <s>) / (n + 1) per side, n = tokens of s; moore-lewis: H_in - H_out
on one side, axelrod: the sum over both sides; lower is more in-domain); keeps exactly the
best pairs for a budget, ties broken by a hash of the pair, identical for any number of
workers or partitions.

Variants, to compare with other tools (lp(s) = log10 p(s </s> | <s>)):
  --out-model single   the classic method (Moore & Lewis 2010, Axelrod et al. 2011, XenC,
                       Moses EMS): score = sum of H_in(s) - H_out(s) as above, with H_out from
                       one out-of-domain model per language, trained on one seeded sample of
                       the pool of about the in-domain size, scoring every pair, those of its
                       own sample included (cross-fit never lets a model score its own sample)
  --score in-domain    XenC's mode 1: score = sum over the scored sides of H_in(s); no
                       out-of-domain model is trained (--out-model, --out-lm, --seed refused)
  --normalise sentence H(s) = -lp(s), the sentence's total log-probability, instead of the
                       per-word -lp(s) / (n + 1): the scores then grow with the length

The in-domain and dev sets are an ingested corpus directory, which must record the pool's
preprocessing (lowercasing, punctuation normalisation, tokenizer options, truecasing: another
is refused), or a prefix of plain text files (PREFIX.en, PREFIX.fr), which are preprocessed
as the pool's manifest records (with the pool's truecase models): give them untokenised. Paths
must be readable from every Dask worker (shared disk).

Outputs in --out: selected/part-*.parquet (the pool's columns, source_raw/target_raw
included, + score, in pool order), selected.<src> and selected.<tgt> (Moses-style tokenised text
pair), selected.raw.<src> and selected.raw.<tgt> (the same pairs' original text, one a line),
scores/part-*.parquet (scores of the pool's pairs), input_scores/<corpus>.txt (one line per
line of each original input, as Moses EMS's mml-filter reads it: -score, higher is more
in-domain, and -inf for a line ingest dropped), lm/ (the models and vocabularies), hf/ with
--hf-dataset (a Hugging Face dataset of the raw pairs, {"translation": {src, tgt}}), sweep.csv
and sweep.png with --sweep, _report.json and _manifest.json (what `rnnenc regenerate` needs to
rebuild the subset byte for byte). The Parquet datasets to open are OUT/selected and
OUT/scores (pandas.read_parquet("OUT/selected"), pyarrow.dataset, Dask; DuckDB:
'OUT/selected/*.parquet').

examples:
  rnnenc select corpus/ --in-domain newstest --budget-words 348M --out selected/
  rnnenc select corpus/ --in-domain dev_corpus/ --method moore-lewis --lang fr --fraction 0.2 --out sel/
  rnnenc select corpus/ --in-domain in_domain --dev dev --sweep --out sel/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rnnenc.pipeline import selection
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.select import DEFAULT_GRID, SelectConfig, run_selection
from rnnenc.workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")

# --------------------------------------------------------------------------------------------
# Command line


def _lm_option(values: list[str] | None, option: str) -> dict[str, str]:
    result = {}
    for value in values or []:
        lang, sep, path = value.partition("=")
        if not sep or not lang or not path:
            raise UserError(f"{option} {value}: expected LANG=PATH")
        result[lang] = ",".join(str(Path(p).resolve()) for p in path.split(","))
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "pool", help="the pool: a corpus directory written by 'rnnenc ingest'")
    input_path(parser, "--in-domain", required=True, metavar="CORPUS|PREFIX",
                        help="in-domain set: a corpus directory ingested as the pool was, or PREFIX with "
                             "plain-text PREFIX.<lang> files (preprocessed as the pool was)")
    output_path(parser, "--out", required=True, help="output directory")
    parser.add_argument("--method", choices=selection.METHODS, default=SelectConfig.method,
                        help="axelrod: both sides (default); moore-lewis: one side (--lang)")
    parser.add_argument("--lang", help="moore-lewis: the language scored (default: the pool's source)")
    parser.add_argument("--score", choices=selection.SCORES, default=SelectConfig.score,
                        help="difference: H_in - H_out (default); in-domain: H_in alone (XenC mode 1)")
    # default None: an --out-model given with --score in-domain is refused, not ignored
    parser.add_argument("--out-model", choices=selection.OUT_MODELS,
                        help=f"cross-fit: one out-of-domain model per half of the pool, a pair scored by "
                             f"the other half's (default: {SelectConfig.out_model}); single: one model on one "
                             "pool sample scores every pair (Moore-Lewis, XenC, Moses EMS)")
    parser.add_argument("--normalise", choices=selection.NORMALISATIONS, default=SelectConfig.normalise,
                        help="word: H = -log10 p(s </s> | <s>) / (n + 1) (default); "
                             "sentence: H = -log10 p(s </s> | <s>)")
    amount = parser.add_argument_group("how much to keep (one of)")
    choice = amount.add_mutually_exclusive_group(required=True)
    choice.add_argument("--budget-words", metavar="N", help="keep the best pairs up to N words (348M, 10k)")
    choice.add_argument("--budget-pairs", metavar="N", help="keep the best N pairs")
    choice.add_argument("--fraction", metavar="F", help="keep the best fraction F (0-1) of the pairs")
    choice.add_argument("--threshold", metavar="T", help="keep the pairs scoring <= T")
    choice.add_argument("--sweep", action="store_true",
                        help="choose the size minimising dev perplexity of LMs trained on the top-k (XenC)")
    amount.add_argument("--budget-lang", metavar="LANG", help="--budget-words counts this side (default: source)")
    input_path(amount, "--dev", metavar="CORPUS|PREFIX", help="--sweep: dev set (default: --in-domain)")
    amount.add_argument("--sweep-grid", default=",".join(str(f) for f in DEFAULT_GRID), metavar="F,F,...",
                        help="--sweep: fractions of the pool to try (default: 0.1 to 1.0 by 0.1)")
    amount.add_argument("--sweep-refine", type=int, default=SelectConfig.sweep_refine, metavar="N",
                        help="--sweep: sizes added on each side of the best grid point (default: %(default)s)")
    models = parser.add_argument_group("language models")
    models.add_argument("--order", type=int, default=SelectConfig.order, help="n-gram order (default: %(default)s)")
    models.add_argument("--lm-memory", default=SelectConfig.lm_memory, metavar="SIZE",
                        help="lmplz/build_binary -S sorting memory, e.g. 4G or 20%% (default: %(default)s)")
    models.add_argument("--seed", type=int,  # default None: refused where nothing is drawn
                        help=f"seed of the out-of-domain samples and folds (default: {SelectConfig.seed})")
    input_path(models, "--in-lm", action="append", metavar="LANG=PATH",
                        help="use this in-domain KenLM model instead of training one (repeat per language)")
    input_path(models, "--out-lm", action="append", metavar="LANG=PATH",
                        help="use this out-of-domain KenLM model instead of training one; with cross-fit, "
                             "LANG=A,B gives one model per fold (A scores fold 1, B fold 0: see "
                             "pipeline/selection.py)")
    parser.add_argument("--hf-dataset", action="store_true",
                        help="also write a Hugging Face dataset of the raw pairs in OUT/hf "
                             "({\"translation\": {src, tgt}}, wmt14's shape)")
    from rnnenc.workflows.cli import add_cluster_arguments

    add_cluster_arguments(parser)


def config_from_args(args: argparse.Namespace) -> SelectConfig:
    modes = {"words": args.budget_words, "pairs": args.budget_pairs, "fraction": args.fraction,
             "threshold": args.threshold}
    mode, amount = next(((m, a) for m, a in modes.items() if a is not None), ("sweep", None))
    # options that would be silently ignored are refused
    if args.lang and args.method != "moore-lewis":
        raise UserError(f"--lang {args.lang}: only moore-lewis scores one language ({args.method} scores both sides)")
    if args.budget_lang and mode != "words":
        raise UserError(f"--budget-lang {args.budget_lang}: counts words, so it needs --budget-words "
                        f"(this selection is by {mode})")
    if args.score == "in-domain":
        given = [option for option, value in (("--out-model", args.out_model), ("--out-lm", args.out_lm),
                                              ("--seed", args.seed)) if value is not None]
        if given:
            raise UserError(f"{given[0]}: --score in-domain uses no out-of-domain model (nothing to train, give "
                            "or sample)")
    out_model = args.out_model or SelectConfig.out_model
    if args.seed is not None and out_model == "single" and args.out_lm:
        raise UserError(f"--seed {args.seed}: nothing is drawn (--out-model single with --out-lm)")
    try:
        grid = [float(f) for f in args.sweep_grid.split(",") if f.strip()]
    except ValueError:
        raise UserError(f"--sweep-grid {args.sweep_grid}: expected fractions separated by commas") from None
    in_domain = Path(args.in_domain)
    return SelectConfig(
        pool=str(Path(args.pool).resolve()), in_domain=str(in_domain.resolve()) if in_domain.is_dir()
        else str(in_domain.parent.resolve() / in_domain.name), mode=mode, amount=amount, method=args.method,
        lang=args.lang, score=args.score, out_model=out_model, normalise=args.normalise,
        budget_lang=args.budget_lang,
        dev=str(Path(args.dev).parent.resolve() / Path(args.dev).name) if args.dev else None,
        sweep_grid=grid, sweep_refine=args.sweep_refine, order=args.order, lm_memory=args.lm_memory,
        seed=SelectConfig.seed if args.seed is None else args.seed, in_lms=_lm_option(args.in_lm, "--in-lm"),
        out_lms=_lm_option(args.out_lm, "--out-lm"),
        hf_dataset=args.hf_dataset)


def main(args: argparse.Namespace) -> int:
    from rnnenc.workflows.cluster import cluster_executor

    cfg = config_from_args(args)
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet) as executor:
        manifest = run_selection(cfg, args.out, executor)
    counts = manifest["counts"]
    # a stage's result line goes to stdout, --quiet or not (--quiet silences progress and info logs)
    print(f"selected {counts['selected_pairs']:,} of {counts['pool_pairs']:,} pairs "
          f"({counts['selected_source_tokens']:,}/{counts['pool_source_tokens']:,} "
          f"{manifest['selection']['languages']['source']} words) into {args.out}")
    return 0
