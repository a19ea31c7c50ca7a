"""Train the RNN Encoder-Decoder of Cho et al. (2014) on a Parquet phrase table.

Each update draws --batch-size unique phrase pairs uniformly at random (seeded) from the whole
table, read by random access from a memory-mapped Arrow cache (--cache-dir), so the table's
size does not bound RAM. Adadelta (rho 0.95, eps 1e-6), gradient-norm clipping at 1, summed
token negative log-likelihood; defaults are the paper's sizes (1000 GRU units, 100-d
embeddings, 500 maxout units, 15k-word vocabularies from `rnnenc vocab`).

Runs on the GPU when there is one (bf16 autocast), else on all CPU cores; --device forces one.
On a Dask cluster (--scheduler or DASK_SCHEDULER_ADDRESS) whose workers declare a GPU resource
(`dask worker --resources GPU=1`), training runs as one task on such a worker; otherwise here.
Writes into --out: model.pt (best validated parameters), checkpoints/, metrics.csv,
tensorboard/, learning_curve.png, _report.json, _manifest.json. After an interruption, rerun the
same command with --resume: the run continues from the last checkpoint and ends with the same
parameters as an uninterrupted one (bitwise on the CPU with the same --threads).

Example:
  rnnenc train --phrase-table work/phrase-table --src-vocab work/vocab/vocab.en.txt \\
      --tgt-vocab work/vocab/vocab.fr.txt --out work/model --updates 200000
"""

from __future__ import annotations

import argparse
import json
import logging

from rnnenc.pipeline.artifacts import phrase_table_path, vocabulary_path
from rnnenc.pipeline.train_config import TrainConfig
from rnnenc.workflows.cli import add_cluster_arguments
from rnnenc.workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    io = parser.add_argument_group("input and output")
    input_path(io, "--phrase-table", required=True, metavar="DIR", help="Parquet phrase table directory")
    input_path(io, "--src-vocab", required=True, metavar="FILE", help="source vocabulary (vocab.<lang>.txt)")
    input_path(io, "--tgt-vocab", required=True, metavar="FILE", help="target vocabulary (vocab.<lang>.txt)")
    output_path(io, "--out", required=True, metavar="DIR", help="output directory")
    output_path(io, "--cache-dir", metavar="DIR",
                    help="where the Arrow cache of the table goes (default: OUT.arrow-cache beside OUT)")
    io.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt")
    model = parser.add_argument_group("model (defaults: the paper's)")
    model.add_argument("--hidden", type=int, default=d.hidden, help="GRU units (default %(default)s)")
    model.add_argument("--embedding", type=int, default=d.embedding,
                       help="word embedding size = rank of the factorisations (default %(default)s)")
    model.add_argument("--maxout", type=int, default=d.maxout, help="maxout units (default %(default)s)")
    model.add_argument("--init-std", type=float, default=d.init_std,
                       help="std of the Gaussian initial weights (default %(default)s, the paper's for 1000 "
                            "units; small models learn much faster with about 0.1)")
    opt = parser.add_argument_group("training")
    opt.add_argument("--updates", type=int, default=d.updates, help="number of updates (default %(default)s)")
    opt.add_argument("--batch-size", type=int, default=d.batch_size, help="pairs per update (default %(default)s)")
    opt.add_argument("--max-length", type=int, default=d.max_length,
                     help="skip (and count) pairs with more tokens on a side (default %(default)s)")
    opt.add_argument("--valid-pairs", type=int, default=d.valid_pairs,
                     help="held-out pairs for validation, 0 for none (default %(default)s)")
    opt.add_argument("--valid-every", type=int, default=d.valid_every,
                     help="validate every N updates (default %(default)s)")
    opt.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                     help="checkpoint every N updates (default %(default)s)")
    opt.add_argument("--early-stopping", type=int, default=d.early_stopping, metavar="N",
                     help="stop after N validations without improvement; 0 never (default %(default)s)")
    opt.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    opt.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device,
                     help="auto: CUDA when present, else CPU (default %(default)s)")
    opt.add_argument("--compile", action="store_true",
                     help="torch.compile the clip + Adadelta step into one fused pass (needs a C++ "
                          "compiler; the first update compiles, up to a minute): about 1.2x the updates/s "
                          "of a paper-size model on a CPU; if compiling fails, a warning and the "
                          "uncompiled step")
    opt.add_argument("--threads", type=int, default=d.threads,
                     help="CPU threads; 0 = all cores (default %(default)s)")
    add_cluster_arguments(parser)


def main(args: argparse.Namespace) -> int:
    # here, not at the top: torch (pipeline.train) and distributed would slow down --help
    from rnnenc.pipeline.train import train
    from rnnenc.workflows.cluster import dask_client, gpu_resources, scheduler_address

    # a phrases output stands for its table/, a vocab output for its vocab.<lang>.txt files
    args.phrase_table = str(phrase_table_path(args.phrase_table))
    args.src_vocab = str(vocabulary_path(args.src_vocab, "source"))
    args.tgt_vocab = str(vocabulary_path(args.tgt_vocab, "target"))
    config = TrainConfig(updates=args.updates, batch_size=args.batch_size, embedding=args.embedding,
                         hidden=args.hidden, maxout=args.maxout, output_rank=args.embedding, init_std=args.init_std,
                         max_length=args.max_length, valid_pairs=args.valid_pairs,
                         valid_every=args.valid_every, checkpoint_every=args.checkpoint_every,
                         early_stopping=args.early_stopping, seed=args.seed, device=args.device,
                         threads=args.threads, compile=args.compile)
    train_args = (config, args.phrase_table, args.src_vocab, args.tgt_vocab, args.out)
    train_kwargs = {"resume": args.resume, "cache_dir": args.cache_dir}
    report = None
    address = scheduler_address(getattr(args, "scheduler", None))
    if address:
        with dask_client(address) as client:
            resources = gpu_resources(client)
            if resources:
                log.info("training as one task on a GPU worker of %s (progress in the worker's log)", address)
                report = client.submit(train, *train_args, **train_kwargs, quiet=True, resources=resources,
                                       pure=False).result()
    if report is None:
        report = train(*train_args, **train_kwargs, quiet=args.quiet)
    counts = report["counts"]
    print(f"trained {counts['updates']:,} updates on {report['device']} ({report['updates_per_s']} updates/s) "
          f"into {args.out}; " + json.dumps({k: counts[k] for k in ("pairs", "pairs_too_long", "best_valid_perplexity")}))
    return 0
