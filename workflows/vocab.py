"""Build the source and target vocabularies: the K most frequent words of each side.

Counts words with Dask, one task per Parquet part, over a corpus (the output of `rnnenc
ingest` or `rnnenc select`: running words of the source and target columns) or over a Parquet
phrase table (`rnnenc phrase-table`: the words of each side's distinct phrases, so a phrase
listed with many translations counts once). Keeps the --size most frequent words per side (15,000
in the paper), ties broken by byte order, after the special symbols <pad>=0, <unk>=1, </s>=2.

Writes OUT/vocab.<lang>.txt (one token a line, the line index is the id) and
OUT/vocab.<lang>.json (counts, coverage) per side, OUT/counts.<lang>.tsv.gz (every word and
its count, in vocabulary order, to cut another size without counting again), OUT/report.json
and, last, OUT/manifest.json. Coverage = share of the running words (as counted) that the
vocabulary covers; the paper reports about 93 % at 15,000 words.

example:
  rnnenc vocab --corpus artifacts/run/select --out artifacts/run/vocab
  rnnenc vocab --phrase-table artifacts/run/phrase-table --size 15000 --out artifacts/run/vocab
"""

from __future__ import annotations

import argparse
import gzip
import logging
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.artifacts import atomic_output_dir, read_manifest, write_json_atomic, write_manifest
from pipeline.errors import UserError
from pipeline.executor import SERIAL, Executor
from pipeline.phrase_table import list_parts
from pipeline.vocab import (
    DEFAULT_SIZE,
    bucket_phrase_part,
    build_vocabulary,
    count_corpus_part,
    count_phrase_bucket,
    merge_counts,
)
from workflows.cli import add_cluster_arguments
from workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")
BUCKET_BYTES = 64 << 20      # Parquet bytes of phrases per distinct-phrase bucket
MAX_BUCKETS = 256


def corpus_parts(path: str | Path) -> list[Path]:
    """Parts of a corpus directory (``rnnenc ingest``) or of a selection (its ``selected/``)."""
    path = Path(path)
    if path.is_dir() and not list(path.glob("part-*.parquet")) and (path / "selected").is_dir():
        path = path / "selected"
    return list_parts(path)


def input_languages(path: str | Path) -> tuple[str | None, str | None]:
    """(source, target) languages recorded in an input's manifest, if any."""
    path = Path(path)
    for directory in (path, path.parent):
        manifest = read_manifest(directory)
        if manifest:
            config = manifest.get("config", {})
            if config.get("source_lang"):
                return config.get("source_lang"), config.get("target_lang")
            langs = manifest.get("selection", {}).get("languages", {})
            if langs:
                return langs.get("source"), langs.get("target")
    return None, None


def resolve_languages(path: str | Path, src_lang: str | None, tgt_lang: str | None) -> tuple[str, str]:
    found = input_languages(path)
    out = []
    for side, given, recorded in (("source", src_lang, found[0]), ("target", tgt_lang, found[1])):
        if given and recorded and given != recorded:
            raise UserError(f"{path}: its {side} language is '{recorded}', not '{given}'")
        lang = given or recorded
        if not lang:
            raise UserError(f"{path}: no {side} language recorded in its manifest; give --src-lang/--tgt-lang")
        out.append(lang)
    if out[0] == out[1]:
        raise UserError(f"source and target languages are both '{out[0]}'; the vocabulary files would collide")
    return out[0], out[1]




def count_corpus(parts: Sequence[Path], executor: Executor) -> dict[str, Any]:
    results = executor.map(count_corpus_part, [str(p) for p in parts], desc="count words")
    return {column: {"counts": merge_counts(r[column] for r in results), "pair_counts": None}
            for column in ("source", "target")}


def count_phrase_table(parts: Sequence[Path], executor: Executor, scratch: Path, buckets: int = 0) -> dict[str, Any]:
    if buckets < 1:
        size = sum(p.stat().st_size for p in parts)
        buckets = max(1, min(MAX_BUCKETS, math.ceil(size / BUCKET_BYTES)))
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        mapped = executor.map(bucket_phrase_part, list(enumerate(str(p) for p in parts)), desc="distinct phrases",
                              out_dir=str(scratch), buckets=buckets)
        reduced = executor.map(count_phrase_bucket, [(c, b) for c in ("source", "target") for b in range(buckets)],
                               desc="count words", out_dir=str(scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = {}
    for column in ("source", "target"):
        mine = [r for r in reduced if r["column"] == column]
        out[column] = {"counts": merge_counts(r["counts"] for r in mine),
                       "pair_counts": merge_counts(m["row_counts"][column] for m in mapped),
                       "distinct_phrases": sum(r["phrases"] for r in mine)}
    out["buckets"] = buckets
    out["rows"] = sum(m["rows"] for m in mapped)
    return out


def build(kind: str, path: str | Path, out: str | Path, *, src_lang: str | None = None,
          tgt_lang: str | None = None, size: int = DEFAULT_SIZE, src_size: int | None = None,
          tgt_size: int | None = None, buckets: int = 0, executor: Executor = SERIAL) -> dict[str, Any]:
    """The vocab stage: count, choose, write (atomically, manifest last); returns the report."""
    if kind not in ("corpus", "phrase-table"):
        raise ValueError(kind)
    started = time.perf_counter()
    out = Path(out)
    langs = resolve_languages(path, src_lang, tgt_lang)
    parts = corpus_parts(path) if kind == "corpus" else list_parts(path)
    for part in parts:
        names = pq.read_schema(part).names
        missing = {"source", "target"} - set(names)
        if missing:
            raise UserError(f"{part}: no column(s) {', '.join(sorted(missing))}")
    sizes = {"source": src_size or size, "target": tgt_size or size}
    with atomic_output_dir(out, stage="vocab", inputs=[path]) as tmp:
        if kind == "corpus":
            counted = count_corpus(parts, executor)
            basis = "running words of the corpus"
        else:
            counted = count_phrase_table(parts, executor, out.parent / f".{out.name}.buckets", buckets)
            basis = "words of the distinct phrases of the side"
        report: dict[str, Any] = {"stage": "vocab", "input": str(path), "kind": kind, "parts": len(parts),
                                  "basis": basis, "sides": {}}
        if kind == "phrase-table":
            report |= {"rows": counted["rows"], "buckets": counted["buckets"]}
        for column, lang in zip(("source", "target"), langs, strict=True):
            side = counted[column]
            meta = {"side": column, "input": str(path), "kind": kind, "basis": basis}
            if "distinct_phrases" in side:
                meta["distinct_phrases"] = side["distinct_phrases"]
            vocab, ranking = build_vocabulary(side["counts"], sizes[column], lang, meta, side["pair_counts"])
            vocab.save(tmp / f"vocab.{lang}.txt")
            with open(tmp / f"counts.{lang}.tsv.gz", "wb") as raw, \
                    gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as handle:
                handle.write("".join(f"{w}\t{c}\n" for w, c in ranking).encode("utf-8"))
            report["sides"][column] = {"lang": lang, "file": str(out / f"vocab.{lang}.txt"), "size": len(vocab)} | {
                k: vocab.meta[k] for k in ("words", "types", "running_words", "covered_words", "coverage", "min_count",
                                           "pair_coverage", "distinct_phrases") if k in vocab.meta}
        report["seconds"] = round(time.perf_counter() - started, 3)
        write_json_atomic(tmp / "report.json", report)
    write_manifest(out, stage="vocab", inputs=[path],
                   config={"kind": kind, "size": size, "src_size": sizes["source"], "tgt_size": sizes["target"],
                           "source_lang": langs[0], "target_lang": langs[1], "buckets": buckets},
                   counts={f"{side}_{k}": report["sides"][side][k] for side in ("source", "target")
                           for k in ("size", "types", "running_words", "coverage")})
    return report


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
    from workflows.cluster import DaskExecutor, dask_client

    kind, path = ("corpus", args.corpus) if args.corpus else ("phrase-table", args.phrase_table)
    with dask_client(args.scheduler, args.workers) as client:
        report = build(kind, path, args.out, src_lang=args.src_lang, tgt_lang=args.tgt_lang, size=args.size,
                       src_size=args.src_size, tgt_size=args.tgt_size, buckets=args.buckets,
                       executor=DaskExecutor(client, quiet=args.quiet, key_prefix="vocab"))
    print("\n".join(describe(report)))
    return 0
