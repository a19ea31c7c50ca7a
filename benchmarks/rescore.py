"""Rescoring speed and memory at the paper's dimensions (15k words, 1000 hidden, 500 maxout, rank 100).

Prints, per device (the CPU, and a CUDA GPU when present), measured in the same run:
  - the load average at start and end (the machine is shared: judge the figures by it);
  - the dense matmul GFLOP/s of this machine: median of 7 timings after warm-up for a 2048^2
    square and the scorer's own big products; the peak is the best shape's median;
  - scoring one pair at a time (the model's plain forward pass, batch 1): pairs/s, GFLOP/s;
  - the batched scorer (pipeline.rescore.PhraseScorer) for a grid of batch configurations:
    pairs/s, speed-up over batch 1, achieved GFLOP/s and its ratio to the matmul peak, the
    plain-forward-equivalent GFLOP/s ("fwd-equiv": the plain forward pass's FLOPs over the same
    time, i.e. also counting the source re-encodings the scorer saves; not used for the ratio),
    and the share of the torch threads' CPU time the process got ("cpu": < 100% = contention);
  - the table scored end to end through ``rescore_unit`` (the worker task of ``rnnenc
    rescore``: Parquet in, default batches, scores, Parquet out) in a fresh process at two table
    sizes 4x apart, with its peak memory (CPU: peak RSS of the process; GPU: peak allocated
    device memory), pairs/s and GFLOP/s.

Achieved GFLOP/s = ``pipeline.rescore.scoring_flops`` of the pairs scored (2 per multiply-add
of the products needed: each distinct source's encoder steps and c-projections once per group,
every real target token's recurrence, deep output and 15k-word softmax) / wall time. The rows
that fill a bucket's last fixed-size batch (copies of a real row, results dropped) are executed
but not counted: they are the "padding" column, larger at 8,000 pairs than in a real table,
whose groups hold 8,192 distinct sources.

Threads: ``torch.set_num_threads(--threads)``, default the cores this process may use (2 here).
``OMP_WAIT_POLICY=PASSIVE`` is set before torch loads (as ``rnnenc`` does): spinning OpenMP
waiters made torch 10-30x slower beside other processes.

CPU default batch sizes (encoder/decoder/readout rows) 256/512/64, chosen with this grid
(``--device cpu``, 2 threads, Xeon with AVX-512, 2 MB L2 per core; load average 2.65 at start,
1.63 at end, i.e. about 0.6-1 core used by others; matmul peak 258 GFLOP/s):

   enc/dec/readout   pairs/s x batch1  GFLOP/s of peak fwd-equiv padding reuse  cpu
        256/256/64     1,404     21.2       98    0.38       134   19.7%   4.3  86%
        256/512/32     1,191     18.0       83    0.32       114   29.9%   4.3  84%
        256/512/64     1,460     22.1      102    0.39       140   29.9%   4.3  90% (default)
       256/512/128     1,299     19.6       91    0.35       124   29.9%   4.3  88%
        512/512/64     1,274     19.2       89    0.34       122   31.1%   4.3  83%
       256/1024/64     1,109     16.7       77    0.30       106   44.1%   4.3  89%

batch 1: 66 pairs/s (0.03 of peak); end to end (units of 20,000 rows): 1,330 pairs/s at 20,000
rows and 1,409 at 80,000 (0.38 of peak), peak RSS 906 MiB at both sizes (ratio 1.00); a
repeat (load 1.22 -> 1.72) gave 1,418 pairs/s (0.40), end to end 1,442 (0.41), 856 MiB flat.
Before the readout ran over all positions of a batch in reused buffers (per-step readout), in
one quiet run (load 1.6, 8,000 pairs, best of 3): old path 1,358 pairs/s at its default
256/256/64 and 1,259 at 256/512/64, new path 1,419 at 256/512/64 (+13% at the same batches,
11% less CPU time per FLOP). Most of the earlier runs' gap (6 pairs/s at batch 1, 0.13-0.29 of a
65 GFLOP/s "peak") was spinning OpenMP waiters and other processes on the 2 cores.
Readout chunks of 32 rows make the rank-100 x 15k product less efficient, 128 rows no longer
keep the logits in L2; decoder batches of 1024 add padding and gain nothing.

The table is synthetic: a Zipf vocabulary of 16,000 words (the model knows 15,000, so some
words are unknown), phrases of 1-7 tokens, each source with a geometric number of targets
(mean ``--targets-per-source``), like a Moses table sorted by source. The model has the paper's
random initialisation: speed does not depend on the weights.

usage: .venv/bin/python benchmarks/rescore.py [--device cpu] [--pairs 8000] [--baseline-pairs 200]
       [--memory-rows 20000] [--rows-per-unit 20000] [--threads N] [--no-memory]   (about 3 min on the CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from pipeline.model import (
    EncoderDecoder,
    EncoderDecoderConfig,
    load_model,
    make_batch,
    model_flops,
    save_model,
)
from pipeline.phrase_table import phrase_table_schema
from pipeline.rescore import (
    PhraseScorer,
    RescoreConfig,
    ScoreStats,
    batch_sizes,
    plan_units,
    rescore_unit,
    scoring_flops,
)
from pipeline.vocab import Vocabulary

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
    """(max |score - forward pass| over some pairs, are scores bit-identical when the pairs are split?)."""
    defaults = batch_sizes(RescoreConfig(model=""), device)
    scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=defaults[0], decoder_batch=defaults[1],
                          readout_rows=defaults[2])
    n = min(len(sources), 3000)
    whole = scorer.score(sources[:n], targets[:n])[0]
    pieces = np.concatenate([scorer.score(sources[a:b], targets[a:b])[0] for a, b in ((0, 333), (333, 2000), (2000, n))])
    m = 300
    direct = torch.cat([model(make_batch([s.split() for s in sources[a:a + 50]], [t.split() for t in targets[a:a + 50]],
                                         src_vocab, tgt_vocab).to(device)).double().cpu() for a in range(0, m, 50)])
    return float(np.abs(whole[:m] - direct.numpy()).max()), bool(np.array_equal(whole, pieces))


def child_memory(args: argparse.Namespace) -> None:
    """Score every unit of ``--child-table`` one after another, print peak RSS (MiB) as JSON."""
    config = RescoreConfig(model=args.child_model, device="cpu", threads=args.threads)
    units, _ = plan_units(args.child_table, args.rows_per_unit)
    with tempfile.TemporaryDirectory() as out:
        started, cpu = time.perf_counter(), time.process_time()
        records = [rescore_unit(unit, out, config) for unit in units]
        seconds = time.perf_counter() - started
    print(json.dumps({"rows": sum(u.rows for u in units), "units": len(units), "seconds": seconds,
                      "cpu_share": (time.process_time() - cpu) / seconds / torch.get_num_threads(),
                      "flops": sum(r["flops"] for r in records),
                      "padded_rows": sum(r["stats"]["padded_rows"] for r in records),
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory_cpu(model_path: Path, tables: list[Path], args: argparse.Namespace) -> list[dict]:
    results = []
    for table in tables:
        cmd = [sys.executable, __file__, "--child-table", str(table), "--child-model", str(model_path),
               "--rows-per-unit", str(args.rows_per_unit), "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def memory_gpu(model_path: Path, tables: list[Path], args: argparse.Namespace) -> list[dict]:
    results = []
    config = RescoreConfig(model=str(model_path), device="cuda")
    for table in tables:
        units, _ = plan_units(table, args.rows_per_unit)
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


def run_device(device: torch.device, model_path: Path, sources, targets, tables, args) -> None:
    model, src_vocab, tgt_vocab = load_model(model_path, device)
    default = batch_sizes(RescoreConfig(model=""), device)
    peak, shapes = matmul_peak(device, default[1])
    print(f"\n== {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'torch threads: ' + str(torch.get_num_threads())}) ==")
    print(f"dense matmul ({'bf16' if device.type == 'cuda' else 'float32'}, median of 7 after warm-up): "
          + ", ".join(f"{shape} {g:,.0f}" for shape, g in shapes) + f" GFLOP/s; peak = {peak:,.0f}")
    n1 = args.baseline_pairs if device.type == "cpu" else 4 * args.baseline_pairs
    pps1, gf1 = batch_one(model, src_vocab, tgt_vocab, sources[:n1], targets[:n1], device)
    print(f"batch 1 (model forward, {n1} pairs): {pps1:,.1f} pairs/s, {gf1:,.1f} GFLOP/s = {gf1 / peak:.2f} of peak")
    error, exact = correctness(model, src_vocab, tgt_vocab, sources, targets, device)
    print(f"scores vs the model's float32 forward pass: max |diff| {error:.2e}"
          f"{' (bf16 products)' if device.type == 'cuda' else ''}; bit-identical when the pairs are split "
          f"differently: {'yes' if exact else 'NO'}")
    configs = ([(256, 256, 64), (256, 512, 32), default, (256, 512, 128), (512, 512, 64), (256, 1024, 64)]
               if device.type == "cpu" else
               [(512, 512, 512), (1024, 1024, 1024), default, (4096, 4096, 4096), (8192, 8192, 8192)])
    n = args.pairs if device.type == "cpu" else 8 * args.pairs
    src, tgt = sources[:n], targets[:n]
    print(f"batched ({n} pairs; GFLOP/s = FLOPs of the work needed (each distinct source encoded once per "
          "group, every real target token; padding rows not counted) / wall time):")
    print(f"{'enc/dec/readout':>18} {'pairs/s':>9} {'x batch1':>8} {'GFLOP/s':>8} {'of peak':>7} "
          f"{'fwd-equiv':>9} {'padding':>7} {'reuse':>5} {'cpu':>4}")
    for enc, dec, readout in dict.fromkeys(configs):
        scorer = PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=enc, decoder_batch=dec,
                              readout_rows=readout)
        seconds, share, stats = batched(scorer, src, tgt)
        achieved = scoring_flops(model.config, stats) / seconds / 1e9
        pair_src_tokens = sum(len(s.split()) + 1 for s in src)
        effective = model_flops(model.config, pair_src_tokens, stats.target_tokens, n) / seconds / 1e9
        pad = stats.padded_rows / (stats.padded_rows + stats.pairs + stats.sources_encoded)
        mark = " (default)" if (enc, dec, readout) == default else ""
        print(f"{f'{enc}/{dec}/{readout}':>18} {n / seconds:>9,.0f} {n / seconds / pps1:>8.1f} {achieved:>8,.0f} "
              f"{achieved / peak:>7.2f} {effective:>9,.0f} {pad:>7.1%} {n / stats.sources_encoded:>5.1f} {share:>4.0%}{mark}")
    if args.no_memory:
        return
    memory = memory_cpu(model_path, tables, args) if device.type == "cpu" else memory_gpu(model_path, tables, args)
    what = "peak RSS of a fresh process" if device.type == "cpu" else "peak allocated GPU memory"
    print(f"end to end through rescore_unit (Parquet in, default batches, scores, Parquet out), units of "
          f"{args.rows_per_unit:,} rows; memory = {what}:")
    for m in memory:
        gf = m["flops"] / m["seconds"] / 1e9
        print(f"  {m['rows']:>7,} rows, {m['units']:>3} units: {m['peak_rss_mib']:,.0f} MiB; "
              f"{m['rows'] / m['seconds']:,.0f} pairs/s, {gf:,.0f} GFLOP/s = {gf / peak:.2f} of peak "
              f"({m['padded_rows']:,} padding rows"
              + (f"; CPU share {m['cpu_share']:.0%})" if "cpu_share" in m else ")"))
    print(f"  memory ratio (4x the rows): {memory[1]['peak_rss_mib'] / memory[0]['peak_rss_mib']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=8000, help="pairs scored batched on the CPU (GPU: 8x)")
    parser.add_argument("--baseline-pairs", type=int, default=200, help="pairs scored one at a time (GPU: 4x)")
    parser.add_argument("--memory-rows", type=int, default=20_000, help="the smaller table of the memory test")
    parser.add_argument("--rows-per-unit", type=int, default=20_000)
    parser.add_argument("--targets-per-source", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch threads (default: the cores this process may use, %(default)s)")
    parser.add_argument("--device", choices=["all", "cpu", "cuda"], default="all")
    parser.add_argument("--no-memory", action="store_true", help="skip the end-to-end memory runs")
    parser.add_argument("--child-table", help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_table:
        child_memory(args)
        return
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
            run_device(device, model_path, sources, targets, tables, args)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
