"""Tune a Moses system with mert-moses.pl, decode a test set and score it with sacrebleu.

It needs a Moses installation (a directory with bin/moses and scripts/training/mert-moses.pl).
Without one the stage fails with a line saying what to set, or, with --skip-without-moses (as
the demo workflow does), is skipped and writes nothing (so a later run with Moses configured
does it). --seed fixes mert's random seed: tune several times with different seeds and report
the mean and spread, as MERT's variance asks (Clark et al., 2011).

Inputs are the moses.ini written by 'rnnenc export' (phrase table with the RNN features added),
a tuning set (newstest2012+2013 in the paper) and a test set (newstest2014): corpus directories
written by 'rnnenc ingest' (--dev, --test), which must record the preprocessing of the corpus the
phrase table was built from (found through the manifests: export -> table -> phrases -> select
-> pool; another is refused in one line), or pairs of text files, preprocessed as that corpus
records (taken as they are, tokenised, when the moses.ini leads to no record). The raw reference
(--test-raw-ref) is never preprocessed.
Moses is found through --moses-home, $MOSES_HOME, then the build of scripts/build_moses.sh in
~/.cache/rnnenc/moses-*. Tuning runs in OUT.tuning/ (mert-moses.pl's working directory and
mert.log), which a failure or Ctrl-C keeps and a rerun continues; --mert-iterations caps it.
Outputs: OUT/moses.tuned.ini, OUT/mert.log, OUT/test.hyp and OUT/decode.log, OUT/_report.json
with BLEU (sacrebleu on detokenised text), OUT/_manifest.json.

example:
  rnnenc moses --moses-ini artifacts/run/export/moses.ini --dev artifacts/run/dev \\
      --test artifacts/run/test --out artifacts/run/moses
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

from rnnenc.pipeline.artifacts import (
    REPORT_NAME,
    atomic_output_dir,
    moses_ini_path,
    path_record,
    write_json_atomic,
    write_manifest,
)
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.moses_train import run_logged
from rnnenc.workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")


MOSES_FILES = ("bin/moses", "scripts/training/mert-moses.pl")


def find_moses(moses_home: str | None) -> Path | None:
    """The Moses installation: ``--moses-home``, else ``$MOSES_HOME``, else the newest build of
    ``scripts/build_moses.sh`` in ``${RNNENC_CACHE:-~/.cache/rnnenc}/moses-*``; None when none."""
    home = moses_home or os.environ.get("MOSES_HOME")
    if home:
        root = Path(home)
        for needed in MOSES_FILES:
            if not (root / needed).exists():
                raise UserError(f"{root}: not a Moses installation ({needed} is missing); fix MOSES_HOME/--moses-home")
        return root
    cache = Path(os.environ.get("RNNENC_CACHE") or Path.home() / ".cache" / "rnnenc")
    builds = [p for p in cache.glob("moses-*") if (p / "BUILT").is_file() and all((p / f).exists() for f in MOSES_FILES)]
    return max(builds, key=lambda p: p.stat().st_mtime) if builds else None


def mert_command(moses: Path, dev_src: Path, dev_ref: Path, moses_ini: Path, work: Path,
                 threads: int, iterations: int = 25, decoder_flags: str = "", seed: int | None = None) -> list[str]:
    """mert-moses.pl's command line (every path absolute: it changes into its working directory).
    ``seed``: mert's random seed (its random restarts), so a tuning run is repeatable and several
    runs with different seeds measure MERT's spread."""
    command = [str(moses / "scripts/training/mert-moses.pl"), str(dev_src), str(dev_ref), str(moses / "bin/moses"),
               str(moses_ini), "--mertdir", str(moses / "bin"), "--working-dir", str(work),
               "--maximum-iterations", str(iterations),
               "--decoder-flags", f"-threads {threads} {decoder_flags}".strip(), "--no-filter-phrase-table"]
    if seed is not None:
        # mert-moses.pl glues the next option straight after these ("-r 1--sctype"): end with a space
        command.append(f"--mertmertargs=-r {seed} ")
    return command


def mert_dev_bleu(log_path: Path) -> float | None:
    """The tuning set's BLEU (x100) at mert-moses.pl's last 'BEST at' line: mert's own BLEU on the
    tokenised tuning set, of the weights it returns; None when the log has none."""
    best = None
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.search(r"BEST at \d+:? .* => ([0-9.]+) at", line)
        if match:
            best = round(100 * float(match.group(1)), 2)
    return best


def bleu(hypotheses: list[str], references: list[str], target_lang: str,
         raw_references: list[str] | None = None) -> dict[str, Any]:
    """sacrebleu BLEU and chrF of the detokenised hypotheses (Moses-escaped tokens unescaped).

    Against ``raw_references`` (the untokenised reference text) when given, which is what
    published scores use; else against the detokenised tokenised references. The signatures
    and which reference was used are recorded.
    """
    import sacrebleu
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=target_lang)
    hyps = [detok.detokenize(h.split()) for h in hypotheses]
    refs = raw_references if raw_references is not None else [detok.detokenize(r.split()) for r in references]
    if len(refs) != len(hyps):
        raise UserError(f"{len(hyps)} hypotheses but {len(refs)} references: not the test set's references?")
    bleu_metric, chrf_metric = sacrebleu.BLEU(), sacrebleu.CHRF()
    bleu_score, chrf_score = bleu_metric.corpus_score(hyps, [refs]), chrf_metric.corpus_score(hyps, [refs])
    return {"bleu": round(bleu_score.score, 2), "signature": str(bleu_metric.get_signature()),
            "chrf": round(chrf_score.score, 2), "chrf_signature": str(chrf_metric.get_signature()),
            "reference": "raw" if raw_references is not None else "detokenised", "sentences": len(hyps)}


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def corpus_to_text(corpus: Path, out_prefix: Path) -> tuple[Path, Path]:
    """Write an ingested corpus directory's tokenised sides as two text files (mert-moses.pl input)."""
    import pyarrow.parquet as pq

    parts = sorted(corpus.glob("part-*.parquet"))
    if not parts:
        raise UserError(f"{corpus}: no part-*.parquet files: not a corpus written by 'rnnenc ingest'")
    src, ref = out_prefix.with_suffix(".src"), out_prefix.with_suffix(".ref")
    with open(src, "w", encoding="utf-8") as s, open(ref, "w", encoding="utf-8") as r:
        for part in parts:
            table = pq.read_table(part, columns=["source", "target"])
            s.writelines(f"{line}\n" for line in table.column("source").to_pylist())
            r.writelines(f"{line}\n" for line in table.column("target").to_pylist())
    return src, ref


def corpus_raw_references(corpus: Path) -> list[str] | None:
    """An ingested corpus's original target text (``target_raw``, one per pair, in order): the raw
    reference BLEU is computed against. None for a corpus ingested before rnnenc kept it."""
    import pyarrow.parquet as pq

    from rnnenc.pipeline.ingested import PART_GLOB, has_raw_text
    from rnnenc.pipeline.preprocess import RAW_COLUMNS

    parts = sorted(str(part) for part in corpus.glob(PART_GLOB))
    if not parts or not has_raw_text(parts):
        return None
    column = RAW_COLUMNS["target"]
    return [text for part in parts for text in pq.read_table(part, columns=[column])[column].to_pylist()]


def tuning_and_test_text(args: argparse.Namespace, reference: Any, tuning: Path,
                         out: Path) -> tuple[Path, Path, Path | None, Path | None]:
    """The tuning and test sets (source, reference) as mert-moses.pl and the decoder read them: an
    ingested corpus's tokenised sides, or text files preprocessed as the phrase table's corpus
    records (``reference``: ``ingested.recorded_corpus`` of the moses.ini; as they are without
    one), written into ``tuning`` and ``out``. --test-raw-ref is never preprocessed: BLEU is
    scored against it as given."""
    from rnnenc.pipeline.ingested import preprocess_file, text_preprocessor

    langs = (reference.source_lang, reference.target_lang) if reference else (args.src_lang, args.tgt_lang)

    def text(given: str, lang: str, target: Path) -> Path:
        preprocess = text_preprocessor(reference, lang)
        if preprocess is str:
            return Path(given)
        preprocess_file(given, preprocess, target)
        return target

    def sides(corpus: str | None, src: str | None, ref: str | None, prefix: Path) -> tuple[Path | None, Path | None]:
        if corpus:
            return corpus_to_text(Path(corpus), prefix)
        if src and ref:
            return text(src, langs[0], prefix.with_suffix(".src")), text(ref, langs[1], prefix.with_suffix(".ref"))
        return None, None

    dev_src, dev_ref = sides(args.dev, args.dev_src, args.dev_ref, tuning / "dev")
    assert dev_src is not None and dev_ref is not None
    return (dev_src, dev_ref, *sides(args.test, args.test_src, args.test_ref, out / "test"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "--moses-ini", required=True, help="moses.ini written by 'rnnenc export'")
    input_path(parser, "--dev", metavar="CORPUS", help="tuning set: a corpus directory written by 'rnnenc ingest'")
    input_path(parser, "--dev-src", help="or: tuning source text, one sentence a line (preprocessed as the "
                                         "phrase table's corpus records; tokenised when none is recorded)")
    input_path(parser, "--dev-ref", help="and its reference (likewise)")
    input_path(parser, "--test", metavar="CORPUS", help="test set: a corpus directory written by 'rnnenc ingest'")
    input_path(parser, "--test-src", help="or: test source text (likewise)")
    input_path(parser, "--test-ref", help="and its reference (likewise)")
    input_path(parser, "--test-raw-ref", metavar="FILE",
               help="the test set's untokenised reference text: BLEU and chrF against it, comparable to "
                    "published scores (default: a --test corpus's own original text, which ingest keeps; "
                    "else the detokenised --test-ref)")
    parser.add_argument("--moses-home", help="Moses installation (default: $MOSES_HOME)")
    parser.add_argument("--tgt-lang", default="fr", help="target language, for detokenisation (default: fr)")
    parser.add_argument("--src-lang", default="en", help="source language (recorded in the report)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decoder threads")
    parser.add_argument("--mert-iterations", type=int, default=25, metavar="N",
                        help="mert-moses.pl --maximum-iterations (default: %(default)s, its own; one iteration "
                             "decodes the tuning set once)")
    parser.add_argument("--seed", type=int, metavar="N",
                        help="mert's random seed (default: its clock); tune several times with different seeds "
                             "to measure MERT's spread")
    parser.add_argument("--skip-without-moses", action="store_true",
                        help="without a Moses installation, skip the stage (exit 0, nothing written) instead "
                             "of failing")
    parser.add_argument("--decoder-flags", default="", metavar="FLAGS",
                        help="more flags for the decoder while tuning and testing, e.g. '-search-algorithm 1'")
    output_path(parser, "--out", required=True, help="output directory")


def main(args: argparse.Namespace) -> int:
    args.moses_ini = str(moses_ini_path(args.moses_ini))  # an export output stands for its moses.ini
    if not (args.dev or (args.dev_src and args.dev_ref)):
        raise UserError("moses: give the tuning set as --dev CORPUS or --dev-src FILE --dev-ref FILE")
    for corpus in (args.dev, args.test):
        if corpus and not Path(corpus).is_dir():
            raise UserError(f"{corpus}: no such corpus directory")
    from rnnenc.pipeline.ingested import check_corpus_input, recorded_corpus

    # the phrase table's text follows the corpus it was built from: the sets must too
    reference = recorded_corpus(args.moses_ini)
    for corpus in (args.dev, args.test):
        if corpus:
            check_corpus_input(corpus, reference, f"the phrase table's corpus {reference.path if reference else ''}")
    moses = find_moses(args.moses_home)
    if moses is None:
        why = ("no Moses installation found. Build one with scripts/build_moses.sh, or set MOSES_HOME (or "
               "--moses-home, or moses_home in the workflow stage) to a Moses directory with bin/moses and "
               "scripts/training/mert-moses.pl to tune and decode")
        if not args.skip_without_moses:
            raise UserError(f"moses: {why} (or pass --skip-without-moses)")
        print(f"moses: skipped: {why}.")
        return 0
    inputs = [Path(p) for p in (args.moses_ini, args.dev_src, args.dev_ref, args.test_src, args.test_ref,
                                args.test_raw_ref) if p]
    for path in inputs:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
    inputs += [Path(p) for p in (args.dev, args.test) if p]
    if args.mert_iterations < 1:
        raise UserError("--mert-iterations must be at least 1")
    report: dict[str, Any] = {"stage": "moses", "moses_home": str(moses)}
    # Tuning is hours of work: it runs in OUT.tuning/, beside the output, which no failure or
    # Ctrl-C removes (mert.log and the runN files stay), and a rerun continues it (--continue).
    out = Path(args.out)
    tuning = out.with_name(f"{out.name}.tuning")
    with atomic_output_dir(args.out, stage="moses", inputs=inputs) as tmp:
        tuning.mkdir(exist_ok=True)
        # continue only the same tuning: same inputs (by content), iterations and decoder flags
        run = {"inputs": [path_record(p)["hash"] for p in inputs], "iterations": args.mert_iterations,
               "decoder_flags": args.decoder_flags, "threads": args.threads, "seed": args.seed}
        previous = tuning / "run.json"
        if previous.is_file() and json.loads(previous.read_text()) != run:
            log.info("tuning: %s holds another tuning run; starting over", tuning)
            shutil.rmtree(tuning / "mert", ignore_errors=True)
        write_json_atomic(previous, run)
        dev_src, dev_ref, test_src, test_ref = tuning_and_test_text(args, reference, tuning, tmp)
        args.test_src, args.test_ref = (str(test_src), str(test_ref)) if test_src and test_ref else (None, None)
        command = mert_command(moses, dev_src.resolve(), dev_ref.resolve(), Path(args.moses_ini).resolve(),
                               (tuning / "mert").resolve(), args.threads, args.mert_iterations, args.decoder_flags,
                               args.seed)
        if (tuning / "mert" / "finished_step.txt").is_file():
            command.append("--continue")
            log.info("tuning: continuing the interrupted run in %s", tuning / "mert")
        log.info("tuning: %s (log: %s)", " ".join(command), tuning / "mert.log")
        started = time.perf_counter()
        run_logged(command, tuning / "mert.log", "mert-moses.pl")
        report["seconds"] = {"tuning": round(time.perf_counter() - started, 1)}
        report["mert"] = {"iterations": args.mert_iterations, "seed": args.seed,
                          # decoder runs: run1.out, run2.out, ... (not run1.mert.out and the like)
                          "runs": sum(1 for p in (tuning / "mert").glob("run*.out")
                                      if re.fullmatch(r"run\d+\.out", p.name)),
                          "dev_bleu": mert_dev_bleu(tuning / "mert.log")}
        tuned = tmp / "moses.tuned.ini"
        shutil.copy(tuning / "mert" / "moses.ini", tuned)
        shutil.copy(tuning / "mert.log", tmp / "mert.log")
        if args.test_src and args.test_ref:
            started = time.perf_counter()
            with open(args.test_src, "rb") as source, open(tmp / "test.hyp", "wb") as hyp:
                run_logged([str(moses / "bin/moses"), "-f", str(tuned), "-threads", str(args.threads),
                             *args.decoder_flags.split()], tmp / "decode.log", "the Moses decoder",
                            stdin=source, stdout=hyp)
            report["seconds"]["decoding"] = round(time.perf_counter() - started, 1)
            # the raw references: --test-raw-ref, else the test corpus's own original text
            raw = (_lines(Path(args.test_raw_ref)) if args.test_raw_ref
                   else corpus_raw_references(Path(args.test)) if args.test else None)
            report["test"] = bleu(_lines(tmp / "test.hyp"), _lines(Path(args.test_ref)), args.tgt_lang, raw)
            print(f"moses: test BLEU {report['test']['bleu']:.2f} chrF {report['test']['chrf']:.2f} against the "
                  f"{report['test']['reference']} reference ({report['test']['signature']})")
        write_json_atomic(tmp / REPORT_NAME, report)
    write_manifest(args.out, stage="moses", inputs=inputs, config=vars(args) | {"moses_home": str(moses)},
                   counts=report.get("test", {}))
    return 0
