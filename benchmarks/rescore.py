"""Rescoring speed and memory at the paper's dimensions (15k words, 1000 hidden, 500 maxout, rank 100).

On the CPU the scorer runs as ``rnnenc rescore`` runs it: one single-threaded process per core
(Dask's default LocalCluster; the nanny gives each worker one thread), each scoring a consecutive
share of the pairs, all started together. Prints, measured in the same run:
  - the load average at start and end (the machine is shared: judge the figures by it);
  - the dense matmul GFLOP/s of this machine, all cores in one process: median of 7 timings after
    warm-up for a 2048^2 square and the scorer's own big products; the peak is the best shape's;
  - scoring one pair at a time (the model's plain forward pass, batch 1) in the same worker
    layout: pairs/s, GFLOP/s;
  - the batched scorer (pipeline.scorer.PhraseScorer) for a grid of batch configurations:
    pairs/s, speed-up over batch 1, achieved GFLOP/s and its ratio to the matmul peak, the
    plain-forward-equivalent GFLOP/s ("fwd-equiv": the plain forward pass's FLOPs over the same
    time, i.e. also counting the source re-encodings the scorer saves; not used for the ratio),
    padding, source reuse, and the CPU share the workers got ("cpu": < 100% = contention); then
    the default configuration in one process with all threads (full-size batches), for comparison;
  - end to end: ``workflows.rescore.rescore`` (the stage itself: Parquet in, Dask map over
    units, Parquet out, manifest) on a fresh LocalCluster at two table sizes 4x apart, with the
    largest worker's peak RSS (VmHWM: ru_maxrss of a spawned worker carries the RSS its parent
    had at fork) and the stage's pairs/s and GFLOP/s, model loading and start-up included.
On a GPU: the same figures in this process, bf16, peak allocated GPU memory.

Achieved GFLOP/s = ``pipeline.scorer.scoring_flops`` of the pairs scored (2 per multiply-add
of the products needed: each distinct source's encoder steps (none for U h_0 = 0) and
c-projections once per group, every real target token's recurrence, deep output and 15k-word
softmax) / wall time. The rows that fill a bucket's last batch (copies of a real row, results
dropped) are executed but not counted: the "padding" column.

Figures (2 shared cores, Xeon with AVX-512, 2 MB L2 per core; ``--device cpu``, 139 s, load
average 1.16 at start, 2.14 at end; matmul peak 249 GFLOP/s):

                layout enc/dec/readout   pairs/s x batch1  GFLOP/s of peak fwd-equiv padding reuse  cpu
  2 workers x 1 thread      256/256/64     2,331     17.0      160    0.64       223    1.8%   4.2  97%
  2 workers x 1 thread      256/512/32     2,141     15.6      147    0.59       205    1.8%   4.2  97%
  2 workers x 1 thread      256/512/64     2,382     17.3      163    0.65       228    1.8%   4.2  98% (default)
  2 workers x 1 thread     256/512/128     2,291     16.7      157    0.63       219    1.8%   4.2  99%
  2 workers x 1 thread     512/1024/64     2,267     16.5      155    0.62       217    1.8%   4.2  99%
 1 process x 2 threads      256/512/64     1,363      9.9       93    0.37       131   29.9%   4.3  86%

batch 1: 137 pairs/s (0.06 of peak). End to end (units of 5,000 rows): 1,788 pairs/s at 20,000
rows (0.49 of peak: model loading weighs on 10 s of work), 2,144 at 80,000 (0.59); peak worker
RSS 670 and 672 MiB (ratio 1.00). Run to run the grid's ratios vary by about +-0.05 here.

What made the difference (same machine, same day): single-threaded workers pad a bucket's last
batch only to a multiple of 16 rows (now on any thread count, see ``pipeline.rescore``), 1.8% padding instead of 30%
(0.44-0.48 -> 0.62-0.65 of peak); one thread per process also spares the two threads'
hand-offs on every small product (1 process x 2 threads: 0.37). Readout chunks of 32 rows make
the rank-100 x 15k product less efficient; 128 rows no longer keep the logits in L2.
Before this session's fix the memory figure was ru_maxrss of a fresh process, i.e. the
benchmark's own RSS at fork (850-906 MiB): not a measurement of the scorer.

The table is synthetic: a Zipf vocabulary of 16,000 words (the model knows 15,000, so some
words are unknown), phrases of 1-7 tokens, each source with a geometric number of targets
(mean ``--targets-per-source``), like a Moses table sorted by source. The model has the paper's
random initialisation: speed does not depend on the weights.

usage: .venv/bin/python benchmarks/rescore.py [--device cpu] [--pairs 8000] [--baseline-pairs 200]
       [--memory-rows 20000] [--rows-per-unit 5000] [--threads N] [--no-memory]   (about 2.5 min on the CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Sleeping OpenMP waiters: spinning ones made torch 10-30x slower beside other processes on this
# shared machine (and they were the batch-1 figure's 0.01 of peak). Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from rnnenc.pipeline.model import (
    EncoderDecoder,
    EncoderDecoderConfig,
    load_model,
    make_batch,
    model_flops,
    save_model,
)
from rnnenc.pipeline.phrase_table import phrase_table_schema
from rnnenc.pipeline.rescore import (
    RescoreConfig,
    batch_sizes,
    plan_units,
    rescore_unit,
    torch_threads,
)
from rnnenc.pipeline.scorer import PhraseScorer, ScoreStats, scoring_flops
from rnnenc.pipeline.vocab import Vocabulary

WORDS = 16_000
KNOWN = 15_000


def synthetic_pairs(n: int, targets_per_source: float, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, WORDS + 1)
    p = 1.0 / ranks
    p /= p.sum()

    def phrase(side: str) -> str:
        return " ".join(f"{side}{w}" for w in rng.choice(WORDS, size=int(rng.integers(1, 8)), p=p))

    sources, targets = [], []
    while len(sources) < n:
        source = phrase("s")
        for _ in range(min(int(rng.geometric(1.0 / targets_per_source)), n - len(sources))):
            sources.append(source)
            targets.append(phrase("t"))
    return sources, targets


def paper_model(path: Path) -> None:
    torch.manual_seed(0)
    src = Vocabulary([f"s{i}" for i in range(KNOWN)], lang="en")
    tgt = Vocabulary([f"t{i}" for i in range(KNOWN)], lang="fr")
    model = EncoderDecoder(EncoderDecoderConfig(src_vocab_size=len(src), tgt_vocab_size=len(tgt)))
    save_model(path, model, src, tgt)


def write_table(sources: list[str], targets: list[str], out: Path, rows_per_group: int) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    n = len(sources)
    scores = [{"name": f"score{i}", "domain": "prob"} for i in range(4)]
    schema = phrase_table_schema(scores)
    columns = {"source": sources, "target": targets}
    columns |= {s["name"]: np.full(n, 0.5, dtype=np.float32) for s in scores}
    columns |= {"alignment": [""] * n, "counts": [""] * n, "extra": [[] for _ in range(n)],
                "line": np.arange(1, n + 1)}
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), out / "part-00000.parquet",
                   row_group_size=rows_per_group)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_median(fn, device: torch.device, samples: int = 7, min_seconds: float = 0.15) -> float:
    """Median seconds of one call of ``fn``: warm-up, then ``samples`` timings of >= min_seconds each."""
    for _ in range(3):
        fn()
    sync(device)
    reps, started = 0, time.perf_counter()
    while time.perf_counter() - started < min_seconds:
        fn()
        reps += 1
    sync(device)
    reps = max(1, reps)
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(device)
        times.append((time.perf_counter() - started) / reps)
    return float(np.median(times))


def matmul_peak(device: torch.device, decoder_batch: int) -> tuple[float, list[tuple[str, float]]]:
    """(peak, [(shape, GFLOP/s)]): dense matmul GFLOP/s, median of 7 timings after warm-up, for a
    2048^2 square and the scorer's own big products at the default decoder batch B (the decoder's
    recurrence B x 1000 x 3000, the deep output 5B x 1100 x 1000 and one chunk of logits
    64 x 100 x 15003 on the CPU); the peak is the best shape's median. float32 on the CPU (what
    the scorer computes in), bf16 on a GPU (its default autocast)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = ((2048, 2048, 2048), (decoder_batch, 1000, 3000), (5 * decoder_batch, 1100, 1000), (64, 100, 15003))
    results = []
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        seconds = timed_median(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), device)
        results.append((f"{m}x{k}x{n}", 2 * m * k * n / seconds / 1e9))
    return max(g for _, g in results), results


@torch.inference_mode()
def batch_one(model: EncoderDecoder, src_vocab, tgt_vocab, sources, targets, device) -> tuple[float, float]:
    """(pairs/s, GFLOP/s) of the model's own forward pass, one pair at a time."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    flops = 0
    with autocast:
        model(make_batch([sources[0].split()], [targets[0].split()], src_vocab, tgt_vocab).to(device))  # warm-up
        sync(device)
        started = time.perf_counter()
        for s, t in zip(sources, targets, strict=True):
            batch = make_batch([s.split()], [t.split()], src_vocab, tgt_vocab).to(device)
            model(batch).cpu()
            flops += model_flops(model.config, int(batch.src_lengths.sum()), batch.n_target_tokens, 1)
        seconds = time.perf_counter() - started
    return len(sources) / seconds, flops / seconds / 1e9


def batched(scorer: PhraseScorer, sources, targets) -> tuple[float, float, ScoreStats]:
    """(wall seconds, CPU share: process CPU seconds / (wall seconds x torch threads), stats)."""
    scorer.score(sources[:500], targets[:500])  # warm-up: allocator, kernels
    sync(scorer.device)
    started, cpu = time.perf_counter(), time.process_time()
    _, _, stats = scorer.score(sources, targets)
    sync(scorer.device)
    seconds = time.perf_counter() - started
    return seconds, (time.process_time() - cpu) / seconds / torch.get_num_threads(), stats


@torch.inference_mode()
def correctness(model: EncoderDecoder, src_vocab, tgt_vocab, sources, targets, device) -> tuple[float, bool]:
    """(max |score - forward pass| over some pairs, are scores bit-identical when the pairs are split
    into other calls along their groups?)."""
    defaults = batch_sizes(RescoreConfig(model=""), device)
    scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=defaults[0], decoder_batch=defaults[1],
                          readout_rows=defaults[2], group_rows=1000)
    n = min(len(sources), 3000)
    whole = scorer.score(sources[:n], targets[:n])[0]
    pieces = np.concatenate([scorer.score(sources[a:b], targets[a:b])[0] for a, b in ((0, 1000), (1000, 2000), (2000, n))])
    m = 300
    direct = torch.cat([model(make_batch([s.split() for s in sources[a:a + 50]], [t.split() for t in targets[a:a + 50]],
                                         src_vocab, tgt_vocab).to(device)).double().cpu() for a in range(0, m, 50)])
    return float(np.abs(whole[:m] - direct.numpy()).max()), bool(np.array_equal(whole, pieces))


def child_score(args: argparse.Namespace) -> None:
    """A worker of the parallel runs: score this child's slice of ``--child-pairs`` with one torch
    thread (as a Dask worker does), warm up, say "ready", wait for "go" on stdin, print JSON."""
    pairs = json.loads(Path(args.child_pairs).read_text())
    sources, targets = pairs["sources"], pairs["targets"]
    model, src_vocab, tgt_vocab = load_model(args.child_model, "cpu")
    if args.child_config == "batch1":
        batch_one(model, src_vocab, tgt_vocab, sources[:5], targets[:5], torch.device("cpu"))
        print("ready", flush=True)
        sys.stdin.readline()
        pairs_per_s, gflops = batch_one(model, src_vocab, tgt_vocab, sources, targets, torch.device("cpu"))
        print(json.dumps({"pairs": len(sources), "seconds": len(sources) / pairs_per_s,
                          "flops": gflops * 1e9 * len(sources) / pairs_per_s}))
        return
    enc, dec, readout = map(int, args.child_config.split("/"))
    scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=enc, decoder_batch=dec, readout_rows=readout)
    scorer.score(sources[:500], targets[:500])  # warm-up: allocator, kernels
    print("ready", flush=True)
    sys.stdin.readline()
    started, cpu = time.perf_counter(), time.process_time()
    _, _, stats = scorer.score(sources, targets)
    seconds = time.perf_counter() - started
    print(json.dumps({"pairs": len(sources), "seconds": seconds, "cpu_share": (time.process_time() - cpu) / seconds,
                      "flops": scoring_flops(model.config, stats), "stats": stats.to_dict()}))


def in_workers(model_path: Path, sources: list[str], targets: list[str], config: str, workers: int,
               tmp: Path) -> dict:
    """Score ``sources``/``targets`` split over ``workers`` processes of one torch thread each,
    started together: the layout ``rnnenc rescore`` runs on (one single-threaded Dask worker per
    core). Returns the summed pairs, FLOPs and stats with the slowest worker's seconds."""
    procs = []
    for w in range(workers):
        share = tmp / f"pairs-{w}.json"
        part = slice(w * len(sources) // workers, (w + 1) * len(sources) // workers)  # consecutive, as units
        share.write_text(json.dumps({"sources": sources[part], "targets": targets[part]}))
        cmd = [sys.executable, __file__, "--child-pairs", str(share), "--child-model", str(model_path),
               "--child-config", config, "--threads", "1"]
        procs.append(subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
    for proc in procs:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"a worker process failed (config {config})")
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"a worker process failed (config {config})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    total = {"pairs": sum(r["pairs"] for r in results), "seconds": max(r["seconds"] for r in results),
             "flops": sum(r["flops"] for r in results)}
    if "stats" in results[0]:
        total["stats"] = {k: sum(r["stats"][k] for r in results) for k in results[0]["stats"]}
        total["cpu_share"] = sum(r["cpu_share"] for r in results) / workers
    return total


def end_to_end_cpu(model_path: Path, tables: list[Path], args: argparse.Namespace, workers: int,
                   tmp: Path) -> list[dict]:
    """``rnnenc rescore``'s own Dask map (workflows.rescore.rescore) on a fresh LocalCluster of
    ``workers`` single-threaded worker processes per table; memory = the largest worker's peak RSS."""
    from rnnenc.pipeline.rescore import rescore
    from rnnenc.workflows.cluster import DaskExecutor, dask_client

    def peak_rss_mib() -> float:
        # VmHWM, this process image's own high-water mark: ru_maxrss would carry the RSS of the
        # benchmark process that forked the worker (Linux keeps it across fork and exec)
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmHWM:")[1].split()[0]) / 1024

    results = []
    for table in tables:
        with dask_client(n_workers=workers) as client:
            started = time.perf_counter()
            report = rescore(DaskExecutor(client, quiet=True), table, tmp / f"out-{table.name}",
                             RescoreConfig(model=str(model_path), device="cpu"), rows_per_unit=args.rows_per_unit)
            seconds = time.perf_counter() - started
            rss = max(client.run(peak_rss_mib).values())
        stats = ScoreStats(**{f: report[f] for f in ScoreStats.__dataclass_fields__})
        results.append({"rows": report["rows"], "units": report["units"], "seconds": seconds,
                        "flops": scoring_flops(EncoderDecoderConfig(), stats),
                        "padded_rows": report["padded_rows"], "peak_rss_mib": rss})
    return results


def memory_gpu(model_path: Path, tables: list[Path], args: argparse.Namespace) -> list[dict]:
    results = []
    config = RescoreConfig(model=str(model_path), device="cuda")
    for table in tables:
        units, _ = plan_units(table, args.rows_per_unit, config.group_rows)
        torch.cuda.reset_peak_memory_stats()
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            records = [rescore_unit(unit, out, config) for unit in units]
            seconds = time.perf_counter() - started
        results.append({"rows": sum(u.rows for u in units), "units": len(units), "seconds": seconds,
                        "flops": sum(r["flops"] for r in records),
                        "padded_rows": sum(r["stats"]["padded_rows"] for r in records),
                        "peak_rss_mib": torch.cuda.max_memory_allocated() / 2**20})
    return results


HEADER = (f"{'layout':>22} {'enc/dec/readout':>15} {'pairs/s':>9} {'x batch1':>8} {'GFLOP/s':>8} {'of peak':>7} "
          f"{'fwd-equiv':>9} {'padding':>7} {'reuse':>5} {'cpu':>4}")


def grid_row(layout: str, config: tuple[int, int, int], n: int, seconds: float, flops: float, stats: dict,
             share: float, pps1: float, peak: float, pair_src_tokens: int, mark: str = "") -> str:
    achieved = flops / seconds / 1e9
    effective = model_flops(EncoderDecoderConfig(), pair_src_tokens, stats["target_tokens"], n) / seconds / 1e9
    pad = stats["padded_rows"] / (stats["padded_rows"] + stats["pairs"] + stats["sources_encoded"])
    return (f"{layout:>22} {'/'.join(map(str, config)):>15} {n / seconds:>9,.0f} {n / seconds / pps1:>8.1f} "
            f"{achieved:>8,.0f} {achieved / peak:>7.2f} {effective:>9,.0f} {pad:>7.1%} "
            f"{n / stats['sources_encoded']:>5.1f} {share:>4.0%}{mark}")


def run_cpu(model_path: Path, sources, targets, tables, args, tmp: Path) -> None:
    device = torch.device("cpu")
    workers = args.threads
    model, src_vocab, tgt_vocab = load_model(model_path, device)
    default = batch_sizes(RescoreConfig(model=""), device)
    peak, shapes = matmul_peak(device, default[1])
    print(f"\n== cpu: {workers} single-threaded worker processes (rnnenc rescore's layout: one Dask worker "
          f"per core), against the matmul of all {workers} threads ==")
    print("dense matmul (float32, median of 7 after warm-up, all threads in one process): "
          + ", ".join(f"{shape} {g:,.0f}" for shape, g in shapes) + f" GFLOP/s; peak = {peak:,.0f}")
    n1 = args.baseline_pairs
    one = in_workers(model_path, sources[:n1], targets[:n1], "batch1", workers, tmp)
    pps1, gf1 = one["pairs"] / one["seconds"], one["flops"] / one["seconds"] / 1e9
    print(f"batch 1 (the model's forward pass, one pair at a time, {n1} pairs over {workers} workers): "
          f"{pps1:,.1f} pairs/s, {gf1:,.1f} GFLOP/s = {gf1 / peak:.2f} of peak")
    with torch_threads(1):
        error, exact = correctness(model, src_vocab, tgt_vocab, sources, targets, device)
    print(f"scores vs the model's float32 forward pass (1 thread): max |diff| {error:.2e}; bit-identical when "
          f"the pairs are split differently: {'yes' if exact else 'NO'}")
    n = args.pairs
    src, tgt = sources[:n], targets[:n]
    pair_src_tokens = sum(len(s.split()) + 1 for s in src)
    print(f"batched ({n} pairs; GFLOP/s = FLOPs of the work needed (each distinct source encoded once per "
          "group, every real target token; padding rows not counted) / wall time of the slowest worker):")
    print(HEADER)
    configs = [(256, 256, 64), (256, 512, 32), default, (256, 512, 128), (512, 1024, 64)]
    for config in dict.fromkeys(configs):
        r = in_workers(model_path, src, tgt, "/".join(map(str, config)), workers, tmp)
        print(grid_row(f"{workers} workers x 1 thread", config, n, r["seconds"], r["flops"], r["stats"],
                       r["cpu_share"], pps1, peak, pair_src_tokens, " (default)" if config == default else ""))
    scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=default[0], decoder_batch=default[1],
                          readout_rows=default[2])
    seconds, share, stats = batched(scorer, src, tgt)
    print(grid_row(f"1 process x {torch.get_num_threads()} threads", default, n, seconds,
                   scoring_flops(model.config, stats), stats.to_dict(), share, pps1, peak, pair_src_tokens))
    print("(a bucket's last batch padded to a multiple of 16 rows, on any thread count)")
    if args.no_memory:
        return
    memory = end_to_end_cpu(model_path, tables, args, workers, tmp)
    print_end_to_end(memory, args, peak, f"rnnenc rescore's Dask map on a LocalCluster of {workers} workers x "
                     "1 thread; memory = the largest worker's peak RSS")


def print_end_to_end(memory: list[dict], args: argparse.Namespace, peak: float, what: str) -> None:
    print(f"end to end ({what}; default batches, units of {args.rows_per_unit:,} rows, Parquet in and out):")
    for m in memory:
        gf = m["flops"] / m["seconds"] / 1e9
        print(f"  {m['rows']:>7,} rows, {m['units']:>3} units: {m['peak_rss_mib']:,.0f} MiB; "
              f"{m['rows'] / m['seconds']:,.0f} pairs/s, {gf:,.0f} GFLOP/s = {gf / peak:.2f} of peak "
              f"({m['padded_rows']:,} padding rows)")
    print(f"  memory ratio (4x the rows): {memory[1]['peak_rss_mib'] / memory[0]['peak_rss_mib']:.2f}")


def run_gpu(device: torch.device, model_path: Path, sources, targets, tables, args) -> None:
    model, src_vocab, tgt_vocab = load_model(model_path, device)
    default = batch_sizes(RescoreConfig(model=""), device)
    peak, shapes = matmul_peak(device, default[1])
    print(f"\n== {device} ({torch.cuda.get_device_name(device)}) ==")
    print("dense matmul (bf16, median of 7 after warm-up): "
          + ", ".join(f"{shape} {g:,.0f}" for shape, g in shapes) + f" GFLOP/s; peak = {peak:,.0f}")
    n1 = 4 * args.baseline_pairs
    pps1, gf1 = batch_one(model, src_vocab, tgt_vocab, sources[:n1], targets[:n1], device)
    print(f"batch 1 (model forward, {n1} pairs): {pps1:,.1f} pairs/s, {gf1:,.1f} GFLOP/s = {gf1 / peak:.2f} of peak")
    error, exact = correctness(model, src_vocab, tgt_vocab, sources, targets, device)
    print(f"scores vs the model's float32 forward pass: max |diff| {error:.2e} (bf16 products); bit-identical "
          f"when the pairs are split differently: {'yes' if exact else 'NO'}")
    n = 8 * args.pairs
    src, tgt = sources[:n], targets[:n]
    pair_src_tokens = sum(len(s.split()) + 1 for s in src)
    print(f"batched ({n} pairs):")
    print(HEADER)
    for config in dict.fromkeys([(512, 512, 512), (1024, 1024, 1024), default, (4096, 4096, 4096),
                                 (8192, 8192, 8192)]):
        scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=config[0], decoder_batch=config[1],
                              readout_rows=config[2])
        seconds, share, stats = batched(scorer, src, tgt)
        print(grid_row("1 process, GPU", config, n, seconds, scoring_flops(model.config, stats), stats.to_dict(),
                       share, pps1, peak, pair_src_tokens, " (default)" if config == default else ""))
    if not args.no_memory:
        print_end_to_end(memory_gpu(model_path, tables, args), args, peak,
                         "rescore_unit in this process; memory = peak allocated GPU memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8000, help="pairs scored batched on the CPU (GPU: 8x)")
    parser.add_argument("--baseline-pairs", type=int, default=200, help="pairs scored one at a time (GPU: 4x)")
    parser.add_argument("--memory-rows", type=int, default=20_000, help="the smaller table of the memory test")
    parser.add_argument("--rows-per-unit", type=int,
                        help="rows per work unit end to end (default: 5,000 on the CPU, so that the smaller "
                             "table gives each worker 2 units; 20,000 on a GPU, whose batches are larger)")
    parser.add_argument("--targets-per-source", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use, %(default)s)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--no-memory", action="store_true", help="skip the end-to-end memory runs")
    parser.add_argument("--child-pairs", help=argparse.SUPPRESS)
    parser.add_argument("--child-config", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_pairs:
        child_score(args)
        return
    cpu_units, gpu_units = (args.rows_per_unit or 5_000), (args.rows_per_unit or 20_000)
    started = time.perf_counter()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    devices = [torch.device("cpu")] if args.device in ("all", "cpu") else []
    if args.device in ("all", "cuda") and torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    gpu_scale = 8 if torch.cuda.is_available() and args.device != "cpu" else 1
    sources, targets = synthetic_pairs(max(args.pairs * gpu_scale, 4 * args.memory_rows), args.targets_per_source)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model_path = tmp / "model.pt"
        paper_model(model_path)
        tables = [write_table(sources[:rows], targets[:rows], tmp / f"table-{rows}", rows_per_group=1000)
                  for rows in (args.memory_rows, 4 * args.memory_rows)]
        print(f"paper-size model {EncoderDecoderConfig().to_dict()}; synthetic table, "
              f"{args.targets_per_source} targets per source on average")
        for device in devices:
            if device.type == "cpu":
                args.rows_per_unit = cpu_units
                run_cpu(model_path, sources, targets, tables, args, tmp)
            else:
                args.rows_per_unit = gpu_units
                run_gpu(device, model_path, sources, targets, tables, args)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
