"""Moses phrase tables as Parquet: the schema, streaming import, score columns, Moses text export.

Parquet phrase table
--------------------
A directory of ``part-00000.parquet``, ``part-00001.parquet``, ... (name order = table order),
each written in row groups of bounded size, with the columns

===============  ======================  ===================================================
``source``       string                  source phrase, Moses-escaped tokens, space-separated
``target``       string                  target phrase
``p_f_given_e``…  float32                one column per dense score, in Moses order
``alignment``    string                  the 4th field ("" when the table has none)
``counts``       string                  the 5th field ("" when the table has none)
``extra``        list<string>            the 6th and later fields, verbatim
``line``         int64                   1-based line number in the imported file
===============  ======================  ===================================================

and the schema metadata

* ``rnnenc.scores``: JSON list ``[{"name": "p_f_given_e", "domain": "prob"}, ...]``: the score
  columns in the order Moses reads them (a table of four scores is named as Moses's standard
  four, ``MOSES_SCORE_NAMES``, unless ``--score-names`` says otherwise; other counts
  ``score0``, ``score1``, ...). ``domain`` ``prob``: written to Moses as is;
  ``log``: kept as a natural log (``rnn_logp``, ``rnn_unk``), written as ``exp(value)`` so
  that Moses's log gives the value back.
* ``rnnenc.fields``: how many `` ||| `` fields the imported lines had (3 to 5 + extras), so
  the export writes the same fields back.

Columns added later (``with_score_columns``) are appended after the imported ones; other
columns (tools' bookkeeping) are ignored by the export.

Import
------
``plan_ranges`` cuts plain-text inputs into byte ranges that start at line starts; a
compressed input cannot be cut (it is not seekable), so ``decompressed_chunks`` decompresses it
once, in the calling process, into plain chunk files of the same size cut at line starts.
``import_items`` hands the ranges and chunks over as tasks as soon as they are known, each with
its exact first line number (the newlines before it, counted here while the earlier tasks run);
``import_range`` parses one range or chunk into one part, streaming, in row groups of
``rows_per_group`` rows. ``import_moses`` strings them together over any ``executor``
(``pipeline.executor``: a Dask map in ``workflows``, a plain loop by default). A single task
(a small input) is handed over as a list, so an embedded cluster runs it in this process.

A line is rejected, never dropped silently, when it is not UTF-8, has fewer than three
fields or another number of fields than the table's first line, an empty source or target
phrase, a score that is not a finite number (``nan``, ``inf``, ``1_0`` and values beyond
float32 are refused), another number of scores than the first line, or a score its ``prob``
domain cannot hold (``score_range``): every imported column is ``prob`` (written to Moses as
is, and Moses takes its log), so a negative score is refused, as the export would refuse it
(0 is accepted: the export writes it as Moses's floor ``exp(-100)``); the first
``prob_scores`` columns (default 4: Moses's phi(f|e), lex(f|e), phi(e|f), lex(e|f)) are
probabilities and must also be at most 1. Under ``on_error="fail"`` the first such line of a
range stops the import with ``file:line: reason``; under ``"skip"`` it is counted by reason
and written to the rejects file (``file \\t line \\t reason \\t detail \\t text``; the
text is the line's exact bytes escaped by ``pipeline.corpus.escape_bytes``: a backslash is
written ``\\\\``, an invalid byte ``\\xNN``, a tab ``\\t``, a carriage return ``\\r``;
``unescape_bytes`` gives the bytes back). A truncated or corrupt compressed input stops the
import with ``file:line`` under either policy: the rest of the file is lost, not one line.

Fields are split at ``|||`` and trimmed of surrounding blanks (space, tab, CR), as Moses reads
them. Each block of about 4 MB of lines is parsed with Arrow kernels, straight from the bytes
read (``_fast_block``); a block holding any line those cannot vouch for is parsed line by line
(``parse_line``), which names the bad line. Memory per task is bounded by the block and the row
group, whatever the table's size.

Export
------
Each part is formatted and sorted in memory in runs of at most ``run_bytes`` bytes (16 MiB: a
worker's memory does not grow with the table), each run written to disk; the runs are then
merged here (``heapq.merge``, or ``LC_ALL=C sort -m`` in one pass with ``sorter="sort"``) into
the gzip output, deflated on all cores (``ParallelGzip``: one gzip member, which any gzip
reader reads; the compressed bytes are not ``GzipFile``'s). The order is ``LC_ALL=C sort``'s:
lines compared as bytes, without the newline. Fields are joined by `` ||| `` (an empty field leaves just
``|||``, as Moses writes trailing empty fields: ``... ||| 2 2 1 ||| |||``).

Score formatting: ``%.6g`` (C printf), what Moses's own scorer writes, so the lines of a table
made by Moses (or by ``pipeline.synthetic``) come back byte for byte; scores written with more
than 6 significant digits come back rounded to 6 (``precision=9`` writes every float32
exactly). A ``prob`` column is written as is and must not be negative or NaN; a ``log`` column
is written as ``exp(value)``. Moses floors log scores at -100 (``LOWEST_SCORE``): a value
whose log is below -100 (``0`` included) is written as ``exp(-100)`` and counted as clipped.
"""

from __future__ import annotations

import contextlib
import gzip
import heapq
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rnnenc.pipeline.corpus import escape_bytes, open_binary
from rnnenc.pipeline.errors import UserError, located
from rnnenc.pipeline.executor import SERIAL, Executor

SCORES_KEY = b"rnnenc.scores"
FIELDS_KEY = b"rnnenc.fields"
DOMAINS = ("prob", "log")
LOWEST_LOG_SCORE = -100.0           # Moses's LOWEST_SCORE: log scores are floored here
LOWEST_PROB = math.exp(LOWEST_LOG_SCORE)
FLOAT32_MAX = float(np.finfo(np.float32).max)
RESERVED_COLUMNS = ("source", "target", "alignment", "counts", "extra", "line")
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
DEFAULT_SPLIT_BYTES = 256 << 20     # the largest default range (memory); smaller tables get smaller ranges
MIN_SPLIT_BYTES = 16 << 20          # the smallest default range
DEFAULT_ROWS_PER_GROUP = 100_000
DEFAULT_RUN_BYTES = 16 << 20        # a run is at most a default part (MIN_SPLIT_BYTES): memory flat in the table's size
DEFAULT_PROB_SCORES = 4             # Moses's phi(f|e), lex(f|e), phi(e|f), lex(e|f)
REJECT_REASONS = ("invalid_utf8", "field_count", "empty_phrase", "non_numeric_score", "score_count",
                  "score_range")

OnError = Literal["fail", "skip"]
Sorter = Literal["auto", "python", "sort"]


# ---------------------------------------------------------------------------------------------
# Schema and score columns

#: Moses's four standard scores, in the order train-model.perl writes them: the inverse phrase
#: translation probability φ(f|e), the inverse lexical weighting lex(f|e), the direct phrase
#: translation probability φ(e|f), the direct lexical weighting lex(e|f) (f: source, e: target)
MOSES_SCORE_NAMES = ("p_f_given_e", "lex_f_given_e", "p_e_given_f", "lex_e_given_f")


def score_name(index: int) -> str:
    """The name of score ``index`` in a table whose scores have no known meaning."""
    return f"score{index}"


def default_score_names(count: int) -> tuple[str, ...]:
    """Moses's standard names for a table of its four scores; ``score<N>`` otherwise."""
    return MOSES_SCORE_NAMES if count == len(MOSES_SCORE_NAMES) else tuple(score_name(i) for i in range(count))


def check_score_names(names: Sequence[str], count: int, where: str = "--score-names") -> tuple[str, ...]:
    """``names`` for ``count`` score columns, refused with one line when they can't be column names."""
    names = tuple(n.strip() for n in names)
    if len(names) != count:
        raise UserError(f"{where}: {len(names)} name(s) for a table with {count} scores a line")
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UserError(f"{where}: {name!r} is not a column name (letters, digits and '_')")
        if name in RESERVED_COLUMNS:
            raise UserError(f"{where}: {name!r} is a reserved column ({', '.join(RESERVED_COLUMNS)})")
    if len(set(names)) != len(names):
        raise UserError(f"{where}: a name is given twice ({', '.join(names)})")
    return names


def phrase_table_schema(scores: Sequence[Mapping[str, str]], fields: int = 5) -> pa.Schema:
    """The schema of a phrase table whose score columns are ``scores`` (name, domain) in order."""
    columns = [pa.field("source", pa.string()), pa.field("target", pa.string())]
    columns += [pa.field(s["name"], pa.float32()) for s in scores]
    columns += [pa.field("alignment", pa.string()), pa.field("counts", pa.string()),
                pa.field("extra", pa.list_(pa.string())), pa.field("line", pa.int64())]
    metadata = {SCORES_KEY: json.dumps([{"name": s["name"], "domain": s["domain"]} for s in scores]).encode(),
                FIELDS_KEY: str(fields).encode()}
    return pa.schema(columns, metadata=metadata)


def read_score_columns(schema: pa.Schema) -> list[dict[str, str]]:
    """The score columns of a phrase table, in Moses order: ``[{"name", "domain"}, ...]``.

    Read from the ``rnnenc.scores`` metadata; a schema without it falls back to its float
    columns named ``score<N>`` (prob domain). Raises UserError when a listed column is missing,
    not a float, or has an unknown domain.
    """
    raw = (schema.metadata or {}).get(SCORES_KEY)
    if raw is None:
        found = sorted((int(m.group(1)), f.name) for f in schema
                       if (m := re.fullmatch(r"score(\d+)", f.name)) and pa.types.is_floating(f.type))
        return [{"name": name, "domain": "prob"} for _, name in found]
    try:
        scores = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"rnnenc.scores metadata is not JSON ({exc})") from None
    if not isinstance(scores, list):
        raise UserError("rnnenc.scores metadata is not a list")
    out = []
    for entry in scores:
        if not isinstance(entry, dict) or "name" not in entry or entry.get("domain") not in DOMAINS:
            raise UserError(f"rnnenc.scores: bad entry {entry!r} (want {{'name': ..., 'domain': 'prob'|'log'}})")
        index = schema.get_field_index(entry["name"])
        if index < 0:
            raise UserError(f"rnnenc.scores lists '{entry['name']}', but the table has no such column")
        if not pa.types.is_floating(schema.field(index).type):
            raise UserError(f"score column '{entry['name']}' is {schema.field(index).type}, not a float")
        # "penalty": a count Moses should penalise (rnn_unk): its initial weight starts negative
        out.append({"name": entry["name"], "domain": entry["domain"]} | ({"penalty": True} if entry.get("penalty") else {}))
    return out


def with_scores_metadata(schema: pa.Schema, scores: Sequence[Mapping[str, str]]) -> pa.Schema:
    """``schema`` with its ``rnnenc.scores`` metadata replaced by ``scores``."""
    metadata = dict(schema.metadata or {})
    metadata[SCORES_KEY] = json.dumps([{"name": s["name"], "domain": s["domain"]}
                                       | ({"penalty": True} if s.get("penalty") else {}) for s in scores]).encode()
    return schema.with_metadata(metadata)


def with_score_columns(table: pa.Table, columns: Mapping[str, tuple[Any, str]]) -> pa.Table:
    """Append score columns ``{name: (values, domain)}`` (float32) after the existing ones.

    ``domain`` is ``"prob"`` or ``"log"`` (see the module docstring). The metadata
    (``rnnenc.scores``) lists the new columns after the old ones, in the mapping's order.
    """
    scores = read_score_columns(table.schema)
    for name, (values, domain) in columns.items():
        if domain not in DOMAINS:
            raise ValueError(f"score column '{name}': domain must be 'prob' or 'log', not {domain!r}")
        if name in table.column_names or name in RESERVED_COLUMNS:
            raise ValueError(f"score column '{name}': the table already has a column of that name")
        array = pa.array(values, type=pa.float32()) if not isinstance(values, (pa.Array, pa.ChunkedArray)) \
            else values.cast(pa.float32())
        if len(array) != table.num_rows:
            raise ValueError(f"score column '{name}': {len(array)} values for {table.num_rows} rows")
        table = table.append_column(pa.field(name, pa.float32()), array)
        scores.append({"name": name, "domain": domain})
    return table.replace_schema_metadata(with_scores_metadata(table.schema, scores).metadata)


def table_fields(schema: pa.Schema) -> int:
    """How many ``|||`` fields the table's lines have before the extras (3, 4 or 5)."""
    raw = (schema.metadata or {}).get(FIELDS_KEY)
    if raw is not None:
        return max(3, min(5, int(raw)))
    return 3 + ("alignment" in schema.names) + ("alignment" in schema.names and "counts" in schema.names)


def list_parts(path: str | os.PathLike) -> list[Path]:
    """The ``part-*.parquet`` files of a Parquet phrase table (or corpus), in order."""
    path = Path(path)
    if path.is_file() and path.suffix == ".parquet":
        return [path]
    if path.is_file():
        raise UserError(f"{path}: a file, not a Parquet table (a directory of part-*.parquet files)")
    if not path.is_dir():
        raise UserError(f"{path}: no such directory")
    parts = sorted(path.glob("part-*.parquet"))
    if not parts:
        raise UserError(f"{path}: no part-*.parquet files")
    return parts


# ---------------------------------------------------------------------------------------------
# Parsing Moses lines

class BadLine(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TableSpec:
    """What every line of the table must agree on (taken from its first valid line).

    ``prob_scores``: how many leading score columns are probabilities, in [0, 1]; every score
    must be at least 0 (``check_score_range``).
    """

    num_scores: int
    num_fields: int
    path: str = ""
    line: int = 1
    prob_scores: int = DEFAULT_PROB_SCORES
    score_names: tuple[str, ...] = ()   # the score columns' names (default: default_score_names)

    def names(self) -> tuple[str, ...]:
        return self.score_names or default_score_names(self.num_scores)

    def origin(self) -> str:
        return f"line {self.line}" + (f" of {Path(self.path).name}" if self.path else "")


def split_fields(text: str) -> list[str]:
    return [field.strip(" \t\r") for field in text.split("|||")]


def _decode(raw: bytes) -> str:
    raw = raw[:-1] if raw.endswith(b"\n") else raw
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine("invalid_utf8", f"invalid UTF-8 at byte {exc.start + 1}") from None


def parse_scores(field: str) -> list[float]:
    values = []
    for token in field.split():
        try:
            value = float(token)
        except ValueError:
            raise BadLine("non_numeric_score", f"non-numeric score '{token}'") from None
        if "_" in token or not math.isfinite(value) or abs(value) > FLOAT32_MAX:
            raise BadLine("non_numeric_score", f"score '{token}' is not a finite float32 number")
        values.append(value)
    return values


def check_score_range(tokens: Sequence[str], values: Sequence[float], prob_scores: int,
                      names: Sequence[str] = ()) -> None:
    """BadLine("score_range") for the first score its ``prob`` column cannot hold.

    The rule is the export's (``format_scores``): a ``prob`` value is written to Moses as is and
    Moses takes its log, so it must not be negative; 0 is accepted (written as Moses's floor).
    The first ``prob_scores`` columns are probabilities and must not exceed 1 either.
    """
    for index, (token, value) in enumerate(zip(tokens, values, strict=True)):
        name = names[index] if index < len(names) else score_name(index)
        if index < prob_scores and not 0 <= value <= 1:
            raise BadLine("score_range", f"{name} (prob) is {token}, not a probability in [0, 1]")
        if value < 0:
            raise BadLine("score_range", f"{name} (prob) is {token}: negative, but Moses takes "
                                         "the log of a prob score, so it must be at least 0")


def parse_line(raw: bytes, spec: TableSpec | None) -> tuple[str, str, list[float], list[str]]:
    """(source, target, scores, further fields) of one line, or BadLine(reason, detail).

    Without a ``spec`` (detecting the table's shape) the scores' range is not checked.
    """
    fields = split_fields(_decode(raw))
    if len(fields) < 3:
        raise BadLine("field_count", f"{len(fields)} field(s), expected at least 3 "
                                     "(source ||| target ||| scores)")
    if spec is not None and len(fields) != spec.num_fields:
        raise BadLine("field_count", f"{len(fields)} fields where {spec.origin()} has {spec.num_fields}")
    if not fields[0] or not fields[1]:
        raise BadLine("empty_phrase", "empty source phrase" if not fields[0] else "empty target phrase")
    scores = parse_scores(fields[2])
    if not scores:
        raise BadLine("score_count", "no scores")
    if spec is not None and len(scores) != spec.num_scores:
        raise BadLine("score_count", f"{len(scores)} scores where {spec.origin()} has {spec.num_scores}")
    if spec is not None:
        check_score_range(fields[2].split(), scores, spec.prob_scores, spec.names())
    return fields[0], fields[1], scores, fields[3:]


def open_input(path: str | os.PathLike):
    """``path`` for reading bytes; a truncated or corrupt compressed file raises UserError(file:line)."""
    return open_binary(path)


def is_compressed(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in COMPRESSED_SUFFIXES


def detect_spec(path: str | os.PathLike, num_scores: int | None = None, max_lines: int = 10_000) -> TableSpec:
    """The table's field and score counts, from the first valid line of ``path``."""
    first_error = None
    with open_input(path) as handle:
        for number, raw in enumerate(handle, start=1):
            if number > max_lines:
                break
            try:
                _s, _t, scores, rest = parse_line(raw, None)
            except BadLine as bad:
                first_error = first_error or (number, bad.detail)
                continue
            if num_scores is not None and len(scores) != num_scores:
                raise located(path, number, f"{len(scores)} scores, but --num-scores says {num_scores}")
            return TableSpec(num_scores=len(scores), num_fields=3 + len(rest), path=str(path), line=number)
    if first_error:
        raise located(path, first_error[0], f"{first_error[1]}; and no valid phrase-table line among the "
                                            f"first {max_lines:,} lines")
    raise UserError(f"{path}: empty phrase table")


# ---------------------------------------------------------------------------------------------
# Import: ranges, line numbers, one part per range

@dataclass(frozen=True)
class Range:
    """Bytes [start, end) of ``path`` (end None: to the end), starting at a line start.

    ``name``: the input file the lines are from, when ``path`` is a chunk of it decompressed into
    the staging directory (``decompressed_chunks``): errors, rejects and the report name it, and
    the chunk is removed once imported.
    """

    path: str
    start: int = 0
    end: int | None = None
    first_line: int = 1
    index: int = 0
    name: str = ""

    @property
    def label(self) -> str:
        """The file named in errors and rejects."""
        return self.name or self.path


def default_split_bytes(paths: Sequence[str | os.PathLike]) -> int:
    """Bytes per range when none is given: the plain-text inputs in
    ``pipeline.partitioning.TARGET_TASKS`` ranges of 16 MiB to 256 MiB (a 101 MB table: 7 ranges)."""
    from rnnenc.pipeline.partitioning import default_size

    plain = sum(os.path.getsize(p) for p in paths if Path(p).is_file() and not is_compressed(p))
    return default_size(plain, floor=MIN_SPLIT_BYTES, cap=DEFAULT_SPLIT_BYTES)


def plan_ranges(paths: Sequence[str | os.PathLike], split_bytes: int | None = DEFAULT_SPLIT_BYTES) -> list[Range]:
    """Byte ranges of about ``split_bytes`` (None: ``default_split_bytes``) aligned to line starts;
    one range per compressed file."""
    if split_bytes is None:
        split_bytes = default_split_bytes(paths)
    if split_bytes < 1:
        raise UserError("split size must be at least 1 byte")
    ranges: list[Range] = []
    for path in paths:
        path = str(path)
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
        if is_compressed(path):
            ranges.append(Range(path, 0, None))
            continue
        size = os.path.getsize(path)
        starts = [0]
        with open(path, "rb") as handle:
            offset = split_bytes
            while offset < size:
                handle.seek(offset - 1)
                handle.readline()           # to the first line start at or after offset
                start = handle.tell()
                if start >= size:
                    break
                if start > starts[-1]:
                    starts.append(start)
                offset = max(start, offset) + split_bytes
        bounds = starts + [size]
        ranges += [Range(path, a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return ranges


def count_newlines(rng: Range, block: int = 1 << 24) -> int:
    """Newline bytes in the range (every range but a file's last ends with one)."""
    count = 0
    with open(rng.path, "rb") as handle:
        handle.seek(rng.start)
        left = None if rng.end is None else rng.end - rng.start
        while left is None or left > 0:
            data = handle.read(block if left is None else min(block, left))
            if not data:
                break
            count += data.count(b"\n")
            if left is not None:
                left -= len(data)
    return count


def number_ranges(ranges: Sequence[Range], newlines: Sequence[int]) -> list[Range]:
    """Give each range its first line number and its part index."""
    out, line = [], 1
    for index, (rng, count) in enumerate(zip(ranges, newlines, strict=True)):
        if rng.start == 0:              # a file's first range
            line = 1
        out.append(Range(rng.path, rng.start, rng.end, line, index))
        line += count
    return out


def _range_blocks(rng: Range, block_bytes: int = 1 << 22) -> Iterator[bytes]:
    """The range's lines in blocks of about ``block_bytes`` bytes: whole lines, each with its
    newline (but a file's last line when it has none)."""
    whole = rng.end is None and rng.start == 0
    with (open_input(rng.path) if whole else open(rng.path, "rb")) as handle:
        if not whole:
            handle.seek(rng.start)
        left = None if rng.end is None else rng.end - rng.start
        carry = b""
        while True:
            size = block_bytes if left is None else min(block_bytes, left)
            data = handle.read(size) if size > 0 else b""
            if left is not None:
                left -= len(data)
            if not data:
                if carry:
                    yield carry
                return
            data = carry + data
            cut = data.rfind(b"\n")
            if cut < 0:
                carry = data
                continue
            carry = data[cut + 1:]
            yield data[:cut + 1]


def block_lines(block: bytes) -> list[bytes]:
    """A block's lines, without their newlines."""
    return (block[:-1] if block.endswith(b"\n") else block).split(b"\n")


def _numpy_array(values: np.ndarray) -> pa.Array:
    """A 1-d numeric numpy array as an Arrow array without a copy (``pa.array`` would import
    pandas, half a second of a worker's first task)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _numpy_view(array: pa.Array) -> np.ndarray:
    """The values of a numeric Arrow array without nulls, as numpy (``to_numpy`` imports pandas)."""
    dtype = array.type.to_pandas_dtype()
    return np.frombuffer(array.buffers()[1], dtype=dtype)[array.offset:array.offset + len(array)]


def _lines_array(block: bytes) -> pa.Array:
    """A block's lines as one binary array over the block's own bytes (no copy), each line
    with its newline."""
    ends = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + 1
    if not block.endswith(b"\n"):
        ends = np.append(ends, len(block))
    if len(block) > np.iinfo(np.int32).max:
        raise UserError("phrase-table: a block of lines over 2 GiB (a line that long?)")
    offsets = np.zeros(len(ends) + 1, dtype=np.int32)
    offsets[1:] = ends
    return pa.Array.from_buffers(pa.binary(), len(ends), [None, pa.py_buffer(offsets), pa.py_buffer(block)])


def decompressed_chunks(path: str, staging: Path, split_bytes: int, index: int = 0,
                        broken: list[UserError] | None = None) -> Iterator[tuple[Range, bool]]:
    """Decompress ``path`` once, here, into chunk files of about ``split_bytes`` bytes cut at
    line starts (``staging/chunk-<index>.txt``, index counting up); yield each as a Range named
    ``path`` with its exact first line, with whether another chunk follows (known by reading
    on: a chunk is handed over once the next one has begun, or the file has ended).

    A file that cannot be decompressed to the end (truncated, corrupt) ends with a chunk of its
    complete lines before the break, and the UserError (``file:line``) goes to ``broken``
    (raised when ``broken`` is None).
    """
    line = 1
    done: Range | None = None          # the last chunk closed, yielded once we know if one follows
    out = None
    chunk = staging
    size = complete = newlines = 0

    def close() -> Range:
        assert out is not None
        out.truncate(complete if failed else size)
        out.close()
        return Range(str(chunk), 0, complete if failed else size, line, index, name=str(path))

    failed = False
    with open_input(path) as handle:
        while True:
            try:
                data = handle.read1(1 << 22)   # read1: a break loses one step's bytes, not 4 MB
            except UserError as exc:
                if broken is None:
                    raise
                broken.append(exc)
                failed, data = True, b""
            if not data and (out is not None or done is not None):
                break
            while True:
                if out is None:
                    if done is not None:
                        yield done, True
                        line += newlines
                        index += 1
                        done = None
                    chunk = staging / f"chunk-{index:05d}.txt"
                    out = open(chunk, "wb")
                    size = complete = newlines = 0
                take = len(data)
                if size + take >= split_bytes:
                    cut = data.find(b"\n", max(0, split_bytes - size - 1))
                    take = cut + 1 if cut >= 0 else take
                piece = data[:take]
                out.write(piece)
                ends = piece.count(b"\n")
                if ends:
                    newlines += ends
                    complete = size + piece.rfind(b"\n") + 1
                size += take
                data = data[take:]
                if size >= split_bytes and piece.endswith(b"\n"):
                    done, out = close(), None
                if not data:
                    break
            if failed:
                break
    if out is not None:
        last = close()
        if done is not None:
            yield done, True
        yield last, False
    elif done is not None:
        yield done, False


def import_items(ranges: Sequence[Range], staging: Path, split_bytes: int,
                 broken: list[UserError] | None = None) -> Iterator[tuple[Range, bool]]:
    """The import's tasks, in order, as (range, whether another follows): plain ranges numbered
    here as they come (a range's first line is the newlines before it, counted while the
    earlier ranges are being imported); a compressed file decompressed here into chunks
    (``decompressed_chunks``), each a task as soon as it is written. A broken compressed file
    ends the tasks; its UserError goes to ``broken``."""
    index = line = 0
    for k, rng in enumerate(ranges):
        last = k == len(ranges) - 1
        if rng.end is None and is_compressed(rng.path):
            for chunk, more in decompressed_chunks(rng.path, staging, split_bytes, index, broken):
                index += 1
                yield chunk, more or not (last or broken)
            if broken:
                return
            continue
        line = 1 if rng.start == 0 else line
        yield Range(rng.path, rng.start, rng.end, line, index), not last
        index += 1
        if not last:
            line += count_newlines(rng)


def _escape_text(raw: bytes) -> str:
    """The raw line for the rejects file: backslashes doubled, invalid bytes as \\xNN, tabs \\t, CR \\r."""
    return escape_bytes(raw.rstrip(b"\n"))


class _GroupWriter:
    """Writes tables to one Parquet file in row groups of exactly ``rows_per_group`` rows (the last fewer)."""

    def __init__(self, path: Path, schema: pa.Schema, rows_per_group: int):
        self.path, self.schema, self.rows_per_group = path, schema, rows_per_group
        self.writer: pq.ParquetWriter | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_group:
            self._emit(self.rows_per_group)

    def _emit(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        head, rest = table.slice(0, n), table.slice(n)
        if self.writer is None:
            # `line` counts up: delta-encoded, not dictionary-encoded (a third faster to write, and smaller)
            self.writer = pq.ParquetWriter(self.path, self.schema, compression="zstd",
                                           use_dictionary=[n for n in self.schema.names if n != "line"],
                                           column_encoding={"line": "DELTA_BINARY_PACKED"})
        self.writer.write_table(head, row_group_size=n)
        self.rows += head.num_rows
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def close(self) -> None:
        if self.pending_rows:
            self._emit(self.pending_rows)
        if self.writer is not None:
            self.writer.close()


def _rows_table(schema: pa.Schema, spec: TableSpec, rows: list[tuple[int, str, str, list[float], list[str]]]
                ) -> pa.Table:
    n = spec.num_scores
    scores = np.asarray([v for r in rows for v in r[3]], dtype=np.float64).reshape(-1, n).astype(np.float32)
    arrays = [pa.array([r[1] for r in rows], pa.string()), pa.array([r[2] for r in rows], pa.string())]
    arrays += [pa.array(scores[:, i]) for i in range(n)]
    arrays += [pa.array([r[4][0] if r[4] else "" for r in rows], pa.string()),
               pa.array([r[4][1] if len(r[4]) > 1 else "" for r in rows], pa.string()),
               pa.array([r[4][2:] for r in rows], pa.list_(pa.string())),
               pa.array([r[0] for r in rows], pa.int64())]
    return pa.Table.from_arrays(arrays, schema=schema)


def _fast_block(lines: bytes | list[bytes], first_line: int, schema: pa.Schema, spec: TableSpec) -> pa.Table | None:
    """The block (``_range_blocks``' bytes, or a list of lines) parsed with Arrow kernels, or
    None when any line needs a closer look.

    Gives the table ``parse_line`` would give; anything unusual (a bad line, ``nan``, a score
    Arrow cannot cast, an odd field count) returns None and the caller falls back to it. The
    lines keep their newline: it can only end a line's last field, and the fields are trimmed
    of it with the blanks (where ``parse_line`` strips it first).
    """
    import pyarrow.compute as pc

    block = b"".join(line + b"\n" for line in lines) if isinstance(lines, list) else lines
    if not block:
        return None
    try:
        text = _lines_array(block).cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None                                    # invalid UTF-8 somewhere
    n, k = len(text), spec.num_fields
    parts = pc.split_pattern(text, "|||")
    counts = pc.min_max(pc.list_value_length(parts))
    if counts["min"].as_py() != k or counts["max"].as_py() != k:
        return None
    # Every line has k fields: field i of line r is item r * k + i of the flat list. (No
    # pc.list_element: a Python scalar argument makes pyarrow import pandas in each worker.)
    flat = pc.utf8_trim(pc.list_flatten(parts), " \t\r\n")
    fields = [flat.take(_numpy_array(np.arange(i, n * k, k, dtype=np.int64))) for i in range(k)]
    for phrase in fields[:2]:
        if not _numpy_view(pc.utf8_length(phrase)).all():
            return None                                # an empty phrase
    if pc.any(pc.match_substring(fields[2], "_")).as_py():
        return None
    tokens = pc.utf8_split_whitespace(fields[2])
    counts = pc.min_max(pc.list_value_length(tokens))
    if counts["min"].as_py() != spec.num_scores or counts["max"].as_py() != spec.num_scores:
        return None
    try:
        values = _numpy_view(pc.list_flatten(tokens).cast(pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if not np.isfinite(values).all() or (np.abs(values) > FLOAT32_MAX).any():
        return None
    grid = values.reshape(n, spec.num_scores)
    if (grid < 0).any() or (grid[:, :spec.prob_scores] > 1).any():
        return None                                    # check_score_range names the line
    scores = grid.astype(np.float32).T
    empty = _numpy_array(np.zeros(n + 1, dtype=np.int32))
    empty = pa.Array.from_buffers(pa.string(), n, [None, empty.buffers()[1], pa.py_buffer(b"")])
    arrays = [fields[0], fields[1], *(_numpy_array(row) for row in scores),
              fields[3] if spec.num_fields > 3 else empty, fields[4] if spec.num_fields > 4 else empty]
    if k > 5:
        # the 6th and later fields of each line, in line order: a list over the flat fields
        order = (np.arange(n)[:, None] * k + np.arange(5, k)[None, :]).ravel()
        extra = pa.ListArray.from_arrays(_numpy_array(np.arange(0, n * (k - 5) + 1, k - 5, dtype=np.int32)),
                                         flat.take(_numpy_array(order)))
    else:
        extra = pa.ListArray.from_arrays(_numpy_array(np.zeros(n + 1, dtype=np.int32)), empty.slice(0, 0))
    lines_column = _numpy_array(np.arange(first_line, first_line + n, dtype=np.int64))
    return pa.Table.from_arrays([*arrays, extra, lines_column], schema=schema)


def import_range(rng: Range, out_dir: str, spec: TableSpec, on_error: OnError = "fail",
                 rows_per_group: int = DEFAULT_ROWS_PER_GROUP, block_bytes: int = 1 << 22) -> dict[str, Any]:
    """Parse one range into ``out_dir/part-<index>.parquet`` (+ ``rejects-<index>.tsv``).

    Streams blocks of about ``block_bytes``: each is parsed by Arrow kernels, or line by line
    (``parse_line``) when it holds a line the fast path cannot vouch for. Returns counts:
    lines, rows, rejected by reason, and the part's path (None if no row). A decompressed
    chunk (``rng.name`` set) is removed once its part is written.
    """
    out = Path(out_dir)
    part = out / f"part-{rng.index:05d}.parquet"
    rejects_path = out / f"rejects-{rng.index:05d}.tsv"
    schema = phrase_table_schema([{"name": name, "domain": "prob"} for name in spec.names()], spec.num_fields)
    writer = _GroupWriter(part, schema, rows_per_group)
    rejected: Counter = Counter()
    number = rng.first_line
    rejects = None
    fast_blocks = slow_blocks = 0
    try:
        for block in _range_blocks(rng, block_bytes):
            table = _fast_block(block, number, schema, spec)
            if table is not None:
                fast_blocks += 1
                writer.write(table)
                number += table.num_rows
                continue
            slow_blocks += 1
            rows = []
            for raw in block_lines(block):
                try:
                    rows.append((number, *parse_line(raw, spec)))
                except BadLine as bad:
                    if on_error == "fail":
                        raise located(rng.label, number, f"{bad.detail} (use --on-error skip to write such "
                                                         "lines to a rejects file)") from None
                    rejected[bad.reason] += 1
                    if rejects is None:
                        rejects = open(rejects_path, "w", encoding="utf-8", newline="\n")
                    rejects.write(f"{rng.label}\t{number}\t{bad.reason}\t{bad.detail}\t{_escape_text(raw)}\n")
                number += 1
            if rows:
                writer.write(_rows_table(schema, spec, rows))
        writer.close()
    except BaseException:
        with contextlib.suppress(Exception):
            writer.close()
        part.unlink(missing_ok=True)
        raise
    finally:
        if rejects is not None:
            rejects.close()
    if rng.name:
        Path(rng.path).unlink(missing_ok=True)
    return {"index": rng.index, "path": rng.label, "first_line": rng.first_line, "lines": number - rng.first_line,
            "rows": writer.rows, "rejected": dict(rejected), "blocks": [fast_blocks, slow_blocks],
            "part": str(part) if writer.rows else None,
            "rejects": str(rejects_path) if rejects is not None else None}


def import_moses(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 source_lang: str | None = None, target_lang: str | None = None,
                 on_error: OnError = "fail", rejects_path: str | os.PathLike | None = None,
                 split_bytes: int | None = None, rows_per_group: int = DEFAULT_ROWS_PER_GROUP,
                 num_scores: int | None = None, executor: Executor = SERIAL,
                 prob_scores: int = DEFAULT_PROB_SCORES, score_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Import Moses phrase tables (text or compressed) into the Parquet directory ``out_dir``.

    Atomic (a temporary directory renamed at the end), ``_report.json`` inside and
    ``_manifest.json`` last. ``executor`` runs the per-range work (default:
    here, in order). ``prob_scores``: how many leading score columns must be probabilities in
    [0, 1] (every score must be at least 0 whatever it is). ``score_names``: the score columns'
    names (default: Moses's standard four, ``MOSES_SCORE_NAMES``, for a table of four scores,
    else ``score<N>``). Returns the report.
    """
    from rnnenc.pipeline.artifacts import (
        REJECTS_NAME,
        REPORT_NAME,
        atomic_output_dir,
        write_json_atomic,
        write_manifest,
    )

    if not inputs:
        raise UserError("phrase-table: no input file given")
    if rows_per_group < 1:
        raise UserError("phrase-table: rows per row group must be at least 1")
    if prob_scores < 0:
        raise UserError("phrase-table: the number of probability scores cannot be negative")
    inputs = [str(p) for p in inputs]
    out_dir = Path(out_dir)
    started = time.perf_counter()
    spec = replace(detect_spec(inputs[0], num_scores), prob_scores=prob_scores)
    if score_names is not None:
        spec = replace(spec, score_names=check_score_names(score_names, spec.num_scores))
    if split_bytes is None:
        split_bytes = default_split_bytes(inputs)
    ranges = plan_ranges(inputs, split_bytes)
    with atomic_output_dir(out_dir, stage="phrase-table", inputs=inputs) as tmp:
        staging = tmp / ".staging"
        staging.mkdir()
        broken: list[UserError] = []
        pending = import_items(ranges, staging, split_bytes, broken)
        first, more = next(pending)
        # One task is a list (an embedded cluster runs it here, and starts none); more are
        # handed over one by one, as they are numbered (or decompressed).
        items = itertools.chain([first], (rng for rng, _ in pending)) if more else [first]
        results = executor.map(import_range, items, desc="import", out_dir=str(staging), spec=spec,
                               on_error=on_error, rows_per_group=rows_per_group)
        if broken:
            raise broken[0]
        rejected: Counter = Counter()
        files: dict[str, Counter] = {}
        parts = 0
        for result in results:
            rejected.update(result["rejected"])
            per_file = files.setdefault(result["path"], Counter())
            per_file["lines"] += result["lines"]
            per_file["rows"] += result["rows"]
            per_file["rejected"] += sum(result["rejected"].values())
            if result["part"]:
                os.replace(result["part"], tmp / f"part-{parts:05d}.parquet")
                parts += 1
        rows = sum(r["rows"] for r in results)
        lines = sum(r["lines"] for r in results)
        n_rejected = sum(rejected.values())
        if rows == 0:
            raise UserError(f"phrase-table: no valid line in {', '.join(inputs)} ({dict(rejected)})")
        final_rejects = None
        if n_rejected:
            final_rejects = Path(rejects_path) if rejects_path else tmp / REJECTS_NAME
            final_rejects.parent.mkdir(parents=True, exist_ok=True)
            _concat_rejects([r["rejects"] for r in results if r["rejects"]], final_rejects)
        shutil.rmtree(staging)
        seconds = time.perf_counter() - started
        report = {
            "stage": "phrase-table",
            "inputs": inputs,
            "lines_read": lines,
            "rows_written": rows,
            "rejected": n_rejected,
            "rejected_by_reason": dict(sorted(rejected.items())),
            "rejects_file": (str(out_dir / REJECTS_NAME) if final_rejects and not rejects_path
                             else (str(rejects_path) if final_rejects else None)),
            "files": {path: dict(c) for path, c in files.items()},
            "num_scores": spec.num_scores,
            "score_names": list(spec.names()),
            "num_fields": spec.num_fields,
            "prob_scores": min(prob_scores, spec.num_scores),
            "ranges": len(results),
            "parts": parts,
            "rows_per_group": rows_per_group,
            "seconds": round(seconds, 3),
            "lines_per_second": round(lines / seconds, 1) if seconds else None,
        }
        assert lines == rows + n_rejected, report
        write_json_atomic(tmp / REPORT_NAME, report)
    write_manifest(out_dir, stage="phrase-table", inputs=inputs,
                   config={"source_lang": source_lang, "target_lang": target_lang, "on_error": on_error,
                           "split_bytes": split_bytes, "rows_per_group": rows_per_group,
                           "num_scores": spec.num_scores,
            "score_names": list(spec.names()), "num_fields": spec.num_fields,
                           "prob_scores": prob_scores},
                   counts={k: report[k] for k in ("lines_read", "rows_written", "rejected", "parts")})
    return report


def _concat_rejects(paths: Iterable[str], out: Path) -> None:
    tmp = out.with_name(out.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", newline="\n") as handle:
        handle.write("file\tline\treason\tdetail\ttext\n")
        for path in paths:
            with open(path, encoding="utf-8") as part:
                shutil.copyfileobj(part, handle)
    os.replace(tmp, out)


# ---------------------------------------------------------------------------------------------
# Export: Moses text lines, sorted out of core

def join_fields(fields: Sequence[str]) -> str:
    """Moses fields joined by `` ||| `` (an empty field leaves ``|||`` without padding)."""
    out = fields[0]
    for field in fields[1:]:
        out += f" ||| {field}" if field else " |||"
    return out


def format_scores(values: np.ndarray, domain: str, precision: int = 6) -> tuple[pa.Array, int, np.ndarray]:
    """What Moses should read for one score column: (strings, clipped count, bad rows mask).

    Each distinct value is formatted once (``%.<precision>g``): phrase probabilities are
    ratios of small counts and repeat a lot.
    """
    values = np.asarray(values, dtype=np.float64)
    if domain == "log":
        bad = np.isnan(values) | (values > math.log(FLOAT32_MAX))
        clip = values < LOWEST_LOG_SCORE
        moses = np.exp(np.where(clip | bad, LOWEST_LOG_SCORE, values))
    else:
        bad = np.isnan(values) | (values < 0) | (values > FLOAT32_MAX)
        clip = ~bad & (values < LOWEST_PROB)
        moses = np.where(clip | bad, LOWEST_PROB, values)
    unique, inverse = np.unique(moses, return_inverse=True)
    spec = f".{precision}g"
    strings = pa.array([format(v, spec) for v in unique.tolist()], pa.string())
    return strings.take(pa.array(inverse.ravel())), int(clip.sum()), bad


def _with_separator(column: pa.Array) -> pa.Array:
    """`` ||| field``, or `` |||`` for an empty field."""
    import pyarrow.compute as pc

    column = pc.fill_null(column, "")
    joined = pc.binary_join_element_wise(" |||", column, " ")
    return pc.if_else(pc.equal(column, ""), pa.scalar(" |||"), joined)


def format_lines(table: pa.Table, scores: Sequence[Mapping[str, str]], fields: int, *,
                 precision: int = 6, where: str = "") -> tuple[pa.Array, dict[str, int]]:
    """Moses lines (a string array) for the rows of ``table``; clipped values per score column.

    A NaN anywhere, a negative ``prob`` value, or a ``log`` value whose exp overflows float
    raises UserError naming the row's original line and the column.
    """
    import pyarrow.compute as pc

    n = table.num_rows
    clipped = {}
    texts = []
    for score in scores:
        values = table.column(score["name"]).to_numpy(zero_copy_only=False)
        strings, n_clipped, bad = format_scores(values, score["domain"], precision)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            line = table.column("line")[row].as_py() if "line" in table.column_names else row + 1
            value = float(values[row])
            why = ("NaN" if math.isnan(value) else
                   "negative: Moses would take its log (NaN) and drop every phrase"
                   if score["domain"] == "prob" and value < 0 else "too large for a float32 score")
            raise UserError(f"{where}: row of line {line}: score column '{score['name']}' "
                            f"({score['domain']}) is {value!r}, {why}")
        clipped[score["name"]] = n_clipped
        texts.append(strings)
    empty = pa.array([""] * n, pa.string())

    def column(name: str) -> pa.Array:
        if name not in table.column_names:
            return empty
        values = table.column(name)
        return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values

    pieces = [pc.fill_null(column("source"), ""), pa.scalar(" ||| "), pc.fill_null(column("target"), ""),
              pa.scalar(" ||| "), pc.binary_join_element_wise(*texts, " ")]
    pieces += [_with_separator(column("alignment"))] if fields >= 4 else []
    pieces += [_with_separator(column("counts"))] if fields >= 5 else []
    extra = column("extra") if "extra" in table.column_names else None
    python_extras = False
    if extra is not None and n:
        lengths = pc.list_value_length(pc.fill_null(extra, pa.scalar([], pa.list_(pa.string())))).to_numpy()
        if lengths.min() == lengths.max():
            pieces += [_with_separator(pc.list_element(extra, i)) for i in range(int(lengths[0]))]
        else:
            python_extras = True
    lines = pc.binary_join_element_wise(*pieces, "")
    if python_extras:
        # Rows with different numbers of extra fields: append them one by one.
        extras = extra.to_pylist()
        lines = pa.array([line + "".join(" |||" + (f" {f}" if f else "") for f in (more or []))
                          for line, more in zip(lines.to_pylist(), extras, strict=True)], pa.string())
    return lines, clipped


def _write_run(chunks: list[pa.Array], path: Path, slice_rows: int = 65_536) -> None:
    """Sort lines by bytes (``LC_ALL=C sort``'s order) and write them, one a line; ``chunks`` is
    emptied (its arrays freed once joined), and the sorted lines are gathered and written a
    slice at a time, so a run costs about its size in memory, not four times that."""
    import pyarrow.compute as pc

    lines = pa.concat_arrays(chunks).cast(pa.binary())
    chunks.clear()
    order = pc.sort_indices(lines)
    with open(path, "wb") as handle:
        for k in range(0, len(lines), slice_rows):
            piece = pc.binary_join_element_wise(lines.take(order.slice(k, slice_rows)), pa.scalar(b"\n"), b"")
            offsets = np.frombuffer(piece.buffers()[1], dtype=np.int32)
            start, end = int(offsets[piece.offset]), int(offsets[piece.offset + len(piece)])
            handle.write(memoryview(piece.buffers()[2])[start:end])


def select_scores(scores: Sequence[Mapping[str, str]], names: Sequence[str] | None,
                  where: str = "") -> list[dict[str, str]]:
    """The score columns named ``names`` (all when None), in the table's order."""
    if names is None:
        return [dict(s) for s in scores]
    known = [s["name"] for s in scores]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UserError(f"{where}: no score column {', '.join(repr(n) for n in unknown)} "
                        f"(the table has: {', '.join(known)})")
    return [dict(s) for s in scores if s["name"] in names]


def sorted_runs(part: str, run_dir: str, index: int, *, precision: int = 6,
                run_bytes: int = DEFAULT_RUN_BYTES, batch_rows: int = 65_536,
                score_names: Sequence[str] | None = None, phrases_file: str | None = None) -> dict[str, Any]:
    """Format one part as Moses lines, in sorted runs of at most about ``run_bytes`` bytes on disk:
    the score columns ``score_names`` (default all), the rows whose source phrase is in the
    phrase list ``phrases_file`` (``pipeline.phrase_filter.write_phrases``; default all)."""
    from rnnenc.pipeline.phrase_filter import keep_rows, read_phrases

    pf = pq.ParquetFile(part)
    scores = select_scores(read_score_columns(pf.schema_arrow), score_names, part)
    value_set = read_phrases(phrases_file) if phrases_file is not None else None
    fields = table_fields(pf.schema_arrow)
    wanted = [c for c in ("source", "target", *(s["name"] for s in scores), "alignment", "counts", "extra",
                          "line") if c in pf.schema_arrow.names]
    runs: list[str] = []
    pending: list[pa.Array] = []
    size = rows = 0
    clipped: Counter = Counter()

    def flush() -> None:
        runs.append(str(Path(run_dir) / f"run-{index:05d}-{len(runs):04d}.txt"))
        _write_run(pending, Path(runs[-1]))

    for batch in pf.iter_batches(batch_size=batch_rows, columns=wanted):
        table = pa.Table.from_batches([batch])
        if value_set is not None:
            table = keep_rows(table, value_set)
            if not table.num_rows:
                continue
        lines, n_clipped = format_lines(table, scores, fields, precision=precision, where=part)
        clipped.update(n_clipped)
        rows += len(lines)
        # Sort in slices, so a run stays near run_bytes whatever the batch size.
        step = max(1, len(lines) * max(1, run_bytes) // max(1, lines.nbytes)) if lines.nbytes else len(lines)
        for k in range(0, len(lines), step):
            piece = lines.slice(k, step)
            pending.append(piece)
            size += piece.nbytes
            if size >= run_bytes:
                flush()
                pending, size = [], 0
    if pending:
        flush()
    return {"runs": runs, "rows": rows, "clipped": dict(clipped),
            "scores": scores, "fields": fields}


def _read_run(path: str) -> Iterator[bytes]:
    with open(path, "rb", buffering=1 << 20) as handle:
        for line in handle:
            yield line[:-1]


class ParallelGzip:
    """A write-only gzip stream (one member, as ``gzip.GzipFile(filename="", mtime=0)`` writes)
    whose deflate runs on ``threads`` threads, in blocks of ``block_bytes``, pigz's way.

    Each block is deflated on its own, primed with the 32 KiB before it, and ends with a sync
    flush (so blocks concatenate into one deflate stream); a final empty block ends the stream,
    then the CRC-32 and the size. zlib releases the GIL while it deflates. At most
    ``2 * threads`` blocks are in flight. Readers see the same bytes as from ``GzipFile``; the
    compressed bytes differ (a little larger: one flush marker a block), and depend on the text,
    the level and ``block_bytes`` alone (blocks are cut at exact offsets), not on the threads or
    on how the text is handed to ``write``.
    """

    def __init__(self, raw, compresslevel: int = 6, *, threads: int | None = None, block_bytes: int = 1 << 22):
        from concurrent.futures import ThreadPoolExecutor

        self.raw, self.level, self.block_bytes = raw, compresslevel, block_bytes
        threads = threads or min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                 else os.cpu_count() or 1)
        self.pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="gzip")
        self.depth = 2 * max(1, threads)
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.in_flight: list = []
        self.tail = b""
        self.crc = 0
        self.size = 0
        xfl = b"\002" if compresslevel == 9 else b"\004" if compresslevel == 1 else b"\000"
        raw.write(b"\037\213\010\000\000\000\000\000" + xfl + b"\377")

    def _deflate(self, data: bytes, zdict: bytes) -> bytes:
        import zlib

        kwargs = {"zdict": zdict} if zdict else {}
        deflate = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, 0, **kwargs)
        return deflate.compress(data) + deflate.flush(zlib.Z_SYNC_FLUSH)

    def _submit(self, data: bytes) -> None:
        import zlib

        self.crc = zlib.crc32(data, self.crc)
        self.size += len(data)
        self.in_flight.append(self.pool.submit(self._deflate, data, self.tail))
        self.tail = data[-(1 << 15):]
        while len(self.in_flight) > self.depth:
            self.raw.write(self.in_flight.pop(0).result())

    def write(self, data: bytes) -> int:
        if data:
            self.pending.append(bytes(data))
            self.pending_bytes += len(data)
            # blocks of exactly block_bytes: where a block ends depends on the text alone, not on
            # how the writes arrive (pipe reads vary), so the compressed bytes are reproducible
            while self.pending_bytes >= self.block_bytes:
                joined = b"".join(self.pending)
                rest = joined[self.block_bytes:]
                self.pending, self.pending_bytes = ([rest] if rest else []), len(rest)
                self._submit(joined[:self.block_bytes])
        return len(data)

    def close(self) -> None:
        import struct
        import zlib

        if self.pool is None:
            return
        try:
            if self.pending:
                self._submit(b"".join(self.pending))
                self.pending, self.pending_bytes = [], 0
            for future in self.in_flight:
                self.raw.write(future.result())
            self.in_flight = []
            end = zlib.compressobj(self.level, zlib.DEFLATED, -zlib.MAX_WBITS)
            self.raw.write(end.flush(zlib.Z_FINISH) + struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))
        finally:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def __enter__(self) -> ParallelGzip:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        elif self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None


def _sort_batch_size(runs: int) -> int:
    """How many runs 'sort -m' merges at once: all (one pass), as far as open files allow."""
    import resource

    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limit = 1024 if soft == resource.RLIM_INFINITY else soft
    return max(2, min(runs, limit - 16))


def merge_runs(runs: Sequence[str], out: Path, *, sorter: Sorter = "auto", fan_in: int = 64,
               tmp_dir: Path | None = None, compresslevel: int = 6) -> int:
    """Merge sorted runs into the gzip file ``out`` in C byte order; return the line count."""
    use_sort = sorter == "sort" or (sorter == "auto" and shutil.which("sort") is not None)
    if sorter == "sort" and shutil.which("sort") is None:
        raise UserError("export: --sorter sort, but there is no 'sort' command")
    tmp_dir = tmp_dir or out.parent
    runs = list(runs)
    level = 0
    # Bound the open files: merge groups of fan_in runs into longer runs first ('sort -m' does
    # that itself, in one pass for up to --batch-size runs).
    while len(runs) > fan_in and not use_sort:
        merged = []
        for k in range(0, len(runs), fan_in):
            group = runs[k:k + fan_in]
            path = tmp_dir / f"merge-{level:02d}-{k // fan_in:05d}.txt"
            with open(path, "wb") as handle:
                for line in heapq.merge(*(_read_run(r) for r in group)):
                    handle.write(line + b"\n")
            for r in group:
                os.unlink(r)
            merged.append(str(path))
        runs, level = merged, level + 1
    count = 0
    with open(out, "wb") as raw, ParallelGzip(raw, compresslevel) as gz:
        if len(runs) == 1:
            with open(runs[0], "rb") as handle:
                for block in iter(partial(handle.read, 1 << 22), b""):
                    gz.write(block)
                    count += block.count(b"\n")
        elif use_sort and runs:
            env = dict(os.environ, LC_ALL="C")
            with subprocess.Popen(["sort", "-m", "-T", str(tmp_dir), f"--batch-size={_sort_batch_size(len(runs))}",
                                   "--", *runs], stdout=subprocess.PIPE, env=env) as proc:
                assert proc.stdout is not None
                for block in iter(partial(proc.stdout.read, 1 << 20), b""):
                    gz.write(block)
                    count += block.count(b"\n")
            if proc.returncode:
                raise UserError(f"export: 'sort -m' failed with status {proc.returncode}")
        else:
            buffer: list[bytes] = []
            for line in heapq.merge(*(_read_run(r) for r in runs)):
                buffer.append(line)
                if len(buffer) >= 65_536:
                    gz.write(b"\n".join(buffer) + b"\n")
                    count += len(buffer)
                    buffer = []
            if buffer:
                gz.write(b"\n".join(buffer) + b"\n")
                count += len(buffer)
    return count


@dataclass(frozen=True)
class ExportConfig:
    precision: int = 6
    run_bytes: int = DEFAULT_RUN_BYTES
    sorter: Sorter = "auto"
    compresslevel: int = 6
    #: the score columns written, in the table's order (None: all)
    scores: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_moses(table_dir: str | os.PathLike, out_path: str | os.PathLike, config: ExportConfig = ExportConfig(),
                 *, executor: Executor = SERIAL, tmp_dir: str | os.PathLike | None = None,
                 phrases: Sequence[str] | None = None) -> dict[str, Any]:
    """Write the Parquet phrase table ``table_dir`` as a sorted Moses text table (gzip) at ``out_path``.

    Returns counts: rows, score columns, clipped values per column. ``tmp_dir`` holds the sorted
    runs (default: beside ``out_path``; the workers must see it). ``config.scores`` chooses the
    score columns; ``phrases`` (``pipeline.phrase_filter.source_phrases``) keeps only the rows
    whose source phrase it holds.
    """
    if not 1 <= config.precision <= 17:
        raise UserError("export: precision must be between 1 and 17 significant digits")
    parts = list_parts(table_dir)
    first = pq.read_schema(parts[0])
    all_scores = read_score_columns(first)
    if not all_scores:
        raise UserError(f"{table_dir}: no score columns (rnnenc.scores metadata or score<N> columns)")
    for part in parts[1:]:
        if read_score_columns(pq.read_schema(part)) != all_scores:
            raise UserError(f"{part}: its score columns differ from those of {parts[0].name}")
    scores = select_scores(all_scores, config.scores, str(table_dir))
    if not scores:
        raise UserError(f"{table_dir}: no score column chosen to export")
    out_path = Path(out_path)
    run_dir = Path(tmp_dir) if tmp_dir else out_path.parent / f".runs-{out_path.name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        items = list(enumerate(str(p) for p in parts))
        phrases_file = None
        if phrases is not None:
            from rnnenc.pipeline.phrase_filter import write_phrases

            phrases_file = write_phrases(phrases, run_dir / "phrases.txt")
        started = time.perf_counter()
        results = executor.map(_sorted_runs_item, items, desc="format and sort", run_dir=str(run_dir),
                               precision=config.precision, run_bytes=config.run_bytes,
                               score_names=config.scores, phrases_file=phrases_file)
        runs = [r for result in results for r in result["runs"]]
        merging = time.perf_counter()
        rows = merge_runs(runs, out_path, sorter=config.sorter, tmp_dir=run_dir,
                          compresslevel=config.compresslevel)
        seconds = {"format_and_sort": round(merging - started, 3), "merge": round(time.perf_counter() - merging, 3)}
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    clipped: Counter = Counter()
    for result in results:
        clipped.update(result["clipped"])
    expected = sum(r["rows"] for r in results)
    if rows != expected:
        raise UserError(f"export: wrote {rows} lines for {expected} rows (a field contains a newline?)")
    return {"rows": rows, "scores": scores, "fields": table_fields(first), "parts": len(parts),
            "runs": len(runs), "clipped": {s["name"]: clipped.get(s["name"], 0) for s in scores},
            "clipped_total": sum(clipped.values()), "seconds": seconds}


def _sorted_runs_item(item: tuple[int, str], run_dir: str, precision: int, run_bytes: int,
                      score_names: Sequence[str] | None = None, phrases_file: str | None = None) -> dict[str, Any]:
    index, part = item
    return sorted_runs(part, run_dir, index, precision=precision, run_bytes=run_bytes, score_names=score_names,
                       phrases_file=phrases_file)
