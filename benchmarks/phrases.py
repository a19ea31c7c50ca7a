"""Phrase extraction and scoring throughput on 1 and 2 Dask workers, in the same run.

Demo pairs (tokenised as `rnnenc ingest` would) are cut into parts and aligned once with
eflomal (timed, not part of the comparison: eflomal runs its own threads); then
`pipeline.phrases.build_phrase_table` extracts and scores them on a LocalCluster of 1 and of 2
single-threaded worker processes. Extraction: sentence pairs/s and words/s (source + target);
scoring (lexical table + both group-by passes): distinct phrase pairs/s. Target: >= 1.8x on 2
workers. Cluster start-up is excluded. Both runs must give the same table (checked).

usage: python benchmarks/phrases.py [--pairs 8000] [--rows-per-part 500] [--buckets 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, LocalCluster

from pipeline.alignment import AlignConfig, align_part
from pipeline.phrases import PhraseConfig, build_phrase_table
from pipeline.synthetic import DemoConfig, tokenised_sample
from workflows.cluster import map_partitions


def make_corpus(root: Path, pairs: int, rows_per_part: int) -> tuple[list[str], list[str], float]:
    data = tokenised_sample(DemoConfig(), "general", pairs)
    (root / "corpus").mkdir()
    (root / "alignment").mkdir()
    corpus, aligned = [], []
    started = time.perf_counter()
    for k in range(0, pairs, rows_per_part):
        chunk = data[k:k + rows_per_part]
        corpus.append(str(root / "corpus" / f"part-{len(corpus):05d}.parquet"))
        pq.write_table(pa.table({"source": [p[2] for p in chunk], "target": [p[3] for p in chunk]}), corpus[-1])
        aligned.append(str(root / "alignment" / f"part-{len(aligned):05d}.parquet"))
        align_part(corpus[-1], aligned[-1], AlignConfig(iterations=(4, 4, 4), samplers=1))
    return corpus, aligned, time.perf_counter() - started


def run(workers: int, corpus: list[str], aligned: list[str], out: Path, config: PhraseConfig) -> dict:
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        client.wait_for_workers(workers)
        # warm the workers' imports so that they do not count as extraction time
        client.run(lambda: __import__("pipeline.phrases"))
        return build_phrase_table(
            corpus, aligned, out, config,
            map_fn=lambda func, items, desc: map_partitions(client, func, items, desc=desc, quiet=True),
            run_fn=lambda func, *args: client.submit(func, *args, pure=False).result())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8000)
    parser.add_argument("--rows-per-part", type=int, default=500)
    parser.add_argument("--buckets", type=int, default=8)
    args = parser.parse_args()
    config = PhraseConfig(buckets=args.buckets)
    with tempfile.TemporaryDirectory(prefix="bench-phrases-") as tmp:
        root = Path(tmp)
        corpus, aligned, align_s = make_corpus(root, args.pairs, args.rows_per_part)
        reports = {w: run(w, corpus, aligned, root / f"out-{w}", config) for w in (1, 2)}
        tables = [pa.concat_tables([pq.read_table(p) for p in sorted((root / f"out-{w}" / "table").glob("*.parquet"))])
                  for w in (1, 2)]
        assert tables[0].equals(tables[1]), "1 and 2 workers gave different tables"
    first = reports[1]
    words = first["corpus"]["source_tokens"] + first["corpus"]["target_tokens"]
    print(f"phrases benchmark: {args.pairs:,} demo pairs ({words:,} words), parts of {args.rows_per_part:,} "
          f"pairs, {args.buckets} buckets; {first['extracted_occurrences']:,} phrase occurrences, "
          f"{first['distinct_pairs']:,} distinct pairs")
    print(f"eflomal alignment (serial, not compared): {align_s:.2f} s, {args.pairs / align_s:,.0f} pairs/s\n")
    print(f"{'workers':<8} {'extract s':>9} {'pairs/s':>9} {'words/s':>9} {'score s':>8} {'phrases/s':>10} "
          f"{'total s':>8} {'speed-up':>8}")
    base = None
    for workers, report in reports.items():
        t = report["timings"]
        score_s = t["lexicon_s"] + t["score_s"]
        total = t["extract_s"] + score_s
        base = base or total
        print(f"{workers:<8} {t['extract_s']:9.2f} {args.pairs / t['extract_s']:9,.0f} {words / t['extract_s']:9,.0f} "
              f"{score_s:8.2f} {report['distinct_pairs'] / score_s:10,.0f} {total:8.2f} {base / total:7.2f}x")
    print("\ntarget: 2 workers >= 1.80x (extraction + scoring)")


if __name__ == "__main__":
    main()
