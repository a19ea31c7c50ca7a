"""The synthetic demo data: reproducible, self-consistent, tokenizer-faithful, separable."""

from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rnnenc.pipeline.synthetic import DemoConfig, DemoFiles, generate_demo, tokenised_sample

SMALL = DemoConfig(pool_size=3000, in_domain_size=400, dev_size=100, phrase_table_pairs=800)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> DemoFiles:
    return generate_demo(tmp_path_factory.mktemp("demo"), SMALL)


def _lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    return text[:-1].split("\n")


def _all_files(files: DemoFiles) -> list[Path]:
    return [getattr(files, f) for f in DemoFiles.__dataclass_fields__ if f != "root"]


@pytest.mark.determinism
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, demo):
    again = generate_demo(tmp_path / "again", SMALL)
    for a, b in zip(_all_files(demo), _all_files(again), strict=True):
        assert a.name == b.name
        assert a.read_bytes() == b.read_bytes(), a.name
    other = generate_demo(tmp_path / "other", DemoConfig(**{**SMALL.__dict__, "seed": 99}))
    for name in ("pool.en", "pool.fr", "phrase-table.gz", "lexicon.tsv"):
        assert (demo.root / name).read_bytes() != (other.root / name).read_bytes(), name


def test_small_config_generates_what_it_asks(tmp_path):
    """The tests' small configs (speed is a benchmark's business, not a test's: this machine is shared)."""
    files = generate_demo(tmp_path, DemoConfig(pool_size=2000, in_domain_size=200, dev_size=100,
                                               phrase_table_pairs=500))
    assert len(_lines(files.pool_src)) == 2000 and len(_lines(files.dev_src)) == 100


def test_line_counts_and_truth(demo):
    truth = json.loads(demo.truth.read_text())
    counts = truth["counts"]
    assert truth["config"]["seed"] == SMALL.seed
    assert len(_lines(demo.pool_src)) == len(_lines(demo.pool_tgt)) == SMALL.pool_size
    labels = _lines(demo.pool_in_domain)
    assert len(labels) == SMALL.pool_size and set(labels) == {"0", "1"}
    assert sum(map(int, labels)) == counts["pool_in_domain"] == round(SMALL.pool_size * SMALL.pool_in_domain_fraction)
    assert len(_lines(demo.in_domain_src)) == len(_lines(demo.in_domain_tgt)) == SMALL.in_domain_size
    assert len(_lines(demo.dev_src)) == len(_lines(demo.dev_tgt)) == SMALL.dev_size
    for name in ("in_domain", "dev"):
        for lang in ("en", "fr"):
            lines = _lines(demo.root / f"{name}.{lang}")
            assert all(lines), f"{name}.{lang} has an empty line"
            n_tokens = sum(len(line.replace("'", " '").replace(",", " ,").replace(".", " .")
                               .replace("?", " ?").split()) for line in lines)
            assert n_tokens == counts["tokens"][f"{name}.{lang}"]


def test_noise_lines_are_what_truth_says(demo):
    truth = json.loads(demo.truth.read_text())
    noise = truth["noise_lines"]
    assert {k: len(v) for k, v in noise.items()} == truth["counts"]["noise"]
    assert all(len(v) >= 1 for v in noise.values())
    src, tgt = _lines(demo.pool_src), _lines(demo.pool_tgt)
    empty = {i + 1 for i, (s, t) in enumerate(zip(src, tgt, strict=True)) if not s.strip() or not t.strip()}
    assert empty == set(noise["empty_source"]) | set(noise["empty_target"])
    assert all(src[i - 1] == "" for i in noise["empty_source"])
    assert all(tgt[i - 1] == "" for i in noise["empty_target"])
    for i in noise["long"]:
        assert len(src[i - 1].split()) > 80 and len(tgt[i - 1].split()) > 80
    for i in noise["ratio"]:
        n_src, n_tgt = len(src[i - 1].replace(".", " .").split()), len(tgt[i - 1].split())
        assert n_tgt / n_src > 9 and n_tgt <= 80
    clean = set(range(1, SMALL.pool_size + 1)) - {i for v in noise.values() for i in v}
    ratios = [len(tgt[i - 1].split()) / len(src[i - 1].split()) for i in clean]
    assert max(ratios) < 9 and max(len(src[i - 1].split()) for i in clean) <= 80


def test_lines_look_untokenised_and_moses_tokenizer_agrees():
    from sacremoses import MosesTokenizer

    en, fr = MosesTokenizer(lang="en"), MosesTokenizer(lang="fr")
    sample = tokenised_sample(SMALL, "in", 150) + tokenised_sample(SMALL, "general", 150)
    for src, tgt, src_tok, tgt_tok in sample:
        assert en.tokenize(src, escape=True, return_str=True) == src_tok
        assert fr.tokenize(tgt, escape=True, return_str=True) == tgt_tok
    text_src = " ".join(s for s, *_ in sample)
    text_tgt = " ".join(t for _, t, *_ in sample)
    for mark in (",", ".", "?"):
        assert mark in text_src and f" {mark}" not in text_src
    assert "'t" in text_src and "&apos;t" in " ".join(s for _, _, s, _ in sample)
    assert "l'" in text_tgt and "l&apos; " in " ".join(t for *_, t in sample)


def _phrase_table(demo: DemoFiles) -> list[str]:
    with gzip.open(demo.phrase_table, "rt", encoding="utf-8", newline="\n") as handle:
        text = handle.read()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def test_phrase_table_parses_and_is_c_sorted(demo):
    lines = _phrase_table(demo)
    assert abs(len(lines) - SMALL.phrase_table_pairs) <= SMALL.phrase_table_pairs * 0.05
    encoded = [line.encode("utf-8") for line in lines]
    assert encoded == sorted(encoded)
    pairs = set()
    for line in lines:
        fields = line.split(" ||| ")
        assert len(fields) == 5, line
        src, tgt, scores, align, counts = fields
        assert src and tgt and src == src.strip() and "  " not in src + tgt
        assert (src, tgt) not in pairs
        pairs.add((src, tgt))
        values = [float(x) for x in scores.split()]
        assert len(values) == 4 and all(0 < v <= 1 for v in values)
        assert all(x == f"{float(x):.6g}" for x in scores.split())
        n_src, n_tgt = len(src.split()), len(tgt.split())
        for link in align.split():
            a, b = map(int, link.split("-"))
            assert 0 <= a < n_src and 0 <= b < n_tgt
        c_tgt, c_src, c_joint = map(int, counts.split())
        assert 1 <= c_joint <= min(c_src, c_tgt)
        assert math.isclose(values[0], c_joint / c_tgt, rel_tol=1e-5)
        assert math.isclose(values[2], c_joint / c_src, rel_tol=1e-5)
    if shutil.which("sort"):
        raw = gzip.decompress(demo.phrase_table.read_bytes())
        done = subprocess.run(["sort", "-c"], input=raw, env={"LC_ALL": "C"}, capture_output=True)
        assert done.returncode == 0, done.stderr


def test_phrase_table_truth_and_lexicon(demo):
    truth = json.loads(demo.truth.read_text())["counts"]
    lines = _phrase_table(demo)
    rows = [r.split("\t") for r in _lines(demo.phrase_table_truth)]
    assert len(rows) == len(lines) == truth["phrase_table"]
    for row, line in zip(rows, lines, strict=True):
        src, tgt = line.split(" ||| ")[:2]
        assert row[:2] == [src, tgt] and row[2] in ("0", "1")
    is_true = np.array([r[2] == "1" for r in rows])
    assert is_true.sum() == truth["phrase_table_true"] and (~is_true).sum() == truth["phrase_table_noisy"]
    assert 0.3 < is_true.mean() < 0.7
    p_direct = np.array([float(line.split(" ||| ")[2].split()[2]) for line in lines])
    # True pairs score higher on average, with overlap.
    assert p_direct[is_true].mean() > p_direct[~is_true].mean() + 0.2
    assert p_direct[~is_true].max() > np.quantile(p_direct[is_true], 0.1)

    lexicon = [r.split("\t") for r in _lines(demo.lexicon)]
    assert len(lexicon) == truth["lexicon"]
    assert {r[2] for r in lexicon} == {"core", "general", "shared", "in", "in-src", "in-tgt"}
    lex_pairs = {(r[0], r[1]) for r in lexicon}
    shapes = Counter((len(s.split()), len(t.split())) for s, t in lex_pairs)
    assert {(1, 1), (1, 2), (2, 1), (2, 2)} <= set(shapes)
    true_pairs = {(r[0], r[1]) for r in rows if r[2] == "1"}
    assert lex_pairs & true_pairs and not lex_pairs & {(r[0], r[1]) for r in rows if r[2] == "0"}
    # Some true phrase pairs are reordered (adjective-noun swap): a crossing alignment.
    crossing = 0
    for line, row in zip(lines, rows, strict=True):
        if row[2] == "1":
            links = [tuple(map(int, x.split("-"))) for x in line.split(" ||| ")[3].split()]
            crossing += any(a1 < a2 and b1 > b2 for a1, b1 in links for a2, b2 in links)
    assert crossing > 0


def _unigram_xent_diff(in_lines: list[str], out_lines: list[str], lines: list[str]) -> np.ndarray:
    """Moore-Lewis with add-one unigram models over the in-domain vocabulary (a cheap proxy)."""
    def counts(texts):
        return Counter(w for t in texts for w in t.split())

    c_in, c_out = counts(in_lines), counts(out_lines)
    vocab = set(c_in)
    n_in, n_out, v = sum(c_in.values()), sum(c_out.values()), len(vocab) + 1
    scores = []
    for line in lines:
        words = [w if w in vocab else "<unk>" for w in line.split()] or ["<unk>"]
        h_in = -sum(math.log((c_in.get(w, 0) + 1) / (n_in + v)) for w in words) / len(words)
        h_out = -sum(math.log((c_out.get(w, 0) + 1) / (n_out + v)) for w in words) / len(words)
        scores.append(h_in - h_out)
    return np.array(scores)


def test_in_domain_is_separable_on_both_sides(tmp_path):
    cfg = DemoConfig(pool_size=10_000, in_domain_size=1_000, dev_size=10, phrase_table_pairs=100)
    files = generate_demo(tmp_path, cfg)
    labels = np.array([int(x) for x in _lines(files.pool_in_domain)])
    k = int(labels.sum())
    sample = np.random.default_rng(0).choice(len(labels), size=cfg.in_domain_size, replace=False)
    diffs = {}
    for side, pool_path, in_path in (("en", files.pool_src, files.in_domain_src),
                                     ("fr", files.pool_tgt, files.in_domain_tgt)):
        pool = _lines(pool_path)
        diffs[side] = _unigram_xent_diff(_lines(in_path), [pool[i] for i in sample], pool)
    precision = {name: labels[np.argsort(d, kind="stable")[:k]].mean()
                 for name, d in (("en", diffs["en"]), ("fr", diffs["fr"]), ("both", diffs["en"] + diffs["fr"]))}
    assert precision["both"] >= 0.85, precision
    assert precision["both"] > max(precision["en"], precision["fr"]), precision
    random_pick = labels[sample[:k]].mean()
    assert abs(random_pick - cfg.pool_in_domain_fraction) < 0.05
