"""Scale: a synthetic pool at two sizes 10x apart through ingest -> select -> phrases, per-stage
words/s per core, workers' peak memory, and the wall time extrapolated to 2G words on 32 workers.

The pool is the demo generator's (seed 1234, 10 % in-domain, an in-domain corpus of 5,000
pairs whatever the pool size); the larger default size has about 20M words on each side. Each
size runs on a fresh embedded cluster of --workers single-threaded worker processes, as a
command starts it (``workflows.cluster.dask_client``, its Dask settings included; started
before the clock: a cluster's start is not the stages' work), through the command line as a
user runs it (``--scheduler`` to that cluster):

* ingest of the pool (sacremoses normalisation + tokenisation + cleaning, default parts);
* select (axelrod, cross-fit, 4-gram lmplz models, --fraction 0.2: Cho et al. kept 418M of
  2G words);
* phrases on the selection (eflomal both ways, grow-diag-final-and, extraction, scoring).

Words are the source and target tokens of the stage's input (ingest: the raw pool's, counted
by ingest; select: the ingested pool's; phrases: the selection's). ``words/s/core`` = words /
(wall seconds x workers). The workers are restarted before each stage, so ``peak MB`` (the
highest VmHWM among them) is that stage's.

Extrapolation: each stage's wall time is fitted as ``fixed + words / (rate x workers)`` from the
two sizes (``fixed``: what does not grow with the pool -- the in-domain models, the task
overheads; ``rate``: words/s per core of the part that does), then evaluated at 2G words on 32
workers. Ingest and select must fit in 30 minutes (the target); phrases runs on the 20 %
selection (400M words). 2G words counted on both sides together; the last line doubles it (2G
on each side).

    .venv/bin/python benchmarks/scale.py                          # 170k and 1.7M pairs
    .venv/bin/python benchmarks/scale.py --pairs 20000 200000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from distributed import Client

from rnnenc.pipeline.artifacts import MANIFEST_NAME, report_path
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows import cli
from rnnenc.workflows.cluster import dask_client

TARGET_MINUTES = 30  # ingest + select of 2G words on 32 workers
SELECTED_SHARE = 0.2
EXTRAPOLATE_WORDS, EXTRAPOLATE_WORKERS = 2e9, 32


def peak_rss_mb() -> float:
    """This process's high-water RSS (VmHWM; ru_maxrss would carry the parent's at fork)."""
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def generate(data: Path, pairs: int) -> None:
    if not (data / "pool.en").exists():
        generate_demo(data, DemoConfig(seed=1234, pool_size=pairs, in_domain_size=5_000, dev_size=100,
                                       phrase_table_pairs=100))


def stage(client: Client, argv: list[str]) -> tuple[float, float]:
    """Run one rnnenc command on the cluster with fresh workers: (wall seconds, workers' peak MB)."""
    client.restart()
    address = client.scheduler.address
    start = time.perf_counter()
    code = cli.main([*argv, "--scheduler", address, "--quiet"])
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"scale: {' '.join(argv)} failed ({code})")
    return seconds, max(client.run(peak_rss_mb).values())


def _manifest_counts(path: Path) -> dict:
    return json.loads((path / MANIFEST_NAME).read_text())["counts"]


def run_size(root: Path, pairs: int, workers: int) -> dict[str, dict[str, float]]:
    data = root / "data"
    generate(data, pairs)
    for name in ("pool", "in_domain", "select", "phrases"):
        shutil.rmtree(root / name, ignore_errors=True)
    results: dict[str, dict[str, float]] = {}
    with dask_client(None, workers, memory_limit="8GiB") as client:
        ingest = ["ingest", "--src-lang", "en", "--tgt-lang", "fr"]
        cli.main([*ingest, "--src", str(data / "in_domain.en"), "--tgt", str(data / "in_domain.fr"),
                  "--out", str(root / "in_domain"), "--scheduler", client.scheduler.address, "--quiet"])
        seconds, peak = stage(client, [*ingest, "--src", str(data / "pool.en"), "--tgt", str(data / "pool.fr"),
                                       "--out", str(root / "pool")])
        ingested = json.loads(report_path(root / "pool").read_text())
        results["ingest"] = {"words": ingested["source_words"] + ingested["target_words"], "seconds": seconds,
                             "peak": peak, "pairs": ingested["lines_read"]}
        seconds, peak = stage(client, ["select", str(root / "pool"), "--in-domain", str(root / "in_domain"),
                                       "--method", "axelrod", "--fraction", str(SELECTED_SHARE),
                                       "--out", str(root / "select")])
        selected = _manifest_counts(root / "select")
        results["select"] = {"words": selected["pool_source_tokens"] + selected["pool_target_tokens"],
                             "seconds": seconds, "peak": peak, "pairs": selected["pool_pairs"]}
        seconds, peak = stage(client, ["phrases", str(root / "select"), "--out", str(root / "phrases")])
        results["phrases"] = {"words": selected["selected_source_tokens"] + selected["selected_target_tokens"],
                              "seconds": seconds, "peak": peak, "pairs": selected["selected_pairs"]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs=2, default=[170_000, 1_700_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dir", help="keep the generated data here (default: a temporary directory)")
    args = parser.parse_args()
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rnnenc-bench-scale-"))
    load = os.getloadavg()[0]
    try:
        sizes = {pairs: run_size(base / f"pool-{pairs}", pairs, args.workers) for pairs in args.pairs}
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    small, large = (sizes[p] for p in args.pairs)
    print(f"{os.cpu_count()} CPUs, {args.workers} worker(s); load average {load:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    print(f"{'stage':<8} {'input pairs':>12} {'words':>12} {'seconds':>8} {'words/s/core':>13} {'peak MB':>8}")
    for stages in sizes.values():
        for name, r in stages.items():
            print(f"{name:<8} {r['pairs']:>12,} {r['words']:>12,} {r['seconds']:>8.1f} "
                  f"{r['words'] / r['seconds'] / args.workers:>13,.0f} {r['peak']:>8,.0f}")
    print("\nextrapolated (fixed + words / (rate x workers), fitted on the two sizes):")
    print(f"{'stage':<8} {'fixed s':>8} {'rate w/s/core':>14} {'peak MB large/small':>20} "
          f"{'2G words, 32 workers':>21} {'4G words':>9}")
    minutes: dict[str, tuple[float, float]] = {}
    for name in small:
        a, b = small[name], large[name]
        slope = (b["seconds"] - a["seconds"]) / (b["words"] - a["words"])  # seconds per word on `workers`
        fixed = max(0.0, a["seconds"] - slope * a["words"])
        rate = 1 / (slope * args.workers) if slope > 0 else float("inf")
        words = EXTRAPOLATE_WORDS * (SELECTED_SHARE if name == "phrases" else 1)
        minutes[name] = tuple((fixed + k * words / (rate * EXTRAPOLATE_WORKERS)) / 60 for k in (1, 2))
        print(f"{name:<8} {fixed:>8.1f} {rate:>14,.0f} {b['peak'] / a['peak']:>20.2f} "
              f"{minutes[name][0]:>17.1f} min {minutes[name][1]:>5.1f} min")
    both = [minutes["ingest"][k] + minutes["select"][k] for k in (0, 1)]
    print(f"ingest + select of 2G words (both sides) on 32 workers: {both[0]:.1f} min "
          f"(target < {TARGET_MINUTES}: {'PASS' if both[0] < TARGET_MINUTES else 'FAIL'}); "
          f"2G words on each side: {both[1]:.1f} min")


if __name__ == "__main__":
    main()
