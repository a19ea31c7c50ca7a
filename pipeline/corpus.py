"""Reading parallel corpora in every supported shape, as bounded batches of raw pairs.

Supported inputs: a pair of plain-text files (one sentence a line; .gz/.bz2/.xz/.zst read
transparently), a two-column TSV, Parquet with source/target columns, and a Hugging Face
dataset (a local ``save_to_disk`` directory or a hub name, in the ``{"translation": {...}}``
shape of wmt14 or with one column per language).

Every reader yields ``RawBatch``es of at most ``batch_rows`` pairs, each pair with its 1-based
line (or row) number in its input, so memory is bounded by the batch whatever the corpus size.
Malformed input (invalid UTF-8 under ``invalid_utf8="reject"``, a TSV line without exactly
two columns, a null value) raises ``UserError("file:line: reason")`` under ``on_error="fail"``
and is returned in ``RawBatch.rejects`` under ``on_error="skip"``.

A compressed input that is truncated or corrupt raises ``UserError("file:line: ...")`` under
either policy (``open_binary``): the rest of the file is lost, which is no bad line to skip.

Original bytes: every pair carries, beside its decoded text, the exact bytes it was read from
whenever the text does not give them back (invalid UTF-8 replaced by U+FFFD, a trailing CR
stripped); a reject keeps those bytes, so that the rejects file (``escape_bytes``) can give
the user back exactly what was rejected. The bytes of a side are those of its line without
the final newline (text pairs; a CR before it is kept), its field (TSV), or the UTF-8 of its
value (Parquet, Hugging Face). A TSV line rejected before it could be split into two sides
(invalid UTF-8, another number of columns) has all its bytes on the source side.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from rnnenc.pipeline.errors import UserError, located

InvalidUtf8 = Literal["replace", "reject"]
OnError = Literal["fail", "skip"]
InputKind = Literal["text", "tsv", "parquet", "hf"]

# raw_source/raw_target: the original bytes of a side, null where they are the text's UTF-8.
RAW_SCHEMA = pa.schema([("source", pa.string()), ("target", pa.string()), ("line", pa.int64()),
                        ("raw_source", pa.binary()), ("raw_target", pa.binary())])
# raw_source/raw_target: the original bytes of both sides, always set.
REJECT_SCHEMA = pa.schema([("corpus", pa.string()), ("line", pa.int64()), ("reason", pa.string()),
                           ("source", pa.string()), ("target", pa.string()),
                           ("raw_source", pa.binary()), ("raw_target", pa.binary())])


@dataclass(frozen=True)
class CorpusInput:
    """One parallel corpus to read. ``paths``: (src, tgt) for text, (file,) otherwise."""

    kind: InputKind
    paths: tuple[str, ...]
    name: str
    source_column: str | None = None  # parquet/hf: defaults to the language code, then "source"
    target_column: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"

    def describe(self) -> str:
        return " + ".join(self.paths)


class Reject(NamedTuple):
    """A line (or row) refused by a reader: its number, why, its text and its original bytes."""

    line: int
    reason: str
    source: str
    target: str
    raw_source: bytes
    raw_target: bytes


@dataclass
class RawBatch:
    """Up to ``batch_rows`` raw pairs of one input, plus the rejected ones among them.

    ``raw_source``/``raw_target`` are aligned with ``source``/``target``: a side's original
    bytes, or None where they are its text's UTF-8 (nearly always, and then nothing is copied).
    Left empty, they mean None for every pair.
    """

    source: list[str] = field(default_factory=list)
    target: list[str] = field(default_factory=list)
    line: list[int] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    invalid_utf8_replaced: int = 0
    raw_source: list[bytes | None] = field(default_factory=list)
    raw_target: list[bytes | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.line)

    def table(self) -> pa.Table:
        """The pairs as a ``RAW_SCHEMA`` table (what a worker tokenises)."""
        none = [None] * len(self.line)
        return pa.table({"source": self.source, "target": self.target, "line": self.line,
                         "raw_source": self.raw_source or none, "raw_target": self.raw_target or none},
                        schema=RAW_SCHEMA)


# ---------------------------------------------------------------------------------------------
# Compressed inputs: a broken stream is a UserError naming the file and the line it reached

def _decompression_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [EOFError, zlib.error, lzma.LZMAError, OSError]
    try:
        import zstandard
    except ImportError:  # .zst inputs then fail to open; the other formats still read
        return tuple(errors)
    return (*errors, zstandard.ZstdError)


class _ZstdStream(io.RawIOBase):
    """Decompresses every frame of a .zst file, and raises EOFError on a truncated last frame.

    ``zstandard``'s ``stream_reader`` stops after the first frame (files from ``pzstd`` or
    ``cat a.zst b.zst`` have several) and ends silently where a frame is cut off, so it would
    drop lines without a word; a decompression object per frame knows whether its frame ended.
    """

    def __init__(self, handle: IO[bytes], chunk_bytes: int = 1 << 17):
        import zstandard

        super().__init__()
        self._handle = handle
        self._chunk_bytes = chunk_bytes
        self._dctx = zstandard.ZstdDecompressor()
        self._frame = None          # the current frame's decompression object
        self._pending = memoryview(b"")
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        while not self._pending and not self._done:
            data = self._handle.read(self._chunk_bytes)
            if not data:
                self._done = True
                if self._frame is not None and not self._frame.eof:
                    raise EOFError("compressed file ended inside a frame")
                break
            out = []
            while data:
                if self._frame is None or self._frame.eof:
                    self._frame = self._dctx.decompressobj()
                out.append(self._frame.decompress(data))
                data = self._frame.unused_data if self._frame.eof else b""
            self._pending = memoryview(b"".join(out))
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
        super().close()


class _CheckedStream(io.RawIOBase):
    """A decompressing stream whose decompression errors become a UserError naming the file.

    gzip, bz2, lzma and zstd raise EOFError, BadGzipFile, zlib.error, OSError, LZMAError or
    ZstdError, none of which names the file, the line, or what the user should do. The line
    is counted here from the newlines decompressed so far: that many lines of the file can be
    read, the next one cannot.
    """

    def __init__(self, stream: IO[bytes], path: Path, kind: str):
        super().__init__()
        self._stream = stream
        self._path = path
        self._kind = kind
        self._errors = _decompression_errors()
        # read1: what one step of decompression gives. read(n) would decompress on to n bytes
        # and, meeting the break, raise without handing over (or counting) the lines before it.
        self._read = getattr(stream, "read1", stream.read)
        self.lines = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        try:
            data = self._read(len(buffer))
        except self._errors as exc:
            if isinstance(exc, OSError) and exc.errno is not None:
                raise                  # a failing disk, not a broken stream
            raise corrupt_input_error(self._path, self.lines, f"{self._kind}: {exc}") from None
        n = len(data)
        buffer[:n] = data
        self.lines += data.count(b"\n")
        return n

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
        super().close()


def corrupt_input_error(path: str | Path, complete_lines: int, detail: str) -> UserError:
    """The UserError for a compressed file that cannot be read past line ``complete_lines``."""
    past = f"past line {complete_lines:,}" if complete_lines else "at all"
    return located(path, complete_lines + 1,
                   f"compressed file is truncated or corrupt ({detail}): it cannot be read {past}; "
                   "re-download or recompress it (the rest of the file is lost, which --on-error skip "
                   "cannot skip)")


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a file for reading bytes, decompressing .gz/.bz2/.xz/.zst by suffix.

    A truncated or corrupt compressed file raises ``UserError("file:line: ...")`` when the
    reading reaches the break (see ``_CheckedStream``).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    suffix = path.suffix.lower()
    stream: IO[bytes]
    if suffix == ".gz":
        stream, kind = gzip.open(path, "rb"), "gzip"
    elif suffix == ".bz2":
        stream, kind = bz2.open(path, "rb"), "bz2"
    elif suffix == ".xz":
        stream, kind = lzma.open(path, "rb"), "xz"
    elif suffix == ".zst":
        stream, kind = _ZstdStream(open(path, "rb")), "zstd"  # type: ignore[assignment]
    else:
        return open(path, "rb")
    return io.BufferedReader(_CheckedStream(stream, path, kind), buffer_size=1 << 16)


# ---------------------------------------------------------------------------------------------
# Original bytes in a text file

_UNESCAPE = re.compile(rb"\\(\\|t|r|n|x[0-9a-fA-F]{2})")
_UNESCAPED = {b"\\": b"\\", b"t": b"\t", b"r": b"\r", b"n": b"\n"}


def escape_bytes(raw: bytes) -> str:
    """Bytes as one tab-free line of UTF-8 text, reversibly (``unescape_bytes``).

    A backslash is written ``\\\\``, a byte that is not UTF-8 ``\\xNN``, a tab ``\\t``, a
    carriage return ``\\r``, a newline ``\\n``; everything else as is. Bash's
    ``printf '%b'`` reads it back too.
    """
    text = raw.replace(b"\\", b"\\\\").decode("utf-8", errors="backslashreplace")
    return text.replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def unescape_bytes(text: str) -> bytes:
    """The bytes ``escape_bytes`` wrote as ``text``."""
    return _UNESCAPE.sub(lambda m: _UNESCAPED.get(m.group(1)) or bytes([int(m.group(1)[1:], 16)]),
                         text.encode("utf-8"))


def _line_body(raw: bytes) -> bytes:
    """A line's bytes without its newline (a CR before it stays: it is part of the input)."""
    return raw[:-1] if raw.endswith(b"\n") else raw


def _lossy_raws(chunk: list[bytes]) -> list[bytes | None]:
    """For valid UTF-8 lines: their bytes where stripping ``\\r\\n`` took more than the newline."""
    if b"\r" not in b"".join(chunk):  # the common case, at C speed
        return [None] * len(chunk)
    return [body if (body := _line_body(raw)).endswith(b"\r") else None for raw in chunk]


def _decode(raw: bytes, policy: InvalidUtf8) -> tuple[str | None, bool]:
    """(text, replaced); text is None when the line is rejected for invalid UTF-8."""
    raw = raw.rstrip(b"\r\n")
    try:
        return raw.decode("utf-8"), False
    except UnicodeDecodeError:
        if policy == "replace":
            return raw.decode("utf-8", errors="replace"), True
        return None, False


class _Batcher:
    """Accumulates pairs and rejects; hands out a RawBatch every ``batch_rows`` lines read."""

    def __init__(self, batch_rows: int, on_error: OnError):
        self.batch_rows = batch_rows
        self.on_error = on_error
        self.batch = RawBatch()
        self.lines_in_batch = 0

    def add(self, line: int, source: str, target: str, raw_source: bytes | None = None,
            raw_target: bytes | None = None) -> None:
        self.batch.source.append(source)
        self.batch.target.append(target)
        self.batch.line.append(line)
        self.batch.raw_source.append(raw_source)
        self.batch.raw_target.append(raw_target)
        self.lines_in_batch += 1

    def reject(self, path: str, line: int, reason: str, source: str, target: str, raw_source: bytes,
               raw_target: bytes) -> None:
        if self.on_error == "fail":
            raise located(path, line, f"{reason} (use --on-error skip to write such lines to a rejects file)")
        self.batch.rejects.append(Reject(line, reason, source, target, raw_source, raw_target))
        self.lines_in_batch += 1

    def full(self) -> bool:
        return self.lines_in_batch >= self.batch_rows

    def take(self) -> RawBatch:
        batch, self.batch, self.lines_in_batch = self.batch, RawBatch(), 0
        return batch


def _count_remaining(handle: IO[bytes]) -> int:
    return sum(1 for _ in handle)


def read_text_pair(src_path: str, tgt_path: str, batch_rows: int, invalid_utf8: InvalidUtf8 = "replace",
                   on_error: OnError = "fail") -> Iterator[RawBatch]:
    """Read two line-aligned text files in lockstep; unequal line counts are an error.

    Each batch holds the next ``batch_rows`` lines of both files. Lines are taken and decoded a
    chunk at a time (the reader runs on the client, ahead of every worker); a chunk with invalid
    UTF-8 falls back to line-by-line handling so that the bad line is named.
    """
    with open_binary(src_path) as src, open_binary(tgt_path) as tgt:
        line = 0
        while True:
            src_chunk = list(itertools.islice(src, batch_rows))
            tgt_chunk = list(itertools.islice(tgt, batch_rows))
            if len(src_chunk) != len(tgt_chunk):
                src_count = line + len(src_chunk) + _count_remaining(src)
                tgt_count = line + len(tgt_chunk) + _count_remaining(tgt)
                raise UserError(f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}: "
                                "the two sides of a parallel corpus must have the same number of lines")
            if not src_chunk:
                return
            first = line + 1
            line += len(src_chunk)
            try:
                sources = [raw.rstrip(b"\r\n").decode("utf-8") for raw in src_chunk]
                targets = [raw.rstrip(b"\r\n").decode("utf-8") for raw in tgt_chunk]
            except UnicodeDecodeError:
                yield _decode_pairs_one_by_one(src_path, tgt_path, src_chunk, tgt_chunk, first, invalid_utf8,
                                               on_error)
                continue
            yield RawBatch(sources, targets, list(range(first, line + 1)),
                           raw_source=_lossy_raws(src_chunk), raw_target=_lossy_raws(tgt_chunk))


def _decode_pairs_one_by_one(src_path: str, tgt_path: str, src_chunk: list[bytes], tgt_chunk: list[bytes],
                             first: int, invalid_utf8: InvalidUtf8, on_error: OnError) -> RawBatch:
    batcher = _Batcher(len(src_chunk), on_error)
    for line, (raw_src, raw_tgt) in enumerate(zip(src_chunk, tgt_chunk, strict=True), start=first):
        source, src_fixed = _decode(raw_src, invalid_utf8)
        target, tgt_fixed = _decode(raw_tgt, invalid_utf8)
        src_body, tgt_body = _line_body(raw_src), _line_body(raw_tgt)
        if source is None or target is None:
            bad_path = src_path if source is None else tgt_path
            batcher.reject(bad_path, line, "invalid UTF-8",
                           raw_src.decode("utf-8", "replace").rstrip("\r\n"),
                           raw_tgt.decode("utf-8", "replace").rstrip("\r\n"), src_body, tgt_body)
        else:
            batcher.batch.invalid_utf8_replaced += src_fixed + tgt_fixed
            # Keep the bytes of a side whose text does not give them back (U+FFFD, a stripped CR).
            batcher.add(line, source, target,
                        src_body if src_fixed or src_body.endswith(b"\r") else None,
                        tgt_body if tgt_fixed or tgt_body.endswith(b"\r") else None)
    return batcher.take()


def read_tsv(path: str, batch_rows: int, invalid_utf8: InvalidUtf8 = "replace",
             on_error: OnError = "fail") -> Iterator[RawBatch]:
    """Read ``source<TAB>target`` lines; any other number of columns is malformed."""
    batcher = _Batcher(batch_rows, on_error)
    with open_binary(path) as handle:
        for line, raw in enumerate(handle, start=1):
            text, fixed = _decode(raw, invalid_utf8)
            if text is None:
                batcher.reject(path, line, "invalid UTF-8", raw.decode("utf-8", "replace").rstrip("\r\n"), "",
                               _line_body(raw), b"")
            else:
                columns = text.split("\t")
                if len(columns) != 2:
                    batcher.reject(path, line, f"expected 2 tab-separated columns, found {len(columns)}", text, "",
                                   _line_body(raw), b"")
                elif fixed or raw.endswith((b"\r\n", b"\r")):
                    # The text lost bytes (U+FFFD, a stripped CR): keep each side's. A tab is never
                    # part of an invalid sequence, so the bytes split into the same two columns.
                    batcher.batch.invalid_utf8_replaced += fixed
                    raw_source, raw_target = _line_body(raw).split(b"\t")
                    batcher.add(line, columns[0], columns[1], raw_source, raw_target)
                else:
                    batcher.add(line, columns[0], columns[1])
            if batcher.full():
                yield batcher.take()
    if batcher.lines_in_batch:
        yield batcher.take()


def _pick_column(available: list[str], explicit: str | None, lang: str, fallback: str, where: str) -> str:
    for candidate in ([explicit] if explicit else [lang, fallback]):
        if candidate in available:
            return candidate
    wanted = explicit or f"'{lang}' or '{fallback}'"
    raise UserError(f"{where}: no column {wanted} (columns: {', '.join(available)})")


def _columns_to_batches(rows: Iterator[tuple[list, list]], where: str, batch_rows: int,
                        on_error: OnError) -> Iterator[RawBatch]:
    batcher = _Batcher(batch_rows, on_error)
    row = 0
    for sources, targets in rows:
        for source, target in zip(sources, targets, strict=True):
            row += 1
            if source is None or target is None:
                side = "source" if source is None else "target"
                batcher.reject(where, row, f"row {row}: null {side}", source or "", target or "",
                               (source or "").encode("utf-8"), (target or "").encode("utf-8"))
            else:
                batcher.add(row, source, target)
            if batcher.full():
                yield batcher.take()
    if batcher.lines_in_batch:
        yield batcher.take()


def parquet_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise UserError(f"{path}: directory holds no .parquet files")
        return files
    if not path.is_file():
        raise UserError(f"{path}: no such file or directory")
    return [path]


def read_parquet(path: str, source_lang: str, target_lang: str, batch_rows: int,
                 source_column: str | None = None, target_column: str | None = None,
                 on_error: OnError = "fail") -> Iterator[RawBatch]:
    """Read source/target string columns of a Parquet file or directory, row group by row group."""
    files = parquet_files(path)
    schema_names = pq.read_schema(files[0]).names
    src_col = _pick_column(schema_names, source_column, source_lang, "source", path)
    tgt_col = _pick_column(schema_names, target_column, target_lang, "target", path)

    def rows() -> Iterator[tuple[list, list]]:
        for file in files:
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows, columns=[src_col, tgt_col]):
                yield batch.column(0).to_pylist(), batch.column(1).to_pylist()

    yield from _columns_to_batches(rows(), path, batch_rows, on_error)


def load_hf_dataset(name_or_path: str, config: str | None, split: str):
    """A local ``save_to_disk`` directory, else a hub dataset (streamed, not downloaded whole)."""
    import datasets

    local = Path(name_or_path)
    if local.exists():
        try:
            loaded = datasets.load_from_disk(str(local))
        except FileNotFoundError as exc:
            raise UserError(f"{local}: not a dataset saved with save_to_disk ({exc})") from None
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise UserError(f"{local}: no split '{split}' (splits: {', '.join(loaded)})")
            loaded = loaded[split]
        return loaded
    try:
        return datasets.load_dataset(name_or_path, config, split=split, streaming=True)
    except Exception as exc:  # the hub raises many types; all mean "cannot load this name"
        raise UserError(f"{name_or_path}: cannot load Hugging Face dataset: {exc}") from None


def read_hf(name_or_path: str, source_lang: str, target_lang: str, batch_rows: int,
            config: str | None = None, split: str = "train", source_column: str | None = None,
            target_column: str | None = None, on_error: OnError = "fail") -> Iterator[RawBatch]:
    """Read a Hugging Face dataset: ``translation`` dicts (wmt14 shape) or one column per side."""
    dataset = load_hf_dataset(name_or_path, config, split)
    names = list(dataset.column_names or [])
    if "translation" in names and not (source_column or target_column):
        def rows() -> Iterator[tuple[list, list]]:
            for batch in dataset.iter(batch_size=batch_rows):
                pairs = batch["translation"]
                missing = [lang for lang in (source_lang, target_lang) if pairs and lang not in pairs[0]]
                if missing:
                    raise UserError(f"{name_or_path}: translation entries have no '{missing[0]}' "
                                    f"(languages: {', '.join(pairs[0])})")
                yield [p.get(source_lang) for p in pairs], [p.get(target_lang) for p in pairs]
    else:
        src_col = _pick_column(names, source_column, source_lang, "source", name_or_path)
        tgt_col = _pick_column(names, target_column, target_lang, "target", name_or_path)

        def rows() -> Iterator[tuple[list, list]]:
            for batch in dataset.iter(batch_size=batch_rows):
                yield batch[src_col], batch[tgt_col]

    yield from _columns_to_batches(rows(), name_or_path, batch_rows, on_error)


#: a compressed text's bytes per compressed byte, for estimating its lines before reading it
COMPRESSION_RATIO_GUESS = 3.0


def estimate_pairs(corpus: CorpusInput, sample_bytes: int = 1 << 20) -> int | None:
    """About how many pairs ``corpus`` holds, before reading it: exact for Parquet (its footers),
    from the size and the first MiB's lines for text and TSV (a compressed file's size times
    ``COMPRESSION_RATIO_GUESS``), None for a HF dataset. Sizes the default parts only."""
    if corpus.kind == "parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(corpus.paths[0]))
    if corpus.kind not in ("text", "tsv"):
        return None
    path = corpus.paths[0]
    try:
        size = os.path.getsize(path)
        with open_binary(path) as handle:
            head = handle.read(sample_bytes)
    except (OSError, UserError):
        return None  # the reader reports it, with the file's name
    if not head:
        return 0
    compressed = Path(path).suffix in (".gz", ".bz2", ".xz", ".zst")
    total = size * COMPRESSION_RATIO_GUESS if compressed else size
    return round(total / (len(head) / max(1, head.count(b"\n"))))


def read_batches(corpus: CorpusInput, source_lang: str, target_lang: str, batch_rows: int,
                 invalid_utf8: InvalidUtf8 = "replace", on_error: OnError = "fail") -> Iterator[RawBatch]:
    """Dispatch to the reader for ``corpus.kind``."""
    if corpus.kind == "text":
        return read_text_pair(corpus.paths[0], corpus.paths[1], batch_rows, invalid_utf8, on_error)
    if corpus.kind == "tsv":
        return read_tsv(corpus.paths[0], batch_rows, invalid_utf8, on_error)
    if corpus.kind == "parquet":
        return read_parquet(corpus.paths[0], source_lang, target_lang, batch_rows,
                            corpus.source_column, corpus.target_column, on_error)
    if corpus.kind == "hf":
        return read_hf(corpus.paths[0], source_lang, target_lang, batch_rows, corpus.hf_config,
                       corpus.hf_split, corpus.source_column, corpus.target_column, on_error)
    raise UserError(f"unknown input kind '{corpus.kind}'")
