"""Vocabularies: counting per part with Dask, tie-breaks, specials, coverage, phrase-table basis."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnenc.pipeline.artifacts import MANIFEST_NAME, REPORT_NAME, write_manifest
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.phrase_table import import_moses
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.pipeline.vocab import (
    SPECIALS,
    Vocabulary,
    build_vocabulary,
    choose_words,
    count_words,
    coverage,
    merge_counts,
)
from rnnenc.pipeline.vocab import build_vocabularies as build
from rnnenc.workflows import cli


def counts_table(counts: dict[str, int]) -> pa.Table:
    return pa.table({"word": list(counts), "count": list(counts.values())},
                    schema=pa.schema([("word", pa.string()), ("count", pa.int64())]))


def write_corpus(directory: Path, pairs: list[tuple[str, str]], parts: int = 1, langs=("en", "fr")) -> Path:
    directory.mkdir(parents=True)
    step = -(-len(pairs) // parts)
    for p in range(parts):
        chunk = pairs[p * step:(p + 1) * step]
        pq.write_table(pa.table({"source": [s for s, _ in chunk], "target": [t for _, t in chunk]}),
                       directory / f"part-{p:05d}.parquet")
    write_manifest(directory, stage="ingest", inputs=[], config={"source_lang": langs[0], "target_lang": langs[1]},
                   counts={})
    return directory


def test_count_words_splits_like_str_split_and_merges():
    texts = ["a b  a", "b\u00a0c", "", "é a"]
    assert dict(zip(*count_words(texts).to_pydict().values(), strict=True)) == Counter(
        w for t in texts for w in t.split())
    merged = merge_counts([count_words(["a b"]), count_words(["b c"])] * 20)
    assert dict(zip(*merged.to_pydict().values(), strict=True)) == {"a": 20, "b": 40, "c": 20}
    assert merge_counts([]).num_rows == 0


def test_ties_are_broken_by_byte_order_and_specials_are_excluded():
    counts = counts_table({"b": 3, "a": 3, "B": 3, "é": 3, "z": 3, "<unk>": 9, "</s>": 9, "top": 5, "rare": 1,
                           "Z": 1})
    words, ranking = choose_words(counts, 6)
    # top (5) first; then the 3s in UTF-8 byte order: B < a < b < z < é
    assert words == ["top", "B", "a", "b", "z", "é"]
    assert [w for w, _ in ranking] == ["top", "B", "a", "b", "z", "é", "Z", "rare"]
    vocab, _ = build_vocabulary(counts, 6, "en")
    assert vocab.itos[:3] == list(SPECIALS) and vocab.itos[3:] == words and len(vocab) == 9
    big, _ = build_vocabulary(counts, 100, "en")
    assert big.meta["words"] == 8 and big.meta["coverage"] == 1.0
    with pytest.raises(UserError):
        choose_words(counts, 0)


def test_coverage_is_the_share_of_running_words():
    counts = {"the": 50, "cat": 30, "sat": 15, "rare": 5}
    assert coverage(counts, ["the", "cat"]) == {"running_words": 100, "covered_words": 80, "coverage": 0.8}
    vocab, _ = build_vocabulary(counts_table(counts), 3, "en")
    assert vocab.meta["coverage"] == 0.95 and vocab.meta["running_words"] == 100 and vocab.meta["min_count"] == 15
    assert vocab.meta["types"] == 4


@pytest.mark.determinism
def test_corpus_vocabulary_is_the_same_whatever_the_parts(tmp_path):
    pairs = [("the cat sat", "le chat"), ("the dog", "le chien"), ("a cat", "un chat"), ("the end", "la fin")] * 3
    reports = []
    for parts in (1, 3):
        corpus = write_corpus(tmp_path / f"c{parts}", pairs, parts)
        reports.append(build("corpus", corpus, tmp_path / f"v{parts}", size=3))
        assert (tmp_path / f"v{parts}" / MANIFEST_NAME).is_file()
    for name in ("vocab.en.txt", "vocab.fr.txt", "counts.fr.tsv.gz"):
        assert (tmp_path / "v1" / name).read_bytes() == (tmp_path / "v3" / name).read_bytes()
    metas = [json.loads((tmp_path / v / "vocab.en.json").read_text()) for v in ("v1", "v3")]
    assert [m.pop("input") for m in metas] == [str(tmp_path / "c1"), str(tmp_path / "c3")]
    assert metas[0] == metas[1]
    en = Vocabulary.load(tmp_path / "v1" / "vocab.en.txt")
    assert en.lang == "en" and en.itos == [*SPECIALS, "the", "cat", "a"]   # the 9, cat 6, then a/dog/end/sat 3
    assert en.meta["coverage"] == pytest.approx(18 / 27) and en.meta["running_words"] == 27
    report = reports[0]
    assert report["sides"]["target"]["lang"] == "fr" and report["sides"]["source"]["coverage"] == pytest.approx(18 / 27)
    counts = gzip.decompress((tmp_path / "v1" / "counts.en.tsv.gz").read_bytes()).decode().split("\n")
    assert counts[:3] == ["the\t9", "cat\t6", "a\t3"]


def test_languages_come_from_the_manifest_and_must_agree(tmp_path):
    corpus = write_corpus(tmp_path / "c", [("a", "b")])
    with pytest.raises(UserError, match="source language is 'en', not 'de'"):
        build("corpus", corpus, tmp_path / "v", src_lang="de")
    bare = tmp_path / "bare"
    bare.mkdir()
    pq.write_table(pa.table({"source": ["a"], "target": ["b"]}), bare / "part-00000.parquet")
    with pytest.raises(UserError, match="give --src-lang"):
        build("corpus", bare, tmp_path / "v")
    build("corpus", bare, tmp_path / "v", src_lang="en", tgt_lang="fr")
    assert (tmp_path / "v" / "vocab.fr.txt").is_file()


def test_phrase_table_counts_distinct_phrases(tmp_path):
    lines = ["a b ||| x ||| 1", "a b ||| y ||| 1", "a b ||| x y ||| 1", "a c ||| x ||| 1", "d ||| z ||| 1"]
    path = tmp_path / "pt.txt"
    path.write_text("\n".join(lines) + "\n")
    import_moses([path], tmp_path / "t", source_lang="en", target_lang="fr", split_bytes=20)
    results = [build("phrase-table", tmp_path / "t", tmp_path / f"v{b}", size=2, buckets=b) for b in (1, 4)]
    for name in ("vocab.en.txt", "vocab.fr.txt", "vocab.en.json"):
        assert (tmp_path / "v1" / name).read_bytes() == (tmp_path / "v4" / name).read_bytes()
    en = Vocabulary.load(tmp_path / "v1" / "vocab.en.txt")
    # distinct source phrases: "a b", "a c", "d" -> a 2, b 1, c 1, d 1
    assert en.itos[3:] == ["a", "b"] and en.meta["running_words"] == 5 and en.meta["coverage"] == 0.6
    assert en.meta["distinct_phrases"] == 3
    # over the rows (pairs): a 4, b 3, c 1, d 1 -> 7 of 9
    assert en.meta["pair_coverage"] == pytest.approx(7 / 9, abs=1e-6)
    fr = Vocabulary.load(tmp_path / "v1" / "vocab.fr.txt")
    assert fr.itos[3:] == ["x", "y"] and fr.meta["distinct_phrases"] == 4
    assert results[0]["rows"] == 5


def test_vocab_command_on_the_cluster(tmp_path, dask_address, capsys):
    files = generate_demo(tmp_path / "demo", DemoConfig(seed=2, pool_size=400, in_domain_size=40, dev_size=10,
                                                         phrase_table_pairs=1500))
    import_moses([files.phrase_table], tmp_path / "t", source_lang="en", target_lang="fr", split_bytes=40_000)
    status = cli.main(["vocab", "--phrase-table", str(tmp_path / "t"), "--out", str(tmp_path / "v"),
                       "--size", "300", "--scheduler", dask_address, "--quiet"])
    assert status == 0
    out = capsys.readouterr().out
    assert "source (en): 300 words of" in out and "coverage" in out
    build("phrase-table", tmp_path / "t", tmp_path / "v-local", size=300)
    for name in ("vocab.en.txt", "vocab.fr.txt"):
        assert (tmp_path / "v" / name).read_bytes() == (tmp_path / "v-local" / name).read_bytes()
    report = json.loads((tmp_path / "v" / REPORT_NAME).read_text())
    assert 0 < report["sides"]["source"]["coverage"] < 1 and report["sides"]["target"]["size"] == 303
    # corpus vocabulary from the cluster too
    corpus = write_corpus(tmp_path / "c", [(s, t) for s, t in zip(
        files.in_domain_src.read_text().split("\n")[:-1], files.in_domain_tgt.read_text().split("\n")[:-1],
        strict=True)], parts=3)
    assert cli.main(["vocab", "--corpus", str(corpus), "--out", str(tmp_path / "vc"), "--size", "50",
                     "--scheduler", dask_address, "--quiet"]) == 0
    assert len(Vocabulary.load(tmp_path / "vc" / "vocab.fr.txt")) == 53
