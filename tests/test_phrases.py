"""Phrase extraction and scoring: Moses definitions by hand, determinism, memory, demo recall, CLI."""

from __future__ import annotations

import functools
import gzip
import tracemalloc
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnenc.pipeline.alignment import AlignConfig, align_part
from rnnenc.pipeline.phrase_table import export_moses
from rnnenc.pipeline.phrases import (
    PhraseConfig,
    build_phrase_table,
    phrase_spans,
    run_phrases,
    sentence_pairs,
)
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo, tokenised_sample
from rnnenc.workflows import cli
from rnnenc.workflows.cluster import DaskExecutor

DEMO = DemoConfig(pool_size=500, in_domain_size=50, dev_size=20, phrase_table_pairs=200)
FAST = AlignConfig(iterations=(3, 3, 3), samplers=1)

# (source, target, alignment): a hand-made aligned corpus.
HAND = [("a b", "x y", "0-0 1-1"),
        ("a c", "x", "0-0"),          # c unaligned
        ("b", "y x", "0-0"),          # x unaligned
        ("b c", "z", "0-0 1-0"),      # z linked to two source words
        ("d e", "w v", "0-0 1-1"),
        ("d e", "w v", "0-1 1-0"),    # (d e, w v) seen with two internal alignments
        ("d e", "w v", "0-0 1-1")]


def write_corpus(root: Path, rows: list[tuple[str, str, str]], parts: int) -> tuple[list[str], list[str]]:
    """Corpus and alignment parts (line-aligned) of ``rows`` cut into ``parts`` pieces."""
    (root / "corpus").mkdir(parents=True)
    (root / "alignment").mkdir()
    corpus, alignment = [], []
    size = -(-len(rows) // parts)
    for k in range(parts):
        chunk = rows[k * size:(k + 1) * size]
        corpus.append(str(root / "corpus" / f"part-{k:05d}.parquet"))
        alignment.append(str(root / "alignment" / f"part-{k:05d}.parquet"))
        pq.write_table(pa.table({"source": [r[0] for r in chunk], "target": [r[1] for r in chunk],
                                 "line": list(range(k * size + 1, k * size + len(chunk) + 1))}), corpus[-1])
        pq.write_table(pa.table({"alignment": [r[2] for r in chunk]}), alignment[-1])
    return corpus, alignment


def read_table(out: Path) -> list[dict]:
    return pa.concat_tables([pq.read_table(p) for p in sorted((out / "table").glob("part-*.parquet"))]).to_pylist()


def test_extraction_follows_moses_extract():
    # s0 aligned to t0, s2 to t2; s1 and t1 unaligned.
    spans = set(phrase_spans(3, 3, [(0, 0), (2, 2)], max_length=7))
    # target spans [t0], [t0 t1] (t1 unaligned), [t0..t2], [t1 t2], [t2]; the source side
    # of each may also take the unaligned s1 at its edge
    assert spans == {(0, 0, 0, 0), (0, 1, 0, 0), (0, 0, 0, 1), (0, 1, 0, 1), (0, 2, 0, 2),
                     (2, 2, 1, 2), (1, 2, 1, 2), (2, 2, 2, 2), (1, 2, 2, 2)}
    # a span is dropped when a source word inside links outside the target span
    assert set(phrase_spans(2, 2, [(0, 1), (1, 0)], 7)) == {(1, 1, 0, 0), (0, 1, 0, 1), (0, 0, 1, 1)}
    assert set(phrase_spans(3, 3, [(0, 0), (2, 2)], max_length=1)) == {(0, 0, 0, 0), (2, 2, 2, 2)}
    assert list(sentence_pairs("b c".split(), ["z"], [(0, 0), (1, 0)])) == [("b c", "z", "0-0 1-0")]


def test_hand_made_corpus_scores_match_moses_definitions(tmp_path: Path):
    corpus, alignment = write_corpus(tmp_path, HAND, parts=2)
    report = build_phrase_table(corpus, alignment, tmp_path / "out", PhraseConfig(buckets=2))
    rows = {(r["source"], r["target"]): r for r in read_table(tmp_path / "out")}
    F = Fraction
    # φ(f|e)=c(f,e)/c(e), lex(f|e), φ(e|f)=c(f,e)/c(f), lex(e|f); counts "c(e) c(f) c(f,e)".
    # Word table: c(a,x)=2 c(b,y)=2 c(c,NULL)=1 c(NULL,x)=1 c(b,z)=1 c(c,z)=1, so e.g.
    # w(y|b)=2/3, w(z|b)=1/3, w(z|c)=1/2, w(x|NULL)=1, w(a|x)=2/3, w(b|z)=w(c|z)=1/2, w(c|NULL)=1.
    expected = {
        ("a", "x"): (F(2, 3), F(2, 3), F(1), F(1), "0-0", "3 2 2"),
        ("a b", "x y"): (F(1), F(2, 3) * 1, F(1), F(1) * F(2, 3), "0-0 1-1", "1 1 1"),
        ("b", "y"): (F(1), F(1), F(2, 3), F(2, 3), "0-0", "2 3 2"),
        ("a c", "x"): (F(1, 3), F(2, 3) * 1, F(1), F(1), "0-0", "3 1 1"),
        ("b", "y x"): (F(1), F(1), F(1, 3), F(2, 3) * 1, "0-0", "1 3 1"),
        ("b c", "z"): (F(1), F(1, 2) * F(1, 2), F(1), (F(1, 3) + F(1, 2)) / 2, "0-0 1-0", "1 1 1"),
        # most frequent internal alignment (2 of 3): w(w|d)=w(v|e)=2/3, w(d|w)=w(e|v)=2/3
        ("d e", "w v"): (F(1), F(4, 9), F(1), F(4, 9), "0-0 1-1", "3 3 3"),
        # sentence 6 also extracts (e, w) and (d, v): c(w)=3, c(d)=3
        ("d", "w"): (F(2, 3), F(2, 3), F(2, 3), F(2, 3), "0-0", "3 3 2"),
    }
    for key, (p_fe, lex_fe, p_ef, lex_ef, align, counts) in expected.items():
        row = rows[key]
        assert [row["p_f_given_e"], row["lex_f_given_e"], row["p_e_given_f"], row["lex_e_given_f"]] == pytest.approx(
            [float(p_fe), float(lex_fe), float(p_ef), float(lex_ef)], rel=1e-6), key
        assert (row["alignment"], row["counts"]) == (align, counts), key
    # (d,w) (e,v) from sentences 5 and 7; (e,w) (d,v) from sentence 6
    assert set(rows) == set(expected) | {("e", "v"), ("e", "w"), ("d", "v")}
    assert report["table_rows"] == 11 and report["extracted_occurrences"] == 3 + 2 + 2 + 1 + 3 * 3
    # LC_ALL=C order of the Moses lines: "a b ||| ..." before "a ||| ..." (' ' < '|' < 'b'... bytes)
    keys = [(r["source"], r["target"]) for r in read_table(tmp_path / "out")]
    assert keys[:6] == [("a b", "x y"), ("a c", "x"), ("a", "x"), ("b c", "z"), ("b", "y x"), ("b", "y")]
    assert [r["line"] for r in read_table(tmp_path / "out")] == list(range(1, 12))
    lex_f2e = (tmp_path / "out" / "lex.f2e").read_text().splitlines()
    assert "z b 0.3333333" in lex_f2e and "x NULL 1.0000000" in lex_f2e      # e f w(e|f)
    lex_e2f = (tmp_path / "out" / "lex.e2f").read_text().splitlines()
    assert "a x 0.6666667" in lex_e2f and "NULL x 0.3333333" in lex_e2f      # f e w(f|e)
    assert not (tmp_path / "out" / ".work").exists()


def test_min_count_prunes_after_scoring(tmp_path: Path):
    corpus, alignment = write_corpus(tmp_path, HAND, parts=1)
    full = {(r["source"], r["target"]): r for r in
            (build_phrase_table(corpus, alignment, tmp_path / "all", PhraseConfig()), read_table(tmp_path / "all"))[1]}
    report = build_phrase_table(corpus, alignment, tmp_path / "pruned", PhraseConfig(min_count=2))
    pruned = read_table(tmp_path / "pruned")
    assert {(r["source"], r["target"]) for r in pruned} == {k for k, r in full.items()
                                                            if int(r["counts"].split()[2]) >= 2}
    assert report["pruned_pairs"] == len(full) - len(pruned) > 0
    for row in pruned:   # marginals, hence scores, of the kept pairs are those of the full table
        assert row | {"line": 0} == full[(row["source"], row["target"])] | {"line": 0}


@pytest.fixture(scope="module")
def demo_aligned(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[tuple[str, str, str]], Path]:
    """400 demo pairs aligned once with eflomal (which cannot be seeded), as rows."""
    root = tmp_path_factory.mktemp("demo-aligned")
    pairs = tokenised_sample(DEMO, "general", 400)
    part = root / "part-00000.parquet"
    pq.write_table(pa.table({"source": [p[2] for p in pairs], "target": [p[3] for p in pairs]}), part)
    align_part(part, root / "al.parquet", FAST)
    links = pq.read_table(root / "al.parquet", columns=["alignment"]).column(0).to_pylist()
    return [(p[2], p[3], a) for p, a in zip(pairs, links, strict=True)], root


@pytest.mark.determinism
def test_same_bytes_for_any_partitioning_buckets_and_a_2_worker_cluster(tmp_path: Path, demo_aligned, dask_client):
    rows, _ = demo_aligned
    outputs = {}
    for parts, buckets in ((1, 3), (5, 3), (4, 1)):
        corpus, alignment = write_corpus(tmp_path / f"p{parts}-b{buckets}", rows, parts)
        out = tmp_path / f"p{parts}-b{buckets}" / "out"
        build_phrase_table(corpus, alignment, out, PhraseConfig(buckets=buckets))
        export_moses(out / "table", out / "phrase-table.gz")
        outputs[(parts, buckets)] = out
    cluster_root = tmp_path / "p5-b3"
    run_phrases(DaskExecutor(dask_client, quiet=True), cluster_root / "corpus", tmp_path / "cluster",
                PhraseConfig(buckets=3), FAST, alignment=cluster_root / "alignment")
    outputs["cluster"] = tmp_path / "cluster"

    def files(out: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted((out / "table").glob("*.parquet"))}

    reference = outputs[(1, 3)]
    for key, out in outputs.items():
        for name in ("phrase-table.gz", "lex.f2e", "lex.e2f"):
            assert (out / name).read_bytes() == (reference / name).read_bytes(), (key, name)
        if key != (4, 1):      # the bucket count sets where parts split, nothing else
            assert files(out) == files(reference), key
    assert read_table(outputs[(4, 1)]) == read_table(reference)
    # the cluster run copied the given alignment and wrote its report
    assert len(list((tmp_path / "cluster" / "alignment").glob("part-*.parquet"))) == 5
    lines = gzip.decompress((reference / "phrase-table.gz").read_bytes()).splitlines()
    assert lines == sorted(lines) and len(lines) == len(read_table(reference))
    assert all(line.count(b" ||| ") == 4 for line in lines)


class _TrackingExecutor:
    """Serial, recording each task's peak traced memory."""

    def __init__(self, peaks: list[int]):
        self.peaks = peaks

    def map(self, func, items, *, desc="", resources=None, **kwargs):
        return _tracking_map(self.peaks, functools.partial(func, **kwargs), items)


def _tracking_map(peaks: list[int], func, items):
    results = []
    for item in items:
        tracemalloc.start()
        try:
            results.append(func(item))
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
    return results


def test_task_memory_stays_flat_when_the_corpus_grows(tmp_path: Path, demo_aligned):
    rows = demo_aligned[0][:100]
    peak = {}
    for copies in (1, 4):
        data = [r for _ in range(copies) for r in rows]          # same part size, 4x the parts
        corpus, alignment = write_corpus(tmp_path / f"x{copies}", data, parts=copies)
        peaks: list[int] = []
        build_phrase_table(corpus, alignment, tmp_path / f"x{copies}" / "out", PhraseConfig(buckets=2 * copies),
                           executor=_TrackingExecutor(peaks))
        peak[copies] = max(peaks)
    # Duplicated data has the same distinct pairs, so a bucket of the 4x run holds a quarter of
    # them; what must not grow is any one task's memory.
    assert peak[4] < 1.3 * peak[1], peak


def test_true_demo_pairs_are_top_entries(tmp_path: Path):
    files = generate_demo(tmp_path / "demo", DEMO)
    lexicon = [tuple(line.split("\t")[:2]) for line in files.lexicon.read_text(encoding="utf-8").splitlines()]
    pairs = tokenised_sample(DEMO, "general", 1200) + tokenised_sample(DEMO, "in", 400)
    (tmp_path / "corpus").mkdir()
    for k in range(2):
        chunk = pairs[k * 800:(k + 1) * 800]
        pq.write_table(pa.table({"source": [p[2] for p in chunk], "target": [p[3] for p in chunk]}),
                       tmp_path / "corpus" / f"part-{k:05d}.parquet")
    corpus = sorted(str(p) for p in (tmp_path / "corpus").glob("*.parquet"))
    aligned = []
    for k, part in enumerate(corpus):
        aligned.append(str(tmp_path / f"al-{k}.parquet"))
        align_part(part, aligned[-1], AlignConfig(iterations=(4, 4, 4), samplers=1))
    build_phrase_table(corpus, aligned, tmp_path / "out", PhraseConfig(buckets=2))
    by_source: dict[str, list[tuple[float, str, int]]] = defaultdict(list)
    for row in read_table(tmp_path / "out"):
        by_source[row["source"]].append((row["p_e_given_f"], row["target"], int(row["counts"].split()[1])))
    hits = total = 0
    for source, target in lexicon:
        candidates = by_source.get(source)
        if not candidates or candidates[0][2] < 5:        # c(f) < 5: too rare to judge
            continue
        top = [t for _, t in sorted(((-p, t) for p, t, _ in candidates))[:3]]
        total += 1
        hits += target in top
    # recall of the generator's true pairs among the 3 best targets by p(e|f)
    assert total >= 200 and hits / total >= 0.8, (hits, total)


def test_cli_reports_input_mistakes_on_one_line(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(["phrases", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "no part-*.parquet files" in capsys.readouterr().err
    corpus, alignment = write_corpus(tmp_path / "two", HAND, parts=2)
    Path(alignment[1]).unlink()
    assert cli.main(["phrases", str(tmp_path / "two" / "corpus"), "--alignment", str(tmp_path / "two" / "alignment"),
                     "--out", str(tmp_path / "out")]) == 1
    assert "1 alignment parts for the 2 corpus parts" in capsys.readouterr().err
    assert cli.main(["phrases", str(tmp_path / "two" / "corpus"), "--align-iterations", "4,4",
                     "--out", str(tmp_path / "out")]) == 1
    assert "--align-iterations" in capsys.readouterr().err
    bad = tmp_path / "bad"
    corpus, alignment = write_corpus(bad, [("a b", "x", "0-0 5-0")], parts=1)
    with pytest.raises(Exception, match=r"part-00000.parquet: row 1: alignment link '5-0' outside"):
        build_phrase_table(corpus, alignment, bad / "out")
    assert not (tmp_path / "out").exists()
