"""Parquet -> Moses text: C byte order out of core, exp() of log columns, clipping, moses.ini update."""

from __future__ import annotations

import gzip
import json
import math
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnenc.pipeline.artifacts import MANIFEST_NAME, REPORT_NAME
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.moses import export_stage, update_moses_ini
from rnnenc.pipeline.phrase_table import (
    ExportConfig,
    export_moses,
    import_moses,
    join_fields,
    list_parts,
    merge_runs,
    phrase_table_schema,
    read_score_columns,
    with_score_columns,
    with_scores_metadata,
)
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows import cli

SCORES = [{"name": f"score{i}", "domain": "prob"} for i in range(4)]


def write_table(directory: Path, rows: list[dict], scores=SCORES, parts: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    schema = phrase_table_schema(scores)
    step = math.ceil(len(rows) / parts)
    for p in range(parts):
        chunk = rows[p * step:(p + 1) * step]
        full = [{"alignment": "0-0", "counts": "1 1 1", "extra": [], "line": i + 1} | r for i, r in enumerate(chunk)]
        pq.write_table(pa.Table.from_pylist(full, schema=schema), directory / f"part-{p:05d}.parquet")
    return directory


def moses_lines(path: Path) -> list[str]:
    return gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")[:-1]


def row(source: str, target: str = "x", scores=(0.5, 0.5, 0.5, 0.5), **more) -> dict:
    return {"source": source, "target": target} | {f"score{i}": v for i, v in enumerate(scores)} | more


def test_c_byte_order_with_the_separator_in_the_key(tmp_path):
    sources = ["a", "a b", "ab", "B", "b", "é", "z", "a\tb", "&amp;", "a ||| b"[:1], "Z", "zz", "e\u0301"]
    rows = [row(s, t) for s in sources for t in ("x", "y y", "é")]
    random.Random(1).shuffle(rows)
    table = write_table(tmp_path / "t", rows, parts=3)
    out = tmp_path / "o.gz"
    export_moses(table, out, ExportConfig(sorter="python", run_bytes=200))
    lines = moses_lines(out)
    assert len(lines) == len(rows)
    assert [x.encode() for x in lines] == sorted(x.encode() for x in lines)
    assert lines.index("a b ||| x ||| 0.5 0.5 0.5 0.5 ||| 0-0 ||| 1 1 1") < lines.index(
        "a ||| x ||| 0.5 0.5 0.5 0.5 ||| 0-0 ||| 1 1 1")
    if shutil.which("sort"):
        by_sort = subprocess.run(["sort"], input="\n".join(lines[::-1]).encode() + b"\n", env={"LC_ALL": "C"},
                                 capture_output=True, check=True).stdout
        assert by_sort.decode().split("\n")[:-1] == lines
        export_moses(table, tmp_path / "s.gz", ExportConfig(sorter="sort", run_bytes=200))
        assert (tmp_path / "s.gz").read_bytes() == out.read_bytes()


@pytest.mark.determinism
def test_merge_with_a_small_fan_in_and_byte_identity_across_partitionings(tmp_path):
    rng = random.Random(3)
    words = ["a", "b", "é", "ab", "a b", "zz"]
    rows = [row(" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))), rng.choice(words),
                tuple(rng.random() for _ in range(4))) for _ in range(600)]
    outputs = []
    for parts, run_bytes in ((1, 1 << 30), (4, 2_000), (7, 500)):
        table = write_table(tmp_path / f"t{parts}", rows, parts=parts)
        out = tmp_path / f"o{parts}.gz"
        export_moses(table, out, ExportConfig(sorter="python", run_bytes=run_bytes))
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]
    # Multi-level merge: 9 runs merged 2 at a time.
    runs = []
    for k in range(9):
        path = tmp_path / f"run{k}.txt"
        chunk = sorted(f"{rng.random():.6f} ||| {k}".encode() for _ in range(50))
        path.write_bytes(b"".join(x + b"\n" for x in chunk))
        runs.append(str(path))
    expected = sorted(line for r in runs for line in Path(r).read_bytes().split(b"\n")[:-1])
    assert merge_runs(runs, tmp_path / "m.gz", sorter="python", fan_in=2, tmp_dir=tmp_path) == 450
    assert gzip.decompress((tmp_path / "m.gz").read_bytes()).split(b"\n")[:-1] == expected


def test_log_columns_are_written_as_exp_and_clipped_at_minus_100(tmp_path):
    rows = [row("a", scores=(0.5, 1.0, 0.0, 1e-50)), row("b", scores=(0.25, 0.125, 1.0, 1.0))]
    table = pa.Table.from_pylist([{"alignment": "", "counts": "", "extra": [], "line": i + 1} | r
                                  for i, r in enumerate(rows)], schema=phrase_table_schema(SCORES, fields=3))
    table = with_score_columns(table, {"rnn_logp": ([-2.5, -250.0], "log"), "rnn_unk": ([0.0, 2.0], "log")})
    (tmp_path / "t").mkdir()
    pq.write_table(table, tmp_path / "t" / "part-00000.parquet")
    counts = export_moses(tmp_path / "t", tmp_path / "o.gz")
    assert counts["clipped"] == {"score0": 0, "score1": 0, "score2": 1, "score3": 1, "rnn_logp": 1, "rnn_unk": 0}
    assert counts["clipped_total"] == 3
    lines = moses_lines(tmp_path / "o.gz")
    floor = f"{math.exp(-100):.6g}"
    assert lines == [f"a ||| x ||| 0.5 1 {floor} {floor} {math.exp(-2.5):.6g} 1",
                     f"b ||| x ||| 0.25 0.125 1 1 {floor} {math.exp(2.0):.6g}"]
    # What Moses reads back: log of each value, floored at -100.
    values = [max(math.log(float(v)), -100) for v in lines[0].split(" ||| ")[2].split()]
    assert values[4] == pytest.approx(-2.5, abs=1e-6) and values[5] == 0.0 and min(values) >= -100.01
    assert all(float(v) > 0 for line in lines for v in line.split(" ||| ")[2].split())


@pytest.mark.parametrize("value,domain,message", [
    (-0.5, "prob", "negative: Moses would take its log"),
    (float("nan"), "prob", "NaN"),
    (float("nan"), "log", "NaN"),
    (1000.0, "log", "too large"),
])
def test_values_moses_cannot_read_are_refused(tmp_path, value, domain, message):
    rows = [row("a"), row("b")]
    table = pa.Table.from_pylist([{"alignment": "", "counts": "", "extra": [], "line": i + 7} | r
                                  for i, r in enumerate(rows)], schema=phrase_table_schema(SCORES))
    table = with_score_columns(table, {"new": ([0.5, value], domain)})
    (tmp_path / "t").mkdir()
    pq.write_table(table, tmp_path / "t" / "part-00000.parquet")
    with pytest.raises(UserError, match=f"line 8: score column 'new' \\({domain}\\) is .*{message}"):
        export_moses(tmp_path / "t", tmp_path / "o.gz")


def test_precision(tmp_path):
    table = write_table(tmp_path / "t", [row("a", scores=(1 / 3, 0.1, 2.718281828, 1e-7))])
    export_moses(table, tmp_path / "6.gz")
    export_moses(table, tmp_path / "9.gz", ExportConfig(precision=9))
    assert moses_lines(tmp_path / "6.gz")[0].split(" ||| ")[2] == "0.333333 0.1 2.71828 1e-07"
    nine = moses_lines(tmp_path / "9.gz")[0].split(" ||| ")[2].split()
    assert [np.float32(float(v)) for v in nine] == [np.float32(v) for v in (1 / 3, 0.1, 2.718281828, 1e-7)]


def test_join_fields():
    assert join_fields(["a", "b", "1", "0-0", "1 1 1"]) == "a ||| b ||| 1 ||| 0-0 ||| 1 1 1"
    assert join_fields(["a", "b", "1", "", "1 1 1", "", ""]) == "a ||| b ||| 1 ||| ||| 1 1 1 ||| |||"


MOSES_INI = """\
#########################
### MOSES CONFIG FILE ###
#########################

# input factors
[input-factors]
0

[distortion-limit]
6

[feature]
UnknownWordPenalty
WordPenalty
PhrasePenalty
PhraseDictionaryMemory name=TranslationModel0 num-features=4 path=/work/train/model/phrase-table.gz input-factor=0 output-factor=0
LexicalReordering name=LexicalReordering0 num-features=6 type=wbe-msd-bidirectional-fe-allff input-factor=0 output-factor=0 path=/work/train/model/reordering-table.wbe-msd-bidirectional-fe.gz
Distortion
KENLM name=LM0 factor=0 path=/work/lm/news.binlm order=5

[weight]
UnknownWordPenalty0= 1
WordPenalty0= -1
PhrasePenalty0= 0.2
TranslationModel0= 0.2 0.2 0.2 0.2
LexicalReordering0= 0.3 0.3 0.3 0.3 0.3 0.3
Distortion0= 0.3
LM0= 0.5
"""

NAMES = ["score0", "score1", "score2", "score3", "rnn_logp", "rnn_unk"]


def test_moses_ini_update():
    update = update_moses_ini(MOSES_INI, table_path="/out/phrase-table.gz", score_names=NAMES,
                              weights={"rnn_unk": -0.2})
    lines = update.text.split("\n")
    assert ("PhraseDictionaryMemory name=TranslationModel0 num-features=6 path=/out/phrase-table.gz "
            "input-factor=0 output-factor=0") in lines
    assert "TranslationModel0= 0.2 0.2 0.2 0.2 0.2 -0.2" in lines
    changed = [(a, b) for a, b in zip(MOSES_INI.split("\n"), lines, strict=True) if a != b]
    assert len(changed) == 2       # everything else untouched
    assert update.added == ["rnn_logp", "rnn_unk"] and (update.old_features, update.new_features) == (4, 6)
    # Idempotent on its own output: nothing more to add, same text.
    again = update_moses_ini(update.text, table_path="/out/phrase-table.gz", score_names=NAMES)
    assert again.text == update.text and again.added == []


def test_a_penalty_column_starts_with_a_negative_weight(tmp_path):
    """rnn_unk is a count Moses reads as exp(count) through log(): a positive initial weight would
    reward unknown words, so columns declared penalties (rescore declares rnn_unk) start negative."""
    update = update_moses_ini(MOSES_INI, table_path="/out/phrase-table.gz", score_names=NAMES, penalties=["rnn_unk"])
    assert "TranslationModel0= 0.2 0.2 0.2 0.2 0.2 -0.2" in update.text.split("\n")
    # end to end: the flag travels in the table's score metadata from rescore to export
    table = pa.table({"source": ["a"], "target": ["b"], "line": pa.array([1], pa.int64())})
    table = with_score_columns(table, {f"score{i}": ([0.5], "prob") for i in range(4)})
    table = with_score_columns(table, {"rnn_logp": ([-1.0], "log"), "rnn_unk": ([1.0], "log")})
    scores = read_score_columns(table.schema)
    table = table.replace_schema_metadata(with_scores_metadata(
        table.schema, [s | ({"penalty": True} if s["name"] == "rnn_unk" else {}) for s in scores]).metadata)
    (tmp_path / "t").mkdir()
    pq.write_table(table, tmp_path / "t" / "part-00000.parquet")
    assert read_score_columns(pq.read_schema(tmp_path / "t" / "part-00000.parquet"))[-1] == {
        "name": "rnn_unk", "domain": "log", "penalty": True}
    (tmp_path / "moses.ini").write_text(MOSES_INI)
    export_stage(tmp_path / "t", tmp_path / "out", moses_ini=tmp_path / "moses.ini")
    assert "TranslationModel0= 0.2 0.2 0.2 0.2 0.2 -0.2" in (tmp_path / "out" / "moses.ini").read_text().split("\n")


def test_moses_ini_binarised_dictionaries_point_at_the_binarised_table():
    for ftype, suffix, tool in (("PhraseDictionaryCompact", ".minphr", "processPhraseTableMin"),
                                ("PhraseDictionaryOnDisk", ".ondisk", "CreateOnDiskPt")):
        text = MOSES_INI.replace("PhraseDictionaryMemory", ftype)
        update = update_moses_ini(text, table_path="/out/phrase-table.gz", score_names=NAMES)
        assert f"{ftype} name=TranslationModel0 num-features=6 path=/out/phrase-table{suffix}" in update.text
        assert update.binarise.startswith(tool) and " 6 " in update.binarise + " "


@pytest.mark.parametrize("change,message", [
    (lambda t: t.replace("PhraseDictionaryMemory", "Foo"), "no phrase dictionary"),
    (lambda t: t.replace("TranslationModel0= 0.2 0.2 0.2 0.2", "TranslationModel0= 0.2 0.2 0.2"),
     "num-features=4 but 3 weight"),
    (lambda t: t.replace("num-features=4", "num-features=7").replace("TranslationModel0= 0.2 0.2 0.2 0.2",
                                                                       "TranslationModel0=" + " 0.2" * 7),
     "has only 6 score column"),
    (lambda t: t.replace(" num-features=4", ""), "has no num-features"),
    (lambda t: t.replace("TranslationModel0= 0.2 0.2 0.2 0.2\n", ""), "no weights for TranslationModel0"),
    (lambda t: t.replace("[feature]\n", "[feature]\nPhraseDictionaryMemory name=TM1 num-features=4 path=x\n")
     .replace("TranslationModel0", "TM2"), "several phrase dictionaries"),
    (lambda t: "[ttable-file]\n0 0 0 5 /x/phrase-table.gz\n", "old-format moses.ini"),
])
def test_moses_ini_errors(change, message):
    with pytest.raises(UserError, match=message):
        update_moses_ini(change(MOSES_INI), table_path="/o/p.gz", score_names=NAMES)
    with pytest.raises(UserError, match="weights given for nope"):
        update_moses_ini(MOSES_INI, table_path="/o/p.gz", score_names=NAMES, weights={"nope": 1.0})


@pytest.fixture(scope="module")
def rescored(tmp_path_factory):
    """The demo phrase table imported, with two log-domain columns appended as rescore does."""
    root = tmp_path_factory.mktemp("export")
    files = generate_demo(root / "demo", DemoConfig(seed=9, pool_size=300, in_domain_size=30, dev_size=10,
                                                     phrase_table_pairs=2000))
    import_moses([files.phrase_table], root / "imported", source_lang="en", target_lang="fr", split_bytes=50_000)
    out = root / "rescored"
    out.mkdir()
    rng = np.random.default_rng(0)
    for part in list_parts(root / "imported"):
        table = pq.read_table(part)
        logp = -rng.gamma(2.0, 4.0, size=table.num_rows)
        logp[:3] = -150.0                            # clipped at -100
        unk = rng.integers(0, 3, size=table.num_rows).astype(np.float64)
        pq.write_table(with_score_columns(table, {"rnn_logp": (logp, "log"), "rnn_unk": (unk, "log")}),
                       out / part.name)
    return {"root": root, "files": files, "imported": root / "imported", "rescored": out}


def test_unmodified_table_round_trips_byte_for_byte(rescored, tmp_path):
    export_moses(rescored["imported"], tmp_path / "o.gz", ExportConfig(run_bytes=40_000))
    assert gzip.decompress((tmp_path / "o.gz").read_bytes()) == \
        gzip.decompress(rescored["files"].phrase_table.read_bytes())


def test_export_command_on_the_cluster(rescored, tmp_path, dask_address):
    ini = tmp_path / "moses.ini"
    ini.write_text(MOSES_INI)
    out = tmp_path / "export"
    status = cli.main(["export", "--table", str(rescored["rescored"]), "--moses-ini", str(ini), "--out", str(out),
                       "--weight", "rnn_unk=-0.5", "--run-size", "50K", "--sorter", "python",
                       "--scheduler", dask_address, "--quiet"])
    assert status == 0
    lines = moses_lines(out / "phrase-table.gz")
    original = gzip.decompress(rescored["files"].phrase_table.read_bytes()).decode().split("\n")[:-1]
    assert len(lines) == len(original) and [x.encode() for x in lines] == sorted(x.encode() for x in lines)
    table = pa.concat_tables([pq.read_table(p) for p in list_parts(rescored["rescored"])])
    by_pair = {(r["source"], r["target"]): r for r in table.select(["source", "target", "rnn_logp", "rnn_unk"])
               .to_pylist()}
    for line in lines[:200]:
        fields = line.split(" ||| ")
        scores = [float(v) for v in fields[2].split()]
        assert len(scores) == 6
        expected = by_pair[(fields[0], fields[1])]
        assert max(math.log(scores[4]), -100) == pytest.approx(max(expected["rnn_logp"], -100), abs=1e-4)
        assert math.log(scores[5]) == pytest.approx(expected["rnn_unk"], abs=1e-5)
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["clipped"]["rnn_logp"] >= 3 and report["clipped_total"] == sum(report["clipped"].values())
    assert report["moses_ini"]["num_features"] == [4, 6]
    text = (out / "moses.ini").read_text()
    assert f"num-features=6 path={(out / 'phrase-table.gz').resolve()}" in text
    assert "TranslationModel0= 0.2 0.2 0.2 0.2 0.2 -0.5" in text
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["stage"] == "export" and manifest["counts"]["rows"] == len(lines)


def test_export_stage_checks_the_ini_before_writing(rescored, tmp_path):
    ini = tmp_path / "moses.ini"
    ini.write_text(MOSES_INI.replace("num-features=4", "num-features=9").replace(
        "TranslationModel0= 0.2 0.2 0.2 0.2", "TranslationModel0=" + " 0.2" * 9))
    with pytest.raises(UserError, match="has only 6 score column"):
        export_stage(rescored["rescored"], tmp_path / "out", moses_ini=ini)
    assert not (tmp_path / "out").exists()
