"""The ingest stage body: read parallel corpora once, tokenise and clean them in parallel parts.

The reader streams each input once, in this process, in batches of ``rows_per_part`` pairs,
writes each batch as a raw shard and hands it to the executor as soon as it is written; the
tasks (``pipeline.preprocess.preprocess_shard``) write ``part-NNNNN.parquet`` and their rejects.
Outputs are identical whatever the number of workers. The command line is ``workflows.ingest``.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow.parquet as pq

from rnnenc.pipeline.artifacts import (
    REJECTS_NAME,
    REPORT_NAME,
    atomic_output_dir,
    write_json_atomic,
    write_manifest,
)
from rnnenc.pipeline.corpus import CorpusInput, InvalidUtf8, OnError, escape_bytes, read_batches
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import Executor

if TYPE_CHECKING:  # sacremoses (0.3 s) loads where lines are tokenised: not for `rnnenc ingest --help`
    from rnnenc.pipeline.preprocess import PreprocessConfig

log = logging.getLogger("rnnenc")
DEFAULT_ROWS_PER_PART = 100_000     # the largest default part (memory); smaller corpora get smaller parts
MIN_ROWS_PER_PART = 10_000          # the smallest default part


def default_rows_per_part(inputs: Sequence[CorpusInput]) -> int:
    """Pairs per part when none is given: the inputs' estimated pairs in
    ``pipeline.partitioning.TARGET_TASKS`` parts of 10,000 to 100,000 pairs, in thousands (a
    58k-pair pool: 6 parts, not 1); 100,000 when a size can't be estimated (a HF dataset)."""
    from rnnenc.pipeline.corpus import estimate_pairs
    from rnnenc.pipeline.partitioning import default_size

    estimates = [estimate_pairs(corpus) for corpus in inputs]
    if any(e is None for e in estimates):
        return DEFAULT_ROWS_PER_PART
    return default_size(sum(estimates), floor=MIN_ROWS_PER_PART, cap=DEFAULT_ROWS_PER_PART, step=1000)


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


def preprocess_item(item: tuple[str, str, str, str], config: PreprocessConfig) -> dict[str, Any]:
    """Worker task: ``preprocess_shard`` of one (raw shard, part, rejects, corpus name)."""
    from rnnenc.pipeline.preprocess import preprocess_shard

    raw_path, out_path, rejects_path, corpus = item
    return preprocess_shard(raw_path, out_path, rejects_path, corpus, config)


def ingest(executor: Executor, inputs: Sequence[CorpusInput], out_dir: str | Path, config: PreprocessConfig, *,
           rows_per_part: int | None = None, invalid_utf8: InvalidUtf8 = "replace",
           on_error: OnError = "fail", rejects_path: str | Path | None = None) -> dict[str, Any]:
    """The ingest stage: read ``inputs`` once, tokenise and clean them in parts on ``executor``, and
    write ``out_dir`` (atomically, manifest last); return the stage report.

    Parameters:
        executor: runs the per-part preprocessing (``pipeline.executor``).
        inputs: the corpora, in output order.
        out_dir: the output directory (never a foreign one: ``pipeline.artifacts``).
        config: tokenisation and cleaning.
        rows_per_part: pairs per part and per task (default: ``default_rows_per_part``).
        invalid_utf8: replace invalid bytes or reject the line.
        on_error: stop at a malformed line or count and write it to the rejects file.
        rejects_path: where rejects go (default with ``on_error="skip"``: OUT/_rejects.tsv.gz).
    """
    if not inputs:
        raise UserError("ingest: no input given (use --src/--tgt, --tsv, --parquet or --hf)")
    if rows_per_part is None:
        rows_per_part = default_rows_per_part(inputs)
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
        part_corpus: list[str] = []

        def shards() -> Iterator[tuple[str, str, str, str]]:
            """Read every input once, here, writing raw shards; each is a task as soon as it exists."""
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
                    part = len(part_corpus)
                    raw_path = staging / f"raw-{part:05d}.parquet"
                    pq.write_table(batch.table(), raw_path, compression="zstd")
                    part_corpus.append(corpus.name)
                    yield (str(raw_path), str(tmp / f"part-{part:05d}.parquet"),
                           str(staging / f"rejects-{part:05d}.parquet"), corpus.name)

        results = executor.map(preprocess_item, shards(), desc="ingest", config=config)
        part = len(part_corpus)
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
            final_rejects = Path(rejects_path) if rejects_path else tmp / REJECTS_NAME
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
            "rejects_file": str(out_dir / REJECTS_NAME) if write_rejects and not rejects_path
            else (str(rejects_path) if rejects_path else None),
            "rejects_written": rejects_written,
            "seconds": round(seconds, 3),
            "words_per_second": round(words / seconds, 1) if seconds else None,
        }
        assert report["lines_read"] == report["pairs_written"] + report["pairs_dropped"], report
        write_json_atomic(tmp / REPORT_NAME, report)

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
