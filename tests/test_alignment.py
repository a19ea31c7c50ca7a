"""Word alignment: grow-diag-final-and as Moses's symal, eflomal on demo data, bad links."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnenc.pipeline.alignment import AlignConfig, align_part, format_links, grow_diag_final_and, parse_links
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo, tokenised_sample

DEMO = DemoConfig(pool_size=500, in_domain_size=50, dev_size=20, phrase_table_pairs=200)


def test_grow_diag_adds_neighbours_in_the_union_that_cover_a_new_word():
    # forward: t0<-s0, t1<-s1, t2<-s1; reverse: s0->t0, s1->t1, s2->t2. Intersection (0,0), (1,1);
    # growing from (1,1) adds (1,2) (t2 uncovered) then its diagonal (2,2) (s2 uncovered).
    forward = [(0, 0), (1, 1), (1, 2)]
    reverse = [(0, 0), (1, 1), (2, 2)]
    assert grow_diag_final_and(forward, reverse) == [(0, 0), (1, 1), (1, 2), (2, 2)]


def test_final_and_needs_both_words_unaligned():
    # (s0,t2) is only in forward and s0 is already aligned: grow-diag-final would add it,
    # final-and does not. (s2,t1) joins two unaligned words and is not a neighbour: final-and adds it.
    forward = [(0, 0), (0, 2)]
    reverse = [(0, 0), (2, 1)]
    assert grow_diag_final_and(forward, reverse) == [(0, 0), (2, 1)]


def test_grow_does_not_add_points_outside_the_union():
    forward = [(0, 0)]
    reverse = [(0, 0), (1, 1)]
    # (1,1) is a diagonal neighbour in the union: added by grow-diag.
    assert grow_diag_final_and(forward, reverse) == [(0, 0), (1, 1)]
    # nothing but the intersection when both directions agree
    assert grow_diag_final_and([(0, 1), (1, 0)], [(1, 0), (0, 1)]) == [(0, 1), (1, 0)]
    assert grow_diag_final_and([], []) == []


def test_parse_links_names_the_row_and_the_reason():
    assert parse_links("0-1 1-0", 2, 2) == [(0, 1), (1, 0)]
    assert format_links([(1, 0), (0, 1), (0, 1)]) == "0-1 1-0"
    with pytest.raises(UserError, match=r"a.parquet: row 3: alignment link '2-0' outside"):
        parse_links("0-0 2-0", 2, 2, "a.parquet: row 3")
    with pytest.raises(UserError, match="malformed alignment link 'x'"):
        parse_links("x", 2, 2, "a.parquet: row 3")


def test_align_part_on_demo_data(tmp_path: Path):
    files = generate_demo(tmp_path / "demo", DEMO)
    lexicon = {tuple(line.split("\t")[:2]) for line in files.lexicon.read_text(encoding="utf-8").splitlines()}
    pairs = tokenised_sample(DEMO, "general", 800)
    source = [p[2] for p in pairs] + ["lonely", ""]
    target = [p[3] for p in pairs] + ["", "seul"]
    part = tmp_path / "part-00000.parquet"
    pq.write_table(pa.table({"source": source, "target": target, "line": list(range(10, 10 + len(source)))}), part)
    counts = align_part(part, tmp_path / "al.parquet", AlignConfig(iterations=(4, 4, 4), samplers=1))
    assert counts["pairs"] == len(source) and counts["empty_pairs"] == 2 and counts["aligned_pairs"] == 800
    out = pq.read_table(tmp_path / "al.parquet").to_pylist()
    assert [row["line"] for row in out] == list(range(10, 10 + len(source)))
    assert out[-1]["alignment"] == out[-2]["alignment"] == ""
    on_lexicon = total = 0
    for row, src, tgt in zip(out[:800], source[:800], target[:800], strict=True):
        s, t = src.split(), tgt.split()
        sym = set(parse_links(row["alignment"], len(s), len(t)))
        fwd = parse_links(row["forward"], len(s), len(t))
        rev = parse_links(row["reverse"], len(s), len(t))
        assert len({j for _, j in fwd}) == len(fwd)          # forward: one source word per target word
        assert len({i for i, _ in rev}) == len(rev)          # reverse: one target word per source word
        assert set(fwd) & set(rev) <= sym <= set(fwd) | set(rev)
        on_lexicon += sum((s[i], t[j]) in lexicon for i, j in sym)
        total += len(sym)
    # The generator translates word by word through its lexicon (plus multi-word concepts
    # and local reordering): most links must join a word and its translation.
    assert total > 0 and on_lexicon / total > 0.6, on_lexicon / total
