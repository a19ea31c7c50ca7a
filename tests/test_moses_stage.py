"""The optional Moses stage: skipped with a clear message without Moses; BLEU on detokenised text."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rnnenc.pipeline.artifacts import MANIFEST_NAME, REPORT_NAME
from rnnenc.pipeline.errors import UserError
from rnnenc.workflows.demo import baseline_moses_ini
from rnnenc.workflows.moses import bleu, find_moses, mert_command


def test_without_moses_it_fails_unless_asked_to_skip(tmp_path, monkeypatch):
    # no MOSES_HOME and a cache without a Moses build (KenLM is not needed here)
    env = {k: v for k, v in __import__("os").environ.items() if k != "MOSES_HOME"} | {"RNNENC_CACHE": str(tmp_path)}
    (tmp_path / "x").write_text("a\n")
    argv = [sys.executable, "-m", "rnnenc.workflows.cli", "moses", "--moses-ini", "x", "--dev-src", "x",
            "--dev-ref", "x", "--out", str(tmp_path / "out")]
    failed = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "no Moses installation found" in failed.stderr and "--skip-without-moses" in failed.stderr
    skipped = subprocess.run(argv + ["--skip-without-moses"], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=60)
    assert skipped.returncode == 0
    assert "skipped" in skipped.stdout and "MOSES_HOME" in skipped.stdout
    assert not (tmp_path / "out").exists()


def test_a_directory_without_moses_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="not a Moses installation .*bin/moses is missing"):
        find_moses(str(tmp_path))


def test_mert_command_and_bleu(tmp_path):
    (tmp_path / "bin").mkdir()
    command = mert_command(tmp_path, tmp_path / "d.en", tmp_path / "d.fr", tmp_path / "moses.ini", tmp_path / "w", 2,
                           iterations=3, decoder_flags="-search-algorithm 1")
    assert command[0].endswith("scripts/training/mert-moses.pl")
    assert command[command.index("--maximum-iterations") + 1] == "3"
    assert command[command.index("--decoder-flags") + 1] == "-threads 2 -search-algorithm 1"
    assert command[3].endswith("bin/moses") and "--working-dir" in command
    assert not any(c.startswith("--mertmertargs") for c in command)
    seeded = mert_command(tmp_path, tmp_path / "d.en", tmp_path / "d.fr", tmp_path / "moses.ini", tmp_path / "w", 2,
                          seed=7)
    assert seeded[-1] == "--mertmertargs=-r 7 "  # mert's own random seed, for each iteration
    refs = ["le chat est sur le tapis .", "c &apos; est la vie ."]
    assert bleu(refs, refs, "fr")["bleu"] == 100.0
    assert bleu(["le chien"] * 2, refs, "fr")["bleu"] < 10
    # against the raw reference text, as published scores are: the detokenised hypothesis matches it
    hyps = ["le chat est sur le tapis .", "c&apos; est la vie ."]  # as the Moses tokenizer writes c'est
    scored = bleu(hyps, hyps, "fr", raw_references=["le chat est sur le tapis.", "c'est la vie."])
    assert scored["bleu"] == 100.0 and scored["chrf"] == 100.0 and scored["reference"] == "raw"
    assert "nc:6" in scored["chrf_signature"] and scored["signature"].startswith("nrefs:1")
    with pytest.raises(UserError, match="2 hypotheses but 1 references"):
        bleu(refs, refs, "fr", raw_references=["x"])


MOSES = find_moses(None)
NEEDS_MOSES = pytest.mark.skipif(MOSES is None, reason="no Moses build found (MOSES_HOME, or scripts/build_moses.sh "
                                                       "into ~/.cache/rnnenc/moses-*): the real-Moses tests skip")
# the demo's baseline moses.ini without its language model (these tests need none)
BASELINE_INI = "\n".join(line for line in baseline_moses_ini("/nowhere/phrase-table.gz", "").split("\n")
                         if not line.startswith(("KENLM", "LM0")))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The demo's phrase table through rnnenc's import and export, with a baseline moses.ini."""
    from rnnenc.pipeline.moses import export_stage
    from rnnenc.pipeline.phrase_table import import_moses
    from rnnenc.pipeline.synthetic import DemoConfig, generate_demo, tokenised_sample

    root = tmp_path_factory.mktemp("moses")
    config = DemoConfig(seed=5, pool_size=300, in_domain_size=300, dev_size=20, phrase_table_pairs=3000)
    files = generate_demo(root / "demo", config)
    import_moses([files.phrase_table], root / "table", source_lang="en", target_lang="fr")
    (root / "baseline.ini").write_text(BASELINE_INI)
    export_stage(root / "table", root / "export", moses_ini=root / "baseline.ini")
    pairs = tokenised_sample(config, "in", 40)
    for name, rows in (("dev", pairs[:30]), ("test", pairs[30:])):
        (root / f"{name}.en").write_text("".join(p[2] + "\n" for p in rows))
        (root / f"{name}.fr").write_text("".join(p[3] + "\n" for p in rows))
    return root


@NEEDS_MOSES
def test_real_moses_tunes_and_decodes_rnnencs_export(exported, tmp_path, capsys):
    from rnnenc.workflows import cli

    out = tmp_path / "out"
    argv = ["moses", "--moses-ini", str(exported / "export"), "--dev-src", str(exported / "dev.en"),
            "--dev-ref", str(exported / "dev.fr"), "--test-src", str(exported / "test.en"),
            "--test-ref", str(exported / "test.fr"), "--mert-iterations", "1", "--threads", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    assert "moses: test BLEU" in capsys.readouterr().out
    report = __import__("json").loads((out / REPORT_NAME).read_text())
    assert report["test"]["sentences"] == 10 and 0 < report["test"]["bleu"] <= 100
    assert len((out / "test.hyp").read_text().splitlines()) == 10
    tuned = (out / "moses.tuned.ini").read_text()
    weights = next(line for line in tuned.splitlines() if line.startswith("TranslationModel0="))
    assert len(weights.split("=")[1].split()) == 4 and weights != "TranslationModel0= 0.2 0.2 0.2 0.2"  # tuned
    assert (out / "mert.log").is_file() and (tmp_path / "out.tuning" / "mert.log").is_file()


@NEEDS_MOSES
def test_a_failed_tuning_keeps_its_log_and_says_where(exported, tmp_path, capsys, monkeypatch):
    from rnnenc.workflows import cli

    broken = tmp_path / "broken.ini"
    broken.write_text((exported / "export" / "moses.ini").read_text().replace(
        str(exported / "export" / "phrase-table.gz"), str(tmp_path / "missing.gz")))
    argv = ["moses", "--moses-ini", str(broken), "--dev-src", str(exported / "dev.en"), "--dev-ref",
            str(exported / "dev.fr"), "--mert-iterations", "1", "--threads", "1", "--out", "out", "--quiet"]
    monkeypatch.chdir(tmp_path)  # a relative --out once broke mert-moses.pl, which changes directory
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("rnnenc: error: mert-moses.pl failed") and err.endswith("out.tuning/mert.log"), err
    assert (tmp_path / "out.tuning" / "mert.log").stat().st_size > 0 and not (tmp_path / "out").exists()


def test_lm_stage_trains_the_target_lm_and_export_puts_it_in_moses_ini(exported, tmp_path):
    """`rnnenc lm` on a select output's target side (+ in-domain text); `export --lm` sets the
    ini's KenLM feature, or adds one with train-model.perl's weight."""
    from rnnenc.pipeline.artifacts import write_manifest
    from rnnenc.pipeline.moses import export_stage, set_language_model
    from rnnenc.workflows import cli

    select = tmp_path / "select"  # what a select output holds for this stage
    select.mkdir()
    (select / "selected.fr").write_text((exported / "dev.fr").read_text() * 5)
    write_manifest(select, stage="select", inputs=[], config={}, counts={})
    assert cli.main(["lm", "--corpus", str(select), "--corpus", str(exported / "test.fr"), "--lang", "fr",
                     "--order", "3", "--out", str(tmp_path / "lm"), "--quiet"]) == 0
    assert (tmp_path / "lm" / "lm.binary").is_file()
    assert __import__("json").loads((tmp_path / "lm" / REPORT_NAME).read_text())["sentences"] == 160

    export_stage(exported / "table", tmp_path / "export", moses_ini=exported / "baseline.ini", lm=tmp_path / "lm")
    ini = (tmp_path / "export" / "moses.ini").read_text().splitlines()
    assert f"KENLM name=LM0 factor=0 path={(tmp_path / 'lm' / 'lm.binary').resolve()} order=3" in ini
    assert "LM0= 0.5" in ini
    # an ini that has one: its path and order change, nothing else
    again = set_language_model("\n".join(ini), "/other/lm.binary", 5).splitlines()
    assert "KENLM name=LM0 factor=0 path=/other/lm.binary order=5" in again and again.count("LM0= 0.5") == 1
    assert len(again) == len(ini)


@NEEDS_MOSES
def test_real_moses_decodes_with_the_lm_stages_model(exported, tmp_path):
    from rnnenc.pipeline.lm import build_target_lm
    from rnnenc.pipeline.moses import export_stage

    build_target_lm([exported / "dev.fr", exported / "test.fr"], "fr", tmp_path / "lm", order=3)
    export_stage(exported / "table", tmp_path / "export", moses_ini=exported / "baseline.ini", lm=tmp_path / "lm")
    with open(exported / "test.en", "rb") as source:
        done = subprocess.run([str(MOSES / "bin" / "moses"), "-f", str(tmp_path / "export" / "moses.ini"),
                               "-threads", "1"], stdin=source, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.decode().splitlines()) == 10


def test_mert_dev_bleu_reads_the_last_best_line(tmp_path):
    from rnnenc.workflows.moses import mert_dev_bleu

    log = tmp_path / "mert.log"
    log.write_text("noise\n(1) BEST at 1: 0.1 0.2 => 0.2042 at Wed Dec 2\n(2) BEST at 2: 0.3 0.1 => 0.25 at Wed\n")
    assert mert_dev_bleu(log) == 25.0
    log.write_text("no tuning here\n")
    assert mert_dev_bleu(log) is None


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    """300 in-domain demo pairs ingested (the tokeniser's output), and a 3-gram LM on their target side."""
    from rnnenc.pipeline.lm import build_target_lm
    from rnnenc.pipeline.synthetic import DemoConfig, tokenised_sample
    from rnnenc.workflows import cli

    root = tmp_path_factory.mktemp("corpus")
    pairs = tokenised_sample(DemoConfig(seed=3), "in", 320)
    (root / "train.en").write_text("".join(p[0] + "\n" for p in pairs[:300]))
    (root / "train.fr").write_text("".join(p[1] + "\n" for p in pairs[:300]))
    (root / "test.en").write_text("".join(p[2] + "\n" for p in pairs[300:]))
    assert cli.main(["ingest", "--src", str(root / "train.en"), "--tgt", str(root / "train.fr"), "--src-lang", "en",
                     "--tgt-lang", "fr", "--out", str(root / "corpus"), "--workers", "1", "--quiet"]) == 0
    build_target_lm([root / "corpus"], "fr", root / "lm", order=3)
    return root


@NEEDS_MOSES
def test_moses_train_builds_a_baseline_rnnenc_imports_exports_and_moses_decodes(small_corpus, tmp_path, capsys):
    """train-model.perl (fast_align + grow-diag-final-and, msd-bidirectional-fe) from an ingested
    corpus; its table imported, filtered to a test set at export, its moses.ini updated; Moses
    decodes with the lexicalised reordering model."""
    import gzip
    import json

    from rnnenc.workflows import cli

    base = tmp_path / "baseline"
    assert cli.main(["moses-train", "--corpus", str(small_corpus / "corpus"), "--lm", str(small_corpus / "lm"),
                     "--src-lang", "en", "--tgt-lang", "fr", "--cores", "1", "--out", str(base), "--quiet"]) == 0
    assert "moses-train:" in capsys.readouterr().out
    ini = (base / "model" / "moses.ini").read_text()
    assert "LexicalReordering" in ini and str(base / "model" / "reordering-table") in ini and ".tmp-" not in ini
    report = json.loads((base / REPORT_NAME).read_text())
    assert report["pairs"] == 300 and report["phrase_table_entries"] > 300
    with gzip.open(base / "model" / "phrase-table.gz", "rt") as table:
        assert len(next(table).split(" ||| ")[2].split()) == 4
    assert cli.main(["phrase-table", str(base), "--out", str(tmp_path / "table"), "--workers", "1", "--quiet"]) == 0
    assert json.loads((tmp_path / "table" / MANIFEST_NAME).read_text())["languages"] == ["en", "fr"]
    assert cli.main(["export", "--table", str(tmp_path / "table"), "--moses-ini", str(base), "--lm",
                     str(small_corpus / "lm"), "--filter-to", str(small_corpus / "test.en"),
                     "--out", str(tmp_path / "export"), "--workers", "1", "--quiet"]) == 0
    exported = json.loads((tmp_path / "export" / REPORT_NAME).read_text())
    assert 0 < exported["rows"] < report["phrase_table_entries"]  # filtered to the test sentences' phrases
    with open(small_corpus / "test.en", "rb") as source:
        done = subprocess.run([str(MOSES / "bin" / "moses"), "-f", str(tmp_path / "export" / "moses.ini"),
                               "-threads", "1"], stdin=source, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.decode().splitlines()) == 20
    assert b"LexicalReordering" in done.stderr


def test_moses_train_without_moses_is_one_line(tmp_path, monkeypatch, capsys):
    from rnnenc.workflows import cli

    monkeypatch.delenv("MOSES_HOME", raising=False)
    monkeypatch.setenv("RNNENC_CACHE", str(tmp_path))
    (tmp_path / "lm").write_text("x")
    assert cli.main(["moses-train", "--corpus", str(tmp_path), "--lm", str(tmp_path / "lm"), "--out",
                     str(tmp_path / "out"), "--quiet"]) == 1
    assert "moses-train: no Moses installation found" in capsys.readouterr().err


def test_a_test_corpus_gives_its_own_raw_references(tmp_path):
    """`moses --test CORPUS` scores against the corpus's original target text (ingest keeps it), not
    the detokenised tokens; a corpus ingested before rnnenc kept it falls back to those."""
    import pyarrow.parquet as pq

    from rnnenc.workflows import cli
    from rnnenc.workflows.moses import corpus_raw_references

    raw = ["C'est la vie.", "Tom & Jerry «ici»"]
    (tmp_path / "t.en").write_text("That's life.\nTom and Jerry here\n")
    (tmp_path / "t.fr").write_text("".join(f"{line}\n" for line in raw))
    assert cli.main(["ingest", "--src", str(tmp_path / "t.en"), "--tgt", str(tmp_path / "t.fr"), "--src-lang", "en",
                     "--tgt-lang", "fr", "--no-clean", "--out", str(tmp_path / "test"), "--workers", "1",
                     "--quiet"]) == 0
    assert corpus_raw_references(tmp_path / "test") == raw
    old = tmp_path / "old"
    old.mkdir()
    part = sorted((tmp_path / "test").glob("part-*.parquet"))[0]
    pq.write_table(pq.read_table(part).drop_columns(["source_raw", "target_raw"]), old / part.name)
    assert corpus_raw_references(old) is None
