"""Filter a phrase table to the phrases of given input text, as Moses's filter-model-given-input.pl does.

A decoder translating a test set only ever looks up source phrases that occur in it: every
n-gram of an input sentence up to the longest source phrase. Keeping only the rows whose source
phrase is one of those n-grams gives the decoder the same translation options from a table a
fraction of the size, and so makes rescoring (one RNN pass per row) and exporting that much
cheaper. Filtering changes no row: scores, alignments, counts and line numbers are kept.

The inputs are tokenised exactly as the table's source side: a corpus written by ``rnnenc
ingest`` (its ``source`` column), which must record the preprocessing of the corpus the table
was built from, or a text file, preprocessed as that corpus records (taken as it is when the
table's manifests lead to no such record: an imported Moses table).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import SERIAL, Executor

if TYPE_CHECKING:  # kenlm and sacremoses: loaded where text is preprocessed
    from rnnenc.pipeline.ingested import Corpus

DEFAULT_MAX_PHRASE_LENGTH = 7   # Moses's extraction default, and filter-model-given-input.pl's


def input_sentences(path: str | os.PathLike, reference: Corpus | None = None) -> Iterable[str]:
    """The tokenised source sentences of ``path``: a corpus directory (its ``source`` column) or a
    text file (one sentence a line).

    ``reference``: the corpus whose recorded preprocessing the table's source side follows
    (``ingested.recorded_corpus``). A text file is then preprocessed as it records (give it
    untokenised), and an ingested corpus recording another preprocessing is refused; without one,
    text is taken as it is (tokenised as the table is).
    """
    from rnnenc.pipeline.ingested import check_corpus_input, text_preprocessor

    path = Path(path)
    if path.is_dir():
        check_corpus_input(path, reference, f"the phrase table's corpus {reference.path if reference else ''}")
        parts = sorted(path.glob("part-*.parquet"))
        if not parts:
            raise UserError(f"{path}: no part-*.parquet files: not a corpus written by 'rnnenc ingest'")
        for part in parts:
            if "source" not in pq.read_schema(part).names:
                raise UserError(f"{part}: no 'source' column: not a corpus written by 'rnnenc ingest'")
            yield from pq.read_table(part, columns=["source"]).column("source").to_pylist()
    elif path.is_file():
        preprocess = text_preprocessor(reference, reference.source_lang) if reference else str
        with open(path, encoding="utf-8", errors="strict") as handle:
            try:
                for line in handle:
                    yield preprocess(line.rstrip("\r\n"))
            except UnicodeDecodeError as exc:
                raise UserError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    else:
        raise UserError(f"{path}: no such file or directory")


def source_phrases(paths: Sequence[str | os.PathLike], max_length: int = DEFAULT_MAX_PHRASE_LENGTH,
                   reference: Corpus | None = None) -> list[str]:
    """Every n-gram (1 to ``max_length`` tokens) of the sentences of ``paths`` (``input_sentences``,
    preprocessed as ``reference`` records), sorted."""
    if max_length < 1:
        raise UserError("filter: the maximum phrase length must be at least 1")
    phrases: set[str] = set()
    for path in paths:
        for sentence in input_sentences(path, reference):
            tokens = sentence.split()
            for start in range(len(tokens)):
                for end in range(start + 1, min(len(tokens), start + max_length) + 1):
                    phrases.add(" ".join(tokens[start:end]))
    return sorted(phrases)


def write_phrases(phrases: Sequence[str], path: str | os.PathLike) -> str:
    """``phrases`` one a line in ``path`` (where the workers read them: a phrase list can be large,
    and is not sent inside every task)."""
    Path(path).write_text("".join(f"{p}\n" for p in phrases), encoding="utf-8")
    return str(path)


def read_phrases(path: str | os.PathLike) -> pa.Array:
    """The phrase set written by ``write_phrases``, as an Arrow string array."""
    return pa.array(Path(path).read_text(encoding="utf-8").split("\n")[:-1], pa.string())


def keep_rows(table: pa.Table, phrases: pa.Array) -> pa.Table:
    """The rows of ``table`` whose source phrase is in ``phrases``."""
    return table.filter(pc.is_in(table.column("source"), value_set=phrases))


def filter_part(item: tuple[int, str], out_dir: str, phrases_file: str, batch_rows: int = 65_536) -> dict[str, int]:
    """Write the kept rows of one part as ``out_dir/part-<index>.parquet`` (same schema and metadata)."""
    index, part = item
    pf = pq.ParquetFile(part)
    value_set = read_phrases(phrases_file)
    rows = kept = 0
    out = Path(out_dir) / f"part-{index:05d}.parquet"
    with pq.ParquetWriter(out, pf.schema_arrow) as writer:
        for batch in pf.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([batch], schema=pf.schema_arrow)
            rows += table.num_rows
            selected = keep_rows(table, value_set)
            kept += selected.num_rows
            if selected.num_rows:
                writer.write_table(selected)
    return {"rows": rows, "kept": kept}


def filter_table(table_dir: str | os.PathLike, out_dir: str | os.PathLike, inputs: Sequence[str | os.PathLike], *,
                 max_length: int = DEFAULT_MAX_PHRASE_LENGTH, executor: Executor = SERIAL) -> dict[str, Any]:
    """Write the rows of the Parquet phrase table ``table_dir`` whose source phrase occurs in
    ``inputs`` to ``out_dir`` (a phrase table of the same schema, part for part); returns the
    report (rows read, rows kept, distinct input phrases)."""
    from rnnenc.pipeline.artifacts import (
        REPORT_NAME,
        atomic_output_dir,
        read_artifact,
        write_json_atomic,
        write_manifest,
    )
    from rnnenc.pipeline.ingested import recorded_corpus
    from rnnenc.pipeline.phrase_table import list_parts

    artifact = read_artifact(table_dir, expect=("phrase-table",))
    parts = list_parts(artifact.main)
    reference = recorded_corpus(table_dir)
    phrases = source_phrases(inputs, max_length, reference)
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, stage="filter", inputs=[table_dir, *inputs]) as tmp:
        phrases_file = Path(write_phrases(phrases, out_dir.parent / f".{out_dir.name}.phrases-{os.getpid()}"))
        try:
            results = list(executor.map(filter_part, list(enumerate(str(p) for p in parts)), desc="filter",
                                        out_dir=str(tmp), phrases_file=str(phrases_file)))
        finally:
            phrases_file.unlink(missing_ok=True)
        rows, kept = sum(r["rows"] for r in results), sum(r["kept"] for r in results)
        report = {"stage": "filter", "rows": rows, "kept": kept, "dropped": rows - kept,
                  "kept_fraction": round(kept / rows, 6) if rows else 0.0, "input_phrases": len(phrases),
                  "max_phrase_length": max_length, "parts": len(parts),
                  "text_preprocessed_as": reference.path if reference else None}
        write_json_atomic(tmp / REPORT_NAME, report)
    langs = artifact.languages
    write_manifest(out_dir, stage="filter", inputs=[table_dir, *inputs],
                   config={"max_phrase_length": max_length,
                           **({"source_lang": langs[0], "target_lang": langs[1]} if langs else {})},
                   counts={k: report[k] for k in ("rows", "kept", "dropped")})
    return report


__all__ = ["DEFAULT_MAX_PHRASE_LENGTH", "filter_part", "filter_table", "input_sentences", "keep_rows",
           "read_phrases", "source_phrases", "write_phrases"]
