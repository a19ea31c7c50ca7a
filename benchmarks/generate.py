"""Beam-search speed at the paper's dimensions: source phrases decoded per second, beam 1 / 5 / 10.

    .venv/bin/python benchmarks/generate.py [--sources 128] [--rounds 5] [--length 5] [--threads 0] [--device auto]

The model has the paper's sizes (15k words a side, 100-d embeddings, 1000 GRU units, 500
maxout units, rank-100 softmax) and random weights, with the bias of ``</s>`` lowered to -30:
a random model has no idea where a phrase ends (raise </s> and every phrase ends after one word,
leave it and it runs on at random), so every hypothesis here runs to --length words (default
5, about a phrase table's target phrase) and then takes the forced ``</s>``: each round does
the same work. Sources: random phrases of 1-7 in-vocabulary words, decoded in batches of
--batch-size. Per device (the CPU; the GPU too when torch.cuda.is_available(),
or only the one --device names) and beam size: the median over --rounds timed rounds, after one
warm-up, of sources/s and hypotheses/s (``nbest = beam`` hypotheses per source), and the mean
generated length (a check: --length). The machine may be shared: the load average is printed at start and end.

Figures (2 shared cores, Xeon with AVX-512, torch 2.13 CPU, 2 threads, 64 sources, 3 rounds;
other jobs were running: load average 1.3 at start, 1.7 at end; a run at load 2.2 gave
295 / 136 / 65 sources/s, so read them to within about +-30 %). No GPU was available.

    device  beam  sources/s     hyps/s  s/round  mean len
       cpu     1      230.8      230.8    0.277      5.00
       cpu     5       89.4      447.0    0.716      5.00
       cpu    10       43.7      437.3    1.464      5.00
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the CLI does (workflows/cli.py), before torch loads

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rnnenc.pipeline.generate import beam_search  # noqa: E402
from rnnenc.pipeline.model import EncoderDecoder, EncoderDecoderConfig  # noqa: E402
from rnnenc.pipeline.vocab import EOS_ID, Vocabulary  # noqa: E402


def paper_model(seed: int = 0) -> tuple[EncoderDecoder, Vocabulary, Vocabulary]:
    """A random model of the paper's sizes that never ends a phrase before it has to."""
    torch.manual_seed(seed)
    config = EncoderDecoderConfig()
    model = EncoderDecoder(config, initialise=False).eval()
    with torch.no_grad():
        model.out_vocab.bias[EOS_ID] = -30.0
    src = Vocabulary([f"s{i}" for i in range(config.src_vocab_size - 3)], lang="en")
    tgt = Vocabulary([f"t{i}" for i in range(config.tgt_vocab_size - 3)], lang="fr")
    return model, src, tgt


def random_sources(vocab: Vocabulary, n: int, seed: int = 1) -> list[list[str]]:
    rng = np.random.default_rng(seed)
    words = vocab.itos[3:]
    return [[words[i] for i in rng.integers(0, len(words), size=rng.integers(1, 8))] for _ in range(n)]


def bench(model: EncoderDecoder, src: Vocabulary, tgt: Vocabulary, sources: list[list[str]], beam: int,
          rounds: int, batch_size: int, device: torch.device, length: int) -> dict[str, float]:
    def once() -> tuple[float, list]:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        found = beam_search(model, src, tgt, sources, beam=beam, batch_size=batch_size, device=device,
                            max_length=length)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, found

    once()  # warm-up: kernels, allocator
    times, found = [], []
    for _ in range(rounds):
        seconds, found = once()
        times.append(seconds)
    median = statistics.median(times)
    hyps = sum(len(f) for f in found)
    return {"sources_per_s": len(sources) / median, "hyps_per_s": hyps / median, "seconds": median,
            "length": float(np.mean([len(h.tokens) for f in found for h in f]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=int, default=128, help="source phrases per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the median is shown (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="sources per batch (default: %(default)s)")
    parser.add_argument("--beams", default="1,5,10", help="beam sizes (default: %(default)s)")
    parser.add_argument("--length", type=int, default=5, help="words per generated phrase (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: all cores)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto: the CPU, and the GPU when there is one")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = {"auto": ["cpu"] + (["cuda"] if torch.cuda.is_available() else []), "cpu": ["cpu"],
               "cuda": ["cuda"]}[args.device]
    model, src, tgt = paper_model()
    sources = random_sources(src, args.sources)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU thread(s); {args.sources} sources, batches of {args.batch_size}, "
          f"median of {args.rounds} rounds, {args.length} words + </s> per phrase")
    print(f"{'device':>8} {'beam':>5} {'sources/s':>10} {'hyps/s':>10} {'s/round':>8} {'mean len':>9}")
    for name in devices:
        device = torch.device(name)
        model.to(device)
        label = torch.cuda.get_device_name(device) if name == "cuda" else "cpu"
        for beam in (int(b) for b in args.beams.split(",")):
            r = bench(model, src, tgt, sources, beam, args.rounds, args.batch_size, device, args.length)
            print(f"{name:>8} {beam:>5} {r['sources_per_s']:>10,.1f} {r['hyps_per_s']:>10,.1f} "
                  f"{r['seconds']:>8.3f} {r['length']:>9.2f}", flush=True)
        if name == "cuda":
            print(f"         ({label}; peak memory {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB)")
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
