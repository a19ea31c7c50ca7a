"""The ingest stage body: read parallel corpora once, tokenise and clean them in parallel parts.

The reader streams each input once, in this process, in batches of ``rows_per_part`` pairs,
writes each batch as a raw shard and hands it to the executor as soon as it is written; the
tasks (``pipeline.preprocess.preprocess_shard``) write ``part-NNNNN.parquet`` and their rejects.
Two optional passes follow over the parts: truecasing (``pipeline.truecase``: the model is
trained from the first pass's per-part counts, then applied) and deduplication
(``pipeline.dedup``: keys, a decision per hash bucket, then each part drops its duplicates).
Outputs are identical whatever the number of workers or parts. The command line is
``workflows.ingest``.
"""

from __future__ import annotations

import gzip
import io
import logging
import math
import os
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rnnenc.pipeline.artifacts import (
    REJECTS_NAME,
    REPORT_NAME,
    atomic_output_dir,
    write_json_atomic,
    write_manifest,
)
from rnnenc.pipeline.corpus import (
    REJECT_SCHEMA,
    CorpusInput,
    InvalidUtf8,
    OnError,
    escape_bytes,
    read_batches,
)
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import Executor

if TYPE_CHECKING:  # sacremoses (0.3 s) and py3langid load where lines are processed: not for --help
    from rnnenc.pipeline.preprocess import PreprocessConfig

log = logging.getLogger("rnnenc")
DEFAULT_ROWS_PER_PART = 100_000     # the largest default part (memory); smaller corpora get smaller parts
MIN_ROWS_PER_PART = 10_000          # the smallest default part


def default_rows_per_part(inputs: Sequence[CorpusInput]) -> int:
    """Pairs per part when none is given: the inputs' estimated pairs in
    ``pipeline.partitioning.TARGET_TASKS`` parts of 10,000 to 100,000 pairs, as many parts as
    that gives but evened out over them (a 58k-pair pool: 6 parts of ~9.7k, not 1 part, nor 5 of
    10k and a remainder); 100,000 when a size can't be estimated (a HF dataset).

    Evening out matters where a pass has few parts per worker: a short last part leaves one
    worker idle while the others finish (on 2 workers, 3 + 3 parts of 10k, 10k, 10k | 10k, 10k,
    8k: the pass lasts 4-5 % longer than with 6 equal parts). The estimate is within about 1 %
    for text (``estimate_pairs``): one a little low leaves a short remainder part, one a little
    high just above a multiple of the size gives one part more, all of them smaller."""
    from rnnenc.pipeline.corpus import estimate_pairs
    from rnnenc.pipeline.partitioning import default_size

    estimates = [estimate_pairs(corpus) for corpus in inputs]
    if any(e is None for e in estimates):
        return DEFAULT_ROWS_PER_PART
    total = sum(estimates)
    size = default_size(total, floor=MIN_ROWS_PER_PART, cap=DEFAULT_ROWS_PER_PART, step=1000)
    parts = math.ceil(total / size)
    return math.ceil(total / parts) if parts > 1 else size  # one part: keep its margin


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
    # mtime=0: the same rejects give the same bytes, run after run (gzip records a time otherwise)
    with io.TextIOWrapper(gzip.GzipFile(tmp, "wb", compresslevel=6, mtime=0), encoding="utf-8") as out:
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


def preprocess_item(item: tuple[str, str, str, str, str], config: PreprocessConfig,
                    train_sides: tuple[str, ...] = ()) -> dict[str, Any]:
    """Worker task: ``preprocess_shard`` of one (raw shard, part, rejects, corpus name, casing
    prefix); the truecasing counts of ``train_sides`` go to PREFIX.<side>.json."""
    from rnnenc.pipeline.preprocess import preprocess_shard

    raw_path, out_path, rejects_path, corpus, casing_prefix = item
    return preprocess_shard(raw_path, out_path, rejects_path, corpus, config,
                            {side: f"{casing_prefix}.{side}.json" for side in train_sides})


def finish_part(item: tuple[str, str, str | None, int, int], models: dict[str, str]) -> None:
    """Worker task, second pass over one (first pass's part, truecased part, keys file or None,
    part index, corpus index): truecase the sides that have a model (``models``: side -> model
    file) into a new file, then write the dedup keys of the result. Nothing is rewritten in
    place, so a task that Dask reruns after a lost worker does the same again."""
    from rnnenc.pipeline import dedup, truecase
    from rnnenc.pipeline.preprocess import write_parquet_atomic

    in_path, out_path, keys_path, part_index, corpus_index = item
    table = pq.read_table(in_path)
    for side, model in models.items():
        text = [truecase.truecase(sentence, model) for sentence in table.column(side).to_pylist()]
        table = table.set_column(table.schema.get_field_index(side), side, pa.array(text, pa.string()))
    if models:
        write_parquet_atomic(table, out_path)
    if keys_path is not None:
        dedup.key_partition(table, part_index, corpus_index, keys_path)


def drop_duplicates(item: tuple[str, str, str, str, str, int], duplicate_paths: Sequence[str]) -> dict[str, int]:
    """Worker task, last pass over one (part, final part, raw shard, rejects, final rejects, part
    index): write the part without the rows the buckets found to be duplicates, and the rejects
    with those rows added, in line order, with their original bytes (from the raw shard).
    Returns what was dropped (pairs and words). Inputs are only read (a rerun does the same)."""
    from rnnenc.pipeline import dedup
    from rnnenc.pipeline.preprocess import reject_record, write_parquet_atomic

    in_path, out_path, raw_path, rejects_in, rejects_out, part_index = item
    rows = dedup.duplicates_of_part(part_index, duplicate_paths)
    table = pq.read_table(in_path)
    rejects = pq.read_table(rejects_in).to_pylist()
    keep = np.ones(table.num_rows, dtype=bool)
    keep[rows] = False
    gone = table.take(pa.array(rows, pa.int64()))
    if len(rows):
        corpus = gone.column("corpus")[0].as_py()
        raw = pq.read_table(raw_path)
        raw = raw.filter(pc.is_in(raw.column("line"), value_set=gone.column("line").combine_chunks()))
        rejects += [reject_record(corpus, r["line"], dedup.DUPLICATE, r["source"], r["target"], r["raw_source"],
                                  r["raw_target"]) for r in raw.to_pylist()]
    write_parquet_atomic(table.filter(pa.array(keep)), out_path)
    write_parquet_atomic(pa.Table.from_pylist(sorted(rejects, key=lambda r: r["line"]), schema=REJECT_SCHEMA),
                         rejects_out)
    return {"pairs": len(rows), "source_words": int(pc.sum(gone.column("source_tokens")).as_py() or 0),
            "target_words": int(pc.sum(gone.column("target_tokens")).as_py() or 0)}


def _later_passes(executor: Executor, tmp: Path, staging: Path, part_corpus: Sequence[str], corpora: Sequence[str],
                  config: PreprocessConfig, truecase_models: dict[str, str], deduplicate: bool) -> list[dict[str, int]]:
    """After the first pass (staged ``tokenised-NNNNN.parquet``): write or copy the truecase
    models into ``tmp`` and truecase the parts, then deduplicate them; the last pass writes the
    parts. Returns, per part, what deduplication dropped (nothing without it).

    Parameters:
        executor: runs the per-part and per-bucket tasks.
        tmp: the output directory being written.
        staging: the first pass's files (parts, rejects, truecasing counts, raw shards).
        part_corpus: each part's corpus name.
        corpora: the corpus names in input order (the first ordering key of deduplication).
        config: the preprocessing (its ``truecase`` languages).
        truecase_models: language -> a given model (others in ``config.truecase`` are trained).
        deduplicate: drop duplicates (``pipeline.dedup``).
    """
    from rnnenc.pipeline import dedup, truecase

    part = len(part_corpus)
    final = [str(tmp / f"part-{i:05d}.parquet") for i in range(part)]
    tokenised = [str(staging / f"tokenised-{i:05d}.parquet") for i in range(part)]
    models = {}
    for side, lang in (("source", config.source_lang), ("target", config.target_lang)):
        if lang not in config.truecase:
            continue
        model = tmp / truecase.model_name(lang)
        if lang in truecase_models:
            shutil.copyfile(truecase_models[lang], model)
        else:
            truecase.write_model(truecase.merge_casing([f"{staging}/casing-{i:05d}.{side}.json"
                                                        for i in range(part)]), model)
        models[side] = str(model)
    # Each pass writes new files (a rerun task does the same again): the last one writes the parts.
    cased = [str(staging / f"truecased-{i:05d}.parquet") for i in range(part)] if deduplicate else final
    corpus_index = {name: i for i, name in enumerate(corpora)}
    keys = [str(staging / f"keys-{i:05d}.parquet") for i in range(part)]
    executor.map(finish_part, [(tokenised[i], cased[i], keys[i] if deduplicate else None, i,
                                corpus_index[part_corpus[i]]) for i in range(part)],
                 desc="truecasing" if models else "dedup keys", models=models)
    if not deduplicate:
        return [{"pairs": 0} for _ in range(part)]
    # As many buckets as parts: a bucket holds about a part's worth of keys.
    found = [str(staging / f"duplicates-{b:05d}.parquet") for b in range(part)]
    executor.map(dedup.decide_bucket, list(enumerate(found)), desc="dedup", keys_paths=keys, buckets=part)
    return executor.map(drop_duplicates, [(cased[i] if models else tokenised[i], final[i],
                                           str(staging / f"raw-{i:05d}.parquet"),
                                           str(staging / f"rejects-{i:05d}.parquet"),
                                           str(staging / f"rejects-dedup-{i:05d}.parquet"), i) for i in range(part)],
                        desc="dropping duplicates", duplicate_paths=found)


def ingest(executor: Executor, inputs: Sequence[CorpusInput], out_dir: str | Path, config: PreprocessConfig, *,
           rows_per_part: int | None = None, invalid_utf8: InvalidUtf8 = "replace",
           on_error: OnError = "fail", rejects_path: str | Path | None = None, deduplicate: bool = False,
           truecase_models: dict[str, str] | None = None) -> dict[str, Any]:
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
        deduplicate: drop every pair identical to an earlier one (``pipeline.dedup``).
        truecase_models: language -> a Moses truecase model to apply to that side instead of
            training one (the language must be in ``config.truecase``).
    """
    from rnnenc.pipeline import dedup, truecase
    from rnnenc.pipeline.language_id import check_languages

    if not inputs:
        raise UserError("ingest: no input given (use --src/--tgt, --tsv, --parquet or --hf)")
    truecase_models = dict(truecase_models or {})
    if not config.clean and (deduplicate or config.langid):
        raise UserError("ingest: --no-clean keeps every line of a tuning or test set; --dedup and --langid would "
                        "drop some")
    sides = {"source": config.source_lang, "target": config.target_lang}
    if config.truecase and config.lowercase:
        raise UserError("ingest: --truecase and --lowercase exclude each other (a truecaser on lowercased text "
                        "has nothing to learn)")
    for lang in [*config.truecase, *truecase_models]:
        if lang not in sides.values():
            raise UserError(f"ingest: --truecase-model {lang}: not a language of this corpus "
                            f"({config.source_lang}-{config.target_lang})")
    for lang, path in truecase_models.items():
        if lang not in config.truecase:
            raise UserError(f"ingest: a truecase model for {lang}, whose side is not truecased (config.truecase)")
        truecase.load_truecaser(str(path))  # a bad model stops the run before any work
    train_sides = tuple(side for side, lang in sides.items()
                        if lang in config.truecase and lang not in truecase_models)
    if config.langid:
        check_languages((config.source_lang, config.target_lang))
    later_passes = bool(config.truecase) or deduplicate  # the first pass's parts are then staged
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
                    yield (str(raw_path), str(staging / f"tokenised-{part:05d}.parquet") if later_passes
                           else str(tmp / f"part-{part:05d}.parquet"),
                           str(staging / f"rejects-{part:05d}.parquet"), corpus.name,
                           str(staging / f"casing-{part:05d}"))

        results = executor.map(preprocess_item, shards(), desc="ingest", config=config, train_sides=train_sides)
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

        if later_passes:
            gone = _later_passes(executor, tmp, staging, part_corpus, [c.name for c in inputs], config,
                                 truecase_models, deduplicate)
            for corpus, result in zip(part_corpus, gone, strict=True):
                if not result["pairs"]:
                    continue
                dropped[dedup.DUPLICATE] += result["pairs"]
                per_corpus[corpus]["dropped"] += result["pairs"]
                for key, total in (("pairs", "pairs_out"), ("source_words", "source_words"),
                                   ("target_words", "target_words")):
                    totals[total] -= result[key]
                    per_corpus[corpus][total] -= result[key]

        reject_parts = [staging / f"rejects-{'dedup-' if deduplicate else ''}{i:05d}.parquet" for i in range(part)]
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
                                       "on_error": on_error, "dedup": deduplicate,
                                       "truecase_models": {lang: str(path) for lang, path in truecase_models.items()},
                                       "inputs": [{"kind": c.kind, "paths": list(c.paths), "name": c.name,
                                                   "source_column": c.source_column,
                                                   "target_column": c.target_column,
                                                   "hf_config": c.hf_config, "hf_split": c.hf_split}
                                                  for c in inputs]}
    input_paths = [p for c in inputs for p in c.paths if Path(p).exists()] + list(truecase_models.values())
    write_manifest(out_dir, stage="ingest", inputs=input_paths, config=stage_config,
                   counts={k: report[k] for k in ("lines_read", "pairs_written", "pairs_dropped",
                                                  "source_words", "target_words", "parts")})
    return report
