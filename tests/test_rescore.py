"""rnnenc rescore: scores equal the model's forward pass, +WP counts, partition-independent results,
a real 2-worker cluster, resumption after an interruption, and one-line errors."""

from __future__ import annotations

import argparse
import gzip
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rnnenc.pipeline.artifacts import MANIFEST_NAME, REPORT_NAME, file_hash, read_manifest, write_manifest
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.model import EncoderDecoder, EncoderDecoderConfig, load_model, save_model, score_pairs
from rnnenc.pipeline.phrase_table import MOSES_SCORE_NAMES, import_moses, read_score_columns
from rnnenc.pipeline.rescore import (
    RescoreConfig,
    plan_units,
    prepare_staging,
    read_unit,
    rescore,
    rescore_unit,
    run_identity,
    staging_dir,
    torch_threads,
)
from rnnenc.pipeline.scorer import PhraseScorer
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.pipeline.vocab import Vocabulary
from rnnenc.workflows import cli
from rnnenc.workflows import rescore as rescore_command
from rnnenc.workflows.cluster import DaskExecutor

DEMO = DemoConfig(seed=3, pool_size=2000, in_domain_size=200, dev_size=50, phrase_table_pairs=1500)
SCORES = [{"name": name, "domain": "prob"} for name in MOSES_SCORE_NAMES]  # an imported table's four
# Small fixed batches so that a few hundred pairs make many groups, buckets and padded batches.
SMALL = {"encoder_batch": 8, "decoder_batch": 16, "readout_rows": 4, "group_rows": 50, "threads": 1}
GROUP = SMALL["group_rows"]


def write_table(table: pa.Table, out: Path, rows_per_part: int, row_group_size: int,
                langs: tuple[str, str] = ("en", "fr")) -> Path:
    """``table`` re-cut into other parts and row groups (same rows, schema and metadata)."""
    out.mkdir(parents=True)
    for p, start in enumerate(range(0, table.num_rows, rows_per_part)):
        pq.write_table(table.slice(start, rows_per_part), out / f"part-{p:05d}.parquet", row_group_size=row_group_size)
    write_manifest(out, stage="phrase-table", inputs=[], config={"source_lang": langs[0], "target_lang": langs[1]},
                   counts={"rows": table.num_rows})
    return out


def tiny_model(path: Path, rows: list[dict], *, langs=("en", "fr"), swap: bool = False, seed: int = 0) -> Path:
    """A random model (hidden 32, embedding 16) whose vocabularies miss the rarest quarter of the words."""
    def vocab(side: str, lang: str) -> Vocabulary:
        counts = Counter(token for row in rows for token in row[side].split())
        words = sorted(counts, key=lambda w: (-counts[w], w))
        return Vocabulary(words[: len(words) * 3 // 4], lang=lang)

    src, tgt = vocab("source", langs[0]), vocab("target", langs[1])
    if swap:
        src, tgt = Vocabulary(tgt.itos[3:], lang=langs[0]), Vocabulary(src.itos[3:], lang=langs[1])
    torch.manual_seed(seed)
    model = EncoderDecoder(EncoderDecoderConfig(src_vocab_size=len(src), tgt_vocab_size=len(tgt), embedding=16,
                                                hidden=32, maxout=16, output_rank=8))
    with torch.no_grad():  # larger than the paper's init, so the scores differ visibly between pairs
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    save_model(path, model, src, tgt)
    return path


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """The workers' setting (Dask's nanny runs one thread); also spares a shared machine."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rescore")
    files = generate_demo(root / "demo", DEMO)
    import_moses([files.phrase_table], root / "t100", source_lang="en", target_lang="fr", rows_per_group=100)
    table = read_out(root / "t100")
    rows = table.to_pylist()
    return {
        "root": root,
        "table": table,
        "rows": rows,
        "model": tiny_model(root / "model.pt", rows),
        # three partitionings of the same table: 15 row groups of 100, 2 parts in row groups of 250, one
        "groups100": root / "t100",
        "parts": write_table(table, root / "tparts", rows_per_part=700, row_group_size=250),
        "single": write_table(table, root / "tsingle", rows_per_part=len(rows), row_group_size=len(rows)),
    }


def read_out(path: Path) -> pa.Table:
    return pa.concat_tables(pq.read_table(p) for p in sorted(path.glob("part-*.parquet")))


def config(model: Path, **overrides) -> RescoreConfig:
    return RescoreConfig(model=str(model), device="cpu", **(SMALL | overrides))


def test_scores_equal_forward_pass_and_unknown_counts(data: dict, tmp_path: Path) -> None:
    units, _ = plan_units(data["groups100"], rows_per_unit=300, group_rows=GROUP)
    assert sum(u.rows for u in units) == len(data["rows"]) and {u.rows for u in units[:-1]} == {300}
    for unit in units:
        rescore_unit(unit, tmp_path, config(data["model"]))
    out = read_out(tmp_path)
    rows = data["rows"]
    assert out.num_rows == len(rows) and out.column("line").to_pylist() == [r["line"] for r in rows]

    model, src_vocab, tgt_vocab = load_model(data["model"])
    sources = [r["source"].split() for r in rows]
    targets = [r["target"].split() for r in rows]
    direct = score_pairs(model, sources, targets, src_vocab, tgt_vocab, batch_size=1).numpy()
    logp = out.column("rnn_logp").to_numpy()
    assert np.abs(logp - direct).max() < 1e-4
    assert np.ptp(logp) > 1.0  # the scores differ between pairs: the comparison means something

    unk = [src_vocab.count_unknown(s) + tgt_vocab.count_unknown(t) for s, t in zip(sources, targets, strict=True)]
    assert out.column("rnn_unk").to_pylist() == unk
    assert 0 < sum(u > 0 for u in unk) < len(unk)

    # the input's columns, values and metadata are kept; the new columns are declared as log scores
    original = read_out(data["groups100"])
    assert out.select(original.column_names).equals(original)
    assert out.schema.field("rnn_logp").type == pa.float32() == out.schema.field("rnn_unk").type
    assert read_score_columns(out.schema) == SCORES + [{"name": "rnn_logp", "domain": "log"},
                                                              {"name": "rnn_unk", "domain": "log", "penalty": True}]


@pytest.mark.determinism
def test_a_pairs_bits_follow_from_its_group_alone(data: dict) -> None:
    """Scored in any calls that keep its group whole, a pair's score is the same bit for bit."""
    model, src_vocab, tgt_vocab = load_model(data["model"])
    rows = data["rows"][:400]
    sources, targets = [r["source"] for r in rows], [r["target"] for r in rows]
    scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=8, decoder_batch=16, readout_rows=4,
                          group_rows=25)
    whole, unk, stats = scorer.score(sources, targets)
    assert stats.groups == 16 and stats.padded_rows > 0 and stats.sources_encoded < len(rows)
    pieces = [scorer.score(sources[a:b], targets[a:b]) for a, b in ((0, 25), (25, 150), (150, 400))]
    assert np.array_equal(np.concatenate([p[0] for p in pieces]), whole)
    assert np.array_equal(np.concatenate([p[1] for p in pieces]), unk)
    # a fresh scorer (new buffers) in the same process agrees too
    again = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=8, decoder_batch=16, readout_rows=4,
                         group_rows=25)
    assert np.array_equal(again.score(sources[100:200], targets[100:200])[0], whole[100:200])


@pytest.mark.determinism
@pytest.mark.parametrize("threads", [1, 2])
def test_batches_padded_to_16_rows_are_exact_on_any_thread_count(data: dict, threads: int) -> None:
    """A bucket's last batch is padded to a multiple of 16 rows, not to the full batch; the padded
    scores equal the model's forward pass and whole groups score alike in any call."""
    model, src_vocab, tgt_vocab = load_model(data["model"])
    rows = data["rows"][:600]
    sources, targets = [r["source"] for r in rows], [r["target"] for r in rows]
    with torch_threads(threads):
        scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=48, decoder_batch=64, readout_rows=32,
                              group_rows=120)
        whole, _, stats = scorer.score(sources, targets)
        lengths = {(len(s.split()), len(t.split())) for s, t in zip(sources, targets, strict=True)}
        assert stats.padded_rows > 0
        # at most 15 padding rows per bucket: far fewer than full batches would need
        assert stats.padded_rows < 15 * 2 * len(lengths) * stats.groups
        pieces = [scorer.score(sources[a:b], targets[a:b])[0] for a, b in ((0, 120), (120, 360), (360, 600))]
    assert np.array_equal(np.concatenate(pieces), whole)
    direct = score_pairs(model, [s.split() for s in sources], [t.split() for t in targets], src_vocab, tgt_vocab,
                         batch_size=1).numpy()
    assert np.abs(whole - direct).max() < 1e-4


def test_units_cut_the_global_row_order_into_whole_groups(data: dict) -> None:
    """The same units, row for row, whatever the files and row groups; rows_per_unit rounds up to groups."""
    plans = {name: plan_units(data[name], rows_per_unit=120, group_rows=GROUP)[0]
             for name in ("groups100", "parts", "single")}
    for units in plans.values():
        assert [(u.index, u.first_row, u.rows) for u in units] == [(i, 150 * i, 150) for i in range(10)]
        assert sum(r.stop - r.start for u in units for r in u.ranges) == len(data["rows"])
    assert len(plans["parts"][4].ranges) == 2  # rows 600-749 span the two parts of 700 rows
    for units in plans.values():
        lines = [read_unit(u, columns=["line"]).column("line").to_pylist() for u in units]
        assert lines == [list(range(150 * i + 1, 150 * i + 151)) for i in range(10)]


@pytest.mark.determinism
def test_identical_across_partitionings_on_a_two_worker_cluster(data: dict, dask_client, tmp_path: Path) -> None:
    outputs = {}
    for name, rows_per_unit in (("groups100", 100), ("parts", 500), ("single", 10_000)):
        out = tmp_path / name
        report = rescore(DaskExecutor(dask_client, quiet=True), data[name], out, config(data["model"]), rows_per_unit=rows_per_unit)
        assert report["rows"] == len(data["rows"]) and report["units_resumed"] == 0
        assert read_manifest(out)["counts"]["rows"] == len(data["rows"])
        assert json.loads((out / REPORT_NAME).read_text())["rows"] == len(data["rows"])
        assert not staging_dir(out).exists() and not (out / ".units").exists()
        outputs[name] = read_out(out)
    assert report["units"] == 1 and read_manifest(tmp_path / "groups100")["counts"]["units"] == 15
    reference = outputs.pop("single")
    for table in outputs.values():
        assert table.equals(reference)
        assert table.column("rnn_logp").to_pylist() == reference.column("rnn_logp").to_pylist()
    # the same units from other files write the same bytes
    parts = {}
    for name in ("groups100", "parts", "single"):
        out = tmp_path / f"{name}-500"
        rescore(DaskExecutor(dask_client, quiet=True), data[name], out, config(data["model"]), rows_per_unit=500)
        parts[name] = {p.name: p.read_bytes() for p in sorted(out.glob("part-*.parquet"))}
    assert len(parts["single"]) == 3 and parts["groups100"] == parts["parts"] == parts["single"]
    # the same as scoring in this process, one unit at a time
    local = tmp_path / "local"
    local.mkdir()
    units, _ = plan_units(data["parts"], rows_per_unit=500, group_rows=GROUP)
    for unit in units:
        rescore_unit(unit, local, config(data["model"]))
    assert read_out(local).equals(reference)


def test_interrupted_run_resumes_with_every_row_once(data: dict, dask_client, tmp_path: Path) -> None:
    table, out = data["groups100"], tmp_path / "out"
    cfg = config(data["model"])
    resolved, run = run_identity(cfg, 100)
    units, _ = plan_units(table, 100, GROUP)
    staging = staging_dir(out)
    prepare_staging(staging, run, units)
    for unit in units[:6]:  # committed before the interruption
        rescore_unit(unit, staging, resolved)
    # debris of the interruption: a half-written part, a part whose record was never written,
    # and a part of another plan of the table
    (staging / ".part-00009.parquet.tmp-dead").write_bytes(b"PAR1 truncated")
    rescore_unit(units[7], staging, resolved)
    (staging / ".units" / "part-00007.json").unlink()
    (staging / "part-00099.parquet").write_bytes((staging / units[0].name).read_bytes())

    report = rescore(DaskExecutor(dask_client, quiet=True), table, out, cfg, rows_per_unit=100)
    assert report["units_resumed"] == 6 and report["units_scored"] == len(units) - 6
    lines = read_out(out).column("line").to_pylist()
    assert sorted(lines) == list(range(1, len(data["rows"]) + 1)) == lines
    clean = tmp_path / "clean"
    rescore(DaskExecutor(dask_client, quiet=True), table, clean, cfg, rows_per_unit=100)
    assert read_out(out).equals(read_out(clean))
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())


def test_killed_cli_run_resumes(data: dict, dask_address: str, tmp_path: Path) -> None:
    """SIGKILL the client mid-run, rerun the same command: every row exactly once, same scores."""
    big = pa.concat_tables([data["table"]] * 4)
    big = big.set_column(big.schema.get_field_index("line"), "line", pa.array(range(1, big.num_rows + 1), pa.int64()))
    rows = big.to_pylist()
    table = write_table(big, tmp_path / "table", rows_per_part=len(rows), row_group_size=100)
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "rnnenc.workflows.cli", "rescore", "--phrase-table", str(table), "--model",
            str(data["model"]), "--out", str(out), "--scheduler", dask_address, "--device", "cpu",
            "--rows-per-unit", "100", "--group-rows", str(GROUP), "--encoder-batch", "8", "--decoder-batch", "16",
            "--readout-rows", "4",
            "--threads", "1", "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    staging = staging_dir(out)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if staging.is_dir() and len(list((staging / ".units").glob("part-*.json"))) >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list((staging / ".units").glob("part-*.json"))) if staging.is_dir() else 60
    assert not (out / MANIFEST_NAME).exists()
    time.sleep(1.0)  # tasks of the dead client may still commit units; they are atomic either way

    result = subprocess.run(argv[:-1], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["units"] == 60 and report["units_resumed"] >= min(done_at_kill, 3)
    assert report["units_resumed"] < 60, "the run finished before it was killed: no resumption tested"
    lines = read_out(out).column("line").to_pylist()
    assert lines == list(range(1, len(rows) + 1))
    model, src_vocab, tgt_vocab = load_model(data["model"])
    sample = slice(0, len(rows), 37)
    direct = score_pairs(model, [r["source"].split() for r in rows[sample]], [r["target"].split() for r in rows[sample]],
                         src_vocab, tgt_vocab).numpy()
    assert np.abs(read_out(out).column("rnn_logp").to_numpy()[sample] - direct).max() < 1e-4


def test_cli_rescore_and_moses_export(data: dict, dask_address: str, tmp_path: Path, capsys) -> None:
    out, moses = tmp_path / "out", tmp_path / "moses"
    parser = argparse.ArgumentParser()
    rescore_command.add_arguments(parser)
    cli.add_common_arguments(parser)
    args = parser.parse_args(["--phrase-table", str(data["parts"]), "--model", str(data["model"]), "--out", str(out),
                              "--export", str(moses), "--scheduler", dask_address, "--rows-per-unit", "500",
                              "--quiet"])
    assert rescore_command.main(args) == 0
    printed = capsys.readouterr().out
    assert f"rescored {len(data['rows']):,} pairs" in printed and "exported" in printed
    assert read_manifest(moses)["counts"]["rows"] == len(data["rows"])
    scores = {(r["source"], r["target"]): (r["rnn_logp"], r["rnn_unk"]) for r in read_out(out).to_pylist()}
    with gzip.open(moses / "phrase-table.gz", "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    assert len(lines) == len(data["rows"]) == len(scores)
    assert lines == sorted(lines, key=lambda line: line.encode())
    for line in lines:
        fields = line.split(" ||| ")
        values = [float(v) for v in fields[2].split()]
        logp, unk = scores[(fields[0], fields[1])]
        assert len(values) == 6
        assert values[4] == pytest.approx(np.exp(logp), rel=1e-5) and values[5] == pytest.approx(np.exp(unk), rel=1e-5)


def test_input_is_never_modified(data: dict, dask_client, tmp_path: Path) -> None:
    table = data["parts"]
    before = {p.name: file_hash(p) for p in table.iterdir()}
    rescore(DaskExecutor(dask_client, quiet=True), table, tmp_path / "out", config(data["model"]), rows_per_unit=1000)
    assert {p.name: file_hash(p) for p in table.iterdir()} == before
    with pytest.raises(UserError, match="must differ from the input"):
        rescore(DaskExecutor(dask_client, quiet=True), table, table, config(data["model"]))


def test_mismatched_models_and_tables_are_clear_errors(data: dict, dask_client, tmp_path: Path) -> None:
    rows, table = data["rows"], data["single"]
    wrong_lang = tiny_model(tmp_path / "fr-en.pt", rows, langs=("fr", "en"))
    with pytest.raises(UserError, match="model's source language is 'fr' but the phrase table's is 'en'"):
        rescore(DaskExecutor(dask_client, quiet=True), table, tmp_path / "a", config(wrong_lang))
    swapped = tiny_model(tmp_path / "swapped.pt", rows, swap=True)
    with pytest.raises(UserError, match="unknown to the model's vocabularies.*swapped"):
        rescore(DaskExecutor(dask_client, quiet=True), table, tmp_path / "b", config(swapped))

    first = data["table"].slice(0, 300)
    no_target = write_table(first.drop_columns(["target"]), tmp_path / "nt", 300, 100)
    with pytest.raises(UserError, match="missing column 'target'"):
        rescore(DaskExecutor(dask_client, quiet=True), no_target, tmp_path / "c", config(data["model"]))
    bad_meta = write_table(first.drop_columns(["lex_e_given_f"]), tmp_path / "nm", 300, 100)
    with pytest.raises(UserError, match="rnnenc.scores lists 'lex_e_given_f', but the table has no such column"):
        rescore(DaskExecutor(dask_client, quiet=True), bad_meta, tmp_path / "d", config(data["model"]))
    with pytest.raises(UserError, match="already has a column 'p_f_given_e'"):
        rescore(DaskExecutor(dask_client, quiet=True), table, tmp_path / "e", config(data["model"], logp_column="p_f_given_e"))

    # an empty phrase is found on a worker and reported with its file and line
    targets = first.column("target").to_pylist()
    targets[250] = " "
    bad = write_table(first.set_column(1, "target", pa.array(targets)), tmp_path / "bad", 300, 100)
    line = first.column("line")[250].as_py()
    with pytest.raises(UserError, match=rf"part-00000.parquet:{line}: empty or null target"):
        rescore(DaskExecutor(dask_client, quiet=True), bad, tmp_path / "f", config(data["model"]), rows_per_unit=100)
    assert not (tmp_path / "f").exists()


def test_cli_one_line_errors(data: dict, dask_address: str, tmp_path: Path, capsys) -> None:
    code = cli.main(["rescore", "--phrase-table", str(data["single"]), "--model", str(tmp_path / "none.pt"),
                     "--out", str(tmp_path / "o"), "--scheduler", dask_address])
    assert code == 1
    assert capsys.readouterr().err.strip().endswith("none.pt: model file not found")
    code = cli.main(["rescore", "--phrase-table", str(tmp_path / "nothing"), "--model", str(data["model"]),
                     "--out", str(tmp_path / "o"), "--scheduler", dask_address, "--quiet"])
    assert code == 1 and "nothing: no such directory" in capsys.readouterr().err
    code = cli.main(["rescore", "--phrase-table", str(data["single"]), "--model", str(data["model"]),
                     "--out", str(tmp_path / "o"), "--scheduler", dask_address, "--decoder-batch", "10",
                     "--readout-rows", "4"])
    assert code == 1 and "--readout-rows must divide --decoder-batch" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_bf16_scores_and_partition_independence(data: dict, tmp_path: Path) -> None:
    gpu = RescoreConfig(model=str(data["model"]), device="cuda", encoder_batch=64, decoder_batch=64,
                        readout_rows=64, group_rows=GROUP)
    for name, rows_per_unit in (("groups100", 100), ("single", 10_000), ("single-again", 10_000)):
        (tmp_path / name).mkdir()
        for unit in plan_units(data[name.removesuffix("-again")], rows_per_unit, GROUP)[0]:
            rescore_unit(unit, tmp_path / name, gpu)
    a, b = read_out(tmp_path / "groups100"), read_out(tmp_path / "single")
    assert b.equals(read_out(tmp_path / "single-again"))  # reproducible run to run
    # across partitionings only to the last float32 bit on a GPU (see pipeline/rescore.py)
    assert np.abs(a.column("rnn_logp").to_numpy() - b.column("rnn_logp").to_numpy()).max() < 1e-4
    model, src_vocab, tgt_vocab = load_model(data["model"])
    direct = score_pairs(model, [r["source"].split() for r in data["rows"]],
                         [r["target"].split() for r in data["rows"]], src_vocab, tgt_vocab).numpy()
    assert np.abs(a.column("rnn_logp").to_numpy() - direct).max() < 0.05 * np.abs(direct).max()


def test_a_second_run_or_a_foreign_output_is_refused_before_any_work(data: dict, dask_client, tmp_path: Path) -> None:
    from rnnenc.pipeline.artifacts import output_lock

    out = tmp_path / "out"
    with output_lock(out):  # a run in progress
        with pytest.raises(UserError, match="another rnnenc run is writing this output"):
            rescore(DaskExecutor(dask_client, quiet=True), data["single"], out, config(data["model"]))
    assert not out.exists() and not staging_dir(out).exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    with pytest.raises(UserError, match="was not written by rnnenc rescore"):
        rescore(DaskExecutor(dask_client, quiet=True), data["single"], out, config(data["model"]))
    assert (out / "notes.txt").read_text() == "mine\n" and not staging_dir(out).exists()
