"""Exact deduplication of pairs, distributed, first occurrence kept.

A pair is a duplicate of an earlier one when its final text (tokenised, cleaned and truecased:
what ingest writes) is the same on both sides; the first occurrence in input order (corpus
order, then line) is kept. Three steps, none of which holds more than a part or a bucket:

1. each part writes its keys (``key_partition``): xxh3_64 of ``source TAB target`` (``pair_hash``),
   the corpus index and line that order the pairs, the part and row that locate them, and the
   pair's text, sorted by hash so that a reader of one hash range skips the other row groups;
2. each hash bucket (``decide_bucket``: a 1/B slice of the 64-bit hash range) reads that range
   of every part's keys, orders it by (corpus, line) and marks every pair whose (hash, text) it
   has seen before: the text is compared too, so a hash collision never drops a pair. It writes
   the (part, row) of the duplicates, sorted by part;
3. each part reads its own duplicates from every bucket (``duplicates_of_part``).

The decision depends only on the pairs and their order, not on how they were split into parts
or buckets, so the output is the same for any partitioning.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from rnnenc.pipeline.preprocess import write_parquet_atomic

DUPLICATE = "duplicate"
KEY_SCHEMA = pa.schema([("hash", pa.uint64()), ("corpus_index", pa.int32()), ("line", pa.int64()),
                        ("part", pa.int32()), ("row", pa.int64()), ("pair", pa.string())])
DUPLICATE_SCHEMA = pa.schema([("part", pa.int32()), ("row", pa.int64())])
_ROW_GROUP = 4096  # rows per row group of a keys file: what a bucket reads beyond its own range


def pair_hash(source: Sequence[str] | Sequence[bytes] | pa.ChunkedArray,
              target: Sequence[str] | Sequence[bytes] | pa.ChunkedArray) -> np.ndarray:
    """The stable hash of each pair: xxh3_64 of the UTF-8 of ``source TAB target``.

    Parameters:
        source, target: the sides, as Python strings, as their UTF-8 bytes (a scoring task has
            them for kenlm already: hashing a 10k-pair part from them takes ~1.2 ms, from its
            Arrow columns ~2.5), or as Arrow string columns (joined by Arrow into the very bytes
            the strings would encode to, without a Python string per pair).
    """
    if all(isinstance(side, pa.Array | pa.ChunkedArray) and side.null_count == 0 for side in (source, target)):
        joined = pc.cast(pc.binary_join_element_wise(source, target, "\t"), pa.binary()).to_pylist()
        return np.fromiter(map(xxhash.xxh3_64_intdigest, joined), dtype=np.uint64, count=len(joined))
    if isinstance(source, pa.Array | pa.ChunkedArray):
        source, target = source.to_pylist(), target.to_pylist()
    if len(source) != len(target):
        raise ValueError(f"{len(source)} sources but {len(target)} targets")
    if len(source) and isinstance(source[0], bytes):  # a str among bytes fails the join: no mixed sides
        return np.fromiter(map(xxhash.xxh3_64_intdigest, map(b"\t".join, zip(source, target, strict=True))),
                           dtype=np.uint64, count=len(source))
    return np.fromiter((xxhash.xxh3_64_intdigest(f"{s}\t{t}".encode()) for s, t in zip(source, target, strict=True)),
                       dtype=np.uint64, count=len(source))


def key_partition(part: pa.Table, part_index: int, corpus_index: int, keys_path: str | Path) -> None:
    """Write one part's dedup keys to ``keys_path``, sorted by hash.

    Parameters:
        part: the part's pairs (columns source, target, line).
        part_index: its index among the parts (where its duplicates are sent back).
        corpus_index: the index of its corpus among the inputs (the first ordering key).
        keys_path: the keys file to write.
    """
    source = part.column("source").to_pylist()
    target = part.column("target").to_pylist()
    n = len(source)
    keys = pa.table({
        "hash": pa.array(pair_hash(source, target), pa.uint64()),
        "corpus_index": pa.array(np.full(n, corpus_index, dtype=np.int32)),
        "line": part.column("line"),
        "part": pa.array(np.full(n, part_index, dtype=np.int32)),
        "row": pa.array(np.arange(n, dtype=np.int64)),
        "pair": pa.array([f"{s}\t{t}" for s, t in zip(source, target, strict=True)], pa.string()),
    }, schema=KEY_SCHEMA)
    write_parquet_atomic(keys.sort_by([("hash", "ascending")]), keys_path, _ROW_GROUP)


def bucket_range(bucket: int, buckets: int) -> tuple[int, int]:
    """The hash range [lo, hi) of ``bucket`` among ``buckets`` (hi 2**64 for the last)."""
    return bucket * (1 << 64) // buckets, (bucket + 1) * (1 << 64) // buckets


def decide_bucket(task: tuple[int, str], keys_paths: Sequence[str], buckets: int) -> int:
    """Find the duplicates among the pairs whose hash is in one bucket; write their (part, row)
    sorted by part and return how many there are.

    Parameters:
        task: this bucket's index and the duplicates file to write.
        keys_paths: every part's keys file (``key_partition``).
        buckets: the number of buckets the hash range is cut into.
    """
    bucket, out_path = task
    lo, hi = bucket_range(bucket, buckets)
    # uint64 scalars: a plain int above 2**63 would be taken for an int64 and refused
    filters = pc.field("hash") >= pa.scalar(lo, pa.uint64())
    if hi < 1 << 64:
        filters = filters & (pc.field("hash") < pa.scalar(hi, pa.uint64()))
    tables = [pq.read_table(path, filters=filters) for path in keys_paths]
    keys = pa.concat_tables(tables) if tables else KEY_SCHEMA.empty_table()
    keys = keys.sort_by([("corpus_index", "ascending"), ("line", "ascending")])
    seen: set[tuple[int, str]] = set()
    duplicate = np.zeros(keys.num_rows, dtype=bool)
    for i, key in enumerate(zip(keys.column("hash").to_pylist(), keys.column("pair").to_pylist(), strict=True)):
        if key in seen:
            duplicate[i] = True
        else:
            seen.add(key)
    found = keys.filter(pa.array(duplicate)).select(["part", "row"]).cast(DUPLICATE_SCHEMA)
    write_parquet_atomic(found.sort_by([("part", "ascending"), ("row", "ascending")]), out_path, _ROW_GROUP)
    return found.num_rows


def duplicates_of_part(part_index: int, duplicate_paths: Sequence[str]) -> np.ndarray:
    """The rows of part ``part_index`` that some bucket found to be duplicates, ascending."""
    rows = [pq.read_table(path, filters=[("part", "=", part_index)]).column("row").to_numpy()
            for path in duplicate_paths]
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)
