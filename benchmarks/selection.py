"""Selection throughput: the select stage's scoring on 1 and 2 Dask workers against a plain
single-process ``kenlm.Model.score`` loop, the cut's share of the stage, workers' peak memory.

For each pool size (the demo generator's pool, seed 1234, ingested with the default
partitioning), a fresh embedded cluster of 1 and then of 2 single-threaded worker processes
(rnnenc's, as a command starts it: ``workflows.cluster.dask_client``) runs ``rnnenc select``
(axelrod, cross-fit, --budget-pairs 10 % of the pool). The baseline, in this process and in
the same run, loads the very language models that stage trained and scores the
same sentences the same way (both sides; the in-domain model, then the other fold's
out-of-domain model) in a plain loop over Python lists already in memory: the cost of the
scoring alone, with no Parquet, no Dask, no output. Words are the scored sides' tokens.

``plain loop x 2`` is this machine's ceiling for 2 workers: the same loop in two processes at
once, each on its half of the pool (loaded by itself), timed until both are done.

Columns: ``scoring words/s`` = scored words / the stage's scoring time (report ``timings_s``);
``x plain`` = that over the words/s of the baseline run right after it, the median of the
rounds' ratios (targets: >= 0.8 on 1 worker, >= 1.8 on 2; ``rounds``: the lowest and
highest): the two sides of a ratio are seconds apart, so a slow minute of a shared machine
moves both;
``cut s`` and ``cut/scoring`` = the deciding time (targets: <= 0.2 of scoring); ``peak MB`` =
the workers' highest VmHWM (fresh processes for every run, so per size). Each figure is the
median of --rounds runs.

    .venv/bin/python benchmarks/selection.py                       # 58k and 580k pairs, ~5 min
    .venv/bin/python benchmarks/selection.py --sizes 20000 200000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import kenlm
import numpy as np
import pyarrow.parquet as pq

from rnnenc.pipeline import selection
from rnnenc.pipeline.artifacts import MANIFEST_NAME, report_path
from rnnenc.pipeline.select import SelectConfig, run_selection
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows import cli
from rnnenc.workflows.cluster import DaskExecutor, dask_client

TARGET_PER_CORE, TARGET_TWO, TARGET_CUT = 0.8, 1.8, 0.2


def peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM; ru_maxrss would carry the parent's at fork)."""
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def prepare(root: Path, pairs: int) -> Path:
    """The demo pool of about ``pairs`` pairs and its in-domain corpus (5,000 pairs whatever the
    pool size, so the models are alike at both sizes), ingested under ``root``."""
    data = root / "data"
    if not (data / "pool.en").exists():
        generate_demo(data, DemoConfig(seed=1234, pool_size=pairs, in_domain_size=5_000,
                                       dev_size=100, phrase_table_pairs=100))
    for name in ("pool", "in_domain"):
        if not (root / name / MANIFEST_NAME).exists():
            code = cli.main(["ingest", "--src", str(data / f"{name}.en"), "--tgt", str(data / f"{name}.fr"),
                             "--src-lang", "en", "--tgt-lang", "fr", "--out", str(root / name), "--workers", "2",
                             "--quiet"])
            assert code == 0, f"ingest of {name} failed"
    return root


def run_select(root: Path, out: Path, workers: int) -> tuple[dict, float]:
    """One select run on a fresh cluster of ``workers``: its report and the workers' peak RSS."""
    shutil.rmtree(out, ignore_errors=True)
    pool_pairs = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted((root / "pool").glob("part-*.parquet")))
    cfg = SelectConfig(pool=str(root / "pool"), in_domain=str(root / "in_domain"), mode="pairs",
                       amount=str(pool_pairs // 10))
    with dask_client(None, workers, memory_limit="8GiB") as client:
        run_selection(cfg, out, DaskExecutor(client, quiet=True))
        peak = max(client.run(peak_rss_mb).values())
    return json.loads(report_path(out).read_text()), peak


def _plain_inputs(root: Path, out: Path, seed: int, share: tuple[int, int] = (0, 1)) -> tuple[dict, list, dict]:
    """The pool's sentences as Python lists (share ``(k, n)``: the k-th of n contiguous slices),
    their folds, and the models ``out`` trained, per language: what the plain loop scores."""
    parts = sorted((root / "pool").glob("part-*.parquet"))
    columns = ["source", "target", "source_tokens", "target_tokens", "corpus", "line"]
    table = {c: [v for p in parts for v in pq.read_table(p, columns=[c])[c].to_pylist()] for c in columns}
    _u, fold = selection.folds(seed, table["corpus"], table["line"])
    k, n = share
    lo, hi = len(fold) * k // n, len(fold) * (k + 1) // n
    table = {c: values[lo:hi] for c, values in table.items()}
    models = {lang: (kenlm.Model(str(out / "lm" / f"in.{lang}.binary")),
                     [kenlm.Model(str(out / "lm" / f"out.fold{f}.{lang}.binary")) for f in range(2)])
              for lang in ("en", "fr")}
    return table, fold[lo:hi].tolist(), models


def _plain_score(table: dict, fold: list, models: dict) -> tuple[int, float]:
    """The plain loop itself: (scored words, seconds)."""
    words, seconds = 0, 0.0
    for side, lang in (("source", "en"), ("target", "fr")):
        model_in, model_out = models[lang]
        sentences, lengths = table[side], table[f"{side}_tokens"]
        start = time.perf_counter()
        h = np.empty(len(sentences))
        for i, (s, n, f) in enumerate(zip(sentences, lengths, fold, strict=True)):
            h[i] = (-model_in.score(s, bos=True, eos=True) + model_out[1 - f].score(s, bos=True, eos=True)) / (n + 1)
        seconds += time.perf_counter() - start
        words += sum(lengths)
    return words, seconds


def plain_loop(root: Path, out: Path, seed: int = 1) -> tuple[int, float]:
    """The baseline: ``kenlm.Model.score`` over the pool's sentences in one process, with the
    models ``out`` trained, as the stage scores them. Returns (scored words, seconds)."""
    return _plain_score(*_plain_inputs(root, out, seed))


def _plain_half(root: Path, out: Path, seed: int, k: int, barrier: Any, finished: Any) -> None:
    # each process loads its own half (no copy-on-write of the parent's objects), then waits
    inputs = _plain_inputs(root, out, seed, (k, 2))
    barrier.wait()
    _plain_score(*inputs)
    finished.put(time.perf_counter())


def plain_loop_two_processes(root: Path, out: Path, seed: int = 1) -> float:
    """What this machine gives the plain loop itself on 2 cores: two processes, each on its half
    of the pool, started together; returns the seconds until both are done. The same words
    over this, against ``plain_loop``'s rate, is the most 2 workers could reach here."""
    context = multiprocessing.get_context("fork")
    barrier, finished = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_plain_half, args=(root, out, seed, k, barrier, finished)) for k in range(2)]
    for process in processes:
        process.start()
    barrier.wait()
    start = time.perf_counter()
    end = max(finished.get(), finished.get())
    for process in processes:
        process.join()
    return end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[58_000, 580_000], help="pool sizes in pairs")
    parser.add_argument("--rounds", type=int, default=9, help="runs per figure; the median is shown")
    parser.add_argument("--dir", help="keep the data here (default: a temporary directory)")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rnnenc-bench-selection-"))
    rows, peaks = [], {}
    try:
        for size in args.sizes:
            root = prepare(base / f"pool-{size}", size)
            plain, two_processes, per_workers, baselines = [], [], {}, {}
            for _ in range(args.rounds):
                for workers in (1, 2):
                    report, peak = run_select(root, root / f"select-{workers}", workers)
                    timings = report["timings_s"]
                    per_workers.setdefault(workers, []).append((timings["scoring"], timings["deciding"],
                                                                timings["total"], peak, report))
                    # the baseline right after each run: its ratio's two sides are seconds apart
                    words, seconds = plain_loop(root, root / "select-1")
                    baselines.setdefault(workers, []).append(words / seconds)
                    plain.append(words / seconds)
                two_processes.append(words / plain_loop_two_processes(root, root / "select-1"))
            pool = per_workers[1][0][4]["pool"]
            rows.append((size, pool["pairs"], "plain kenlm loop", 1, statistics.median(plain), [1.0],
                         None, None, None, None))
            rows.append((size, pool["pairs"], "plain loop x 2", 2, statistics.median(two_processes),
                         [t / p for t, p in zip(two_processes, baselines[2], strict=True)], None, None, None, None))
            for workers, runs in per_workers.items():
                scoring = statistics.median(r[0] for r in runs)
                deciding = statistics.median(r[1] for r in runs)
                total = statistics.median(r[2] for r in runs)
                peak = max(r[3] for r in runs)
                peaks.setdefault(workers, []).append(peak)
                ratios = [words / r[0] / p for r, p in zip(runs, baselines[workers], strict=True)]
                rows.append((size, pool["pairs"], "rnnenc select", workers, words / scoring, ratios, deciding,
                             deciding / scoring, total, peak))
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; medians of {args.rounds} round(s)")
        print(f"{'pool pairs':>11} {'scorer':<17} {'workers':>7} {'scoring words/s':>16} {'x plain':>8} "
              f"{'rounds':>9} {'target':>7} {'cut s':>7} {'cut/scoring':>12} {'stage s':>8} {'peak MB':>8}")
        for _size, pairs, name, workers, rate, ratios, cut, share, total, peak in rows:
            ratio, spread = statistics.median(ratios), f"{min(ratios):.2f}-{max(ratios):.2f}"
            target = "" if name.startswith("plain") else (TARGET_PER_CORE if workers == 1 else TARGET_TWO)
            verdict = "" if not target else ("PASS" if ratio >= target else "FAIL")
            cut_text = "" if cut is None else f"{cut:.2f}"
            share_text = "" if share is None else f"{share:.3f} {'PASS' if share <= TARGET_CUT else 'FAIL'}"
            print(f"{pairs:>11,} {name:<17} {workers:>7} {rate:>16,.0f} {ratio:>8.2f} {spread:>9} "
                  f"{(f'{target} {verdict}' if target else ''):>7} {cut_text:>7} {share_text:>12} "
                  f"{'' if total is None else f'{total:.1f}':>8} {'' if peak is None else f'{peak:,.0f}':>8}")
        for workers, values in peaks.items():
            if len(values) > 1:
                print(f"peak worker RSS on {workers} worker(s), largest / smallest pool: "
                      f"{values[-1] / values[0]:.2f} ({values[0]:,.0f} -> {values[-1]:,.0f} MB)")
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
