"""Corpus ingestion: every reader, every bad-input case, atomic outputs, a real 2-worker cluster."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from rnnenc.pipeline.artifacts import REJECTS_NAME, REPORT_NAME, is_complete, read_manifest
from rnnenc.pipeline.corpus import CorpusInput
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import SERIAL
from rnnenc.pipeline.ingest import ingest
from rnnenc.pipeline.preprocess import CompiledPunctNormalizer, PreprocessConfig, tokenize
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows.cluster import DaskExecutor

CONFIG = PreprocessConfig(source_lang="en", target_lang="fr")
EN = ["Hello, world!", "It's a |test| <b>.", "", "one two three", "short", "x " * 100, "a b c d e f g h i j"]
FR = ["Bonjour, monde !", "C'est un |test|.", "vide", "un deux trois", "court", "y", "a"]
# line 3: empty source; line 6: 100 tokens (too long); line 7: ratio 10 > 9


def read_corpus(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def write_pair(tmp: Path, en: list[str], fr: list[str], opener=open, suffix: str = "") -> tuple[str, str]:
    paths = []
    for lang, lines in (("en", en), ("fr", fr)):
        path = tmp / f"corpus.{lang}{suffix}"
        with opener(path, "wb") as handle:
            handle.write("".join(line + "\n" for line in lines).encode())
        paths.append(str(path))
    return paths[0], paths[1]


def zst_open(path, mode):
    return zstandard.open(path, mode)


@pytest.mark.parametrize("opener,suffix", [(open, ""), (gzip.open, ".gz"), (bz2.open, ".bz2"),
                                           (lzma.open, ".xz"), (zst_open, ".zst")])
def test_text_pair_every_compression(tmp_path, dask_client, opener, suffix):
    src, tgt = write_pair(tmp_path, EN, FR, opener, suffix)
    report = ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("text", (src, tgt), "c")], tmp_path / "out", CONFIG,
                    rows_per_part=3)
    table = read_corpus(tmp_path / "out")
    assert table.column("line").to_pylist() == [1, 2, 4, 5]
    assert table.column("source").to_pylist()[:2] == ["Hello , world !", "It &apos;s a &#124; test &#124; &lt; b &gt; ."]
    assert table.column("target").to_pylist()[0] == "Bonjour , monde !"
    assert table.column("source_tokens").to_pylist() == [4, 10, 3, 1]
    assert report["dropped_by_reason"] == {"empty side": 1, "too long": 1, "length ratio": 1}
    assert report["lines_read"] == 7 and report["pairs_written"] == 4 and report["parts"] == 3
    manifest = read_manifest(tmp_path / "out")
    assert manifest["counts"]["pairs_written"] == 4
    assert {Path(r["path"]).name for r in manifest["inputs"]} == {Path(src).name, Path(tgt).name}
    assert all(len(r["hash"]) == 32 for r in manifest["inputs"])


def test_tsv_parquet_and_hf_readers_agree(tmp_path, dask_client):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("".join(f"{e}\t{f}\n" for e, f in zip(EN, FR, strict=True)))
    pq.write_table(pa.table({"en": EN, "fr": FR}), tmp_path / "c.parquet")
    import datasets

    datasets.Dataset.from_dict({"translation": [{"en": e, "fr": f} for e, f in zip(EN, FR, strict=True)]}) \
        .save_to_disk(str(tmp_path / "hf_translation"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"source": EN, "target": FR})}) \
        .save_to_disk(str(tmp_path / "hf_columns"))
    src, tgt = write_pair(tmp_path, EN, FR)
    inputs = {
        "text": CorpusInput("text", (src, tgt), "c"),
        "tsv": CorpusInput("tsv", (str(tsv),), "c"),
        "parquet": CorpusInput("parquet", (str(tmp_path / "c.parquet"),), "c"),
        "hf_translation": CorpusInput("hf", (str(tmp_path / "hf_translation"),), "c"),
        "hf_columns": CorpusInput("hf", (str(tmp_path / "hf_columns"),), "c"),
    }
    tables = {}
    for kind, corpus in inputs.items():
        # Not tmp_path / kind: the HF inputs are directories of those names, and an output may
        # not replace its own input.
        ingest(DaskExecutor(dask_client, quiet=True), [corpus], tmp_path / f"out-{kind}", CONFIG, rows_per_part=4)
        tables[kind] = read_corpus(tmp_path / f"out-{kind}")
    for kind, table in tables.items():
        assert table.equals(tables["text"]), kind


@pytest.mark.parametrize("options", [{}, {"truecase": ("en", "fr")}, {"lowercase": True, "dedup": True}])
def test_original_text_is_kept_beside_the_tokens(tmp_path, options):
    """source_raw/target_raw hold each side as it was read, through truecasing and deduplication."""
    en = ["It's Tom & Jerry.", "A <b> | c.", "It's Tom & Jerry.", "Fine\tthanks."]
    fr = ["Il y a des tâches en cours d'exécution.", "Un <b> | c.", "Il y a des tâches en cours d'exécution.", "Bien."]
    src, tgt = write_pair(tmp_path, en, fr)
    dedup = options.pop("dedup", False)
    ingest(SERIAL, [CorpusInput("text", (src, tgt), "c")], tmp_path / "out",
           PreprocessConfig("en", "fr", **options), rows_per_part=2, deduplicate=dedup)
    table = read_corpus(tmp_path / "out")
    lines = table.column("line").to_pylist()
    assert lines == ([1, 2, 4] if dedup else [1, 2, 3, 4])
    original = {side: Path(path).read_bytes().split(b"\n") for side, path in (("source", src), ("target", tgt))}
    for side in ("source", "target"):
        assert [text.encode() for text in table.column(f"{side}_raw").to_pylist()] == \
            [original[side][n - 1] for n in lines]
    assert "&apos;" in table.column("target").to_pylist()[0]


def test_several_corpora_are_kept_apart(tmp_path, dask_client):
    src, tgt = write_pair(tmp_path, EN, FR)
    tsv = tmp_path / "news.tsv"
    tsv.write_text("Good morning .\tBonjour .\n")
    report = ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("text", (src, tgt), "europarl"), CorpusInput("tsv", (str(tsv),), "news")],
                    tmp_path / "out", CONFIG, rows_per_part=100)
    table = read_corpus(tmp_path / "out")
    assert table.column("corpus").to_pylist() == ["europarl"] * 4 + ["news"]
    assert table.column("line").to_pylist()[-1] == 1
    assert report["corpora"]["news"]["pairs_out"] == 1 and report["parts"] == 2


def test_unequal_line_counts_name_both_files_and_write_nothing(tmp_path, dask_client):
    src, tgt = write_pair(tmp_path, EN, FR[:5])
    with pytest.raises(UserError, match=r"corpus\.en has 7 lines but .*corpus\.fr has 5"):
        ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("text", (src, tgt), "c")], tmp_path / "out", CONFIG)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out.tmp-*"))


def test_invalid_utf8_replaced_or_rejected(tmp_path, dask_client):
    (tmp_path / "c.en").write_bytes(b"good line\nbad \xff line\nlast\n")
    (tmp_path / "c.fr").write_bytes(b"bonne\nmauvaise\nfin\n")
    corpus = [CorpusInput("text", (str(tmp_path / "c.en"), str(tmp_path / "c.fr")), "c")]
    report = ingest(DaskExecutor(dask_client, quiet=True), corpus, tmp_path / "replaced", CONFIG)
    assert report["invalid_utf8_replaced"] == 1 and report["pairs_written"] == 3
    assert "\ufffd" in read_corpus(tmp_path / "replaced").column("source").to_pylist()[1]

    with pytest.raises(UserError, match=r"c\.en:2: invalid UTF-8"):
        ingest(DaskExecutor(dask_client, quiet=True), corpus, tmp_path / "failed", CONFIG, invalid_utf8="reject")
    assert not (tmp_path / "failed").exists()

    report = ingest(DaskExecutor(dask_client, quiet=True), corpus, tmp_path / "skipped", CONFIG, invalid_utf8="reject", on_error="skip")
    assert report["dropped_by_reason"] == {"invalid UTF-8": 1} and report["pairs_written"] == 2
    with gzip.open(tmp_path / "skipped" / REJECTS_NAME, "rt") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle]
    assert rows[1][:3] == ["c", "2", "invalid UTF-8"]


def test_malformed_tsv_and_null_parquet(tmp_path, dask_client):
    tsv = tmp_path / "c.tsv"
    tsv.write_text("a\tb\nonly one column\nc\td\te\nf\tg\n")
    with pytest.raises(UserError, match=r"c\.tsv:2: expected 2 tab-separated columns, found 1"):
        ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("tsv", (str(tsv),), "c")], tmp_path / "o1", CONFIG)
    rejects = tmp_path / "elsewhere" / REJECTS_NAME
    report = ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("tsv", (str(tsv),), "c")], tmp_path / "o2", CONFIG,
                    on_error="skip", rejects_path=rejects)
    assert report["dropped_by_reason"] == {"expected 2 tab-separated columns, found 1": 1,
                                           "expected 2 tab-separated columns, found 3": 1}
    with gzip.open(rejects, "rt") as handle:
        assert len(handle.readlines()) == 3

    pq.write_table(pa.table({"source": ["a", None], "target": ["b", "c"]}), tmp_path / "n.parquet")
    with pytest.raises(UserError, match=r"n\.parquet:2: row 2: null source"):
        ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("parquet", (str(tmp_path / "n.parquet"),), "n")], tmp_path / "o3",
               CONFIG)
    with pytest.raises(UserError, match="no column 'en' or 'source'"):
        pq.write_table(pa.table({"x": ["a"], "y": ["b"]}), tmp_path / "x.parquet")
        ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("parquet", (str(tmp_path / "x.parquet"),), "x")], tmp_path / "o4",
               CONFIG)


def test_cleaning_options_and_lowercase():
    assert tokenize("Hello, World «quoted»", "en", lowercase=True) == 'hello , world &quot; quoted &quot;'
    from rnnenc.pipeline.preprocess import clean_reason

    config = PreprocessConfig("en", "fr", max_tokens=5, max_ratio=2)
    assert clean_reason(6, 6, config) == "too long"
    assert clean_reason(3, 1, config) == "length ratio"
    assert clean_reason(2, 1, config) is None
    assert clean_reason(0, 1, config) == "empty side"


@pytest.mark.determinism
def test_output_independent_of_workers_and_failed_rerun_keeps_old_output(tmp_path, dask_client):
    from distributed import Client, LocalCluster

    en = [f"sentence number {i} , with words ." for i in range(50)]
    fr = [f"phrase numéro {i} , avec des mots ." for i in range(50)]
    src, tgt = write_pair(tmp_path, en, fr)
    corpus = [CorpusInput("text", (src, tgt), "c")]
    ingest(DaskExecutor(dask_client, quiet=True), corpus, tmp_path / "two", CONFIG, rows_per_part=7)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as one:
        ingest(DaskExecutor(one, quiet=True), corpus, tmp_path / "one", CONFIG, rows_per_part=7)
    for a, b in zip(sorted((tmp_path / "one").glob("part-*")), sorted((tmp_path / "two").glob("part-*")),
                    strict=True):
        assert a.read_bytes() == b.read_bytes()
    # A failing rerun into the same directory leaves the completed output as it was.
    before = read_manifest(tmp_path / "two")
    (tmp_path / "short.fr").write_text("x\n")
    with pytest.raises(UserError):
        ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("text", (src, str(tmp_path / "short.fr")), "c")], tmp_path / "two",
               CONFIG)
    assert read_manifest(tmp_path / "two") == before


def test_killed_ingest_leaves_no_trusted_output(tmp_path):
    en = [f"line {i} with a few words ." for i in range(20000)]
    src, tgt = write_pair(tmp_path, en, en)
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "rnnenc.workflows.cli", "ingest", "--src", src, "--tgt", tgt,
                             "--src-lang", "en", "--tgt-lang", "fr", "--out", str(out), "--workers", "1",
                             "--rows-per-part", "500", "--quiet"], start_new_session=True)
    deadline = time.time() + 60
    while not list(tmp_path.glob("out.tmp-*/part-00001.parquet")):
        assert time.time() < deadline and proc.poll() is None, "ingest did not start writing parts"
        time.sleep(0.05)
    import os

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_complete(out)
    assert not out.exists()


def test_cli_user_error_is_one_line_without_traceback(tmp_path):
    src, tgt = write_pair(tmp_path, EN, FR[:2])
    cmd = [sys.executable, "-m", "rnnenc.workflows.cli", "ingest", "--src", src, "--tgt", tgt, "--src-lang", "en",
           "--tgt-lang", "fr", "--out", str(tmp_path / "out"), "--workers", "1", "--quiet"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == [f"rnnenc: error: {src} has 7 lines but {tgt} has 2: the two sides of a parallel "
                      "corpus must have the same number of lines"]
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_cli_ingest_through_two_worker_cluster(tmp_path, dask_address):
    src, tgt = write_pair(tmp_path, EN, FR)
    result = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "ingest", "--src", src, "--tgt", tgt,
                             "--src-lang", "en", "--tgt-lang", "fr", "--out", str(tmp_path / "out"),
                             "--scheduler", dask_address, "--rows-per-part", "2", "--on-error", "skip"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "ingested 4 of 7 pairs into 4 part(s)" in result.stdout
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report["rejects_written"] == 3
    assert read_corpus(tmp_path / "out").num_rows == 4


def test_compiled_normaliser_matches_sacremoses(tmp_path):
    """The normaliser compiled once gives sacremoses' output on every character its table names."""
    demo = generate_demo(tmp_path / "demo", DemoConfig(pool_size=2_000, in_domain_size=100, dev_size=100,
                                                        phrase_table_pairs=100))
    lines = demo.pool_src.read_text(encoding="utf-8").splitlines() + demo.pool_tgt.read_text(
        encoding="utf-8").splitlines()
    specials = "\r()%:;`'„“”–—´‘’‚…«»\xa0ºC?!,\"."
    lines += [f"a{x}b {x} 1{x}2 ({x}) x{y}y  {x}{y} " for x in specials for y in specials]
    lines += ["nº\xa05 à 20\xa0ºC, 3\xa0cm\xa0? «\xa0oui\xa0» l’été ''x'' ´´y´´ 5 % (a) , ok", "   ", ""]
    for lang in ("en", "fr", "de"):
        plain, compiled = MosesPunctNormalizer(lang=lang), CompiledPunctNormalizer(lang=lang)
        assert [compiled.normalize(line) for line in lines] == [plain.normalize(line) for line in lines]
        assert [tokenize(line, lang) for line in lines[-50:]] == [
            " ".join(MosesTokenizer(lang=lang).tokenize(plain.normalize(line), escape=True,
                                                        return_str=True).split()) for line in lines[-50:]]


# ---------------------------------------------------------------------------------------------
# Hostile input: broken compressed files, original bytes of rejected lines

def _compress(suffix: str, data: bytes) -> bytes:
    return {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": zstandard.ZstdCompressor().compress}[suffix](data)


def _assert_no_output(tmp_path: Path, out: Path) -> None:
    assert not out.exists() and not is_complete(out)
    assert not list(tmp_path.glob(f"{out.name}.tmp-*"))


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_truncated_compressed_corpus_is_a_user_error_naming_file_and_line(tmp_path, dask_client, suffix,
                                                                          on_error):
    en = [f"sentence {i} with a few words ." for i in range(3000)]
    src, tgt = write_pair(tmp_path, en, en, opener=open, suffix="")
    whole = _compress(suffix, Path(src).read_bytes())
    broken = tmp_path / f"corpus.en{suffix}"
    broken.write_bytes(whole[:-30])           # the end of the stream (and its marker) cut off
    corpus = [CorpusInput("text", (str(broken), tgt), "c")]
    with pytest.raises(UserError) as caught:
        ingest(DaskExecutor(dask_client, quiet=True), corpus, tmp_path / "out", CONFIG, rows_per_part=500, on_error=on_error)
    message = str(caught.value)
    assert message.startswith(f"{broken}:") and "\n" not in message
    assert "compressed file is truncated or corrupt" in message and "--on-error skip cannot skip" in message
    line = int(message.split(":")[1])
    assert 1 <= line <= len(en) + 1              # xz: the data may all be there, its index not
    _assert_no_output(tmp_path, tmp_path / "out")

    tsv = tmp_path / f"c.tsv{suffix}"
    tsv.write_bytes(_compress(suffix, "".join(f"{e}\t{e}\n" for e in en).encode())[:-30])
    with pytest.raises(UserError, match=rf"^{tsv}:\d+: compressed file is truncated or corrupt"):
        ingest(DaskExecutor(dask_client, quiet=True), [CorpusInput("tsv", (str(tsv),), "t")], tmp_path / "out", CONFIG,
               rows_per_part=500, on_error=on_error)
    _assert_no_output(tmp_path, tmp_path / "out")


def test_corrupt_gzip_names_the_line_it_reached(tmp_path):
    from rnnenc.pipeline.corpus import read_tsv

    data = "".join(f"line {i} of the corpus, with words\tligne {i}\n" for i in range(20000)).encode()
    whole = gzip.compress(data)
    cases = {
        "truncated": whole[: len(whole) // 2],
        "crc": whole[:-8] + bytes(8),                  # the trailer's CRC and length zeroed
        "deflate": whole[:200] + bytes(64) + whole[264:],  # the compressed data itself damaged
        "not-gzip": data[:1000],
    }
    for name, payload in cases.items():
        path = tmp_path / f"{name}.tsv.gz"
        path.write_bytes(payload)
        with pytest.raises(UserError) as caught:
            for _ in read_tsv(str(path), 1000):
                pass
        message = str(caught.value)
        assert message.startswith(f"{path}:") and "truncated or corrupt (gzip: " in message, (name, message)
        line = int(message.split(":")[1])
        if name == "truncated":                        # the lines before the cut were read
            assert 1000 < line < 20000, message
        if name == "not-gzip":
            assert line == 1 and "cannot be read at all" in message


def test_zstd_with_several_frames_is_read_to_the_end(tmp_path):
    from rnnenc.pipeline.corpus import open_binary

    data = b"".join(b"line %d\n" % i for i in range(50000))
    path = tmp_path / "multi.zst"
    # pzstd and `cat a.zst b.zst` write several frames; zstandard's stream_reader stops after one.
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(data[k:k + 100_000])
                              for k in range(0, len(data), 100_000)))
    with open_binary(path) as handle:
        assert handle.read() == data
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"multi\.zst:\d+: compressed file is truncated"), open_binary(path) as handle:
        handle.read()


def test_cli_truncated_gzip_is_one_line_with_and_without_skip(tmp_path, dask_address, capsys):
    from rnnenc.workflows import cli

    en = [f"sentence {i} with a few words ." for i in range(3000)]
    src, tgt = write_pair(tmp_path, en, en, opener=gzip.open, suffix=".gz")
    Path(tgt).write_bytes(Path(tgt).read_bytes()[:-12])
    for extra in ([], ["--on-error", "skip"]):
        status = cli.main(["ingest", "--src", src, "--tgt", tgt, "--src-lang", "en", "--tgt-lang", "fr",
                           "--out", str(tmp_path / "out"), "--scheduler", dask_address, "--quiet", *extra])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert status == 1 and len(errors) == 1, errors
        assert errors[0].startswith(f"rnnenc: error: {tgt}:") and "truncated or corrupt" in errors[0]
        _assert_no_output(tmp_path, tmp_path / "out")


def test_escape_bytes_round_trips_every_byte():
    from rnnenc.pipeline.corpus import escape_bytes, unescape_bytes

    samples = [bytes(range(256)), b"", b"\\", b"\\\\t", b"\\x41", "été\t\u2028".encode(), b"\xc3", b"a\r\n\tb"]
    samples += [bytes(b % 256 for b in range(k, k + 97)) for k in range(0, 512, 7)]
    for raw in samples:
        text = escape_bytes(raw)
        assert not any(c in text for c in "\t\r\n") and unescape_bytes(text) == raw, raw


def _read_rejects(path: Path) -> tuple[list[str], dict[tuple[str, int], list[str]]]:
    from rnnenc.pipeline.corpus import unescape_bytes

    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    assert lines[-1] == ""
    header, rows = lines[0].split("\t"), [line.split("\t") for line in lines[1:-1]]
    assert all(len(row) == len(header) for row in rows)
    by_line = {(row[0], int(row[1])): row for row in rows}
    for row in by_line.values():
        row[5:7] = [unescape_bytes(row[5]), unescape_bytes(row[6])]
    return header, by_line


def test_rejects_keep_the_original_bytes_of_every_line(tmp_path, dask_client):
    en = [b"ok one\n", b"bad \xff\tbyte\n", b"x " * 100 + b"\\ end\r\n", b"\n", b"fine\n"]
    fr = [b"ok un\n", b"fr\ttab\r\n", b"y\n", b"vide\n", b"bien"]
    (tmp_path / "c.en").write_bytes(b"".join(en))
    (tmp_path / "c.fr").write_bytes(b"".join(fr))
    tsv = [b"a\tb\n", b"only one \\ column\n", b"c\td\te\r\n", b"\xff\xfe\tz\n", b"w " * 100 + b"\tq\r\n", b"f\tg"]
    (tmp_path / "t.tsv").write_bytes(b"".join(tsv))
    inputs = [CorpusInput("text", (str(tmp_path / "c.en"), str(tmp_path / "c.fr")), "pair"),
              CorpusInput("tsv", (str(tmp_path / "t.tsv"),), "tsv")]
    report = ingest(DaskExecutor(dask_client, quiet=True), inputs, tmp_path / "out", CONFIG, rows_per_part=2, invalid_utf8="reject",
                    on_error="skip")
    assert report["lines_read"] == len(en) + len(tsv) == report["pairs_written"] + report["pairs_dropped"]
    assert report["rejects_written"] == report["pairs_dropped"] == 7
    header, rows = _read_rejects(tmp_path / "out" / REJECTS_NAME)
    assert header == ["corpus", "line", "reason", "source", "target", "raw_source", "raw_target"]
    assert len(rows) == report["rejects_written"]

    def body(line: bytes) -> bytes:
        return line[:-1] if line.endswith(b"\n") else line

    expected = {("pair", 2): (body(en[1]), body(fr[1])), ("pair", 3): (body(en[2]), b"y"),
                ("pair", 4): (b"", b"vide"), ("tsv", 2): (body(tsv[1]), b""), ("tsv", 3): (body(tsv[2]), b""),
                ("tsv", 4): (body(tsv[3]), b""), ("tsv", 5): (b"w " * 100, b"q\r")}
    assert {key: tuple(row[5:7]) for key, row in rows.items()} == expected
    assert rows[("tsv", 3)][2:5] == ["expected 2 tab-separated columns, found 3", "c d e", ""]  # text as before
    assert rows[("pair", 3)][2] == "too long" and rows[("tsv", 5)][2] == "too long"

    # Replaced invalid UTF-8 (the default) in a pair dropped by cleaning: the bytes, not U+FFFD.
    (tmp_path / "r.en").write_bytes(b"kept \xff\n" + b"z " * 100 + b"\xfe\xff\n")
    (tmp_path / "r.fr").write_bytes(b"garde\nt\xc3\n")
    replaced = [CorpusInput("text", (str(tmp_path / "r.en"), str(tmp_path / "r.fr")), "r")]
    report = ingest(DaskExecutor(dask_client, quiet=True), replaced, tmp_path / "out2", CONFIG, on_error="skip")
    assert report["invalid_utf8_replaced"] == 3 and report["pairs_written"] == 1
    assert report["lines_read"] == 2 and report["rejects_written"] == report["pairs_dropped"] == 1
    _, rows = _read_rejects(tmp_path / "out2" / REJECTS_NAME)
    assert rows[("r", 2)][5:7] == [b"z " * 100 + b"\xfe\xff", b"t\xc3"]
    assert read_corpus(tmp_path / "out2").column("source").to_pylist() == ["kept \ufffd"]


def test_no_clean_keeps_every_line_of_a_test_set(tmp_path, dask_address):
    """Tuning and test sets lose no line: empty, long and lopsided pairs stay, in order."""
    src, tgt = tmp_path / "t.en", tmp_path / "t.fr"
    src.write_text("A cat .\n\nOne two three four five six seven eight nine ten .\nHi\n")
    tgt.write_text("Un chat .\nVide\nUn .\nSalut\n")
    common = ["--src", str(src), "--tgt", str(tgt), "--src-lang", "en", "--tgt-lang", "fr", "--scheduler",
              dask_address, "--max-tokens", "5", "--max-ratio", "2", "--quiet"]
    from rnnenc.workflows import cli

    assert cli.main(["ingest", *common, "--out", str(tmp_path / "cleaned")]) == 0
    assert cli.main(["ingest", *common, "--out", str(tmp_path / "kept"), "--no-clean"]) == 0
    cleaned = pq.read_table(tmp_path / "cleaned" / "part-00000.parquet")
    kept = pq.read_table(tmp_path / "kept" / "part-00000.parquet")
    assert cleaned.column("line").to_pylist() == [1, 4]
    assert kept.column("line").to_pylist() == [1, 2, 3, 4] and kept.column("source").to_pylist()[1] == ""
    assert json.loads((tmp_path / "kept" / REPORT_NAME).read_text())["pairs_dropped"] == 0
