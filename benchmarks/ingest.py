"""Ingestion throughput: `rnnenc ingest` on 1 and 2 Dask workers against plain sacremoses.

The baseline normalises and tokenises the same demo text in one process with sacremoses, the
work `ingest` parallelises. --rounds rounds of (baseline, 1 worker, 2 workers) run back to back;
ratios are taken within a round, then the median over rounds (targets: >= 0.8x per core with
one worker, >= 1.8x with two). Cluster start-up is excluded and shown separately. "busy" is the
workers' task seconds (Dask's task stream) over workers x wall seconds.

usage: python benchmarks/ingest.py [--pairs 40000] [--rows-per-part 10000] [--rounds 3]

The baseline is plain sacremoses (``MosesPunctNormalizer.normalize`` then
``MosesTokenizer.tokenize``). Ingest normalises with the same table compiled once
(``pipeline.preprocess.CompiledPunctNormalizer``, same output), which makes one worker faster than
the baseline per core; the "2 workers / 1 worker" line shows the scaling alone.

One run (2 shared vCPUs, 2026-11-26, 2 min):

    run                           seconds startup s      words    words/s vs baseline            per round  busy
    sacremoses, 1 process           13.29         -  1,059,511     79,712       1.00x     1.00, 1.00, 1.00     -
    rnnenc ingest, 1 worker         11.97      1.26  1,056,246     88,250       1.07x     0.92, 1.07, 1.15   99%
    rnnenc ingest, 2 workers         6.80      1.23  1,056,246    155,377       1.94x     1.96, 1.89, 1.94   96%

    2 workers / 1 worker: 1.76x (per round: 2.14, 1.76, 1.68)

Before the normaliser was compiled once, the same benchmark gave 0.86x and 1.65x. Two workers
lose against twice one worker because the same tasks take 6-16% more CPU seconds when both
vCPUs are busy than when one is, and the client reads and stages the first part alone.

Parts of 10,000 pairs keep the fixed cost of a task (reading and writing Parquet, scheduling)
small against its tokenisation, as the default of 100,000 pairs per part does at scale.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster, get_task_stream
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from rnnenc.pipeline.corpus import CorpusInput
from rnnenc.pipeline.ingest import ingest
from rnnenc.pipeline.preprocess import PreprocessConfig, tokenize
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows.cluster import DaskExecutor


def baseline(src: Path, tgt: Path, config: PreprocessConfig) -> tuple[float, int]:
    """Plain sacremoses, as its README shows it: normalise, then tokenise with Moses escaping."""
    sides = [(MosesPunctNormalizer(lang=lang), MosesTokenizer(lang=lang))
             for lang in (config.source_lang, config.target_lang)]
    started = time.perf_counter()
    words = 0
    with open(src, encoding="utf-8") as s, open(tgt, encoding="utf-8") as t:
        for pair in zip(s, t, strict=True):
            for text, (normalizer, tokenizer) in zip(pair, sides, strict=True):
                words += len(tokenizer.tokenize(normalizer.normalize(text.rstrip("\n")), escape=True))
    return time.perf_counter() - started, words


def run_ingest(workers: int, corpus: CorpusInput, out: Path, config: PreprocessConfig,
               rows_per_part: int) -> tuple[float, float, int, float]:
    """(seconds, start-up seconds, words, task seconds summed over workers) of one ingest."""
    started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(lambda: tokenize("warm up the tokenizer cache .", "en"))
        startup = time.perf_counter() - started
        started = time.perf_counter()
        with get_task_stream(client) as stream:
            report = ingest(DaskExecutor(client, quiet=True), [corpus], out, config, rows_per_part=rows_per_part)
        seconds = time.perf_counter() - started
    busy = sum(span["stop"] - span["start"] for task in stream.data for span in task["startstops"]
               if span["action"] == "compute")
    return seconds, startup, report["source_words"] + report["target_words"], busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40_000)
    parser.add_argument("--rows-per-part", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of baseline, 1 worker, 2 workers (medians)")
    args = parser.parse_args()
    config = PreprocessConfig(source_lang="en", target_lang="fr")
    names = ["sacremoses, 1 process", "rnnenc ingest, 1 worker", "rnnenc ingest, 2 workers"]
    runs: dict[str, list[tuple[float, float | None, int, float | None]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = generate_demo(tmp / "demo", DemoConfig(pool_size=args.pairs, in_domain_size=100, dev_size=100,
                                                      phrase_table_pairs=100))
        corpus = CorpusInput("text", (str(demo.pool_src), str(demo.pool_tgt)), "pool")
        for round_ in range(args.rounds):
            base_seconds, base_words = baseline(demo.pool_src, demo.pool_tgt, config)
            runs[names[0]].append((base_seconds, None, base_words, None))
            for workers in (1, 2):
                out = tmp / f"out-{round_}-{workers}"
                runs[names[workers]].append(run_ingest(workers, corpus, out, config, args.rows_per_part))
                shutil.rmtree(out)
    # ratios are taken within a round (a round's runs are seconds apart: the shared machine's
    # changing speed weighs on them alike), then the median over rounds
    rates = {name: [words / seconds for seconds, _, words, _ in runs[name]] for name in names}
    print(f"ingest benchmark: {args.pairs:,} demo pairs, parts of {args.rows_per_part:,} pairs, {args.rounds} rounds "
          f"(baseline, 1 worker, 2 workers); medians, ratios within a round\n")
    print(f"{'run':<28} {'seconds':>8} {'startup s':>9} {'words':>10} {'words/s':>10} {'vs baseline':>11} "
          f"{'per round':>20} {'busy':>5}")
    for name in names:
        seconds = statistics.median(r[0] for r in runs[name])
        startups = [r[1] for r in runs[name] if r[1] is not None]
        startup_text = f"{statistics.median(startups):9.2f}" if startups else f"{'-':>9}"
        ratios = [rate / base for rate, base in zip(rates[name], rates[names[0]], strict=True)]
        workers = names.index(name)
        busy = (f"{statistics.median(r[3] / (workers * r[0]) for r in runs[name]):5.0%}" if workers else f"{'-':>5}")
        print(f"{name:<28} {seconds:8.2f} {startup_text} {runs[name][0][2]:10,} {statistics.median(rates[name]):10,.0f} "
              f"{statistics.median(ratios):10.2f}x {', '.join(f'{r:.2f}' for r in ratios):>20} {busy}")
    scaling = [two / one for one, two in zip(rates[names[1]], rates[names[2]], strict=True)]
    print(f"\n2 workers / 1 worker: {statistics.median(scaling):.2f}x (per round: "
          f"{', '.join(f'{r:.2f}' for r in scaling)})")
    print("targets: 1 worker >= 0.80x (per core), 2 workers >= 1.80x")
    print("busy: the workers' task seconds (Dask's task stream) / (workers x wall seconds).")
    print("note: words counted after tokenisation; ingest also reads, cleans and writes Parquet.")


if __name__ == "__main__":
    main()
