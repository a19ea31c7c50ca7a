"""Filtering a phrase table to the phrases of a tuning/test set (filter-model-given-input.pl's rule),
as a stage and at export; export's column choice and its new moses.ini."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnenc.pipeline.artifacts import MANIFEST_NAME, REPORT_NAME
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.moses import export_stage, new_moses_ini
from rnnenc.pipeline.phrase_filter import filter_table, source_phrases
from rnnenc.pipeline.phrase_table import (
    ExportConfig,
    export_moses,
    list_parts,
    phrase_table_schema,
    with_scores_metadata,
)
from rnnenc.workflows import cli

SCORES = [{"name": f"score{i}", "domain": "prob"} for i in range(4)] + [
    {"name": "rnn_logp", "domain": "log"}, {"name": "rnn_unk", "domain": "log", "penalty": True}]
SOURCES = ["the", "the cat", "cat", "a dog", "dog", "the cat sat", "sat on", "mat", "the mat ."]


def write_table(directory, parts=2):
    directory.mkdir()
    schema = with_scores_metadata(phrase_table_schema(SCORES), SCORES)  # rnn_unk declared a penalty
    rows = [{"source": s, "target": f"t{i}", "score0": 0.5, "score1": 0.5, "score2": 0.5, "score3": 0.5,
             "rnn_logp": -1.5, "rnn_unk": float(i % 2), "alignment": "0-0", "counts": "1 1 1", "extra": [],
             "line": i + 1} for i, s in enumerate(SOURCES)]
    step = -(-len(rows) // parts)
    for p in range(parts):
        pq.write_table(pa.Table.from_pylist(rows[p * step:(p + 1) * step], schema=schema),
                       directory / f"part-{p:05d}.parquet")
    return directory


def test_source_phrases_are_the_inputs_ngrams_up_to_the_length(tmp_path):
    (tmp_path / "test.en").write_text("the cat sat\nmat\n")
    assert source_phrases([tmp_path / "test.en"], 2) == ["cat", "cat sat", "mat", "sat", "the", "the cat"]
    assert "the cat sat" in source_phrases([tmp_path / "test.en"])
    (tmp_path / "bad.en").write_bytes(b"\xff\n")
    with pytest.raises(UserError, match="bad.en: not UTF-8"):
        source_phrases([tmp_path / "bad.en"])


def test_filter_stage_keeps_exactly_the_usable_rows_unchanged(tmp_path, dask_address):
    table = write_table(tmp_path / "table")
    (tmp_path / "test.en").write_text("the cat sat on the mat\n")
    out = tmp_path / "filtered"
    assert cli.main(["filter", "--table", str(table), "--input", str(tmp_path / "test.en"), "--out", str(out),
                     "--scheduler", dask_address, "--quiet"]) == 0
    kept = pa.concat_tables([pq.read_table(p) for p in list_parts(out)])
    # "a dog", "dog" and "the mat ." (not an n-gram of the input) go; every kept row is as it was
    assert kept.column("source").to_pylist() == ["the", "the cat", "cat", "the cat sat", "sat on", "mat"]
    original = pa.concat_tables([pq.read_table(p) for p in list_parts(table)])
    assert kept.to_pylist() == [r for r in original.to_pylist() if r["source"] in kept.column("source").to_pylist()]
    assert pq.read_schema(list_parts(out)[0]).metadata == pq.read_schema(list_parts(table)[0]).metadata
    report = json.loads((out / REPORT_NAME).read_text())
    assert (report["rows"], report["kept"], report["dropped"]) == (9, 6, 3)
    assert json.loads((out / MANIFEST_NAME).read_text())["kind"] == "phrase-table"


def test_export_chooses_columns_and_filters(tmp_path):
    table = write_table(tmp_path / "table")
    (tmp_path / "test.en").write_text("a dog\n")
    config = ExportConfig(scores=("score0", "score1", "score2", "score3", "rnn_logp"))
    result = export_moses(table, tmp_path / "pt.gz", config, phrases=source_phrases([tmp_path / "test.en"]))
    lines = gzip.decompress((tmp_path / "pt.gz").read_bytes()).decode().splitlines()
    assert [line.split(" ||| ")[0] for line in lines] == ["a dog", "dog"]
    assert all(len(line.split(" ||| ")[2].split()) == 5 for line in lines)
    assert [s["name"] for s in result["scores"]][-1] == "rnn_logp"
    with pytest.raises(UserError, match="no score column 'rnn_wp'"):
        export_moses(table, tmp_path / "x.gz", ExportConfig(scores=("rnn_wp",)))


def test_export_with_an_lm_and_no_ini_writes_train_model_perls_layout(tmp_path):
    from rnnenc.pipeline.lm import LMConfig, train_lm

    table = write_table(tmp_path / "table")
    text = tmp_path / "lm.txt"
    text.write_text("t1 t2 t3 t4\nt2 t3 t5\nt1 t5 t6\nt1 t1 t2\n" * 5)
    arpa = tmp_path / "lm.arpa"
    train_lm([text], arpa, LMConfig(order=2))
    out = tmp_path / "export"
    report = export_stage(table, out, lm=arpa, config=ExportConfig(scores=("score0", "score1", "score2", "score3",
                                                                           "rnn_unk")))
    ini = (out / "moses.ini").read_text()
    assert f"PhraseDictionaryMemory name=TranslationModel0 num-features=5 path={(out / 'phrase-table.gz').resolve()}" \
        in ini
    assert f"KENLM name=LM0 factor=0 path={arpa.resolve()} order=2" in ini
    assert "TranslationModel0= 0.2 0.2 0.2 0.2 -0.2" in ini.splitlines()  # the unknown-word count: a penalty
    for line in ("Distortion0= 0.3", "WordPenalty0= -1", "PhrasePenalty0= 0.2", "LM0= 0.5", "[distortion-limit]"):
        assert line in ini.splitlines()
    assert report["moses_ini"]["new"] and report["moses_ini"]["weights"] == [0.2, 0.2, 0.2, 0.2, -0.2]
    with pytest.raises(UserError, match="weights given for nope"):
        new_moses_ini("t.gz", SCORES, "lm", 5, weights={"nope": 1.0})


def test_filter_refuses_what_is_not_a_phrase_table(tmp_path):
    (tmp_path / "test.en").write_text("a\n")
    with pytest.raises(UserError, match="a file, not a Parquet table"):
        filter_table(tmp_path / "test.en", tmp_path / "out", [tmp_path / "test.en"])
