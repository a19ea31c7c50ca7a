"""Outputs never cost data: --out never removes inputs or foreign directories, one run per output
at a time (a lock naming its holder), stale temporaries of killed runs removed by the next run,
relative paths with an external scheduler, machine errors in one line, the dashboard on loopback."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rnnenc.pipeline.artifacts import (
    LEGACY_MANIFEST_NAME,
    LEGACY_REPORT_NAME,
    LOG_NAME,
    MANIFEST_NAME,
    OWNER_NAME,
    REPORT_NAME,
    atomic_output_dir,
    check_output_target,
    is_complete,
    output_lock,
    output_stage,
    read_manifest,
    report_path,
    write_manifest,
)
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.ingested import open_corpus
from rnnenc.pipeline.phrase_table import import_moses
from rnnenc.workflows import cli
from rnnenc.workflows.config import load_workflow
from rnnenc.workflows.run import plan_workflow, run_workflow

EN = ["Hello world .", "A small cat .", "The house is red .", "I see a dog ."]
FR = ["Bonjour le monde .", "Un petit chat .", "La maison est rouge .", "Je vois un chien ."]
TABLE = "".join(f"{s} ||| {t} ||| 0.5 0.4 0.3 0.2 ||| 0-0 ||| 1 1 1\n"
                for s, t in [("hello", "bonjour"), ("cat", "chat"), ("house", "maison"), ("dog", "chien")])


def corpus(where: Path, copies: int = 1) -> tuple[Path, Path]:
    where.mkdir(parents=True, exist_ok=True)
    (where / "x.en").write_text("\n".join(EN * copies) + "\n")
    (where / "x.fr").write_text("\n".join(FR * copies) + "\n")
    return where / "x.en", where / "x.fr"


def snapshot(where: Path) -> dict[str, bytes]:
    """Every file's bytes but the stage logs' (their timestamps differ between runs)."""
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*"))
            if p.is_file() and p.name != LOG_NAME}


def ingest_argv(src: Path | str, tgt: Path | str, out: Path | str, address: str) -> list[str]:
    return ["ingest", "--src", str(src), "--tgt", str(tgt), "--src-lang", "en", "--tgt-lang", "fr",
            "--out", str(out), "--scheduler", address, "--quiet"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if " rnnenc INFO " not in line]  # logs, without --quiet
    assert len(lines) == 1 and lines[0].startswith("rnnenc: error: ") and "Traceback" not in err, err
    return lines[0]


def test_out_holding_the_inputs_is_refused_and_the_inputs_survive(tmp_path, dask_address, capsys):
    src, tgt = corpus(tmp_path / "d")
    (tmp_path / "d" / "unrelated.txt").write_text("not rnnenc's\n")
    before = snapshot(tmp_path / "d")
    assert cli.main(ingest_argv(src, tgt, tmp_path / "d", dask_address)) == 1
    assert "holds the input" in one_line_error(capsys)
    assert snapshot(tmp_path / "d") == before


def test_export_onto_its_own_table_is_refused(tmp_path, dask_address, capsys):
    (tmp_path / "pt.txt").write_text(TABLE)
    table = tmp_path / "T"
    import_moses([tmp_path / "pt.txt"], table, source_lang="en", target_lang="fr")
    before = snapshot(table)
    assert cli.main(["export", "--table", str(table), "--out", str(table), "--scheduler", dask_address]) == 1
    assert "holds the input" in one_line_error(capsys)
    assert snapshot(table) == before
    inside = table / "export"
    assert cli.main(["export", "--table", str(table), "--out", str(inside), "--scheduler", dask_address]) == 1
    assert "lies inside the input" in one_line_error(capsys)
    assert snapshot(table) == before


def test_another_stages_output_or_a_foreign_directory_is_never_replaced(tmp_path, dask_address, capsys):
    src, tgt = corpus(tmp_path / "in")
    train = tmp_path / "train-copy"  # a copy of a train directory
    train.mkdir()
    (train / "model.pt").write_bytes(b"weights")
    write_manifest(train, stage="train", inputs=[], config={}, counts={})
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("a user's file\n")
    for out, reason in ((train, "holds the output of rnnenc train, not ingest"),
                        (foreign, "was not written by rnnenc ingest")):
        before = snapshot(out)
        assert cli.main(ingest_argv(src, tgt, out, dask_address)) == 1
        assert reason in one_line_error(capsys)
        assert snapshot(out) == before
    a_file = tmp_path / "a-file"
    a_file.write_text("x\n")
    assert cli.main(ingest_argv(src, tgt, a_file, dask_address)) == 1
    assert "exists and is not a directory" in one_line_error(capsys)
    assert a_file.read_text() == "x\n"
    # an empty directory and an earlier output of the same stage are fine, and the rerun replaces it
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(ingest_argv(src, tgt, empty, dask_address)) == 0
    assert json.loads((empty / OWNER_NAME).read_text()) == {"stage": "ingest"}
    assert cli.main(ingest_argv(src, tgt, empty, dask_address)) == 0
    assert (empty / MANIFEST_NAME).is_file()


def test_an_output_from_before_the_sidecar_rename_is_still_complete_and_ours(tmp_path, dask_address, capsys):
    """Run directories written when the sidecars were manifest.json and report.json: still read,
    still rnnenc's (replaced by a rerun, refused to another stage), still up to date in a workflow."""
    corpus(tmp_path / "data")
    (tmp_path / "wf.yaml").write_text("run: old\nartifacts: art\nlanguages: {source: en, target: fr}\n"
                                      "stages:\n  pool: {command: ingest, src: data/x.en, tgt: data/x.fr}\n")
    workflow = load_workflow(tmp_path / "wf.yaml")
    assert [r["status"] for r in run_workflow(workflow, scheduler=dask_address, quiet=True)] == ["ran"]
    out = tmp_path / "art" / "old" / "pool"
    manifest = read_manifest(out)
    (out / MANIFEST_NAME).rename(out / LEGACY_MANIFEST_NAME)
    (out / REPORT_NAME).rename(out / LEGACY_REPORT_NAME)

    assert read_manifest(out) == manifest and is_complete(out) and output_stage(out) == "ingest"
    assert report_path(out) == out / LEGACY_REPORT_NAME
    assert open_corpus(out).source_lang == "en"
    assert check_output_target(out, "ingest") == out
    with pytest.raises(UserError, match="holds the output of rnnenc ingest, not vocab"):
        check_output_target(out, "vocab")
    assert plan_workflow(workflow)[0]["action"] == "skip"
    assert [r["status"] for r in run_workflow(workflow, scheduler=dask_address, quiet=True)] == ["skipped"]

    # a rerun replaces it with today's names, and the old ones are gone
    assert cli.main(ingest_argv(*corpus(tmp_path / "data"), out, dask_address)) == 0
    assert (out / MANIFEST_NAME).is_file() and (out / REPORT_NAME).is_file()
    assert not (out / LEGACY_MANIFEST_NAME).exists() and not (out / LEGACY_REPORT_NAME).exists()
    # an output finished in place (train's resume) keeps one manifest, which lists no manifest
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    (resumed / "model.pt").write_bytes(b"weights")
    (resumed / LEGACY_MANIFEST_NAME).write_text(json.dumps({"stage": "train"}))
    written = write_manifest(resumed, stage="train", inputs=[], config={}, counts={})
    assert [o["path"] for o in written["outputs"]] == ["model.pt"]
    assert not (resumed / LEGACY_MANIFEST_NAME).exists() and read_manifest(resumed) == written


def test_two_runs_into_one_output_the_second_names_the_first(tmp_path, dask_address, capsys):
    src, tgt = corpus(tmp_path / "in")
    out = tmp_path / "out"
    with output_lock(out):  # a run in progress
        assert cli.main(ingest_argv(src, tgt, out, dask_address)) == 1
        err = one_line_error(capsys)
        assert "another rnnenc run is writing this output" in err and f"pid {os.getpid()}" in err
    assert not out.exists()
    assert cli.main(ingest_argv(src, tgt, out, dask_address)) == 0  # the lock went with its holder


def test_stale_temporaries_of_killed_runs_are_removed_not_others(tmp_path, dask_address):
    src, tgt = corpus(tmp_path / "in")
    out = tmp_path / "out"
    stale = tmp_path / "out.tmp-0123abcd"  # what a SIGKILLed run leaves
    stale.mkdir()
    (stale / OWNER_NAME).write_text('{"stage": "ingest"}\n')
    (stale / "part-00000.parquet").write_bytes(b"PAR1 half")
    foreign = tmp_path / "out.tmp-notours"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("keep\n")
    unmarked = tmp_path / "out.tmp-89abcdef"  # the right name, but not written by rnnenc
    unmarked.mkdir()
    assert cli.main(ingest_argv(src, tgt, out, dask_address)) == 0
    assert not stale.exists() and foreign.is_dir() and unmarked.is_dir()


def test_an_interrupt_silences_the_clusters_loggers_before_it_raises():
    """SIGTERM or Ctrl-C can land inside distributed's sync(), whose clean-up callback then logs a
    traceback from the event loop's thread: the handler silences those loggers first."""
    import rnnenc.workflows.cluster  # noqa: F401 - loaded, as in any run that used a cluster

    names = ("distributed", "distributed.client", "tornado", "tornado.application", "asyncio")
    saved = {name: logging.getLogger(name).level for name in names}
    try:
        for name in names:
            logging.getLogger(name).setLevel(logging.ERROR)
        with pytest.raises(KeyboardInterrupt):
            cli._terminate(signal.SIGTERM, None)
        assert not [name for name in names if logging.getLogger(name).isEnabledFor(logging.ERROR)]
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


class _InterruptingFinaliser:
    """Sends SIGTERM from its finaliser: the handler runs there, where Python drops exceptions."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


def test_an_interrupt_dropped_by_a_finaliser_still_ends_the_command(capfd):
    """A signal's handler can run in a finaliser or a garbage-collection callback (distributed
    has one), where Python prints the KeyboardInterrupt as "Exception ignored" and drops it: a
    run so interrupted went on to publish its output. The command sends the signal again."""
    hook, handler = sys.unraisablehook, signal.getsignal(signal.SIGTERM)
    start, where = time.monotonic(), []
    with pytest.raises(KeyboardInterrupt):
        with cli.interrupts_end_the_run():
            try:
                _InterruptingFinaliser()  # dropped at once: its finaliser runs here
                time.sleep(30)
            except KeyboardInterrupt:
                where.append("in the command")
                raise
    assert where == ["in the command"] and time.monotonic() - start < 30
    # dropped as the command ends: the interrupt is not lost either
    with pytest.raises(KeyboardInterrupt):
        with cli.interrupts_end_the_run():
            _InterruptingFinaliser()
    assert "Exception ignored" not in capfd.readouterr().err
    assert sys.unraisablehook is hook and signal.getsignal(signal.SIGTERM) is handler


def test_an_ignored_ctrl_c_stays_ignored():
    """A run started with SIGINT ignored (nohup, a background job) keeps it so; SIGTERM still ends it."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with cli.interrupts_end_the_run():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) is cli._terminate
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_while_the_local_cluster_starts_leaves_no_traceback(monkeypatch, capfd):
    """Ctrl-C while the workers start left a half-built cluster registered for distributed's
    exit hook, which failed closing it (AssertionError: Status.init) under rnnenc's one line."""
    import asyncio
    import multiprocessing

    from distributed.deploy.spec import SpecCluster, close_clusters
    from distributed.nanny import Nanny

    from rnnenc.workflows.cluster import dask_client

    async def interrupted_while_starting(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)  # its handler runs in the main thread, in LocalCluster()
        await asyncio.sleep(60)

    monkeypatch.setattr(Nanny, "start_unsafe", interrupted_while_starting)
    clusters, children = set(SpecCluster._instances), set(multiprocessing.active_children())
    with pytest.raises(KeyboardInterrupt), cli.interrupts_end_the_run(), dask_client(None, 1):
        pytest.fail("the cluster started")
    assert set(SpecCluster._instances) <= clusters
    close_clusters()  # distributed's exit hook, as the process ends
    assert set(multiprocessing.active_children()) <= children
    assert "Traceback" not in capfd.readouterr().err


def test_interrupts_remove_the_temporary_and_a_rerun_cleans_after_sigkill(tmp_path):
    src, tgt = corpus(tmp_path / "in", copies=20000)  # seconds of work, even on a fast machine: time to interrupt it
    out = tmp_path / "out"
    # Ctrl-C as at a terminal: where the tests run as a background job, SIGINT comes ignored, the
    # child inherits that, and rnnenc rightly leaves an ignored SIGINT alone (nohup, `&`)
    as_at_a_terminal = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "runpy.run_module('rnnenc.workflows.cli', run_name='__main__')")
    argv = [sys.executable, "-c", as_at_a_terminal, *ingest_argv(src, tgt, out, "")[:-3], "--workers", "1", "--quiet"]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(tmp_path.glob("out.tmp-*")):
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig != signal.SIGKILL:
            assert proc.returncode == 130 and "interrupted" in err and "Traceback" not in err, err
            assert not list(tmp_path.glob("out.tmp-*")) and not out.exists()
    assert list(tmp_path.glob("out.tmp-*")), "SIGKILL leaves its temporary"
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert not list(tmp_path.glob("out.tmp-*")) and (out / MANIFEST_NAME).is_file()


def test_relative_paths_reach_workers_that_run_elsewhere(tmp_path, dask_address):
    here = tmp_path / "client"
    corpus(here / "in")
    result = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli",
                             *ingest_argv("in/x.en", "in/x.fr", "out/utf8", dask_address)],
                            cwd=here, capture_output=True, text=True, timeout=180,
                            env=os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])})
    assert result.returncode == 0, result.stderr
    assert (here / "out" / "utf8" / MANIFEST_NAME).is_file()
    manifest = json.loads((here / "out" / "utf8" / MANIFEST_NAME).read_text())
    assert all(Path(record["path"]).is_absolute() for record in manifest["inputs"])


def test_a_full_disk_is_one_line_and_the_old_output_survives(tmp_path, dask_address, capsys, monkeypatch):
    src, tgt = corpus(tmp_path / "in")
    out = tmp_path / "out"
    assert cli.main(ingest_argv(src, tgt, out, dask_address)) == 0
    before = snapshot(out)

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{out}.tmp-0000/{REPORT_NAME}")

    monkeypatch.setattr("rnnenc.pipeline.ingest.write_json_atomic", full)
    assert cli.main(ingest_argv(src, tgt, out, dask_address)) == 1
    err = one_line_error(capsys)
    assert "No space left on device" in err and REPORT_NAME in err and "free some space" in err
    assert snapshot(out) == before and not list(tmp_path.glob("out.tmp-*"))


def test_atomic_output_dir_checks_again_before_replacing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(UserError, match="was not written by rnnenc vocab"):
        with atomic_output_dir(out, stage="vocab") as tmp:
            (tmp / "vocab.txt").write_text("a\n")
            out.mkdir()  # someone else's directory appears meanwhile
            (out / "theirs.txt").write_text("theirs\n")
    assert (out / "theirs.txt").read_text() == "theirs\n" and not list(tmp_path.glob("out.tmp-*"))


def test_embedded_cluster_listens_on_loopback_only():
    from rnnenc.workflows.cluster import dask_client

    with dask_client(None, 1) as client:
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        info = client.scheduler_info(n_workers=-1)
        addresses = [info["address"], *info["workers"]]
        assert all(a.startswith("tcp://127.0.0.1:") for a in addresses), addresses
        ports = {int(a.rsplit(":", 1)[1]) for a in addresses} | {int(client.dashboard_link.split(":")[2].split("/")[0])}
        listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True).stdout if shutil.which("ss") else ""
    for line in listening.splitlines():
        local = line.split()[3]
        if int(local.rsplit(":", 1)[1]) in ports:
            assert local.startswith("127.0.0.1:"), line


def test_quiet_local_cluster_shutdown_prints_no_tracebacks(tmp_path, dask_address):
    """`--quiet --workers 2` once printed heartbeat CommClosedError tracebacks as the cluster closed
    (about one run in three): the whole stderr of a few runs must be empty."""
    src, tgt = corpus(tmp_path / "in", copies=50)
    assert cli.main(ingest_argv(src, tgt, tmp_path / "pool", dask_address)) == 0
    for run in range(3):
        result = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "vocab", "--corpus", str(tmp_path / "pool"),
                                 "--out", str(tmp_path / f"vocab{run}"), "--quiet", "--workers", "2"],
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0 and result.stderr == "", result.stderr


def test_progress_off_a_terminal_is_plain_lines(tmp_path, dask_address):
    """stderr to a file: no carriage returns, short lines, and the stage's progress as a line."""
    src, tgt = corpus(tmp_path / "in", copies=500)
    with open(tmp_path / "stderr.log", "w") as err:
        result = subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli",
                                 *ingest_argv(src, tgt, tmp_path / "out", dask_address)[:-1], "--rows-per-part", "400"],
                                stdout=subprocess.PIPE, stderr=err, text=True, timeout=180)
    assert result.returncode == 0
    text = (tmp_path / "stderr.log").read_text()
    assert "\r" not in text and max(map(len, text.splitlines())) < 300, text
    assert "ingest: 5/5 part" in text, text


def test_plain_progress_reports_count_rate_and_time_left():
    import io

    from rnnenc.pipeline.progress import PlainProgress

    out = io.StringIO()
    bar = PlainProgress(total=10, desc="score", unit="part", interval=0.0, stream=out)
    bar.update(4)
    bar.set_postfix(loss="1.5")
    bar.update(6)
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("score: 4/10 part, ") and "left" in lines[0]
    assert lines[-1].startswith("score: 10/10 part, ") and lines[-1].endswith("(loss=1.5)") and len(lines) == 3


def test_messages_name_the_published_path_not_the_temporary():
    from rnnenc.pipeline.artifacts import published_path

    assert published_path("/r/select.tmp-0123abcd/lm/in.en.binary") == "/r/select/lm/in.en.binary"
    assert published_path("/r/lm.tmp-89abcdef") == "/r/lm"
    assert published_path("/r/my.tmp-notahexid/x") == "/r/my.tmp-notahexid/x"  # not one of ours
