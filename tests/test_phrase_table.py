"""Moses phrase table -> Parquet: schema, byte ranges with exact line numbers, bad lines, round trip."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rnnenc.pipeline.artifacts import MANIFEST_NAME, REJECTS_NAME, REPORT_NAME
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.phrase_table import (
    MOSES_SCORE_NAMES,
    ExportConfig,
    Range,
    count_newlines,
    export_moses,
    import_moses,
    list_parts,
    number_ranges,
    phrase_table_schema,
    plan_ranges,
    read_score_columns,
    with_score_columns,
    with_scores_metadata,
)
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows import cli

DEMO = DemoConfig(seed=5, pool_size=500, in_domain_size=50, dev_size=20, phrase_table_pairs=3000)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("pt")
    files = generate_demo(root / "demo", DEMO)
    plain = root / "phrase-table.txt"
    plain.write_bytes(gzip.decompress(files.phrase_table.read_bytes()))
    return {"root": root, "gz": files.phrase_table, "plain": plain}


def read_table(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in list_parts(directory)])


def lines_of(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return data.split(b"\n")[:-1]


def test_schema_and_metadata(demo, tmp_path):
    report = import_moses([demo["gz"]], tmp_path / "t", source_lang="en", target_lang="fr", rows_per_group=500)
    parts = list_parts(tmp_path / "t")
    schema = pq.read_schema(parts[0])
    # Moses's standard four scores, named for what they are
    assert schema.names == ["source", "target", "p_f_given_e", "lex_f_given_e", "p_e_given_f", "lex_e_given_f",
                            "alignment", "counts", "extra", "line"]
    assert [schema.field(n).type for n in ("source", "p_f_given_e", "extra", "line")] == [
        pa.string(), pa.float32(), pa.list_(pa.string()), pa.int64()]
    assert read_score_columns(schema) == [{"name": n, "domain": "prob"} for n in MOSES_SCORE_NAMES]
    assert schema.metadata[b"rnnenc.fields"] == b"5"
    meta = pq.ParquetFile(parts[0]).metadata
    assert meta.num_row_groups > 1 and all(meta.row_group(i).num_rows <= 500 for i in range(meta.num_row_groups))
    table = read_table(tmp_path / "t")
    original = lines_of(demo["plain"])
    assert report["lines_read"] == report["rows_written"] == len(original) == table.num_rows
    assert table.column("line").to_pylist() == list(range(1, len(original) + 1))
    first = original[0].decode().split(" ||| ")
    row = table.slice(0, 1).to_pylist()[0]
    assert [row["source"], row["target"], row["alignment"], row["counts"]] == [first[0], first[1], first[3], first[4]]
    assert row["p_f_given_e"] == pytest.approx(float(first[2].split()[0]), rel=1e-6)
    manifest = json.loads((tmp_path / "t" / MANIFEST_NAME).read_text())
    assert manifest["config"]["source_lang"] == "en" and manifest["counts"]["rows_written"] == len(original)


@pytest.mark.parametrize("split", [1, 7, 100, 5000, 10**9])
def test_byte_ranges_start_at_lines_and_number_them_exactly(tmp_path, split):
    text = b"a ||| b ||| 1\n" + b"x" * 40 + b" ||| y ||| 0.2\n\xc3\xa9t\xc3\xa9 ||| z ||| 0.3\nq ||| r ||| 0.4"
    path = tmp_path / "t.txt"
    path.write_bytes(text)
    ranges = plan_ranges([path], split)
    assert ranges[0].start == 0 and ranges[-1].end == len(text)
    for a, b in zip(ranges, ranges[1:], strict=False):
        assert a.end == b.start and text[b.start - 1:b.start] == b"\n"
    numbered = number_ranges(ranges, [count_newlines(r) for r in ranges])
    assert [r.index for r in numbered] == list(range(len(ranges)))
    import_moses([path], tmp_path / "out", split_bytes=split)
    table = read_table(tmp_path / "out")
    assert table.column("line").to_pylist() == [1, 2, 3, 4]
    assert table.column("source").to_pylist() == ["a", "x" * 40, "été", "q"]


def test_split_plain_text_equals_gz_and_round_trips(demo, tmp_path):
    import_moses([demo["gz"]], tmp_path / "gz")
    report = import_moses([demo["plain"]], tmp_path / "plain", split_bytes=20_000, rows_per_group=300)
    assert report["ranges"] > 5 and report["parts"] == report["ranges"]
    assert read_table(tmp_path / "gz").equals(read_table(tmp_path / "plain"))
    for sorter in ("python", "sort"):
        out = tmp_path / f"{sorter}.gz"
        counts = export_moses(tmp_path / "plain", out, ExportConfig(sorter=sorter, run_bytes=30_000))
        assert counts["rows"] == report["rows_written"] and counts["clipped_total"] == 0
        assert gzip.decompress(out.read_bytes()) == demo["plain"].read_bytes()


def test_import_on_the_cluster_matches_local(demo, tmp_path, dask_address):
    out = tmp_path / "cluster"
    status = cli.main(["phrase-table", str(demo["plain"]), "--out", str(out), "--split-size", "30000",
                       "--src-lang", "en", "--tgt-lang", "fr", "--scheduler", dask_address, "--quiet"])
    assert status == 0
    import_moses([demo["plain"]], tmp_path / "local")
    assert read_table(out).equals(read_table(tmp_path / "local"))
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["ranges"] > 1 and report["rejected"] == 0


GOOD = "a b ||| x y ||| 0.5 0.25 1 0.125 ||| 0-0 1-1 ||| 4 2 1"

BAD_LINES = [
    ("field_count", "a ||| x", "2 field(s), expected at least 3"),
    ("field_count", "a ||| x ||| 0.5 0.25 1 0.125 ||| 0-0", "4 fields where line 1 of pt.txt has 5"),
    ("non_numeric_score", "a ||| x ||| 0.5 abc 1 0.125 ||| 0-0 ||| 1 1 1", "non-numeric score 'abc'"),
    ("non_numeric_score", "a ||| x ||| 0.5 nan 1 0.125 ||| 0-0 ||| 1 1 1", "score 'nan' is not a finite"),
    ("non_numeric_score", "a ||| x ||| 0.5 1_0 1 0.125 ||| 0-0 ||| 1 1 1", "score '1_0'"),
    ("non_numeric_score", "a ||| x ||| 0.5 1e39 1 0.125 ||| 0-0 ||| 1 1 1", "score '1e39'"),
    ("score_count", "a ||| x ||| 0.5 0.25 1 ||| 0-0 ||| 1 1 1", "3 scores where line 1 of pt.txt has 4"),
    ("score_count", "a ||| x |||  ||| 0-0 ||| 1 1 1", "no scores"),
    ("empty_phrase", " ||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1", "empty source phrase"),
    ("empty_phrase", "a |||  ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1", "empty target phrase"),
    ("invalid_utf8", b"a\xff ||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1", "invalid UTF-8 at byte 2"),
    ("field_count", "", "1 field(s)"),
    ("score_range", "a ||| x ||| 0.5 0.25 -0.3 0.125 ||| 0-0 ||| 1 1 1",
     "p_e_given_f (prob) is -0.3, not a probability in [0, 1]"),
    ("score_range", "a ||| x ||| 0.5 1.5 1 0.125 ||| 0-0 ||| 1 1 1", "lex_f_given_e (prob) is 1.5, not a probability"),
]


@pytest.mark.parametrize("reason,bad,message", BAD_LINES)
def test_each_bad_line_fails_with_file_line_and_reason(tmp_path, reason, bad, message):
    path = tmp_path / "pt.txt"
    bad = bad if isinstance(bad, bytes) else bad.encode()
    path.write_bytes(GOOD.encode() + b"\n" + GOOD.replace("a b", "c").encode() + b"\n" + bad + b"\n"
                     + GOOD.replace("a b", "d").encode() + b"\n")
    with pytest.raises(UserError) as caught:
        import_moses([path], tmp_path / "out", split_bytes=40)
    assert str(caught.value).startswith(f"{path}:3: ") and message in str(caught.value)
    assert not (tmp_path / "out").exists()
    report = import_moses([path], tmp_path / "out", on_error="skip", split_bytes=40)
    assert report["rejected_by_reason"] == {reason: 1}
    assert report["lines_read"] == 4 and report["rows_written"] == 3
    assert read_table(tmp_path / "out").column("line").to_pylist() == [1, 2, 4]
    rows = gzip.decompress((tmp_path / "out" / REJECTS_NAME).read_bytes()).decode().split("\n")
    assert rows[0] == "file\tline\treason\tdetail\ttext"
    fields = rows[1].split("\t")
    assert fields[:3] == [str(path), "3", reason] and message in fields[3]
    assert fields[4] == bad.decode("utf-8", errors="backslashreplace")


def test_skip_counts_every_reason_and_writes_rejects_where_asked(tmp_path):
    path = tmp_path / "pt.txt"
    bad = [b if isinstance(b, bytes) else b.encode() for _, b, _ in BAD_LINES]
    path.write_bytes(b"\n".join([GOOD.encode(), *bad, GOOD.replace("a b", "z").encode()]) + b"\n")
    rejects = tmp_path / "elsewhere" / REJECTS_NAME
    report = import_moses([path], tmp_path / "out", on_error="skip", rejects_path=rejects, split_bytes=100)
    expected: dict[str, int] = {}
    for reason, _, _ in BAD_LINES:
        expected[reason] = expected.get(reason, 0) + 1
    assert report["rejected_by_reason"] == dict(sorted(expected.items()))
    assert report["rows_written"] == 2 and report["lines_read"] == len(BAD_LINES) + 2
    assert report["rejects_file"] == str(rejects)
    rows = gzip.decompress(rejects.read_bytes()).decode().split("\n")[1:-1]
    assert [int(r.split("\t")[1]) for r in rows] == list(range(2, len(BAD_LINES) + 2))
    assert not (tmp_path / "out" / REJECTS_NAME).exists()


def test_first_line_bad_and_num_scores(tmp_path):
    path = tmp_path / "pt.txt"
    path.write_text("broken line\n" + GOOD + "\n")
    with pytest.raises(UserError, match=r"pt.txt:1: 1 field\(s\)"):
        import_moses([path], tmp_path / "out")
    report = import_moses([path], tmp_path / "out", on_error="skip")
    assert report["rows_written"] == 1 and report["num_scores"] == 4
    with pytest.raises(UserError, match=r"pt.txt:2: 4 scores, but --num-scores says 5"):
        import_moses([path], tmp_path / "out2", num_scores=5)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(UserError, match="empty phrase table"):
        import_moses([empty], tmp_path / "out3")


def test_extra_fields_trailing_empty_fields_and_three_field_tables_round_trip(tmp_path):
    cases = {
        "extra": ["a ||| x ||| 0.5 0.25 ||| 0-0 ||| 2 2 1 ||| sparse 1 ||| {{key value}}",
                  "b ||| y ||| 1 1e-05 ||| 0-0 ||| 1 1 1 ||| sparse 2 ||| "],
        "moses-trailing": ["a ||| x ||| 0.5 0.25 ||| 0-0 ||| 2 2 1 ||| |||",
                           "b ||| y ||| 1 1e-05 ||| ||| 1 1 1 ||| |||"],
        "three": ["a ||| x ||| 0.5 0.25", "b ||| y ||| 1 1e-05"],
        "crlf-and-spaces": ["a  |||  x ||| 0.5 0.25 \r"],
    }
    canonical = {"extra": ["a ||| x ||| 0.5 0.25 ||| 0-0 ||| 2 2 1 ||| sparse 1 ||| {{key value}}",
                           "b ||| y ||| 1 1e-05 ||| 0-0 ||| 1 1 1 ||| sparse 2 |||"],
                 "crlf-and-spaces": ["a ||| x ||| 0.5 0.25"]}
    for name, lines in cases.items():
        path = tmp_path / f"{name}.txt"
        path.write_text("\n".join(lines) + "\n", newline="")
        import_moses([path], tmp_path / name)
        out = tmp_path / f"{name}.out.gz"
        export_moses(tmp_path / name, out, ExportConfig(sorter="python"))
        assert [x.decode() for x in lines_of(out)] == canonical.get(name, lines), name
    table = read_table(tmp_path / "extra")
    assert table.column("extra").to_pylist() == [["sparse 1", "{{key value}}"], ["sparse 2", ""]]
    assert pq.read_schema(list_parts(tmp_path / "three")[0]).metadata[b"rnnenc.fields"] == b"3"


def test_score_columns_helpers(tmp_path):
    schema = phrase_table_schema([{"name": "score0", "domain": "prob"}], fields=5)
    table = pa.Table.from_pylist([{"source": "a", "target": "x", "score0": 0.5, "alignment": "", "counts": "",
                                   "extra": [], "line": 1}], schema=schema)
    out = with_score_columns(table, {"rnn_logp": (np.array([-1.5]), "log"), "rnn_unk": ([2.0], "log")})
    assert out.column_names[-2:] == ["rnn_logp", "rnn_unk"] and out.schema.field("rnn_logp").type == pa.float32()
    assert read_score_columns(out.schema) == [{"name": "score0", "domain": "prob"},
                                              {"name": "rnn_logp", "domain": "log"},
                                              {"name": "rnn_unk", "domain": "log"}]
    with pytest.raises(ValueError, match="already has"):
        with_score_columns(out, {"rnn_unk": ([1.0], "log")})
    with pytest.raises(ValueError, match="domain"):
        with_score_columns(out, {"new": ([1.0], "odds")})
    with pytest.raises(ValueError, match="1 rows"):
        with_score_columns(out, {"new": ([1.0, 2.0], "prob")})
    bare = pa.schema([("source", pa.string()), ("score1", pa.float32()), ("score0", pa.float64()),
                      ("scoreX", pa.float32())])
    assert [s["name"] for s in read_score_columns(bare)] == ["score0", "score1"]
    broken = with_scores_metadata(bare, [{"name": "missing", "domain": "prob"}])
    with pytest.raises(UserError, match="no such column"):
        read_score_columns(broken)


def test_range_dataclass_is_picklable_and_hashable():
    import pickle

    rng = Range("x", 0, 10, 1, 0)
    assert pickle.loads(pickle.dumps(rng)) == rng and {rng: 1}[rng] == 1


def test_fast_block_path_equals_line_by_line_parsing(demo):
    from rnnenc.pipeline.phrase_table import TableSpec, _fast_block, _rows_table, parse_line

    blocks = {
        "demo": (demo["plain"].read_bytes().split(b"\n")[:-1], TableSpec(4, 5)),
        "extras": ([b"a ||| x ||| 0.5 1e-05 ||| 0-0 ||| 1 1 1 ||| s 1 ||| k v\r",
                    "\u00e9 t  |||  y ||| .5 +1 ||| |||  ||| |||".encode()], TableSpec(2, 7)),
        "three": ([b"a ||| x ||| 0.5", b"b ||| y ||| 1E-3"], TableSpec(1, 3)),
    }
    for name, (lines, spec) in blocks.items():
        schema = phrase_table_schema([{"name": f"score{i}", "domain": "prob"} for i in range(spec.num_scores)],
                                     spec.num_fields)
        fast = _fast_block(lines, 10, schema, spec)
        slow = _rows_table(schema, spec, [(10 + i, *parse_line(raw, spec)) for i, raw in enumerate(lines)])
        assert fast is not None, name
        assert fast.equals(slow), name
    # Anything unusual is left to the line-by-line parser.
    spec = TableSpec(1, 3)
    schema = phrase_table_schema([{"name": "score0", "domain": "prob"}], 3)
    for odd in (b"a ||| x ||| 1_0", b"a ||| x ||| nan", b"a ||| x ||| 1 2", b" ||| x ||| 1", b"a ||| x",
                b"a\xff ||| x ||| 1", b"a ||| x ||| 1e39", b"a ||| x ||| one"):
        assert _fast_block([b"b ||| y ||| 1", odd], 1, schema, spec) is None, odd


def test_several_files_number_their_own_lines(demo, tmp_path):
    report = import_moses([demo["plain"], demo["gz"]], tmp_path / "two", split_bytes=50_000)
    n = len(lines_of(demo["plain"]))
    assert report["rows_written"] == 2 * n and set(report["files"]) == {str(demo["plain"]), str(demo["gz"])}
    assert all(f["lines"] == f["rows"] == n for f in report["files"].values())
    assert read_table(tmp_path / "two").column("line").to_pylist() == list(range(1, n + 1)) * 2


# ---------------------------------------------------------------------------------------------
# Hostile input: broken compressed files, scores outside their domain, first bad line, raw bytes

def _compress(suffix: str, data: bytes) -> bytes:
    import bz2
    import lzma

    import zstandard

    return {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress,
            ".zst": zstandard.ZstdCompressor().compress}[suffix](data)


def _no_output(tmp_path: Path, out: Path) -> bool:
    return not out.exists() and not (out / MANIFEST_NAME).exists() and not list(tmp_path.glob(f"{out.name}.tmp-*"))


@pytest.mark.parametrize("on_error", ["fail", "skip"])
@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz", ".zst"])
def test_truncated_compressed_table_is_a_user_error_naming_file_and_line(tmp_path, suffix, on_error):
    lines = [f"a{i} b ||| x{i} ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 2 2 1" for i in range(20000)]
    path = tmp_path / f"pt.txt{suffix}"
    path.write_bytes(_compress(suffix, "".join(line + "\n" for line in lines).encode())[:-30])
    with pytest.raises(UserError) as caught:
        import_moses([path], tmp_path / "out", on_error=on_error)
    message = str(caught.value)
    assert message.startswith(f"{path}:") and "\n" not in message
    assert "compressed file is truncated or corrupt" in message and "--on-error skip cannot skip" in message
    assert 1 <= int(message.split(":")[1]) <= len(lines) + 1
    assert _no_output(tmp_path, tmp_path / "out")


def test_cli_truncated_gzip_table_on_the_cluster_is_one_line(tmp_path, dask_address, capsys):
    # Long enough that detect_spec (on the client) reads fine and the worker meets the break.
    lines = [f"a{i} b ||| x{i} ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 2 2 1" for i in range(40000)]
    path = tmp_path / "pt.gz"
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode())[:-12])
    for extra in ([], ["--on-error", "skip"]):
        status = cli.main(["phrase-table", str(path), "--out", str(tmp_path / "out"), "--scheduler", dask_address,
                           "--quiet", *extra])
        errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert status == 1 and len(errors) == 1, errors
        assert errors[0].startswith(f"rnnenc: error: {path}:") and "truncated or corrupt (gzip: " in errors[0]
        line = int(errors[0].removeprefix(f"rnnenc: error: {path}:").split(":")[0])
        assert 30000 < line <= len(lines)
        assert _no_output(tmp_path, tmp_path / "out")


def test_scores_outside_their_prob_domain_are_refused_at_import(tmp_path):
    from rnnenc.pipeline.phrase_table import TableSpec, _fast_block

    # 0 is what the export accepts (it writes Moses's floor exp(-100)); so does the import.
    path = tmp_path / "zero.txt"
    path.write_text(GOOD + "\n" + GOOD.replace("0.5 0.25", "0 0.25") + "\n")
    import_moses([path], tmp_path / "zero")
    assert export_moses(tmp_path / "zero", tmp_path / "zero.gz", ExportConfig(sorter="python"))["clipped_total"] == 1

    # Old Moses tables: a fifth score, the phrase penalty e = 2.718, is no probability but fine.
    path = tmp_path / "five.txt"
    path.write_text("a ||| x ||| 0.5 0.25 1 0.125 2.718 ||| 0-0\nb ||| y ||| 0.5 0.25 1 0.125 -2.718 ||| 0-0\n")
    with pytest.raises(UserError, match=r"five\.txt:2: score4 \(prob\) is -2\.718: negative, but Moses takes"):
        import_moses([path], tmp_path / "five")
    report = import_moses([path], tmp_path / "five", on_error="skip")
    assert report["rows_written"] == 1 and report["rejected_by_reason"] == {"score_range": 1}

    # --prob-scores 0: no column is a probability, but a negative score still is no prob value.
    path = tmp_path / "free.txt"
    path.write_text("a ||| x ||| 1.5 7\nb ||| y ||| 0.5 -0\nc ||| z ||| -1 1\n")
    report = import_moses([path], tmp_path / "free", prob_scores=0, on_error="skip")
    assert report["rows_written"] == 2 and report["rejected_by_reason"] == {"score_range": 1}
    assert report["prob_scores"] == 0
    with pytest.raises(UserError, match=r"free\.txt:1: score0 \(prob\) is 1\.5, not a probability"):
        import_moses([path], tmp_path / "free2")

    # The Arrow fast path leaves such blocks to the line-by-line parser, which names the line.
    schema = phrase_table_schema([{"name": "score0", "domain": "prob"}], 3)
    for odd in (b"a ||| x ||| -0.001", b"a ||| x ||| 1.0001", b"a ||| x ||| -inf"):
        assert _fast_block([b"b ||| y ||| 1", odd], 1, schema, TableSpec(1, 3)) is None, odd
    assert _fast_block([b"b ||| y ||| 1", b"a ||| x ||| 7"], 1, schema, TableSpec(1, 3, prob_scores=0)) is not None


def test_each_range_reports_its_first_bad_line_and_the_import_the_first_of_all(tmp_path):
    from rnnenc.pipeline.phrase_table import detect_spec, import_range

    lines = [GOOD.replace("a b", f"p{i}") for i in range(400)]
    bad = {57: "a ||| x ||| 0.5 -1 1 0.125 ||| 0-0 ||| 1 1 1", 58: "a ||| x", 230: "q ||| r ||| 2 1 1 1 ||| 0-0 ||| 1 1 1",
           231: "a ||| x ||| 0.5 abc 1 0.125 ||| 0-0 ||| 1 1 1", 390: " ||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1"}
    for number, text in bad.items():
        lines[number - 1] = text
    path = tmp_path / "pt.txt"
    path.write_text("".join(line + "\n" for line in lines))
    spec = detect_spec(path)
    ranges = plan_ranges([path], 2000)
    ranges = number_ranges(ranges, [count_newlines(r) for r in ranges])
    checked = 0
    for rng in ranges:
        last = rng.first_line + count_newlines(rng) - 1
        inside = sorted(n for n in bad if rng.first_line <= n <= last)
        if not inside:
            continue
        # Blocks of a few lines: a range's first block may be clean (fast path), a later one not.
        with pytest.raises(UserError, match=rf"^{path}:{inside[0]}: "):
            import_range(rng, str(tmp_path / f"staging-{rng.index}"), spec, block_bytes=300)
        checked += 1
    assert checked >= 3 and len(ranges) > 5
    with pytest.raises(UserError, match=rf"^{path}:57: lex_f_given_e \(prob\) is -1, not a probability"):
        import_moses([path], tmp_path / "out", split_bytes=2000)
    report = import_moses([path], tmp_path / "out", split_bytes=2000, on_error="skip")
    rows = gzip.decompress((tmp_path / "out" / REJECTS_NAME).read_bytes()).decode().split("\n")[1:-1]
    assert [int(r.split("\t")[1]) for r in rows] == sorted(bad)
    assert report["lines_read"] == 400 == report["rows_written"] + report["rejected"]


def test_phrase_table_rejects_keep_the_exact_bytes_of_each_line(tmp_path):
    from rnnenc.pipeline.corpus import unescape_bytes

    bad = [b"a\tb ||| x ||| 0.5 -0.25 1 0.125 ||| 0-0 ||| 1 1 1",          # a tab inside the phrase
           b"back\\slash \\t ||| x\xff\xfe ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",  # \ and invalid UTF-8
           b"c ||| x ||| 0.5 0.25 1 ||| 0-0 ||| 1 1 1\r",                    # a CR before the newline
           b"\\x41 ||| y ||| 0.5 0.25 1 0.125 ||| 0-0",                       # looks like an escape
           b"\t\r"]
    path = tmp_path / "pt.txt"
    path.write_bytes(b"\n".join([GOOD.encode(), *bad, GOOD.replace("a b", "z").encode()]))  # no final newline
    report = import_moses([path], tmp_path / "out", on_error="skip", split_bytes=64)
    assert report["lines_read"] == len(bad) + 2 == report["rows_written"] + report["rejected"]
    assert report["rejected"] == len(bad) and report["rows_written"] == 2
    rows = gzip.decompress((tmp_path / "out" / REJECTS_NAME).read_bytes()).decode("utf-8").split("\n")
    assert rows[0] == "file\tline\treason\tdetail\ttext" and rows[-1] == ""
    fields = [row.split("\t") for row in rows[1:-1]]
    assert all(len(f) == 5 for f in fields) and [int(f[1]) for f in fields] == [2, 3, 4, 5, 6]
    assert [unescape_bytes(f[4]) for f in fields] == bad


def test_score_names_default_to_moses_four_and_can_be_given(tmp_path):
    path = tmp_path / "pt.txt"
    path.write_text("a ||| x ||| 0.5 0.25 0.5 0.125 ||| 0-0 ||| 1 1 1\n")
    report = import_moses([path], tmp_path / "named")
    assert report["score_names"] == list(MOSES_SCORE_NAMES)
    report = import_moses([path], tmp_path / "mine", score_names=["a1", "a2", "b1", "b2"])
    assert [s["name"] for s in read_score_columns(pq.read_schema(list_parts(tmp_path / "mine")[0]))] == [
        "a1", "a2", "b1", "b2"]
    # the export writes the columns in the same order, whatever their names
    export_moses(tmp_path / "mine", tmp_path / "pt.gz", ExportConfig(scores=("a1", "b1")))
    assert gzip.decompress((tmp_path / "pt.gz").read_bytes()).decode().split(" ||| ")[2] == "0.5 0.5"
    for names, message in ((["a", "b"], "2 name"), (["a", "b", "c", "line"], "reserved"),
                           (["a", "a", "b", "c"], "given twice"), (["a", "b c", "d", "e"], "not a column name")):
        with pytest.raises(UserError, match=message):
            import_moses([path], tmp_path / "bad", score_names=names)
    # other counts keep score<N>
    path.write_text("a ||| x ||| 0.5 0.25\n")
    assert import_moses([path], tmp_path / "two")["score_names"] == ["score0", "score1"]


# ---------------------------------------------------------------------------------------------
# Compressed input decompressed once into chunks, each a task

@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst"])
def test_compressed_table_is_imported_in_chunks_equal_to_the_plain_import(demo, tmp_path, suffix):
    data = demo["plain"].read_bytes()
    path = tmp_path / f"pt.txt{suffix}"
    path.write_bytes(_compress(suffix, data))
    report = import_moses([path], tmp_path / "chunked", split_bytes=40_000, rows_per_group=300)
    assert report["ranges"] == report["parts"] > 5
    import_moses([demo["plain"]], tmp_path / "plain")
    assert read_table(tmp_path / "chunked").equals(read_table(tmp_path / "plain"))
    assert report["files"] == {str(path): {"lines": len(lines_of(demo["plain"])), "rows": report["rows_written"],
                                           "rejected": 0}}
    assert not list((tmp_path / "chunked").rglob("chunk-*"))


def test_chunks_cut_at_line_starts_number_lines_and_say_whether_more_follow(tmp_path):
    from rnnenc.pipeline.phrase_table import decompressed_chunks, import_items

    lines = [f"p{i} ||| x{'y' * (i % 17)} ||| 0.5 0.25 1 0.125".encode() for i in range(3000)]
    data = b"\n".join(lines)                                              # no final newline
    path = tmp_path / "pt.gz"
    path.write_bytes(gzip.compress(data))
    (tmp_path / "s").mkdir()
    for split in (1, 999, 10_000, 10**9):
        chunks = list(decompressed_chunks(str(path), tmp_path / "s", split, index=3))
        assert [more for _, more in chunks] == [True] * (len(chunks) - 1) + [False]
        assert [c.index for c, _ in chunks] == list(range(3, 3 + len(chunks)))
        texts = [Path(c.path).read_bytes() for c, _ in chunks]
        assert b"".join(texts) == data and all(t.endswith(b"\n") for t in texts[:-1])
        assert all(len(t) >= split for t in texts[:-1])
        assert [c.first_line for c, _ in chunks] == list(np.cumsum([1] + [t.count(b"\n") for t in texts[:-1]]))
        assert {c.name for c, _ in chunks} == {str(path)} and all(c.label == str(path) for c, _ in chunks)
    # a small file, alone: one task, which an embedded cluster runs in this process
    items = list(import_items(plan_ranges([path], 10**9), tmp_path / "s", 10**9))
    assert [more for _, more in items] == [False]
    empty = tmp_path / "empty.gz"
    empty.write_bytes(gzip.compress(b""))
    assert [(c.end, more) for c, more in decompressed_chunks(str(empty), tmp_path / "s", 100)] == [(0, False)]
    mixed = list(import_items(plan_ranges([path, empty], 10**9), tmp_path / "s", 10**9))
    assert [(Path(r.label).name, r.index, more) for r, more in mixed] == [("pt.gz", 0, True), ("empty.gz", 1, False)]


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_truncated_gzip_in_chunks_reports_an_earlier_bad_line_first_and_else_the_break(tmp_path, on_error):
    lines = [f"a{i} b ||| x{i} ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 2 2 1" for i in range(20000)]
    lines[15000] = "a ||| x"
    path = tmp_path / "pt.txt.gz"
    path.write_bytes(gzip.compress("".join(line + "\n" for line in lines).encode())[:-30])
    with pytest.raises(UserError) as caught:
        import_moses([path], tmp_path / "out", on_error=on_error, split_bytes=50_000)
    message = str(caught.value)
    if on_error == "fail":                     # the first bad line of all, as a single task found it
        assert message.startswith(f"{path}:15001: 2 field(s)")
    else:
        assert message.startswith(f"{path}:") and "compressed file is truncated or corrupt" in message
        assert 15001 < int(message.split(":")[1]) <= len(lines) + 1
    assert _no_output(tmp_path, tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Export: gzip deflated on several threads, many runs merged in one pass

@pytest.mark.parametrize("threads,block", [(1, 1 << 22), (3, 1000), (2, 97)])
def test_parallel_gzip_is_one_member_any_reader_reads(tmp_path, threads, block):
    import io
    import subprocess

    from rnnenc.pipeline.phrase_table import ParallelGzip

    rng = np.random.default_rng(3)
    data = b"".join(b"%d ||| %x\n" % (i, int(v)) for i, v in enumerate(rng.integers(0, 1 << 40, 20_000)))
    for payload in (b"", b"x", data):
        raw = io.BytesIO()
        with ParallelGzip(raw, 6, threads=threads, block_bytes=block) as gz:
            for k in range(0, len(payload), 777):
                gz.write(payload[k:k + 777])
        out = raw.getvalue()
        reference = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=reference, mtime=0, compresslevel=6):
            pass
        assert out[:10] == reference.getvalue()[:10]                   # the header the export wrote before
        assert gzip.decompress(out) == payload
        (tmp_path / "p.gz").write_bytes(out)
        assert subprocess.run(["gzip", "-dc", str(tmp_path / "p.gz")], capture_output=True, check=True).stdout == payload
    import zlib

    # one member: a reader that stops after the first member has read everything
    member = zlib.decompressobj(31)
    assert member.decompress(out) == data and member.eof and member.unused_data == b""


def test_parallel_gzip_bytes_depend_on_the_text_alone():
    """The same text gives the same compressed bytes whatever the threads and however the writes
    are cut (a pipe hands the merge's output over in chunks of varying size)."""
    import io

    from rnnenc.pipeline.phrase_table import ParallelGzip

    rng = np.random.default_rng(5)
    data = b"".join(b"%d ||| %x\n" % (i, int(v)) for i, v in enumerate(rng.integers(0, 1 << 40, 30_000)))
    outputs = set()
    for threads, seed in ((1, 0), (3, 1), (2, 2)):
        cuts = np.sort(np.random.default_rng(seed).choice(len(data), size=200, replace=False))
        raw = io.BytesIO()
        with ParallelGzip(raw, 6, threads=threads, block_bytes=4096) as gz:
            for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True):
                gz.write(data[a:b])
        outputs.add(raw.getvalue())
    assert len(outputs) == 1 and gzip.decompress(outputs.pop()) == data


def test_many_runs_merge_in_one_sort_pass_as_python_merges_them(demo, tmp_path):
    import_moses([demo["plain"]], tmp_path / "t", split_bytes=50_000)
    outputs = {}
    for sorter in ("python", "sort"):
        counts = export_moses(tmp_path / "t", tmp_path / f"{sorter}.gz", ExportConfig(sorter=sorter, run_bytes=2_000))
        assert counts["runs"] > 64 and set(counts["seconds"]) == {"format_and_sort", "merge"}
        outputs[sorter] = gzip.decompress((tmp_path / f"{sorter}.gz").read_bytes())
    assert outputs["python"] == outputs["sort"] == demo["plain"].read_bytes()


def test_export_compress_level_changes_the_gzip_not_the_text(demo, tmp_path):
    import_moses([demo["gz"]], tmp_path / "t")
    texts, sizes = {}, {}
    for level in ("6", "1"):
        out = tmp_path / f"export-{level}"
        assert cli.main(["export", "--table", str(tmp_path / "t"), "--out", str(out), "--compress-level", level,
                         "--quiet"]) == 0
        texts[level] = gzip.decompress((out / "phrase-table.gz").read_bytes())
        sizes[level] = (out / "phrase-table.gz").stat().st_size
    assert texts["6"] == texts["1"] == demo["plain"].read_bytes() and sizes["1"] > sizes["6"]
