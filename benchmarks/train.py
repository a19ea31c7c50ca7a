"""Training speed of the encoder-decoder at the paper's size, against the machine's matmul speed.

Prints, for one device (CUDA when present, else CPU; --device forces one): the dense matmul
GFLOP/s of this machine measured in the same run, then for the model as trained by
``rnnenc train`` (fused GRUs, readout over real tokens only) and for a naive step-by-step
``GRUCell`` loop of the same model (same weights, readout and softmax at every padded step):
updates/s, achieved GFLOP/s (FLOPs of the model's matrix products over real tokens, forward +
backward = 3x forward, see ``pipeline.model.model_flops``), the ratio to the matmul figure,
and where a step's time goes. Batches: 64 pairs of 3-6 tokens (+ </s>), 15k vocabularies.
Variants take turns on each batch and the matmul speed is re-measured between rounds, so the
load of a shared machine weighs on every figure alike.

Notes from 2 shared cores: with the readout packed to real tokens the output layer is no longer
the bottleneck; PyTorch's CPU GRU (unlike its LSTM) has no oneDNN kernel, so the recurrences run
as per-step autograd ops inside the one ``nn.GRU`` call, and eager Adadelta's ten memory-bound
passes over 17M parameters cost ~80 ms a step (``--compile`` fuses them: ~30 ms).

    .venv/bin/python benchmarks/train.py [--updates 20] [--device auto|cpu|cuda] [--threads N] [--compile]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model import Batch, EncoderDecoder, EncoderDecoderConfig, model_flops, pad_ids
from pipeline.train import TrainConfig, autocast, make_clip_and_step, pick_device


def random_batches(n: int, config: EncoderDecoderConfig, batch_size: int = 64, seed: int = 0) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)

    def side(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
        lengths = torch.randint(3, 7, (batch_size,), generator=g)
        return pad_ids([torch.randint(3, vocab, (int(k),), generator=g).tolist() + [2] for k in lengths])

    return [Batch(*side(config.src_vocab_size), *side(config.tgt_vocab_size)) for _ in range(n)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    times = []
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        times.append((time.perf_counter() - start) / reps)
    return 2 * n**3 / min(times) / 1e9


class NaiveLoop(nn.Module):
    """The same model and weights, run one time step at a time with GRUCells, readout at every step."""

    def __init__(self, model: EncoderDecoder):
        super().__init__()
        self.m = model
        c = model.config
        self.enc_cell = nn.GRUCell(c.embedding, c.hidden)
        self.dec_cell = nn.GRUCell(c.embedding + c.hidden, c.hidden)
        for cell, gru in ((self.enc_cell, model.encoder), (self.dec_cell, model.decoder)):
            cell.weight_ih, cell.weight_hh = gru.weight_ih_l0, gru.weight_hh_l0
            cell.bias_ih, cell.bias_hh = gru.bias_ih_l0, gru.bias_hh_l0

    def loss(self, batch: Batch) -> torch.Tensor:
        m = self.m
        B = batch.src.shape[0]
        h = batch.src.new_zeros(B, m.config.hidden, dtype=torch.float)
        for t in range(batch.src.shape[1]):
            step = self.enc_cell(m.src_embed(batch.src[:, t]), h)
            h = torch.where((t < batch.src_lengths).unsqueeze(1), step, h)  # freeze after the last token
        c = h
        h = torch.tanh(m.init_state(c))
        prev = torch.zeros(B, m.config.embedding, device=c.device)
        total = torch.zeros((), device=c.device)
        for t in range(batch.tgt.shape[1]):
            h = self.dec_cell(torch.cat([prev, c], dim=-1), h)
            logits = m.readout(h, prev, m.out_c(c))
            nll = F.cross_entropy(logits.float(), batch.tgt[:, t], reduction="none")
            total = total + (nll * (t < batch.tgt_lengths)).sum()
            prev = m.tgt_embed(batch.tgt[:, t])
        return total


class Runner:
    """One variant's training step (own Adadelta state), timed in parts: forward, backward, clip + Adadelta."""

    def __init__(self, step_model: nn.Module, model: EncoderDecoder, device: torch.device, compile_step: bool):
        self.step_model, self.device = step_model, device
        optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-6)
        self.optimizer = optimizer
        self.clip_and_step = make_clip_and_step(model, optimizer, TrainConfig(compile=compile_step))
        self.times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "update": []}

    def step(self, batch: Batch, record: bool) -> None:
        device = self.device
        sync(device)
        t0 = time.perf_counter()
        with autocast(device):
            loss = self.step_model.loss(batch)
        sync(device)
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        self.clip_and_step()
        sync(device)
        t3 = time.perf_counter()
        if record:
            for key, value in zip(self.times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                self.times[key].append(value)

    def median(self, key: str) -> float:
        return statistics.median(self.times[key])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=20, help="timed updates per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: all cores)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the torch.compile'd clip + Adadelta step (compiling takes a minute)")
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    config = EncoderDecoderConfig()  # the paper's sizes
    batches = random_batches(args.updates + args.warmup, config)
    flops = statistics.median(3 * model_flops(config, int(b.src_lengths.sum()), int(b.tgt_lengths.sum()),
                                              b.src.shape[0]) for b in batches)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    load = os.getloadavg()[0]

    model = EncoderDecoder(config).to(device)
    runners = {"fused (rnnenc train)": Runner(model, model, device, False)}
    if args.compile:
        runners["fused + compiled Adadelta (--compile)"] = Runner(model, model, device, True)
    runners["naive GRUCell loop"] = naive = Runner(NaiveLoop(model), model, device, False)
    # variants take turns on each batch and the matmul is re-measured between rounds, so a
    # shared machine's changing load hits all figures alike
    peaks = []
    for i, batch in enumerate(batches):
        batch = batch.to(device)
        for runner in runners.values():
            runner.step(batch, record=i >= args.warmup)
        if i >= args.warmup:
            peaks.append(matmul_gflops(device, dtype, reps=3))
    peak = statistics.median(peaks)

    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; load average at start {load:.2f}; {args.updates} timed updates per variant")
    print(f"model: hidden {config.hidden}, embedding {config.embedding}, maxout {config.maxout}, "
          f"vocabularies {config.src_vocab_size}/{config.tgt_vocab_size}; batch 64 pairs of 3-6 tokens + </s>; "
          f"{flops / 1e9:.2f} GFLOP per update (median)")
    print(f"dense {str(dtype).removeprefix('torch.')} matmul 2048x2048: {peak:.1f} GFLOP/s (median of "
          f"{len(peaks)} measurements between rounds, range {min(peaks):.0f}-{max(peaks):.0f}); "
          f"load average at the end {os.getloadavg()[0]:.2f}\n")
    print("| variant | updates/s | GFLOP/s | ratio to matmul | forward ms | backward ms | clip+Adadelta ms |")
    print("|---|---|---|---|---|---|---|")
    for label, r in runners.items():
        achieved = flops / r.median("update") / 1e9
        print(f"| {label} | {1 / r.median('update'):.2f} | {achieved:.1f} | {achieved / peak:.2f} | "
              f"{r.median('forward') * 1e3:.0f} | {r.median('backward') * 1e3:.0f} | "
              f"{r.median('optimizer') * 1e3:.0f} |")
    for label, r in runners.items():
        if r is not naive:
            print(f"speed-up of {label} over the naive loop: {naive.median('update') / r.median('update'):.2f}x")


if __name__ == "__main__":
    main()
