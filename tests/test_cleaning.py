"""Cleaning before selection and Moses-compatible tokenisation in ingest: exact deduplication
(distributed, first occurrence kept, the same for any number of parts), language identification,
tokenizer.perl's -a and -no-escape, and truecasing trained part by part as sacremoses trains it on
the whole corpus. Real Dask workers where the output must not depend on them."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sacremoses import MosesTruecaser

from rnnenc.pipeline import dedup
from rnnenc.pipeline.artifacts import REJECTS_NAME, REPORT_NAME, read_manifest
from rnnenc.pipeline.corpus import CorpusInput
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import SERIAL
from rnnenc.pipeline.ingest import ingest
from rnnenc.pipeline.preprocess import PreprocessConfig, tokenize
from rnnenc.workflows.cluster import DaskExecutor

CONFIG = PreprocessConfig(source_lang="en", target_lang="fr")


def read_corpus(out: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(out.glob("part-*.parquet")))


def write_pair(path: Path, en: list[str], fr: list[str]) -> CorpusInput:
    path.mkdir(parents=True, exist_ok=True)
    (path / "c.en").write_text("".join(f"{line}\n" for line in en), encoding="utf-8")
    (path / "c.fr").write_text("".join(f"{line}\n" for line in fr), encoding="utf-8")
    return CorpusInput("text", (str(path / "c.en"), str(path / "c.fr")), path.name)


def rejects(out: Path) -> list[list[str]]:
    with gzip.open(out / REJECTS_NAME, "rt", encoding="utf-8") as handle:
        return [line.rstrip("\n").split("\t") for line in handle][1:]


# --------------------------------------------------------------------------------------------
# Deduplication


@pytest.mark.determinism
def test_duplicates_across_parts_and_corpora_kept_once_whatever_the_parts(tmp_path, dask_client):
    rng = np.random.default_rng(3)
    distinct = [(f"sentence {i} about topic {i % 7} .", f"phrase {i} sur le sujet {i % 7} .") for i in range(40)]
    picks = rng.integers(0, len(distinct), size=120)
    pairs = [distinct[i] for i in picks]
    # The same pair spelt differently before tokenising ("," glued) is the same after it.
    pairs[5] = (pairs[3][0].replace(" .", "."), pairs[3][1])
    first = write_pair(tmp_path / "first", [s for s, _ in pairs[:70]], [t for _, t in pairs[:70]])
    second = write_pair(tmp_path / "second", [s for s, _ in pairs[70:]], [t for _, t in pairs[70:]])
    executor = DaskExecutor(dask_client, quiet=True)
    outputs = {}
    for rows in (1, 7, 1000):
        out = tmp_path / f"out{rows}"
        report = ingest(executor, [first, second], out, CONFIG, rows_per_part=rows, deduplicate=True,
                        on_error="skip")
        outputs[rows] = (read_corpus(out), (out / REJECTS_NAME).read_bytes(), report)
    table, rejects_bytes, report = outputs[1000]
    for other, other_rejects, other_report in (outputs[1], outputs[7]):
        assert other.equals(table)
        assert other_rejects == rejects_bytes
        assert other_report["dropped_by_reason"] == report["dropped_by_reason"]
    kept = list(zip(table.column("source").to_pylist(), table.column("target").to_pylist(), strict=True))
    assert len(kept) == len(set(kept)) == len(set(picks))
    # Each kept pair is the first occurrence in input order (corpus order, then line).
    order = list(zip(table.column("corpus").to_pylist(), table.column("line").to_pylist(), strict=True))
    seen, firsts = set(), []
    for index, pick in enumerate(picks):
        if pick not in seen:
            seen.add(pick)
            firsts.append(("first", index + 1) if index < 70 else ("second", index - 69))
    assert order == firsts
    assert report["dropped_by_reason"] == {"duplicate": 120 - len(set(picks))}
    assert report["pairs_written"] + report["pairs_dropped"] == report["lines_read"] == 120
    assert sum(c["dropped"] for c in report["corpora"].values()) == report["pairs_dropped"]
    assert report["source_words"] == sum(table.column("source_tokens").to_pylist())
    rows = rejects(tmp_path / "out1000")
    assert len(rows) == report["pairs_dropped"] and {r[2] for r in rows} == {"duplicate"}
    # In input order, with the original bytes of each side.
    assert [(r[0], int(r[1])) for r in rows] == sorted((r[0], int(r[1])) for r in rows)
    line6 = next(r for r in rows if r[:2] == ["first", "6"])
    assert line6[5] == pairs[5][0]
    assert read_manifest(tmp_path / "out7")["config"]["dedup"] is True


def test_a_hash_collision_never_drops_a_distinct_pair(tmp_path, monkeypatch):
    """Every pair given the same hash: only the pairs whose text is the same go."""
    monkeypatch.setattr(dedup, "pair_hash", lambda source, target: np.zeros(len(source), dtype=np.uint64))
    corpus = write_pair(tmp_path / "c", ["a b", "c d", "a b", "e f"], ["x", "y", "x", "z"])
    report = ingest(SERIAL, [corpus], tmp_path / "out", CONFIG, rows_per_part=2, deduplicate=True)
    assert read_corpus(tmp_path / "out").column("source").to_pylist() == ["a b", "c d", "e f"]
    assert report["dropped_by_reason"] == {"duplicate": 1}


def test_no_clean_refuses_options_that_drop_lines(tmp_path):
    corpus = write_pair(tmp_path / "c", ["a"], ["b"])
    for config, options in ((PreprocessConfig("en", "fr", clean=False), {"deduplicate": True}),
                            (PreprocessConfig("en", "fr", clean=False, langid=True), {})):
        with pytest.raises(UserError, match="--no-clean keeps every line"):
            ingest(SERIAL, [corpus], tmp_path / "out", config, **options)


class TwiceExecutor:
    """Runs every task twice, as Dask reruns a task whose worker was lost after it wrote."""

    def map(self, func, items, *, desc="", resources=None, **kwargs):
        items = list(items)
        for item in items:
            func(item, **kwargs)
        return [func(item, **kwargs) for item in items]


def test_a_rerun_task_writes_the_same(tmp_path):
    en = ["The cat .", "A dog .", "The cat .", "the cat .", "A dog .", "I saw the cat ."]
    fr = ["Le chat .", "Un chien .", "Le chat .", "le chat .", "Un chien .", "J'ai vu le chat ."]
    corpus = write_pair(tmp_path / "c", en, fr)
    config = PreprocessConfig("en", "fr", truecase=("en", "fr"))
    once = ingest(SERIAL, [corpus], tmp_path / "once", config, rows_per_part=2, deduplicate=True, on_error="skip")
    twice = ingest(TwiceExecutor(), [corpus], tmp_path / "twice", config, rows_per_part=2, deduplicate=True,
                   on_error="skip")
    assert read_corpus(tmp_path / "twice").equals(read_corpus(tmp_path / "once"))
    assert once["dropped_by_reason"] == twice["dropped_by_reason"] == {"duplicate": 3}  # "the cat ." is "The cat ." truecased
    assert (tmp_path / "twice" / REJECTS_NAME).read_bytes() == (tmp_path / "once" / REJECTS_NAME).read_bytes()


def test_bucket_ranges_cover_the_hash_space_once():
    ranges = [dedup.bucket_range(b, 7) for b in range(7)]
    assert ranges[0][0] == 0 and ranges[-1][1] == 1 << 64
    assert all(hi == lo for (_, hi), (lo, _) in zip(ranges, ranges[1:], strict=False))


# --------------------------------------------------------------------------------------------
# Language identification

EN_LINES = ["The committee approved the budget for next year .", "We must protect the environment for our children .",
            "This report describes the results of the survey .", "I would like to thank the rapporteur for her work .",
            "Die Kommission hat den Bericht gestern angenommen .", "The vote will take place tomorrow at noon .",
            "La commission a adopté le rapport hier soir ."]
FR_LINES = ["Le comité a approuvé le budget de l'année prochaine .", "Nous devons protéger l'environnement pour nos enfants .",
            "Ce rapport décrit les résultats de l'enquête .", "The rapporteur deserves our thanks for this work .",
            "La Commission a adopté le rapport hier .", "Le vote aura lieu demain à midi .",
            "La commission a adopté le rapport hier soir ."]


def test_langid_drops_the_wrong_language_lines_counted_and_written(tmp_path, dask_client):
    corpus = write_pair(tmp_path / "c", EN_LINES, FR_LINES)
    config = PreprocessConfig("en", "fr", langid=True)
    report = ingest(DaskExecutor(dask_client, quiet=True), [corpus], tmp_path / "out", config, rows_per_part=3,
                    on_error="skip")
    assert report["dropped_by_reason"] == {"wrong language": 3}  # line 4 (fr side), 5 (en side), 7 (en side)
    assert read_corpus(tmp_path / "out").column("line").to_pylist() == [1, 2, 3, 6]
    rows = rejects(tmp_path / "out")
    assert [(r[1], r[2]) for r in rows] == [("4", "wrong language"), ("5", "wrong language"), ("7", "wrong language")]
    assert rows[1][5] == EN_LINES[4]
    assert read_manifest(tmp_path / "out")["config"]["langid"] is True
    # Without --langid nothing of the sort is dropped.
    assert ingest(SERIAL, [corpus], tmp_path / "plain", CONFIG)["pairs_dropped"] == 0
    # A threshold of 1 is never met: every pair goes, which is no output at all.
    with pytest.raises(UserError, match="no pair survived"):
        ingest(SERIAL, [corpus], tmp_path / "strict", PreprocessConfig("en", "fr", langid=True, langid_min_prob=1.0))


def test_langid_refuses_a_language_it_does_not_know(tmp_path):
    corpus = write_pair(tmp_path / "c", ["a"], ["b"])
    with pytest.raises(UserError, match="py3langid does not know the language xx"):
        ingest(SERIAL, [corpus], tmp_path / "out", PreprocessConfig("en", "xx", langid=True))


# --------------------------------------------------------------------------------------------
# Tokenisation options: tokenizer.perl -a and -no-escape

def test_aggressive_dash_splits_match_tokenizer_perl_a():
    # tokenizer.perl -l en -a output for these lines
    expected = {"a well-known fact": "a well @-@ known fact",
                "The state-of-the-art e-mail filter.": "The state @-@ of @-@ the @-@ art e @-@ mail filter .",
                "A 3-4 split, not -5.": "A 3 @-@ 4 split , not -5 .",
                "It's a co-operative.": "It &apos;s a co @-@ operative ."}
    for line, tokens in expected.items():
        assert tokenize(line, "en", aggressive_dash_splits=True) == tokens
    assert tokenize("a well-known fact", "en") == "a well-known fact"


def test_no_escape_leaves_moses_special_characters():
    line = 'He said "a | b" & <c> [d].'
    assert tokenize(line, "en") == "He said &quot; a &#124; b &quot; &amp; &lt; c &gt; &#91; d &#93; ."
    assert tokenize(line, "en", escape=False) == 'He said " a | b " & < c > [ d ] .'


def test_tokenizer_options_are_recorded_and_applied(tmp_path):
    corpus = write_pair(tmp_path / "c", ["a well-known | fact"], ["un fait bien-connu"])
    config = PreprocessConfig("en", "fr", aggressive_dash_splits=True, escape=False)
    ingest(SERIAL, [corpus], tmp_path / "out", config)
    assert read_corpus(tmp_path / "out").to_pylist()[0]["source"] == "a well @-@ known | fact"
    recorded = read_manifest(tmp_path / "out")["config"]
    assert recorded["aggressive_dash_splits"] is True and recorded["escape"] is False


# --------------------------------------------------------------------------------------------
# Truecasing

TRUECASE_EN = ["The house is big .", "the house is small .", "Paris is in France .", "I live in Paris .",
               "The European Union met in Brussels .", "The union is strong .", "We visited the European Parliament .",
               "European laws apply .", "THE END .", "Mr Smith said : the House agrees .", "A house in Paris .",
               "The Parliament and the house .", "( The brackets ) here .", "Apple sells apples ; Apple is big ."]
TRUECASE_FR = [f"phrase numéro {i} ." for i in range(len(TRUECASE_EN))]


@pytest.mark.determinism
def test_truecasing_as_sacremoses_trained_on_the_whole_corpus_whatever_the_parts(tmp_path, dask_client):
    corpus = write_pair(tmp_path / "c", TRUECASE_EN, TRUECASE_FR)
    config = PreprocessConfig("en", "fr", truecase=("en",))
    executor = DaskExecutor(dask_client, quiet=True)
    outs = {}
    for rows in (1, 4, 100):
        out = tmp_path / f"out{rows}"
        ingest(executor, [corpus], out, config, rows_per_part=rows)
        outs[rows] = (read_corpus(out), (out / "_truecase-model.en").read_bytes())
        assert not (out / "_truecase-model.fr").exists()
    for table, model in outs.values():
        assert table.equals(outs[100][0]) and model == outs[100][1]
    tokenised = [tokenize(line, "en") for line in TRUECASE_EN]
    reference = MosesTruecaser()
    reference.train([line.split() for line in tokenised])
    expected = [reference.truecase(line, return_str=True, use_known=True) for line in tokenised]  # truecase.perl
    assert outs[100][0].column("source").to_pylist() == expected
    assert outs[100][0].column("target").to_pylist() == [tokenize(line, "fr") for line in TRUECASE_FR]
    assert expected[0] == "the house is big ." and expected[2] == "Paris is in France ."
    assert expected[9] == "Mr Smith said : the House agrees ."  # a known form kept, as truecase.perl keeps it
    # The saved model is a Moses model: loaded back, it truecases the same.
    loaded = MosesTruecaser(load_from=str(tmp_path / "out1" / "_truecase-model.en"))
    assert [loaded.truecase(line, return_str=True, use_known=True) for line in tokenised] == expected
    assert read_manifest(tmp_path / "out4")["config"]["truecase"] == ["en"]


def test_a_given_truecase_model_is_applied_and_copied(tmp_path):
    model = tmp_path / "model.en"
    model.write_text("house (3/4) House (1)\nParis (2/3) paris (1)\n", encoding="utf-8")  # Moses's format
    corpus = write_pair(tmp_path / "c", ["House in PARIS .", "a House ."], ["maison .", "une maison ."])
    config = PreprocessConfig("en", "fr", truecase=("en",))
    ingest(SERIAL, [corpus], tmp_path / "out", config, truecase_models={"en": str(model)})
    # truecase.perl: the first word takes its best form; a known form stays; an unknown one is recased
    assert read_corpus(tmp_path / "out").column("source").to_pylist() == ["house in Paris .", "a House ."]
    assert (tmp_path / "out" / "_truecase-model.en").read_bytes() == model.read_bytes()
    bad = tmp_path / "bad.en"
    bad.write_text("house (3/4) House\n", encoding="utf-8")
    with pytest.raises(UserError, match="not a Moses truecase model"):
        ingest(SERIAL, [corpus], tmp_path / "out2", config, truecase_models={"en": str(bad)})
    with pytest.raises(UserError, match="exclude each other"):
        ingest(SERIAL, [corpus], tmp_path / "out3", PreprocessConfig("en", "fr", lowercase=True, truecase=("en",)))


def test_cli_dedup_langid_truecase_in_one_run(tmp_path, dask_address):
    en = [*EN_LINES, EN_LINES[0]]
    fr = [*FR_LINES, FR_LINES[0]]
    corpus = write_pair(tmp_path / "c", en, fr)
    result = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "ingest", "--src", corpus.paths[0],
                             "--tgt", corpus.paths[1], "--src-lang", "en", "--tgt-lang", "fr",
                             "--out", str(tmp_path / "out"), "--scheduler", dask_address, "--rows-per-part", "3",
                             "--dedup", "--langid", "--truecase", "--aggressive-dash-splits", "--on-error", "skip"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "dropped 4 (duplicate: 1, wrong language: 3)" in result.stdout
    report = json.loads((tmp_path / "out" / REPORT_NAME).read_text())
    assert report["rejects_written"] == 4
    assert sorted(p.name for p in (tmp_path / "out").glob("_truecase-model.*")) == ["_truecase-model.en",
                                                                                  "_truecase-model.fr"]
    bad = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "ingest", "--src", corpus.paths[0],
                          "--tgt", corpus.paths[1], "--src-lang", "en", "--tgt-lang", "fr",
                          "--out", str(tmp_path / "out2"), "--workers", "1", "--quiet", "--truecase-model", "en"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    errors = [line for line in bad.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("rnnenc: error: --truecase-model ")
    assert errors[0].endswith("en: expected LANG=PATH")
