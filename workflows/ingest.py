r"""Tokenise, clean and shard parallel corpora into Parquet.

Reads text pairs (--src/--tgt, .gz/.bz2/.xz/.zst transparently), two-column TSV (--tsv),
Parquet (--parquet) and Hugging Face datasets (--hf, a save_to_disk directory or a hub name);
normalises punctuation and tokenises with sacremoses (Moses escaping), optionally lowercases,
and cleans as Moses clean-corpus-n.perl does. Writes OUT/part-NNNNN.parquet (source, target,
source_tokens, target_tokens, corpus, line), OUT/report.json and, last, OUT/manifest.json.

Rejected pairs (with --on-error skip: OUT/rejects.tsv.gz, or --rejects FILE) are written one a
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
import gzip
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from distributed import Client
from tqdm.auto import tqdm

from pipeline.artifacts import atomic_output_dir, write_json_atomic, write_manifest
from pipeline.corpus import CorpusInput, InvalidUtf8, OnError, escape_bytes, read_batches
from pipeline.errors import UserError
from pipeline.preprocess import PreprocessConfig, preprocess_shard
from workflows.cli import add_cluster_arguments
from workflows.cluster import dask_client, results_in_order
from workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")
DEFAULT_ROWS_PER_PART = 100_000


def corpus_name(path: str, lang: str | None = None) -> str:
    """'europarl-v7.fr-en.en' -> 'europarl-v7.fr-en'; 'data/news.tsv.gz' -> 'news'."""
    name = Path(path).name
    for suffix in (".gz", ".bz2", ".xz", ".zst", ".parquet", ".tsv", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if lang and name.endswith(f".{lang}"):
        name = name[: -len(lang) - 1]
    return name or Path(path).name


REJECTS_HEADER = ("corpus", "line", "reason", "source", "target", "raw_source", "raw_target")


def _write_rejects(reject_parts: Sequence[Path], reader_rejects: list[dict], path: Path) -> int:
    """Concatenate rejects (reader's first, then cleaning's in part order) into one TSV.gz.

    The text columns are for reading (tabs, CRs and newlines become spaces); ``raw_source`` and
    ``raw_target`` hold the original bytes, escaped (``escape_bytes``), so nothing is lost.
    """
    count = 0
    tmp = path.with_name(path.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=6) as out:
        out.write("\t".join(REJECTS_HEADER) + "\n")

        def emit(row: dict) -> None:
            fields = (row["corpus"], str(row["line"]), row["reason"], row["source"], row["target"])
            # A CR too: a reader with universal newlines would end the row there.
            text = [f.replace("\t", " ").replace("\n", " ").replace("\r", " ") for f in fields]
            out.write("\t".join([*text, escape_bytes(row["raw_source"]), escape_bytes(row["raw_target"])]) + "\n")

        for row in reader_rejects:
            emit(row)
            count += 1
        for part in reject_parts:
            for row in pq.read_table(part).to_pylist():
                emit(row)
                count += 1
    os.replace(tmp, path)
    return count


def ingest(client: Client, inputs: Sequence[CorpusInput], out_dir: str | Path, config: PreprocessConfig, *,
           rows_per_part: int = DEFAULT_ROWS_PER_PART, invalid_utf8: InvalidUtf8 = "replace",
           on_error: OnError = "fail", rejects_path: str | Path | None = None,
           quiet: bool = False) -> dict[str, Any]:
    """Ingest ``inputs`` into ``out_dir`` (atomically, manifest last); return the stage report."""
    if not inputs:
        raise UserError("ingest: no input given (use --src/--tgt, --tsv, --parquet or --hf)")
    if rows_per_part < 1:
        raise UserError("ingest: --rows-per-part must be at least 1")
    out_dir = Path(out_dir)
    write_rejects = on_error == "skip" or rejects_path is not None
    started = time.perf_counter()
    reader_rejects: list[dict] = []
    dropped: Counter = Counter()
    totals: Counter = Counter()
    per_corpus: dict[str, Counter] = {}

    with atomic_output_dir(out_dir, stage="ingest", inputs=[p for c in inputs for p in c.paths]) as tmp:
        staging = tmp / ".staging"
        staging.mkdir()
        futures = []
        part_corpus: list[str] = []
        part = 0
        bar = tqdm(desc="ingest", unit="part", disable=quiet, leave=False, total=0)
        try:
            for corpus in inputs:
                per_corpus[corpus.name] = Counter()
                log.info("reading %s (%s)", corpus.describe(), corpus.kind)
                for batch in read_batches(corpus, config.source_lang, config.target_lang, rows_per_part,
                                          invalid_utf8, on_error):
                    for reject in batch.rejects:
                        dropped[reject.reason] += 1
                        per_corpus[corpus.name]["rejected"] += 1
                        if write_rejects:
                            reader_rejects.append({"corpus": corpus.name} | reject._asdict())
                    totals["invalid_utf8_replaced"] += batch.invalid_utf8_replaced
                    totals["lines_read"] += len(batch) + len(batch.rejects)
                    per_corpus[corpus.name]["lines_read"] += len(batch) + len(batch.rejects)
                    if not len(batch):
                        continue
                    raw_path = staging / f"raw-{part:05d}.parquet"
                    pq.write_table(batch.table(), raw_path, compression="zstd")
                    futures.append(client.submit(
                        preprocess_shard, str(raw_path), str(tmp / f"part-{part:05d}.parquet"),
                        str(staging / f"rejects-{part:05d}.parquet"), corpus.name, config,
                        key=f"ingest-{part:05d}-{os.urandom(4).hex()}", pure=False, retries=3))
                    part_corpus.append(corpus.name)
                    part += 1
                    bar.total = part
                    bar.refresh()
            results = results_in_order(client, futures, bar)
        except BaseException:
            client.cancel(futures)  # e.g. unequal line counts found after parts were submitted
            raise
        finally:
            bar.close()
        for corpus, result in zip(part_corpus, results, strict=True):
            assert result is not None
            dropped.update(result["dropped"])
            for key in ("pairs_in", "pairs_out", "source_words", "target_words"):
                totals[key] += result[key]
                per_corpus[corpus][key] += result[key]
            per_corpus[corpus]["dropped"] += sum(result["dropped"].values())
        if totals["pairs_out"] == 0:
            raise UserError(f"ingest: no pair survived reading and cleaning ({dict(dropped) or 'empty input'})")

        reject_parts = sorted(staging.glob("rejects-*.parquet"))
        rejects_written = 0
        final_rejects: Path | None = None
        if write_rejects:
            final_rejects = Path(rejects_path) if rejects_path else tmp / "rejects.tsv.gz"
            final_rejects.parent.mkdir(parents=True, exist_ok=True)
            rejects_written = _write_rejects(reject_parts, reader_rejects, final_rejects)
        shutil.rmtree(staging)
        seconds = time.perf_counter() - started
        words = totals["source_words"] + totals["target_words"]
        report = {
            "stage": "ingest",
            "source_lang": config.source_lang,
            "target_lang": config.target_lang,
            "lines_read": totals["lines_read"],
            "pairs_written": totals["pairs_out"],
            "pairs_dropped": sum(dropped.values()),
            "dropped_by_reason": dict(sorted(dropped.items())),
            "invalid_utf8_replaced": totals["invalid_utf8_replaced"],
            "source_words": totals["source_words"],
            "target_words": totals["target_words"],
            "parts": part,
            "corpora": {name: dict(counts) for name, counts in per_corpus.items()},
            "rejects_file": str(out_dir / "rejects.tsv.gz") if write_rejects and not rejects_path
            else (str(rejects_path) if rejects_path else None),
            "rejects_written": rejects_written,
            "seconds": round(seconds, 3),
            "words_per_second": round(words / seconds, 1) if seconds else None,
        }
        assert report["lines_read"] == report["pairs_written"] + report["pairs_dropped"], report
        write_json_atomic(tmp / "report.json", report)

    stage_config = config.to_dict() | {"rows_per_part": rows_per_part, "invalid_utf8": invalid_utf8,
                                       "on_error": on_error,
                                       "inputs": [{"kind": c.kind, "paths": list(c.paths), "name": c.name,
                                                   "source_column": c.source_column,
                                                   "target_column": c.target_column,
                                                   "hf_config": c.hf_config, "hf_split": c.hf_split}
                                                  for c in inputs]}
    input_paths = [p for c in inputs for p in c.paths if Path(p).exists()]
    write_manifest(out_dir, stage="ingest", inputs=input_paths, config=stage_config,
                   counts={k: report[k] for k in ("lines_read", "pairs_written", "pairs_dropped",
                                                  "source_words", "target_words", "parts")})
    return report


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
    processing.add_argument("--min-tokens", type=int, default=1, help="drop sides shorter (default: %(default)s)")
    processing.add_argument("--max-tokens", type=int, default=80, help="drop sides longer (default: %(default)s)")
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
                                 "OUT/rejects.tsv.gz)")
    processing.add_argument("--rows-per-part", type=int, default=DEFAULT_ROWS_PER_PART,
                            help="pairs per Parquet part and per Dask task (default: %(default)s)")
    add_cluster_arguments(parser)


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    return PreprocessConfig(source_lang=args.src_lang, target_lang=args.tgt_lang, lowercase=args.lowercase,
                            normalize_punctuation=not args.no_normalize_punctuation,
                            min_tokens=args.min_tokens, max_tokens=args.max_tokens, max_ratio=args.max_ratio)


def print_report(report: dict[str, Any]) -> None:
    dropped = ", ".join(f"{k}: {v}" for k, v in report["dropped_by_reason"].items()) or "none"
    print(f"ingested {report['pairs_written']:,} of {report['lines_read']:,} pairs into {report['parts']} "
          f"part(s); dropped {report['pairs_dropped']:,} ({dropped}); "
          f"{report['source_words'] + report['target_words']:,} words at "
          f"{report['words_per_second']:,.0f} words/s")
    if report["rejects_file"]:
        print(f"rejects: {report['rejects_file']}")


def main(args: argparse.Namespace) -> int:
    inputs = inputs_from_args(args)
    config = config_from_args(args)
    with dask_client(args.scheduler, args.workers) as client:
        report = ingest(client, inputs, args.out, config, rows_per_part=args.rows_per_part,
                        invalid_utf8=args.invalid_utf8, on_error=args.on_error, rejects_path=args.rejects,
                        quiet=args.quiet)
    print_report(report)
    return 0
