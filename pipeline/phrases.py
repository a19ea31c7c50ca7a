"""Phrase extraction and scoring as Moses's ``extract``, ``score`` and ``consolidate`` do, over shards.

Definitions (Moses naming: f = foreign = SOURCE phrase, e = TARGET phrase):

* Extraction (``phrase_spans``): every phrase pair consistent with the word alignment, both
  sides at most ``max_length`` tokens, with at least one alignment link; the source side may
  grow over unaligned source words at either edge (Moses ``extract``: loop over target spans,
  take the span of source words they link to, check no source word in it links outside the
  target span, then extend over unaligned source words). Each occurrence counts 1.
* Lexical translation table, from the word links of the whole corpus: c(f, e) per link, an
  unaligned source word counts (f, NULL), an unaligned target word (NULL, e);
  w(e|f) = c(f, e) / c(f) and w(f|e) = c(f, e) / c(e) (``get-lexical`` of train-model.perl).
  ``lex.f2e`` holds ``e f w(e|f)`` lines and ``lex.e2f`` ``f e w(f|e)``, as Moses writes them
  (at full precision where Moses prints 7 decimals).
* Scores, in Moses's order: φ(f|e) = c(f,e)/c(e), lex(f|e), φ(e|f) = c(f,e)/c(f), lex(e|f),
  with lex(e|f, a) = Π_i (1/|{j: (j,i) ∈ a}|) Σ_{(j,i) ∈ a} w(e_i|f_j), or w(e_i|NULL) for an
  unaligned target word (Koehn et al. 2003), lex(f|e, a) likewise over source words.
* When a phrase pair was extracted with several internal alignments, the lexical weights and
  the alignment field use the most frequent one (as ``score`` does); ties go to the
  smallest alignment string (Moses keeps the first seen, which depends on corpus order).
* The counts field is ``c(e) c(f) c(f,e)``. ``min_count`` prunes pairs with c(f,e) below it
  *after* scoring, so the marginals (and the scores of the kept pairs) are those of the full
  table; pruned pairs are counted in the report.

Distributed group-bys, never a dictionary of all phrases:

1. ``extract_part`` (one task per corpus part): extracts, sums occurrences within the part,
   and writes them hash-partitioned by target phrase into ``n_buckets`` files; also the part's
   word-link counts and a hash-thinned sample of source phrases (for the range cut of 3).
2. ``build_lexicon`` (one task) sums the word-link counts into the lexical table (word
   pairs only, the size of Moses's ``lex.*`` files), loaded once per worker process; it runs
   in the same map as 3 (``score_target_bucket_or_lexicon``), so it is no serial step.
3. ``score_target_bucket`` (one task per target bucket): c(f,e), best alignment, c(e), φ(f|e);
   writes each row to the source *range* bucket of its source phrase (cut points from the
   sample, so each range is a contiguous stretch of the final order).
4. ``finish_range`` (one task per range): c(f), φ(e|f), pruning, both lexical weights (of the
   kept pairs only), sort in ``LC_ALL=C`` order, one Parquet phrase-table part.

Every step is exact integer counting followed by the same float operations in a fixed order,
and rows are sorted by byte order before writing, so the output is byte-identical whatever
the corpus partitioning, the number of workers or the order tasks finish in. The number of
buckets and the sampling rate derive from the corpus's token count only.
"""

from __future__ import annotations

import bisect
import functools
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from rnnenc.pipeline.alignment import AlignConfig, align_part, parse_links
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
from rnnenc.pipeline.phrase_table import (
    MOSES_SCORE_NAMES,
    ExportConfig,
    export_moses,
    list_parts,
    phrase_table_schema,
)

NULL = ""          # the NULL word inside rnnenc (tokens are never empty); "NULL" in Moses files
MOSES_NULL = "NULL"
SCORES = [{"name": name, "domain": "prob"} for name in MOSES_SCORE_NAMES]  # φ(f|e) lex(f|e) φ(e|f) lex(e|f)
SCORE_NAMES = ("p(f|e)", "lex(f|e)", "p(e|f)", "lex(e|f)")
EXTRACT_SCHEMA = pa.schema([("source", pa.string()), ("target", pa.string()), ("alignment", pa.string()),
                            ("count", pa.int64())])
LEXCOUNT_SCHEMA = pa.schema([("source", pa.string()), ("target", pa.string()), ("count", pa.int64())])
SCORED_SCHEMA = pa.schema([("source", pa.string()), ("target", pa.string()), ("alignment", pa.string()),
                           ("c_fe", pa.int64()), ("c_e", pa.int64()), ("p_f_e", pa.float64()),
                           ("keep", pa.bool_())])
TOKENS_PER_BUCKET = 500_000   # source tokens per bucket when the count is left to the corpus size
SAMPLES_PER_RANGE = 256



@dataclass(frozen=True)
class PhraseConfig:
    max_length: int = 7
    min_count: int = 1
    buckets: int | None = None      # None: one per TOKENS_PER_BUCKET source tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stable_hash(text: str) -> int:
    return xxhash.xxh3_64_intdigest(text.encode("utf-8"))


def range_key(source: str) -> str:
    # Python compares str by code point, which is UTF-8 byte order; " ||| " ends every source
    # field, so comparing these keys orders Moses lines as LC_ALL=C sort does.
    return source + " ||| "


def line_key(source: str, target: str) -> str:
    return source + " ||| " + target + " ||| "


# ---------------------------------------------------------------------------------------------
# Extraction

def phrase_spans(n_src: int, n_tgt: int, links: Sequence[tuple[int, int]],
                 max_length: int = 7) -> Iterator[tuple[int, int, int, int]]:
    """(src_start, src_end, tgt_start, tgt_end), inclusive, of every consistent phrase pair."""
    aligned_to_t: list[list[int]] = [[] for _ in range(n_tgt)]
    aligned_count_s = [0] * n_src
    for s, t in links:
        aligned_to_t[t].append(s)
        aligned_count_s[s] += 1
    for start_t in range(n_tgt):
        min_s, max_s = n_src, -1
        used = list(aligned_count_s)
        for end_t in range(start_t, min(n_tgt, start_t + max_length)):
            for s in aligned_to_t[end_t]:
                min_s, max_s = min(min_s, s), max(max_s, s)
                used[s] -= 1
            if max_s < 0:
                continue
            if max_s - min_s >= max_length:
                break           # the source span only grows with end_t
            if any(used[s] > 0 for s in range(min_s, max_s + 1)):
                continue
            start_s = min_s
            while start_s >= 0 and start_s > max_s - max_length and (start_s == min_s or aligned_count_s[start_s] == 0):
                end_s = max_s
                while end_s < n_src and end_s < start_s + max_length and (end_s == max_s or aligned_count_s[end_s] == 0):
                    yield start_s, end_s, start_t, end_t
                    end_s += 1
                start_s -= 1


def sentence_pairs(src: Sequence[str], tgt: Sequence[str], links: Sequence[tuple[int, int]],
                   max_length: int = 7) -> Iterator[tuple[str, str, str]]:
    """(source phrase, target phrase, phrase-internal alignment) of every extracted pair."""
    to_tgt: list[list[int]] = [[] for _ in src]
    for s, t in sorted(set(links)):
        to_tgt[s].append(t)
    for s0, s1, t0, t1 in phrase_spans(len(src), len(tgt), links, max_length):
        # Consistency: every link of a source word in the span lands inside the target span.
        inner = " ".join(f"{s - s0}-{t - t0}" for s in range(s0, s1 + 1) for t in to_tgt[s])
        yield " ".join(src[s0:s1 + 1]), " ".join(tgt[t0:t1 + 1]), inner


def word_links(src: Sequence[str], tgt: Sequence[str], links: Sequence[tuple[int, int]]) -> Iterator[tuple[str, str]]:
    """(f, e) word pairs of one sentence for the lexical table, NULL for unaligned words."""
    aligned_s, aligned_t = {s for s, _ in links}, {t for _, t in links}
    for s, t in links:
        yield src[s], tgt[t]
    for s, word in enumerate(src):
        if s not in aligned_s:
            yield word, NULL
    for t, word in enumerate(tgt):
        if t not in aligned_t:
            yield NULL, word


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def extract_part(item: tuple[int, str, str], work_dir: str, config: PhraseConfig, n_buckets: int,
                 sample_modulus: int) -> dict[str, Any]:
    """Extract the phrase pairs of one corpus part (with its alignment part) into target buckets.

    ``item``: (part index, corpus part, alignment part). Writes
    ``work_dir/extract/b-BBBBB/part-PPPPP.parquet`` (source, target, alignment, count) and
    ``work_dir/lexcounts/part-PPPPP.parquet``; returns counts and the sampled source phrases.
    """
    index, corpus_part, alignment_part = item
    corpus = pq.read_table(corpus_part, columns=["source", "target"])
    alignment = pq.read_table(alignment_part, columns=["alignment"])
    if corpus.num_rows != alignment.num_rows:
        raise UserError(f"{alignment_part}: {alignment.num_rows} alignment rows for the "
                        f"{corpus.num_rows} pairs of {corpus_part}")
    phrases: Counter = Counter()
    lexicon: Counter = Counter()
    stats: Counter = Counter()
    for row, (source, target, links_text) in enumerate(zip(corpus.column("source").to_pylist(),
                                                           corpus.column("target").to_pylist(),
                                                           alignment.column("alignment").to_pylist(), strict=True)):
        src, tgt = (source or "").split(), (target or "").split()
        links = parse_links(links_text or "", len(src), len(tgt), f"{alignment_part}: row {row + 1}")
        stats["pairs"] += 1
        stats["source_tokens"] += len(src)
        stats["target_tokens"] += len(tgt)
        if not links:
            stats["unaligned_pairs"] += 1
        lexicon.update(word_links(src, tgt, links))
        for pair in sentence_pairs(src, tgt, links, config.max_length):
            phrases[pair] += 1
    stats["extracted"] = sum(phrases.values())
    stats["distinct_in_part"] = len(phrases)
    buckets: list[list[tuple[tuple[str, str, str], int]]] = [[] for _ in range(n_buckets)]
    for key, count in phrases.items():
        buckets[stable_hash(key[1]) % n_buckets].append((key, count))
    for bucket, rows in enumerate(buckets):
        if not rows:
            continue
        rows.sort()
        _write(pa.table({"source": [k[0] for k, _ in rows], "target": [k[1] for k, _ in rows],
                         "alignment": [k[2] for k, _ in rows], "count": [c for _, c in rows]},
                        schema=EXTRACT_SCHEMA),
               Path(work_dir) / "extract" / f"b-{bucket:05d}" / f"part-{index:05d}.parquet")
    lex_rows = sorted(lexicon.items())
    _write(pa.table({"source": [k[0] for k, _ in lex_rows], "target": [k[1] for k, _ in lex_rows],
                     "count": [c for _, c in lex_rows]}, schema=LEXCOUNT_SCHEMA),
           Path(work_dir) / "lexcounts" / f"part-{index:05d}.parquet")
    # The sample depends on the phrase only, so the union over parts does not depend on them.
    sample = sorted({key[0] for key in phrases if stable_hash(key[0]) % sample_modulus == 0})
    return {"counts": dict(stats), "sample": sample}


# ---------------------------------------------------------------------------------------------
# Lexical table

def build_lexicon(lexcount_parts: Sequence[str], out_dir: str) -> dict[str, int]:
    """Sum the word-link counts; write ``lex.parquet``, ``lex.f2e`` and ``lex.e2f`` into ``out_dir``."""
    total: pd.DataFrame | None = None
    for part in lexcount_parts:
        frame = pq.read_table(part).to_pandas()
        total = frame if total is None else pd.concat([total, frame], ignore_index=True)
        # Fold as we go: memory is bounded by the distinct word pairs, not the number of parts.
        total = total.groupby(["source", "target"], sort=False, as_index=False)["count"].sum()
    if total is None or total.empty:
        total = pd.DataFrame({"source": pd.Series([], dtype=object), "target": pd.Series([], dtype=object),
                              "count": pd.Series([], dtype=np.int64)})
    total = total.sort_values(["source", "target"], kind="stable", ignore_index=True)
    c_f = total.groupby("source")["count"].transform("sum")
    c_e = total.groupby("target")["count"].transform("sum")
    total["w_e_f"] = total["count"] / c_f
    total["w_f_e"] = total["count"] / c_e
    out = Path(out_dir)
    _write(pa.Table.from_pandas(total, preserve_index=False), out / "lex.parquet")
    moses_f = total["source"].where(total["source"] != NULL, MOSES_NULL)
    moses_e = total["target"].where(total["target"] != NULL, MOSES_NULL)
    f2e = sorted(f"{e} {f} {w:.7f}" for f, e, w in zip(moses_f, moses_e, total["w_e_f"], strict=True))
    e2f = sorted(f"{f} {e} {w:.7f}" for f, e, w in zip(moses_f, moses_e, total["w_f_e"], strict=True))
    for name, lines in (("lex.f2e", f2e), ("lex.e2f", e2f)):
        tmp = out / f".{name}.tmp"
        tmp.write_bytes(b"".join(line.encode("utf-8") + b"\n" for line in sorted(lines, key=str.encode)))
        os.replace(tmp, out / name)
    return {"word_pairs": len(total), "source_words": int(total["source"].nunique()),
            "target_words": int(total["target"].nunique())}


@functools.lru_cache(maxsize=2)
def load_lexicon(path: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(f, e) -> (w(e|f), w(f|e)), loaded once per worker process."""
    table = pq.read_table(path, columns=["source", "target", "w_e_f", "w_f_e"])
    return {(f, e): (a, b) for f, e, a, b in zip(*(table.column(c).to_pylist() for c in
                                                    ("source", "target", "w_e_f", "w_f_e")), strict=True)}


def lexical_weights(src: Sequence[str], tgt: Sequence[str], links: Sequence[tuple[int, int]],
                    lexicon: dict[tuple[str, str], tuple[float, float]]) -> tuple[float, float]:
    """(lex(e|f, a), lex(f|e, a)) of one phrase pair under its internal alignment ``links``."""
    to_src: list[list[int]] = [[] for _ in tgt]
    to_tgt: list[list[int]] = [[] for _ in src]
    for s, t in links:
        to_src[t].append(s)
        to_tgt[s].append(t)
    missing = (0.0, 0.0)   # every word pair of a phrase is in the table it was built with
    lex_e_f = 1.0
    for t, e in enumerate(tgt):
        linked = to_src[t]
        if linked:
            lex_e_f *= sum(lexicon.get((src[s], e), missing)[0] for s in linked) / len(linked)
        else:
            lex_e_f *= lexicon.get((NULL, e), missing)[0]
    lex_f_e = 1.0
    for s, f in enumerate(src):
        linked = to_tgt[s]
        if linked:
            lex_f_e *= sum(lexicon.get((f, tgt[t]), missing)[1] for t in linked) / len(linked)
        else:
            lex_f_e *= lexicon.get((f, NULL), missing)[1]
    return lex_e_f, lex_f_e


def _links(text: str) -> list[tuple[int, int]]:
    """Phrase-internal links written by ``sentence_pairs`` (trusted, so no range checks)."""
    return [(int(s), int(t)) for s, _, t in (item.partition("-") for item in text.split())]


# ---------------------------------------------------------------------------------------------
# Scoring

def _read_dir(directory: Path, schema: pa.Schema) -> pd.DataFrame:
    files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
    if not files:
        return schema.empty_table().to_pandas()
    return pa.concat_tables([pq.read_table(f, schema=schema) for f in files]).to_pandas()


def score_target_bucket(bucket: int, work_dir: str, splitters: Sequence[str], min_count: int) -> dict[str, Any]:
    """c(f,e), c(e) and φ(f|e) of every pair in one target bucket.

    Writes ``work_dir/scored/r-RRRRR/b-BBBBB.parquet`` per source range; returns the kept
    rows per range (for the line numbers of the final table).
    """
    work = Path(work_dir)
    frame = _read_dir(work / "extract" / f"b-{bucket:05d}", EXTRACT_SCHEMA)
    if frame.empty:
        return {"rows": 0, "kept_per_range": {}}
    by_alignment = frame.groupby(["source", "target", "alignment"], sort=False, as_index=False)["count"].sum()
    # Most frequent internal alignment first; ties to the smallest alignment string.
    by_alignment = by_alignment.sort_values(["source", "target", "count", "alignment"],
                                            ascending=[True, True, False, True], kind="stable")
    pairs = by_alignment.groupby(["source", "target"], sort=True, as_index=False).agg(
        alignment=("alignment", "first"), c_fe=("count", "sum"))
    pairs["c_e"] = pairs.groupby("target")["c_fe"].transform("sum")
    pairs["p_f_e"] = pairs["c_fe"] / pairs["c_e"]
    pairs["keep"] = pairs["c_fe"] >= min_count
    ranges = np.asarray([bisect.bisect_right(splitters, range_key(s)) for s in pairs["source"].tolist()],
                        dtype=np.int64)
    kept: dict[int, int] = {}
    for r in np.unique(ranges).tolist():
        chunk = pairs[ranges == r]
        kept[r] = int(chunk["keep"].sum())
        _write(pa.Table.from_pandas(chunk[list(SCORED_SCHEMA.names)], schema=SCORED_SCHEMA, preserve_index=False),
               work / "scored" / f"r-{r:05d}" / f"b-{bucket:05d}.parquet")
    return {"rows": len(pairs), "kept_per_range": kept}


def score_target_bucket_or_lexicon(item: tuple[str, int], work_dir: str, out_dir: str, splitters: Sequence[str],
                                   min_count: int) -> dict[str, Any]:
    """One task of the second step: ``("lexicon", 0)`` builds the lexical table, ``("bucket", b)``
    scores target bucket b. One map runs both, so the lexicon is not a serial step."""
    kind, bucket = item
    if kind == "lexicon":
        return build_lexicon([str(p) for p in sorted((Path(work_dir) / "lexcounts").glob("*.parquet"))], out_dir)
    return score_target_bucket(bucket, work_dir, splitters, min_count)


def finish_range(item: tuple[int, int, int], work_dir: str, out_dir: str, lexicon_path: str) -> dict[str, Any]:
    """c(f), φ(e|f), pruning, both lexical weights and byte-order sort of one source range; one
    phrase-table part.

    ``item``: (range index, output part index, first line number of the part).
    """
    r, part_index, first_line = item
    frame = _read_dir(Path(work_dir) / "scored" / f"r-{r:05d}", SCORED_SCHEMA)
    frame["c_f"] = frame.groupby("source")["c_fe"].transform("sum")
    frame["p_e_f"] = frame["c_fe"] / frame["c_f"]
    pruned = int((~frame["keep"]).sum())
    frame = frame[frame["keep"]]
    keys = [line_key(s, t) for s, t in zip(frame["source"].tolist(), frame["target"].tolist(), strict=True)]
    frame = frame.iloc[sorted(range(len(keys)), key=keys.__getitem__)]
    n = len(frame)
    lexicon = load_lexicon(lexicon_path)
    weights = [lexical_weights(source.split(), target.split(), _links(alignment), lexicon)
               for source, target, alignment in zip(frame["source"].tolist(), frame["target"].tolist(),
                                                    frame["alignment"].tolist(), strict=True)]
    lex_e_f = np.asarray([w[0] for w in weights], dtype=np.float64)
    lex_f_e = np.asarray([w[1] for w in weights], dtype=np.float64)
    counts = [f"{e} {f} {fe}" for e, f, fe in zip(frame["c_e"].tolist(), frame["c_f"].tolist(),
                                                  frame["c_fe"].tolist(), strict=True)]
    table = pa.table({
        "source": pa.array(frame["source"].tolist(), pa.string()),
        "target": pa.array(frame["target"].tolist(), pa.string()),
        MOSES_SCORE_NAMES[0]: pa.array(frame["p_f_e"].to_numpy(), pa.float64()).cast(pa.float32()),
        MOSES_SCORE_NAMES[1]: pa.array(lex_f_e, pa.float64()).cast(pa.float32()),
        MOSES_SCORE_NAMES[2]: pa.array(frame["p_e_f"].to_numpy(), pa.float64()).cast(pa.float32()),
        MOSES_SCORE_NAMES[3]: pa.array(lex_e_f, pa.float64()).cast(pa.float32()),
        "alignment": pa.array(frame["alignment"].tolist(), pa.string()),
        "counts": pa.array(counts, pa.string()),
        "extra": pa.array([[] for _ in range(n)], pa.list_(pa.string())),
        "line": pa.array(np.arange(first_line, first_line + n, dtype=np.int64)),
    }, schema=phrase_table_schema(SCORES, fields=5))
    _write(table, Path(out_dir) / f"part-{part_index:05d}.parquet")
    return {"rows": n, "pruned": pruned, "sources": int(frame["source"].nunique())}


# ---------------------------------------------------------------------------------------------
# The whole stage over any map function

def corpus_tokens(parts: Sequence[str | os.PathLike]) -> int:
    """Source tokens of a corpus (from the ``source_tokens`` column when there is one)."""
    total = 0
    for part in parts:
        names = pq.read_schema(part).names
        if "source_tokens" in names:
            total += int(pc.sum(pq.read_table(part, columns=["source_tokens"]).column(0)).as_py() or 0)
        else:
            total += sum(len((s or "").split()) for s in pq.read_table(part, columns=["source"]).column(0).to_pylist())
    return total


def plan(total_tokens: int, config: PhraseConfig) -> tuple[int, int]:
    """(buckets, sampling modulus), from the corpus size only (never from its partitioning)."""
    buckets = config.buckets or max(1, -(-total_tokens // TOKENS_PER_BUCKET))
    # About 2 distinct source phrases per token; keep SAMPLES_PER_RANGE of them per range.
    modulus = max(1, (2 * total_tokens) // (SAMPLES_PER_RANGE * buckets))
    return buckets, modulus


def choose_splitters(samples: Sequence[Sequence[str]], ranges: int) -> list[str]:
    """``ranges - 1`` cut points (range keys) at the quantiles of the sampled source phrases."""
    keys = sorted({range_key(s) for sample in samples for s in sample})
    if ranges <= 1 or not keys:
        return []
    cuts = {keys[(i * len(keys)) // ranges] for i in range(1, ranges)}
    return sorted(cuts)


def build_phrase_table(corpus_parts: Sequence[str], alignment_parts: Sequence[str], out_dir: str | os.PathLike,
                       config: PhraseConfig = PhraseConfig(), *, executor: Executor = SERIAL) -> dict[str, Any]:
    """Extract and score into ``out_dir``: ``table/part-*.parquet``, ``lex.f2e``, ``lex.e2f``, ``lex.parquet``.

    ``executor`` runs tasks (a Dask map in ``workflows``; a loop by default):
    extraction; the lexical table beside the target-side scoring; the source-side scoring with
    the lexical weights (of the kept pairs only). Scratch files go to ``out_dir/.work``
    (the workers must see ``out_dir``) and are removed at the end. Returns the report.
    """
    if config.max_length < 1:
        raise UserError("phrases: --max-phrase-length must be at least 1")
    if config.min_count < 1:
        raise UserError("phrases: --min-count must be at least 1")
    if config.buckets is not None and config.buckets < 1:
        raise UserError("phrases: --buckets must be at least 1")
    if len(corpus_parts) != len(alignment_parts):
        raise UserError(f"phrases: {len(alignment_parts)} alignment parts for {len(corpus_parts)} corpus parts")
    out = Path(out_dir)
    work = out / ".work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    total_tokens = corpus_tokens(corpus_parts)
    buckets, modulus = plan(total_tokens, config)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    extracted = executor.map(extract_part,
                             [(i, str(c), str(a)) for i, (c, a) in enumerate(zip(corpus_parts, alignment_parts,
                                                                                  strict=True))],
                             desc="extract", work_dir=str(work), config=config, n_buckets=buckets,
                             sample_modulus=modulus)
    stats: Counter = Counter()
    for result in extracted:
        stats.update(result["counts"])
    timings["extract_s"] = time.perf_counter() - started
    started = time.perf_counter()
    splitters = choose_splitters([r["sample"] for r in extracted], buckets)
    # the lexicon first, so that its task starts at once beside the buckets' tasks
    second = executor.map(score_target_bucket_or_lexicon, [("lexicon", 0)] + [("bucket", b) for b in range(buckets)],
                          desc="score by target", work_dir=str(work), out_dir=str(out), splitters=splitters,
                          min_count=config.min_count)
    lex_counts, scored = second[0], second[1:]
    kept: Counter = Counter()
    for result in scored:
        kept.update(result["kept_per_range"])
    items, line = [], 1
    for r in sorted(r for r in kept if kept[r]):   # a range whose pairs were all pruned writes no part
        items.append((r, len(items), line))
        line += kept[r]
    (out / "table").mkdir(exist_ok=True)
    finished = executor.map(finish_range, items, desc="score by source", work_dir=str(work),
                            out_dir=str(out / "table"), lexicon_path=str(out / "lex.parquet"))
    timings["score_s"] = time.perf_counter() - started
    shutil.rmtree(work)
    rows = sum(r["rows"] for r in finished)
    return {
        "corpus": {k: int(stats.get(k, 0)) for k in ("pairs", "source_tokens", "target_tokens", "unaligned_pairs")},
        "extracted_occurrences": int(stats.get("extracted", 0)),
        "distinct_pairs": sum(r["rows"] for r in scored),
        "pruned_pairs": sum(r["rows"] for r in scored) - rows,
        "table_rows": rows,
        "table_parts": len(finished),
        "distinct_sources": sum(r["sources"] for r in finished if r["rows"]),
        "buckets": buckets,
        "sample_modulus": modulus,
        "lexicon": lex_counts,
        "scores": list(SCORE_NAMES),
        "config": config.to_dict(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


# ---------------------------------------------------------------------------------------------
# The phrases stage (the command line is workflows.phrases)


def corpus_parts(corpus: str | Path) -> tuple[Path, list[Path]]:
    """The corpus directory to read (``selected/`` inside a select output) and its parts."""
    corpus = corpus_path(corpus)
    parts = list_parts(corpus)
    for part in parts:
        names = pq.read_schema(part).names
        if "source" not in names or "target" not in names:
            raise UserError(f"{part}: no source/target columns (want a corpus from rnnenc ingest or select)")
    return corpus, parts


def run_phrases(executor: Executor, corpus: str | Path, out: str | Path, config: PhraseConfig, align: AlignConfig,
                *, alignment: str | Path | None = None) -> dict[str, Any]:
    """The phrases stage: align (or reuse ``alignment``), extract, score and export, on ``executor``;
    returns the manifest.

    Parameters:
        executor: runs the per-part and per-bucket tasks (``pipeline.executor``).
        corpus: an ingest output, or a select output (its ``selected/``).
        out: the output directory (``table/``, ``phrase-table.gz``, ``alignment/``, lexical tables).
        config: extraction and scoring.
        align: eflomal's settings.
        alignment: an earlier ``alignment/`` directory to reuse (the table is then reproducible).
    """
    corpus_dir, parts = corpus_parts(corpus)
    out = Path(out)
    if config.max_length < 1 or config.min_count < 1 or (config.buckets is not None and config.buckets < 1):
        raise UserError("phrases: --max-phrase-length, --min-count and --buckets must be at least 1")

    given = list_parts(alignment) if alignment else None
    if given is not None and len(given) != len(parts):
        raise UserError(f"{alignment}: {len(given)} alignment parts for the {len(parts)} parts of {corpus_dir}")
    timings: dict[str, float] = {}
    with atomic_output_dir(out, stage="phrases", inputs=[corpus, *([alignment] if alignment else [])]) as tmp:
        (tmp / "alignment").mkdir()
        aligned = [tmp / "alignment" / f"part-{i:05d}.parquet" for i in range(len(parts))]
        started = time.perf_counter()
        if given is None:
            results = executor.map(_align_item, [(str(p), str(a), align) for p, a in zip(parts, aligned, strict=True)],
                                   desc="align")
            align_counts = {k: sum(r[k] for r in results) for k in ("pairs", "aligned_pairs", "empty_pairs", "links")}
        else:
            for source, target in zip(given, aligned, strict=True):
                shutil.copyfile(source, target)
            align_counts = {"reused_from": str(alignment)}
        timings["align_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        report = build_phrase_table([str(p) for p in parts], [str(a) for a in aligned], tmp, config,
                                    executor=executor)
        timings["extract_score_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        exported = export_moses(tmp / "table", tmp / "phrase-table.gz", ExportConfig(), executor=executor,
                                tmp_dir=tmp / ".export")
        timings["export_s"] = round(time.perf_counter() - started, 3)
        if exported["rows"] != report["table_rows"]:
            raise RuntimeError(f"export wrote {exported['rows']} lines for {report['table_rows']} rows")
        timings.update(report["timings"])
        report.update({"alignment": align_counts, "align_config": align.to_dict(), "timings": timings,
                       "corpus_dir": str(corpus_dir), "corpus_parts": len(parts)})
        write_json_atomic(tmp / REPORT_NAME, report)
    source_manifest = read_manifest(corpus_dir) or read_manifest(corpus_dir.parent) or {}
    langs = {k: v for k, v in (source_manifest.get("config") or {}).items() if k in ("source_lang", "target_lang")}
    inputs = [corpus_dir] + ([Path(alignment)] if alignment else []) + ([Path(align.priors)] if align.priors else [])
    counts = {"pairs": report["corpus"]["pairs"], "phrase_pairs": report["table_rows"],
              "extracted_occurrences": report["extracted_occurrences"], "pruned_pairs": report["pruned_pairs"]}
    return write_manifest(out, stage="phrases", inputs=inputs,
                          config={"phrases": config.to_dict(), "align": align.to_dict(),
                                  "alignment": str(alignment) if alignment else None} | langs,
                          counts=counts)


def _align_item(item: tuple[str, str, AlignConfig]) -> dict[str, int]:
    part, out_path, config = item
    return align_part(part, out_path, config)
