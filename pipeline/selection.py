"""Cross-entropy-difference data selection (Moore & Lewis 2010; Axelrod et al. 2011) and the
variants users compare against (XenC, Moses EMS).

Scoring is kept apart from deciding, as in OpusFilter:

* *scoring* (``score_partition``): for each pair of a pool partition and each scored side
  (``moore-lewis``: one side, ``axelrod``: both), the side's cross-entropies under the
  in-domain model and, unless the score is ``in-domain``, an out-of-domain model; lower is more
  in-domain. With ``lp_M(s) = log10 p_M(s </s> | <s>)`` (``kenlm.Model.score(s, bos=True,
  eos=True)``) and ``n`` the number of tokens of ``s``:

  - normalisation ``word`` (default): ``H_M(s) = -lp_M(s) / (n + 1)``, the per-word
    cross-entropy of ``pipeline.lm`` (``</s>`` counted as a word);
    ``sentence``: ``H_M(s) = -lp_M(s)``, the sentence's total, not divided by its length;
  - score ``difference`` (default): ``score = sum over sides of H_in(s) - H_out(s)``;
    ``in-domain`` (XenC's mode 1): ``score = sum over sides of H_in(s)``, no out-of-domain model;
  - out-of-domain model ``cross-fit`` (default): the pool is split into two folds by a hash of
    (seed, corpus, line); each fold has its own seeded random sample of about the in-domain
    size and its own model, and a pair is scored by the model of the other fold, so that a
    pair drawn into a sample is never scored by a model that saw it verbatim (an in-domain
    pair would look out-of-domain); ``single`` (the classic method of Moore & Lewis, Axelrod,
    XenC and Moses EMS): one model on one seeded random sample of about the in-domain size,
    scoring every pair, those of its own sample included.

  The scores (and each side's ``H_in``/``H_out``) are written beside the pairs, one score part
  per pool part.
* *deciding* (``find_cut``, ``keep_partition``): the pairs are totally ordered by the key
  ``(score, xxh3_64(source TAB target), corpus, line)``, which depends on nothing but the pair,
  so the selection is the same whatever the partitioning or the number of workers. A budget
  (pairs or words) is met by the longest prefix of that order whose weight fits; the prefix is
  found exactly without gathering the pool: per-partition histograms of the key narrow an
  interval holding the first excluded pair (64-bit integer bins over a sortable encoding of
  the float score, then over the hash), until few enough pairs remain to sort on the driver.
  Each partition then keeps the rows whose key is below that first excluded key.

Functions taking an ``executor`` (``pipeline.executor``) run their per-partition work through
it: on a Dask cluster in ``workflows`` (``workflows.cluster.DaskExecutor``) or serially. This
module never creates a Dask client.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import compress
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash

from rnnenc.pipeline import lm
from rnnenc.pipeline.dedup import pair_hash  # the tie-break of equal scores: the same stable hash
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import Executor, map_grouped
from rnnenc.pipeline.ingested import (
    Corpus,
    Side,
    check_same_preprocessing,
    open_corpus,
    text_preprocessor,
)
from rnnenc.pipeline.preprocess import RAW_COLUMNS

Method = Literal["moore-lewis", "axelrod"]
METHODS: tuple[str, ...] = ("moore-lewis", "axelrod")
SCORES: tuple[str, ...] = ("difference", "in-domain")
OUT_MODELS: tuple[str, ...] = ("cross-fit", "single")
NORMALISATIONS: tuple[str, ...] = ("word", "sentence")
_SIGN = np.uint64(1 << 63)
_HIST_BITS = 16  # 65,536 bins a round: at most four rounds per 64-bit level
MAX_CANDIDATES = 200_000
# A pass over a pool part (sampling, scoring, a cut round, writing) costs a few ms per 1,000
# pairs, so a small pool's 10k-pair parts run several to a task (``map_grouped``): Dask's few ms
# per task were 5-8 % of a 58k-pair scoring on 2 workers. Parts of 25k pairs and more run alone.
MIN_TASK_PAIRS = 25_000


def read_part(path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """One Parquet part (a pool or score part), whole or ``columns``: the table ``pq.read_table``
    gives, without its dataset layer (path discovery, a filesystem), which cost ~1.2 ms a part,
    2 % of a 10k-pair part's scoring, on every pass.

    Decoded in the calling thread: a worker is one thread on a core of its own, and Arrow's
    pool threads would take the cores of the other workers (2 workers scoring a 58k-pair pool:
    the same CPU, each task ~5 ms shorter, 3 %)."""
    with pq.ParquetFile(path) as handle:
        return handle.read(columns=columns, use_threads=False)


# --------------------------------------------------------------------------------------------
# In-domain and dev sets


def export_side(spec: str | Path, lang: str, out_file: str | Path,
                pool: Corpus | None = None) -> tuple[int, int, set[str]]:
    """Write one side of an in-domain or dev set as tokenised text, one sentence a line.

    Parameters:
        spec: an ingested corpus directory, or a plain-text prefix (``spec.<lang>``, one
            sentence a line).
        lang: the side's language.
        out_file: the text file to write.
        pool: the pool the set is compared with. A corpus directory must record the pool's
            preprocessing (``check_same_preprocessing``); plain text is preprocessed as the pool
            records (``ingested.text_preprocessor``), and is taken as already tokenised
            only when the pool records no preprocessing (or no pool is given).

    Returns (lines, tokens, vocabulary). An empty set is a UserError.
    """
    spec = Path(spec)
    lines = tokens = 0
    vocab: set[str] = set()
    with open(out_file, "w", encoding="utf-8", newline="\n") as out:
        if spec.is_dir():
            corpus = open_corpus(spec)
            if pool is not None:
                check_same_preprocessing(corpus, pool)
            column = corpus.column(lang)
            where = corpus.path
            for part in corpus.parts:
                for sentence in read_part(part, columns=[column]).column(column).to_pylist():
                    words = (sentence or "").split()
                    lines += 1
                    tokens += len(words)
                    vocab.update(words)
                    out.write(" ".join(words) + "\n")
        else:
            text = Path(f"{spec}.{lang}")
            where = str(text)
            if not text.is_file():
                raise UserError(f"{text}: no such file (the '{lang}' side of {spec})")
            preprocess = text_preprocessor(pool, lang)
            with open(text, encoding="utf-8", errors="strict") as handle:
                try:
                    for lines, sentence in enumerate(handle, 1):  # noqa: B007 - the count is the result
                        words = preprocess(sentence.rstrip("\r\n")).split()
                        tokens += len(words)
                        vocab.update(words)
                        out.write(" ".join(words) + "\n")
                except UnicodeDecodeError as exc:
                    raise UserError(f"{text}:{lines + 1}: invalid UTF-8 ({exc.reason})") from None
    if tokens == 0:
        raise UserError(f"{where}: the '{lang}' side is empty")
    return lines, tokens, vocab


def write_vocab(vocab: set[str], path: str | Path) -> None:
    """Write a vocabulary for lmplz --limit_vocab_file, one word a line, in byte order."""
    Path(path).write_text("".join(f"{w}\n" for w in sorted(vocab, key=lambda w: w.encode())), encoding="utf-8")


# --------------------------------------------------------------------------------------------
# Per-partition tasks that precede scoring


def count_partition(part: str) -> dict[str, int]:
    """Pairs and tokens of a pool partition."""
    table = read_part(part, columns=["source_tokens", "target_tokens"])
    return {"pairs": table.num_rows,
            "source_tokens": int(pa.compute.sum(table["source_tokens"]).as_py() or 0),
            "target_tokens": int(pa.compute.sum(table["target_tokens"]).as_py() or 0)}


def _uniform(seed: int, corpus: Sequence[str] | pa.ChunkedArray, line: Sequence[int] | pa.ChunkedArray) -> np.ndarray:
    # A per-pair draw that depends on (seed, corpus, line) only, not on the partitioning: xxh3_64
    # of the UTF-8 of "corpus TAB line". Arrow columns are joined by Arrow into those very bytes
    # (its int-to-string cast writes the decimal digits Python does), sparing a string per pair.
    if isinstance(corpus, pa.Array | pa.ChunkedArray) and isinstance(line, pa.Array | pa.ChunkedArray):
        keys: Iterable[bytes] = pc.cast(pc.binary_join_element_wise(corpus, pc.cast(line, pa.string()), "\t"),
                                        pa.binary()).to_pylist()
    else:
        keys = (f"{c}\t{n}".encode() for c, n in zip(corpus, line, strict=True))
    draws = np.fromiter(map(functools.partial(xxhash.xxh3_64_intdigest, seed=seed), keys), dtype=np.uint64,
                        count=len(corpus))
    return draws.astype(np.float64) / 2.0**64


FOLDS = 2


def folds(seed: int, corpus: Sequence[str] | pa.ChunkedArray,
          line: Sequence[int] | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's uniform draw and fold (0 or 1), from (seed, corpus, line) only (Python lists or
    Arrow columns: the same draws)."""
    u = _uniform(seed, corpus, line)
    return u, (u >= 0.5).astype(np.int8)


def out_domain_samples(out_model: str, in_tokens: int,
                       pool_tokens: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """The sampling rate and the samples of the out-of-domain model(s): ``{name: (lo, hi)}``, a
    pair belonging to a sample when its uniform draw (``folds``) is in ``[lo, hi)``.

    Parameters:
        out_model: ``cross-fit`` (samples ``fold0`` and ``fold1``, each inside its fold) or
            ``single`` (one sample, ``sample``, of the whole pool).
        in_tokens: the in-domain set's tokens on the scored sides: each sample is about that size.
        pool_tokens: the pool's tokens on the scored sides.
    """
    ratio = in_tokens / max(1, pool_tokens)
    if out_model == "cross-fit":
        rate = min(0.5, ratio)  # a fold is half the pool: its sample cannot be larger
        return rate, {f"fold{k}": (k * 0.5, k * 0.5 + rate) for k in range(FOLDS)}
    if out_model == "single":
        rate = min(1.0, ratio)
        return rate, {"sample": (0.0, rate)}
    raise ValueError(f"unknown out-of-domain model '{out_model}'")


def sample_partition(task: tuple[str, str], sides: Sequence[Side], samples: dict[str, tuple[float, float]],
                     seed: int, keep_folds: bool = False) -> dict[str, int]:
    """Write the seeded random samples of a pool partition (see ``out_domain_samples``).

    Parameters:
        task: (pool part, output prefix); ``<prefix>.<name>.<side>`` gets the pairs of sample
            ``name`` whose draw is in its ``[lo, hi)``.
        sides: the sides written.
        samples: ``{name: (lo, hi)}``, within [0, 1].
        seed: the seed of the draws (and of the folds).
        keep_folds: also write the part's folds to ``folds_file(prefix)``, for
            ``score_partition`` (the draws are made once per stage, not once per pass).

    Returns the pairs (``<name>_pairs``) and tokens (``<name>_<side>_tokens``) of each sample.
    With cross-fitting, the out-of-domain model of fold k scores the pairs of the other fold
    only: an in-domain pair of the sample would otherwise be scored by a model that saw it
    verbatim and look out-of-domain (on the demo data this cost 8 points of precision).
    """
    part, prefix = task
    if not all(0.0 <= lo <= hi <= 1.0 for lo, hi in samples.values()):
        raise ValueError(f"sample ranges {samples} outside [0, 1]")
    table = read_part(part, columns=["corpus", "line", *sides, *(f"{s}_tokens" for s in sides)])
    u, fold = folds(seed, table["corpus"], table["line"])
    if keep_folds:
        np.save(folds_file(prefix), fold, allow_pickle=False)
    counts: dict[str, int] = {}
    for name, (lo, hi) in samples.items():
        keep = (u >= lo) & (u < hi)
        counts[f"{name}_pairs"] = int(keep.sum())
        for side in sides:
            _write_lines(f"{prefix}.{name}.{side}", table[side].filter(pa.array(keep)).to_pylist())
            counts[f"{name}_{side}_tokens"] = int(np.asarray(table[f"{side}_tokens"])[keep].sum())
    return counts


def folds_file(prefix: str) -> str:
    """Where ``sample_partition`` keeps the folds of the part it sampled into ``prefix``."""
    return f"{prefix}.folds.npy"


def _read_folds(path: str, rows: int) -> np.ndarray:
    fold = np.load(path, allow_pickle=False)
    if fold.dtype != np.int8 or fold.shape != (rows,):
        raise ValueError(f"{path}: {fold.dtype} {fold.shape} folds for a part of {rows} pairs")
    return fold


def _write_lines(path: str, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        if lines:
            out.write("\n".join(lines))
            out.write("\n")


# --------------------------------------------------------------------------------------------
# Scoring


@dataclass(frozen=True)
class SideModels:
    """The models of one side. Paths exist on every worker.

    ``out_domain`` says which out-of-domain model scores a pair: none (score ``in-domain``),
    one (``single``: every pair), or two (``cross-fit``: trained on fold 0's and fold 1's
    samples; a pair is scored by the other fold's model).
    """

    side: Side
    in_domain: str
    out_domain: tuple[str, ...]


def sortable_key(scores: np.ndarray) -> np.ndarray:
    """Map float64 scores to uint64 keys with the same order (the IEEE-754 sign trick)."""
    scores = np.asarray(scores, dtype=np.float64) + 0.0  # -0.0 -> 0.0
    if np.isnan(scores).any():
        raise ValueError("NaN selection score")
    bits = scores.view(np.uint64)
    return np.where(bits & _SIGN, ~bits, bits | _SIGN)


def cross_entropies(model: Any, sentences: Iterable[str], lengths: Sequence[int] | np.ndarray,
                    normalise: str) -> np.ndarray:
    """``H(s)`` of each tokenised sentence under a kenlm model, log10, ``</s>`` included.

    Parameters:
        model: a ``kenlm.Model``.
        sentences: the sentences, tokens separated by spaces, as str or UTF-8 bytes (any
            iterable, one per length).
        lengths: their numbers of tokens ``n``.
        normalise: ``word``: ``-log10 p(s </s> | <s>) / (n + 1)``; ``sentence``: ``-log10 p(s </s> | <s>)``.
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation '{normalise}'")
    # kenlm's score() defaults are bos=True, eos=True; mapping it directly keeps the per-sentence
    # cost in C (a Python expression per sentence costs a third of the scoring). The division is
    # IEEE's either way, so the values are the same bits as -score / (n + 1) in Python.
    lengths = np.asarray(lengths, dtype=np.float64)
    log_prob = np.fromiter(map(model.score, sentences), dtype=np.float64, count=len(lengths))
    return -log_prob / (lengths + 1.0) if normalise == "word" else -log_prob


def describe_score(score: str, out_model: str, normalise: str, langs: Sequence[str]) -> str:
    """The selection score as a formula in one line (for report.json and the log).

    Parameters:
        score: ``difference`` or ``in-domain``.
        out_model: ``cross-fit`` or ``single`` (unused for ``in-domain``).
        normalise: ``word`` or ``sentence``.
        langs: the scored languages.
    """
    term = "H_in(s)" if score == "in-domain" else "H_in(s) - H_out(s)"
    where = f"sum over {' and '.join(langs)} of" if len(langs) > 1 else f"on {langs[0]}:"
    entropy = "-log10 p(s </s> | <s>)" + (" / (n + 1)" if normalise == "word" else "")
    out = ""
    if score == "difference":
        out = ("; H_out by the model of the other fold's sample (cross-fit)" if out_model == "cross-fit"
               else "; H_out by one model on one pool sample (single)")
    return f"score = {where} {term}, H(s) = {entropy}{out}; lower is more in-domain"


def score_partition(task: tuple[str, str] | tuple[str, str, str | None], models: Sequence[SideModels], seed: int,
                    normalise: str = "word") -> dict[str, Any]:
    """Score a pool partition and write ``task[1]``, a Parquet part of scores beside the pairs.

    Parameters:
        task: (pool part, score part to write[, its folds file or None]): the folds file
            (``sample_partition``'s ``keep_folds``) spares drawing the folds again; without it
            they are drawn here (the same folds).
        models: per scored side, its models (``SideModels``: whether and how there is an
            out-of-domain term).
        seed: the seed of the folds (cross-fitting).
        normalise: ``word`` or ``sentence`` (``cross_entropies``).

    Columns: corpus, line, score, ``h_in_<side>`` (and ``h_out_<side>`` with an out-of-domain
    model) per scored side, in the chosen normalisation; ``fold`` when cross-fitted; ``key``
    (sortable score) and ``tiebreak`` (pair hash), source_tokens, target_tokens.
    """
    part, out, folds_path = (*task, None)[:3]
    table = read_part(part, columns=["source", "target", "source_tokens", "target_tokens", "corpus", "line"])
    cross_fitted = any(len(side_models.out_domain) > 1 for side_models in models)
    if cross_fitted:
        fold = (_read_folds(folds_path, table.num_rows) if folds_path
                else folds(seed, table["corpus"], table["line"])[1])
        # which rows each fold's model scores (the other fold's), shared by both sides
        scored_by = [fold == 1 - k for k in range(FOLDS)]
        selectors = [scored.tolist() for scored in scored_by]
    score = np.zeros(table.num_rows, dtype=np.float64)
    components: dict[str, np.ndarray] = {}
    # kenlm takes UTF-8 bytes as they are (a str it encodes first, once per model): Arrow hands
    # out the bytes without a Python string per sentence, and the scores are the same.
    words = {side: pc.cast(table[side], pa.binary()).to_pylist() for side in ("source", "target")}
    for side_models in models:
        side = side_models.side
        lengths = table[f"{side}_tokens"].to_numpy()
        h_in = components[f"h_in_{side}"] = cross_entropies(lm.load_model(side_models.in_domain), words[side],
                                                            lengths, normalise)
        outs = side_models.out_domain
        if not outs:
            score += h_in
            continue
        if len(outs) == 1:
            h_out = cross_entropies(lm.load_model(outs[0]), words[side], lengths, normalise)
        else:
            h_out = np.empty(table.num_rows, dtype=np.float64)
            for path, scored, selector in zip(outs, scored_by, selectors, strict=True):
                h_out[scored] = cross_entropies(lm.load_model(path), compress(words[side], selector),
                                                lengths[scored], normalise)
        components[f"h_out_{side}"] = h_out
        score += h_in - h_out
    key = sortable_key(score)
    columns: dict[str, Any] = {"corpus": table["corpus"], "line": table["line"], "score": score, **components,
                               **({"fold": fold} if cross_fitted else {}), "key": key,
                               "tiebreak": pair_hash(words["source"], words["target"]),
                               "source_tokens": table["source_tokens"], "target_tokens": table["target_tokens"]}
    # Dictionary encoding only where values repeat: on the all-distinct scores and hashes it
    # costs more than the scoring's overheads together, and makes the file no smaller.
    pq.write_table(pa.table(columns), out, use_dictionary=["corpus"])
    tokens = {side: np.asarray(table[f"{side}_tokens"], dtype=np.int64) for side in ("source", "target")}
    return {"pairs": table.num_rows, "first_round": first_round_histogram(key, tokens)}


# --------------------------------------------------------------------------------------------
# Deciding: the exact cut


CutKey = tuple[int, int, str, int]  # (key, tiebreak, corpus, line)


@dataclass(frozen=True)
class Cut:
    """The first excluded pair in key order; None keeps everything. ``pairs``/``weight`` kept."""

    first_excluded: CutKey | None
    pairs: int | None = None
    weight: int | None = None
    rounds: int = 0

    def record(self) -> dict[str, Any]:
        first = None
        if self.first_excluded is not None:
            key, tiebreak, corpus, line = self.first_excluded
            first = {"key": key, "tiebreak": tiebreak, "corpus": corpus, "line": line,
                     "score": float(_key_to_score(key))}
        return {"first_excluded": first, "pairs": self.pairs, "weight": self.weight, "rounds": self.rounds}


def _key_to_score(key: int) -> float:
    bits = np.uint64(key)
    raw = bits & ~_SIGN if bits & _SIGN else ~bits
    return float(np.asarray([raw], dtype=np.uint64).view(np.float64)[0])


def threshold_cut(threshold: float) -> Cut:
    """Keep every pair whose score is <= threshold."""
    key = int(sortable_key(np.asarray([threshold]))[0])
    return Cut(first_excluded=(key + 1, 0, "", 0) if key < 2**64 - 1 else None)


def _in_range(table: pa.Table, level: int, prefix: int | None, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.asarray(table["key"])
    if level == 0:
        values, mask = keys, (keys >= np.uint64(lo)) & (keys <= np.uint64(hi))
    else:
        values = np.asarray(table["tiebreak"])
        mask = (keys == np.uint64(prefix)) & (values >= np.uint64(lo)) & (values <= np.uint64(hi))
    return values, mask


def _weights(table: pa.Table, weight: str) -> np.ndarray:
    if weight == "pairs":
        return np.ones(table.num_rows, dtype=np.int64)
    return np.asarray(table[weight], dtype=np.int64)


def histogram_partition(scores_part: str, level: int, prefix: int | None, lo: int, hi: int, shift: int,
                        weight: str) -> tuple[np.ndarray, np.ndarray]:
    """Counts and weights of a score part's rows in [lo, hi], binned by ``(value - lo) >> shift``."""
    columns = ["key", "tiebreak"] + ([] if weight == "pairs" else [weight])
    table = read_part(scores_part, columns=columns)
    values, mask = _in_range(table, level, prefix, lo, hi)
    bins = ((values[mask] - np.uint64(lo)) >> np.uint64(shift)).astype(np.int64)
    n_bins = ((hi - lo) >> shift) + 1
    counts = np.bincount(bins, minlength=n_bins).astype(np.int64)
    weights = np.bincount(bins, weights=_weights(table, weight)[mask], minlength=n_bins).astype(np.int64)
    return counts, weights


def candidates_partition(scores_part: str, level: int, prefix: int | None, lo: int, hi: int,
                         weight: str) -> list[tuple[int, int, str, int, int]]:
    """The rows of a score part in the final interval: (key, tiebreak, corpus, line, weight)."""
    columns = ["key", "tiebreak", "corpus", "line"] + ([] if weight == "pairs" else [weight])
    table = read_part(scores_part, columns=columns)
    _values, mask = _in_range(table, level, prefix, lo, hi)
    rows = table.filter(pa.array(mask))
    weights = _weights(rows, weight).tolist()
    return list(zip(np.asarray(rows["key"]).tolist(), np.asarray(rows["tiebreak"]).tolist(),
                    rows["corpus"].to_pylist(), rows["line"].to_pylist(), weights, strict=True))


def first_round_histogram(key: np.ndarray, tokens: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The cut search's first round for one score part, computed while scoring: its bins (the
    key's top ``_HIST_BITS`` bits) depend on nothing but the key, so the pool need not be read
    again for it. Sparse: the used bins and, per bin, the pairs and each side's tokens.

    Parameters:
        key: the part's sortable keys (``sortable_key``).
        tokens: ``{"source": ..., "target": ...}``, each row's token counts.
    """
    used, inverse = np.unique(key >> np.uint64(64 - _HIST_BITS), return_inverse=True)
    histogram = {"bins": used.astype(np.int64), "pairs": np.bincount(inverse, minlength=len(used)).astype(np.int64)}
    for side, counts in tokens.items():
        histogram[f"{side}_tokens"] = np.bincount(inverse, weights=counts, minlength=len(used)).astype(np.int64)
    return histogram


def merge_first_rounds(histograms: Sequence[dict[str, np.ndarray]], weight: str) -> tuple[np.ndarray, np.ndarray]:
    """The pool's first-round (counts, weights) of ``weight`` from the parts' sparse histograms,
    as ``find_cut``'s first pass would have counted them."""
    counts = np.zeros(1 << _HIST_BITS, dtype=np.int64)
    weights = np.zeros(1 << _HIST_BITS, dtype=np.int64)
    for histogram in histograms:
        np.add.at(counts, histogram["bins"], histogram["pairs"])
        np.add.at(weights, histogram["bins"], histogram[weight])
    return counts, weights


def find_cut(scores_parts: Sequence[str], budget: int, weight: str, total_weight: int, executor: Executor,
             max_candidates: int = MAX_CANDIDATES,
             first_round: tuple[np.ndarray, np.ndarray] | None = None,
             part_rows: Sequence[int] | None = None) -> Cut:
    """The longest prefix of the key order whose summed ``weight`` is <= ``budget``, exactly.

    ``weight`` is ``"pairs"`` or a tokens column (``source_tokens``/``target_tokens``);
    ``total_weight`` is the pool's total. Each round is one pass over the score parts (a
    histogram of the interval holding the first excluded pair); the last gathers at most
    about ``max_candidates`` rows on the driver and sorts them. ``first_round``, the first
    round's (counts, weights) as scoring computed them (``merge_first_rounds``), saves a pass:
    then a pool whose boundary bin holds at most ``max_candidates`` pairs costs one pass.
    ``Cut.rounds`` counts the passes made here. ``part_rows``, each score part's rows, lets
    small parts share a task (``map_grouped``).
    """
    if budget >= total_weight:
        return Cut(first_excluded=None, pairs=None, weight=total_weight)
    parts = list(scores_parts)

    def each_part(func: Callable[..., Any], desc: str, **kwargs: Any) -> list[Any]:
        if part_rows is None:
            return executor.map(func, parts, desc=desc, **kwargs)
        return map_grouped(executor, func, parts, part_rows, floor=MIN_TASK_PAIRS, desc=desc, **kwargs)

    below = 0  # weight of the rows before the current interval
    below_pairs = 0
    level, prefix, lo, hi = 0, None, 0, 2**64 - 1
    rounds = 0
    while True:
        span = hi - lo
        shift = max(0, span.bit_length() - _HIST_BITS)
        if first_round is not None:  # the first round, counted while scoring (same bins: lo 0, shift 48)
            counts, weights = first_round
            first_round = None
        else:
            rounds += 1
            results = each_part(histogram_partition, f"cut search, round {rounds}", level=level, prefix=prefix, lo=lo,
                                hi=hi, shift=shift, weight=weight)
            counts = np.sum([r[0] for r in results], axis=0)
            weights = np.sum([r[1] for r in results], axis=0)
        # narrow to the bin holding the first excluded pair (the histogram is paid for already)
        cumulative = below + np.cumsum(weights)
        b = int(np.argmax(cumulative > budget))  # exists: below <= budget < below + the interval's weight
        below_pairs += int(counts[:b].sum())
        below = int(cumulative[b - 1]) if b else below
        lo, hi = lo + (b << shift), min(hi, lo + ((b + 1) << shift) - 1)
        if int(counts[b]) <= max_candidates:
            break
        if lo == hi:  # one value holds too many pairs: narrow on the tie-break hash (duplicates: gather)
            if level == 1:
                break
            level, prefix, lo, hi = 1, lo, 0, 2**64 - 1
    rounds += 1
    candidates = [row for rows in each_part(candidates_partition, "cut search, candidates", level=level, prefix=prefix,
                                            lo=lo, hi=hi, weight=weight) for row in rows]
    candidates.sort(key=lambda row: row[:4])
    kept, pairs = below, below_pairs
    for row in candidates:
        if kept + row[4] > budget:
            return Cut(first_excluded=row[:4], pairs=pairs, weight=kept, rounds=rounds)
        kept += row[4]
        pairs += 1
    raise AssertionError("cut search lost the first excluded pair")  # the interval always holds it


def keep_mask(scores: pa.Table, cut: Cut) -> np.ndarray:
    """Rows of a score table whose key is below the cut's first excluded key."""
    if cut.first_excluded is None:
        return np.ones(scores.num_rows, dtype=bool)
    c_key, c_tie, c_corpus, c_line = cut.first_excluded
    keys, ties = np.asarray(scores["key"]), np.asarray(scores["tiebreak"])
    mask = (keys < np.uint64(c_key)) | ((keys == np.uint64(c_key)) & (ties < np.uint64(c_tie)))
    # Equal (score, hash) means a duplicated pair: (corpus, line) decides, rarely enough for Python.
    for i in np.flatnonzero((keys == np.uint64(c_key)) & (ties == np.uint64(c_tie))):
        mask[i] = (scores["corpus"][i].as_py(), scores["line"][i].as_py()) < (c_corpus, c_line)
    return mask


def keep_partition(task: tuple[str, str, str | None, str | None], cut: Cut,
                   text_sides: Sequence[Side] = ("source", "target"), raw_text: bool = False) -> dict[str, int]:
    """Write the pairs of one pool partition that the cut keeps.

    ``task`` is (pool part, score part, selected Parquet part or None, text prefix or None):
    the Parquet part gets the pool's columns plus ``score``; ``<prefix>.<side>`` the text of
    each of ``text_sides``, and with ``raw_text`` ``<prefix>.raw.<side>`` its original text
    (``RAW_COLUMNS``; a line break inside a value becomes a space, so that the files stay
    line-aligned, and is counted). Returns the kept pairs and tokens.
    """
    part, scores_part, parquet_out, text_prefix = task
    scores = read_part(scores_part, columns=["key", "tiebreak", "corpus", "line", "score"])
    table = read_part(part)
    if scores.num_rows != table.num_rows:
        raise UserError(f"{scores_part}: {scores.num_rows} scores for {table.num_rows} pairs in {part}")
    mask = pa.array(keep_mask(scores, cut))
    kept = table.filter(mask)
    if parquet_out is not None:
        pq.write_table(kept.append_column("score", scores["score"].filter(mask)), parquet_out)
    broken = 0
    if text_prefix is not None:
        for side in text_sides:
            _write_lines(f"{text_prefix}.{side}", kept[side].to_pylist())
            if raw_text:
                raw = kept[RAW_COLUMNS[side]].to_pylist()
                one_line = [_one_line(text) for text in raw]
                broken += sum(a != b for a, b in zip(raw, one_line, strict=True))
                _write_lines(f"{text_prefix}.raw.{side}", one_line)
    return {"pairs": kept.num_rows,
            "source_tokens": int(pa.compute.sum(kept["source_tokens"]).as_py() or 0),
            "target_tokens": int(pa.compute.sum(kept["target_tokens"]).as_py() or 0),
            **({"raw_line_breaks_replaced": broken} if raw_text else {})}


_LINE_BREAK = re.compile(r"\r\n|[\r\n]")


def _one_line(text: str | None) -> str:
    return _LINE_BREAK.sub(" ", text) if text and ("\n" in text or "\r" in text) else (text or "")



# --------------------------------------------------------------------------------------------
# Scores aligned with the pool's input files (Moses EMS's mml-filter reads one score a line)

#: the line of the input-aligned scores for an input line that ingest dropped: mml-filter.py keeps
#: a line whose value is >= its threshold (or is its ignore_score, "99999"), never this one
DROPPED_MARKER = "-inf"
INPUT_SCORES_DIR = "input_scores"

Run = tuple[str, int, int, int, str]  # (corpus, first line, last line, pairs, segment file)


def input_scores_partition(task: tuple[str, str]) -> list[Run] | None:
    """Write one score part's stretch of the input-aligned score files.

    ``task`` is (score part, segment prefix). For each run of consecutive rows of one corpus,
    ``<prefix>.<k>`` gets one line per input line from the run's first line to its last:
    ``-score`` (Moses's mml-score.perl sign: higher is more in-domain) for a scored pair,
    ``DROPPED_MARKER`` for a line in between that ingest dropped. Returns the runs (corpus,
    first, last, pairs, file), or None when the lines do not increase (not an ingest output's
    order: the stage then writes no input-aligned scores).
    """
    scores_part, prefix = task
    table = read_part(scores_part, columns=["corpus", "line", "score"])
    corpora, lines = table["corpus"].to_pylist(), table["line"].to_pylist()
    values = (-np.asarray(table["score"], dtype=np.float64)).tolist()
    runs: list[Run] = []
    start = 0
    while start < len(lines):
        end = start
        while end + 1 < len(lines) and corpora[end + 1] == corpora[start]:
            end += 1
        if any(b <= a for a, b in zip(lines[start:end], lines[start + 1:end + 1], strict=True)):
            return None
        path = f"{prefix}.{len(runs)}"
        with open(path, "w", encoding="utf-8", newline="\n") as out:
            previous = lines[start] - 1
            for line, value in zip(lines[start:end + 1], values[start:end + 1], strict=True):
                out.write(f"{DROPPED_MARKER}\n" * (line - previous - 1) + f"{value!r}\n")
                previous = line
        runs.append((corpora[start], lines[start], lines[end], end - start + 1, path))
        start = end + 1
    return runs


def _write_markers(out: Any, count: int) -> None:
    marker = f"{DROPPED_MARKER}\n".encode()
    for done in range(0, count, 1 << 16):
        out.write(marker * min(1 << 16, count - done))


def write_input_scores(pool: Corpus, score_parts: Sequence[str], work: Path, out_dir: Path,
                       executor: Executor) -> dict[str, Any]:
    """``out_dir/input_scores/<corpus>.txt`` for each corpus of the pool: one line per line
    (or row) of the original input, in input order (``input_scores_partition``: ``-score``, or
    ``DROPPED_MARKER`` for a line ingest dropped), as Moses EMS's mml-filter reads a score
    file. Needs the per-corpus line counts of the pool's ingest report; returns the record for
    the report (``written`` False, with the reason, when the pool cannot give them)."""
    from rnnenc.pipeline.artifacts import report_path

    report_file = report_path(pool.path)
    corpora = (json.loads(report_file.read_text()).get("corpora") if report_file.is_file() else None) or {}
    line_counts = {name: counts.get("lines_read") for name, counts in corpora.items()}
    if not line_counts or not all(isinstance(n, int) for n in line_counts.values()):
        return {"written": False, "reason": f"{report_file}: no per-corpus line counts (not an rnnenc ingest output)"}
    segments = work / "input-scores"
    segments.mkdir()
    results = executor.map(input_scores_partition, [(p, str(segments / f"part-{i:05d}"))
                                                    for i, p in enumerate(score_parts)],
                           desc="input-aligned scores")
    runs = [run for result in results if result is not None for run in result]
    by_corpus: dict[str, list[Run]] = {name: [] for name in line_counts}
    ordered = None not in results and all(run[0] in by_corpus for run in runs)
    for run in runs if ordered else ():
        previous = by_corpus[run[0]]
        if previous and run[1] <= previous[-1][2]:
            ordered = False
        previous.append(run)
    seen = [run[0] for run in runs]
    if ordered and [c for i, c in enumerate(seen) if i == 0 or seen[i - 1] != c] != \
            [c for c in line_counts if by_corpus[c]]:
        ordered = False  # a corpus's rows are not together, or not in input order
    if not ordered or any(rs and rs[-1][2] > line_counts[c] for c, rs in by_corpus.items()):
        shutil.rmtree(segments)
        return {"written": False, "reason": f"{pool.path}: its rows are not in input order, or lie beyond the "
                                            "line counts of its ingest report"}
    (out_dir / INPUT_SCORES_DIR).mkdir()
    record: dict[str, Any] = {"written": True, "dropped_marker": DROPPED_MARKER, "files": {}}
    for name, total in line_counts.items():
        position = pairs = 0
        with open(out_dir / INPUT_SCORES_DIR / f"{name}.txt", "wb") as out:
            for _corpus, first, last, count, path in by_corpus[name]:
                _write_markers(out, first - position - 1)
                with open(path, "rb") as segment:
                    shutil.copyfileobj(segment, out, 1 << 20)
                position, pairs = last, pairs + count
            _write_markers(out, total - position)
        record["files"][f"{INPUT_SCORES_DIR}/{name}.txt"] = {"lines": total, "scored": pairs,
                                                             "dropped": total - pairs}
    shutil.rmtree(segments)
    return record


def concatenate(files: Sequence[str | Path], out: str | Path) -> None:
    """Concatenate text files in order (partition texts -> one corpus file)."""
    with open(out, "wb") as target:
        for file in files:
            with open(file, "rb") as handle:
                while block := handle.read(1 << 22):
                    target.write(block)


# --------------------------------------------------------------------------------------------
# Choosing the amount: budgets and the perplexity sweep


_SUFFIXES = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9, "t": 10**12}


def parse_count(text: str) -> int:
    """``348M`` -> 348000000, ``10k`` -> 10000, ``1.5M`` -> 1500000; plain integers as is."""
    value = text.strip().lower().replace("_", "")
    factor = 1
    if value and value[-1] in _SUFFIXES:
        factor, value = _SUFFIXES[value[-1]], value[:-1]
    try:
        number = float(value) * factor
    except ValueError:
        raise UserError(f"'{text}': not a count (examples: 348M, 10k, 5000)") from None
    if number < 0 or not math.isfinite(number) or number != int(number):
        raise UserError(f"'{text}': not a whole non-negative count")
    return int(number)


@dataclass(frozen=True)
class SweepPoint:
    pairs: int
    fraction: float
    source_tokens: int
    target_tokens: int
    perplexity: dict[str, float]  # per side
    refined: bool

    @property
    def objective(self) -> float:
        """What the sweep minimises: the geometric mean of the sides' dev perplexities (the mean log
        perplexity; one side: its perplexity). ``objective_label`` says it in words."""
        return math.pow(10.0, sum(math.log10(p) for p in self.perplexity.values()) / len(self.perplexity))


def sweep_sizes(total_pairs: int, grid: Sequence[float]) -> list[int]:
    sizes = sorted({max(1, min(total_pairs, round(f * total_pairs))) for f in grid})
    if not sizes:
        raise UserError("--sweep-grid is empty")
    return sizes


def refine_sizes(sizes: Sequence[int], best: int, points: int) -> list[int]:
    """``points`` sizes evenly spaced on each side of ``best`` up to its grid neighbours."""
    ordered = sorted(sizes)
    i = ordered.index(best)
    lower = ordered[i - 1] if i > 0 else max(1, best // 2)
    upper = ordered[i + 1] if i + 1 < len(ordered) else best
    new = set()
    for a, b in ((lower, best), (best, upper)):
        for j in range(1, points + 1):
            new.add(round(a + (b - a) * j / (points + 1)))
    return sorted(n for n in new if n not in set(ordered) and n > 0)


def write_sweep_curve(points: Sequence[SweepPoint], best: SweepPoint, csv_path: str | Path,
                      png_path: str | Path, langs: dict[str, str]) -> None:
    """The sweep as CSV (one row per size) and a PNG plot of dev perplexity against size."""
    sides = list(points[0].perplexity)
    header = ["pairs", "fraction", "source_tokens", "target_tokens",
              *(f"perplexity_{langs[s]}" for s in sides), "objective", "refined", "chosen"]
    lines = [",".join(header)]
    for p in sorted(points, key=lambda p: p.pairs):
        lines.append(",".join([str(p.pairs), f"{p.fraction:.6f}", str(p.source_tokens), str(p.target_tokens),
                               *(f"{p.perplexity[s]:.4f}" for s in sides), f"{p.objective:.4f}",
                               str(int(p.refined)), str(int(p is best))]))
    Path(csv_path).write_text("\n".join(lines) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted(points, key=lambda p: p.pairs)
    sizes = [p.pairs for p in ordered]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=100)
    for side in sides:
        ax.plot(sizes, [p.perplexity[side] for p in ordered], marker="o", label=f"dev perplexity ({langs[side]})")
    if len(sides) > 1:  # the minimised curve is then none of the sides' own
        ax.plot(sizes, [p.objective for p in ordered], marker="s", color="black",
                label="objective: " + objective_label(langs, sides, short=True))
    ax.axvline(best.pairs, color="grey", linestyle="--",
               label=f"chosen: {best.pairs} pairs (objective {best.objective:.2f})")
    ax.set_xlabel("selected pairs (top-k by score)")
    ax.set_ylabel("dev perplexity of an LM trained on the top-k")
    ax.set_title(f"Data selection sweep: minimises\n{objective_label(langs, sides)}", fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, metadata={"Software": None})
    plt.close(fig)


def objective_label(langs: dict[str, str], sides: Sequence[str], short: bool = False) -> str:
    """What the sweep minimises (``SweepPoint.objective``), in words.

    Parameters:
        langs: side -> language.
        sides: the sides with a dev perplexity.
        short: the formula alone (for a legend).
    """
    names = [langs[s] for s in sides]
    if len(names) == 1:
        return f"ppl_{names[0]}" if short else f"dev perplexity of the {names[0]} LM trained on the top-k"
    formula = f"({' * '.join(f'ppl_{n}' for n in names)})^(1/{len(names)})"
    return formula if short else (f"geometric mean of the {' and '.join(names)} dev perplexities, "
                                  f"{formula}")
