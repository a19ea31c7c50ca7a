"""Ingestion throughput: `rnnenc ingest` on 1 and 2 Dask workers against plain sacremoses.

The baseline normalises and tokenises the same demo text in one process with sacremoses, the
work `ingest` parallelises. Both are measured in the same run; ratios are what to read
(targets: >= 0.8x per core with one worker, >= 1.8x with two). Cluster start-up is excluded
and shown separately.

usage: python benchmarks/ingest.py [--pairs 40000] [--rows-per-part 10000]

Parts of 10,000 pairs keep the fixed cost of a task (reading and writing Parquet, scheduling)
small against its tokenisation, as the default of 100,000 pairs per part does at scale; with
parts of 2,500 pairs the same run measured 0.67x and 1.45x.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from pipeline.corpus import CorpusInput
from pipeline.preprocess import PreprocessConfig, tokenize
from pipeline.synthetic import DemoConfig, generate_demo
from workflows.ingest import ingest


def baseline(src: Path, tgt: Path, config: PreprocessConfig) -> tuple[float, int]:
    started = time.perf_counter()
    words = 0
    with open(src, encoding="utf-8") as s, open(tgt, encoding="utf-8") as t:
        for source, target in zip(s, t, strict=True):
            words += len(tokenize(source.rstrip("\n"), config.source_lang).split())
            words += len(tokenize(target.rstrip("\n"), config.target_lang).split())
    return time.perf_counter() - started, words


def run_ingest(workers: int, corpus: CorpusInput, out: Path, config: PreprocessConfig,
               rows_per_part: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.run(lambda: tokenize("warm up the tokenizer cache .", "en"))
        startup = time.perf_counter() - started
        started = time.perf_counter()
        report = ingest(client, [corpus], out, config, rows_per_part=rows_per_part, quiet=True)
        seconds = time.perf_counter() - started
    return seconds, startup, report["source_words"] + report["target_words"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=40_000)
    parser.add_argument("--rows-per-part", type=int, default=10_000)
    args = parser.parse_args()
    config = PreprocessConfig(source_lang="en", target_lang="fr")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = generate_demo(tmp / "demo", DemoConfig(pool_size=args.pairs, in_domain_size=100, dev_size=100,
                                                      phrase_table_pairs=100))
        corpus = CorpusInput("text", (str(demo.pool_src), str(demo.pool_tgt)), "pool")
        base_seconds, base_words = baseline(demo.pool_src, demo.pool_tgt, config)
        rows = [("sacremoses, 1 process", base_seconds, None, base_words)]
        for workers in (1, 2):
            seconds, startup, words = run_ingest(workers, corpus, tmp / f"out{workers}", config, args.rows_per_part)
            rows.append((f"rnnenc ingest, {workers} worker(s)", seconds, startup, words))
    base_rate = base_words / base_seconds
    print(f"ingest benchmark: {args.pairs:,} demo pairs, parts of {args.rows_per_part:,} pairs\n")
    print(f"{'run':<28} {'seconds':>8} {'startup s':>9} {'words':>10} {'words/s':>10} {'vs baseline':>11}")
    for name, seconds, startup, words in rows:
        rate = words / seconds
        startup_text = f"{startup:9.2f}" if startup is not None else f"{'-':>9}"
        print(f"{name:<28} {seconds:8.2f} {startup_text} {words:10,} {rate:10,.0f} {rate / base_rate:10.2f}x")
    print("\ntargets: 1 worker >= 0.80x (per core), 2 workers >= 1.80x")
    print("note: words counted after tokenisation; ingest also reads, cleans and writes Parquet.")


if __name__ == "__main__":
    main()
