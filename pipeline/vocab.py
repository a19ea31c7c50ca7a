"""Word vocabularies: the K most frequent words of a side plus the model's special symbols.

File format: ``<name>.txt``, one token a line, the line index being the id; the special
symbols come first (``<pad>`` = 0, ``<unk>`` = 1, ``</s>`` = 2), then words by frequency,
ties broken by byte order. ``<name>.json`` beside it holds the metadata (language, size,
counts, coverage).
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rnnenc.pipeline.artifacts import (
    REPORT_NAME,
    atomic_output_dir,
    corpus_path,
    read_manifest,
    write_json_atomic,
    write_manifest,
)
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import SERIAL, Executor
from rnnenc.pipeline.phrase_table import list_parts

PAD, UNK, EOS = "<pad>", "<unk>", "</s>"
SPECIALS: tuple[str, ...] = (PAD, UNK, EOS)
PAD_ID, UNK_ID, EOS_ID = 0, 1, 2


class Vocabulary:
    """Token <-> id mapping with the special symbols at fixed ids."""

    def __init__(self, words: Iterable[str], lang: str = "", meta: dict[str, Any] | None = None):
        tokens = list(SPECIALS)
        for word in words:
            if word in SPECIALS:
                continue
            tokens.append(word)
        self.itos: list[str] = tokens
        self.stoi: dict[str, int] = {token: i for i, token in enumerate(tokens)}
        if len(self.stoi) != len(self.itos):
            raise UserError(f"vocabulary for '{lang}' lists a word twice")
        self.lang = lang
        self.meta: dict[str, Any] = dict(meta or {})

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def encode(self, tokens: Sequence[str], add_eos: bool = False) -> list[int]:
        ids = [self.stoi.get(token, UNK_ID) for token in tokens]
        if add_eos:
            ids.append(EOS_ID)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]

    def count_unknown(self, tokens: Sequence[str]) -> int:
        return sum(token not in self.stoi for token in tokens)

    def to_dict(self) -> dict[str, Any]:
        return {"lang": self.lang, "itos": self.itos, "meta": self.meta}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> Vocabulary:
        return cls(payload["itos"][len(SPECIALS):], lang=payload.get("lang", ""), meta=payload.get("meta"))

    def save(self, path: str | Path) -> None:
        """Write ``path`` (one token a line) and ``path`` with suffix .json (metadata)."""
        path = Path(path)
        path.write_text("".join(f"{token}\n" for token in self.itos), encoding="utf-8")
        meta = {"lang": self.lang, "size": len(self), "specials": list(SPECIALS)} | self.meta
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: vocabulary file not found")
        lines = path.read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        if tuple(lines[: len(SPECIALS)]) != SPECIALS:
            raise UserError(f"{path}:1: not an rnnenc vocabulary (expected {', '.join(SPECIALS)} first)")
        meta_path = path.with_suffix(".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        return cls(lines[len(SPECIALS):], lang=meta.get("lang", ""), meta=meta)


# ---------------------------------------------------------------------------------------------
# Building vocabularies: counting words per partition, reducing, keeping the K most frequent.
#
# Words are what ``str.split()`` makes of a tokenised side (Arrow's utf8_split_whitespace, the
# same splitting). Over a corpus a word's count is its number of running occurrences. Over a
# phrase table it is its number of occurrences in the side's *distinct* phrases (a phrase listed
# with 50 targets counts once; a word twice in a phrase counts twice): the table's rows repeat
# phrases as often as they have translations, which says nothing about the language. Distinct
# phrases are found by hashing each phrase to one of ``buckets`` buckets, so no task holds more
# than one bucket's phrases. The report also gives the coverage over the table's rows (pairs).

DEFAULT_SIZE = 15_000
COUNT_SCHEMA = pa.schema([("word", pa.string()), ("count", pa.int64())])


def count_words(texts) -> pa.Table:
    """(word, count) of the words of ``texts`` (a pyarrow string array/chunked array or a list)."""
    import pyarrow.compute as pc

    if not isinstance(texts, (pa.Array, pa.ChunkedArray)):
        texts = pa.array(texts, pa.string())
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks() if texts.num_chunks else pa.array([], pa.string())
    words = pc.list_flatten(pc.utf8_split_whitespace(texts.drop_null() if texts.null_count else texts))
    words = words.filter(pc.not_equal(words, ""))      # "" and blanks at either end: no word
    counts = pc.value_counts(words)
    return pa.table({"word": counts.field("values"), "count": counts.field("counts").cast(pa.int64())},
                    schema=COUNT_SCHEMA)


def merge_counts(tables) -> pa.Table:
    """Sum (word, count) tables; memory bounded by the distinct words, merged a few at a time."""
    total = None
    batch: list[pa.Table] = []

    def reduce(items):
        # dictionary_encode + bincount: no Acero group_by, which warns about the unaligned
        # buffers of tables that came back from Dask workers.
        import numpy as np
        import pyarrow.compute as pc

        table = pa.concat_tables(items).combine_chunks()
        encoded = pc.dictionary_encode(table.column("word").combine_chunks())
        counts = table.column("count").to_numpy()
        sums = np.bincount(encoded.indices.to_numpy(zero_copy_only=False), weights=counts,
                           minlength=len(encoded.dictionary))
        return pa.table({"word": encoded.dictionary, "count": pa.array(np.rint(sums).astype(np.int64))},
                        schema=COUNT_SCHEMA)

    for table in tables:
        batch.append(table)
        if len(batch) >= 16:
            total = reduce(([total] if total is not None else []) + batch)
            batch = []
    if batch or total is None:
        total = reduce(([total] if total is not None else []) + batch) if batch else pa.table(
            {"word": [], "count": []}, schema=COUNT_SCHEMA)
    return total


def ranked(counts: pa.Table) -> list[tuple[str, int]]:
    """Words by decreasing count, ties in byte order (the order of the vocabulary file)."""
    words = counts.column("word").to_pylist()
    values = counts.column("count").to_pylist()
    # Python orders str by code point, which is UTF-8 byte order.
    return sorted(zip(words, values, strict=True), key=lambda wc: (-wc[1], wc[0]))


def choose_words(counts: pa.Table, size: int) -> tuple[list[str], list[tuple[str, int]]]:
    """The ``size`` most frequent words (special symbols excluded) and the full ranking."""
    if size < 1:
        raise UserError("vocabulary size must be at least 1")
    ranking = [(w, c) for w, c in ranked(counts) if w not in SPECIALS]
    return [w for w, _ in ranking[:size]], ranking


def coverage(counts: Mapping[str, int] | pa.Table, words: Iterable[str]) -> dict[str, float | int]:
    """Share of running words (under ``counts``) that are in ``words``."""
    if isinstance(counts, pa.Table):
        counts = dict(zip(counts.column("word").to_pylist(), counts.column("count").to_pylist(), strict=True))
    total = sum(counts.values())
    covered = sum(counts.get(w, 0) for w in set(words))
    return {"running_words": total, "covered_words": covered,
            "coverage": covered / total if total else 0.0}


def count_corpus_part(part: str, columns: Sequence[str] = ("source", "target")) -> dict[str, pa.Table]:
    """Word counts of each column of one corpus Parquet part."""
    import pyarrow.parquet as pq

    table = pq.read_table(part, columns=list(columns))
    return {column: count_words(table.column(column)) for column in columns}


def _phrase_hash(values: pa.Array):
    import numpy as np
    import pandas as pd

    return pd.util.hash_array(np.asarray(values.to_pylist(), dtype=object)).astype("uint64")


def bucket_phrase_part(item: tuple[int, str], out_dir: str, buckets: int,
                       columns: Sequence[str] = ("source", "target")) -> dict[str, Any]:
    """Map step over a phrase-table part: its distinct phrases of each side, split into buckets.

    Writes ``out_dir/<column>-<bucket>-<part>.parquet`` and returns the part's per-row word
    counts (for the coverage over pairs).
    """
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    index, part = item
    table = pq.read_table(part, columns=list(columns))
    row_counts = {}
    for column in columns:
        values = table.column(column).combine_chunks()
        row_counts[column] = count_words(values)
        unique = pc.unique(values.drop_null())
        which = (_phrase_hash(unique) % np.uint64(buckets)).astype(np.int64) if buckets > 1 else \
            np.zeros(len(unique), dtype=np.int64)
        for b in range(buckets):
            chosen = unique.filter(pa.array(which == b)) if buckets > 1 else unique
            pq.write_table(pa.table({"phrase": chosen}), Path(out_dir) / f"{column}-{b:04d}-{index:05d}.parquet")
    return {"rows": table.num_rows, "row_counts": row_counts}


def count_phrase_bucket(item: tuple[str, int], out_dir: str) -> dict[str, Any]:
    """Reduce step: the distinct phrases of one bucket of one side, and their word counts."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column, bucket = item
    files = sorted(Path(out_dir).glob(f"{column}-{bucket:04d}-*.parquet"))
    phrases = pa.concat_tables([pq.read_table(f) for f in files]).column("phrase") if files else \
        pa.chunked_array([], pa.string())
    unique = pc.unique(phrases.combine_chunks() if phrases.num_chunks else pa.array([], pa.string()))
    return {"column": column, "phrases": len(unique), "counts": count_words(unique)}


def build_vocabulary(counts: pa.Table, size: int, lang: str, meta: Mapping[str, Any] | None = None,
                     pair_counts: pa.Table | None = None) -> tuple[Vocabulary, list[tuple[str, int]]]:
    """The vocabulary of the ``size`` most frequent words, with counts and coverage in its metadata."""
    words, ranking = choose_words(counts, size)
    cover = coverage(dict(ranking), words)
    info: dict[str, Any] = dict(meta or {}) | {
        "requested_size": size, "words": len(words), "types": len(ranking),
        "running_words": cover["running_words"], "covered_words": cover["covered_words"],
        "coverage": round(cover["coverage"], 6),
        "min_count": ranking[len(words) - 1][1] if words else 0,
        "tie_break": "count descending, then UTF-8 byte order",
    }
    if pair_counts is not None:
        pairs = coverage(pair_counts, words)
        info |= {"pair_running_words": pairs["running_words"], "pair_coverage": round(pairs["coverage"], 6)}
    return Vocabulary(words, lang=lang, meta=info), ranking


# ---------------------------------------------------------------------------------------------
# The vocab stage: count with an executor, choose, write (the command line is workflows.vocab)

BUCKET_BYTES = 64 << 20      # Parquet bytes of phrases per distinct-phrase bucket
MAX_BUCKETS = 256


def corpus_parts(path: str | Path) -> list[Path]:
    """Parts of a corpus directory (``rnnenc ingest``) or of a selection (its ``selected/``)."""
    return list_parts(corpus_path(path))


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


def build_vocabularies(kind: str, path: str | Path, out: str | Path, *, src_lang: str | None = None,
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
        write_json_atomic(tmp / REPORT_NAME, report)
    write_manifest(out, stage="vocab", inputs=[path],
                   config={"kind": kind, "size": size, "src_size": sizes["source"], "tgt_size": sizes["target"],
                           "source_lang": langs[0], "target_lang": langs[1], "buckets": buckets},
                   counts={f"{side}_{k}": report["sides"][side][k] for side in ("source", "target")
                           for k in ("size", "types", "running_words", "coverage")})
    return report
