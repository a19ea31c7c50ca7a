"""Selection precision of the scoring variants, against the demo pool's known in-domain pairs.

The demo's data (`rnnenc demo`'s generator, seed 1234, --pool-size pairs, 10 % in-domain, an
in-domain corpus of 5,000 pairs) is ingested as the demo workflow does (`rnnenc ingest`, parts
of 10,000 pairs); each variant then keeps the top k pairs, k = the number of in-domain pairs
left in the ingested pool, so precision = recall. A random selection's precision is the pool's
in-domain share. "mean len" is the selected pairs' mean source length (the pool's is printed
last). Finally the default (axelrod) against the classic single out-of-domain model over
--seeds sample seeds. Runs serially (one process), 1-2 minutes.

One run (2 shared vCPUs, 2026-12-02; pool 49,950 pairs after cleaning, 4,996 in-domain):

    method       score       out model  normalise  precision  mean len
    axelrod      difference  cross-fit  word          0.9524     11.58
    axelrod      difference  single     word          0.8979     11.28
    moore-lewis  difference  cross-fit  word          0.9165     11.50
    moore-lewis  difference  single     word          0.8717     11.28
    axelrod      in-domain   -          word          0.7952     10.94
    moore-lewis  in-domain   -          word          0.5677      9.78
    axelrod      difference  cross-fit  sentence      0.9466     11.50
    axelrod      difference  single     sentence      0.8923     11.16
    axelrod      in-domain   -          sentence      0.3799      6.57
    pool mean source length 13.31; random selection 0.100

    axelrod, difference, word, over seeds 1-4:
    cross-fit  0.9524 0.9550 0.9542 0.9546  mean 0.9540
    single     0.8979 0.8969 0.8983 0.8919  mean 0.8963

moore-lewis scores the French side. The sentence-level in-domain score is the sentence's
log-probability, so it ranks short sentences first.

usage: python benchmarks/selection_variants.py [--pool-size 50000] [--seeds 4] [--dir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rnnenc.pipeline.artifacts import MANIFEST_NAME
from rnnenc.pipeline.executor import SERIAL
from rnnenc.pipeline.select import SelectConfig, run_selection
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows import cli

# (method, score, out model, normalise)
VARIANTS = (
    ("axelrod", "difference", "cross-fit", "word"),
    ("axelrod", "difference", "single", "word"),
    ("moore-lewis", "difference", "cross-fit", "word"),
    ("moore-lewis", "difference", "single", "word"),
    ("axelrod", "in-domain", "cross-fit", "word"),
    ("moore-lewis", "in-domain", "cross-fit", "word"),
    ("axelrod", "difference", "cross-fit", "sentence"),
    ("axelrod", "difference", "single", "sentence"),
    ("axelrod", "in-domain", "cross-fit", "sentence"),
)


def _read(directory: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p, columns=["line", "source_tokens"])
                             for p in sorted(directory.glob("part-*.parquet"))])


def prepare(root: Path, pool_size: int) -> None:
    """The demo data under ``root/data``, ingested into ``root/pool`` and ``root/in_domain``."""
    data = root / "data"
    if not (data / "truth.json").exists():
        generate_demo(data, DemoConfig(seed=1234, pool_size=pool_size))
    for name, rows in (("pool", ["--rows-per-part", "10000"]), ("in_domain", [])):
        if not (root / name / MANIFEST_NAME).exists():
            code = cli.main(["ingest", "--src", str(data / f"{name}.en"), "--tgt", str(data / f"{name}.fr"),
                             "--src-lang", "en", "--tgt-lang", "fr", "--out", str(root / name), "--workers", "1",
                             "--quiet", *rows])
            assert code == 0


def select(root: Path, name: str, k: int, **options: object) -> pa.Table:
    """The top ``k`` pairs of the pool under ``options`` (SelectConfig fields)."""
    out = root / "sel" / name
    if not (out / MANIFEST_NAME).exists():
        run_selection(SelectConfig(pool=str(root / "pool"), in_domain=str(root / "in_domain"), mode="pairs",
                                   amount=str(k), **options), out, SERIAL)
    return _read(out / "selected")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-size", type=int, default=50_000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--dir", help="keep the data and selections here (default: a temporary directory)")
    args = parser.parse_args()
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="rnnenc-bench-select-"))
    try:
        prepare(root, args.pool_size)
        truth = np.array([int(x) for x in (root / "data" / "pool.in_domain").read_text().split()], dtype=np.int8)
        pool = _read(root / "pool")
        k = int(truth[pool["line"].to_numpy() - 1].sum())
        print(f"pool {pool.num_rows:,} pairs, {k:,} in-domain; top k = {k:,}\n")
        print(f"    {'method':<12} {'score':<11} {'out model':<10} {'normalise':<10} {'precision':>9}  mean len")
        for method, score, out_model, normalise in VARIANTS:
            kept = select(root, f"{method}-{score}-{out_model}-{normalise}", k, method=method,
                          lang="fr" if method == "moore-lewis" else None, score=score, out_model=out_model,
                          normalise=normalise)
            precision = truth[kept["line"].to_numpy() - 1].mean()
            shown = "-" if score == "in-domain" else out_model
            print(f"    {method:<12} {score:<11} {shown:<10} {normalise:<10} {precision:>9.4f}  "
                  f"{kept['source_tokens'].to_numpy().mean():>8.2f}")
        print(f"    pool mean source length {pool['source_tokens'].to_numpy().mean():.2f}; "
              f"random selection {k / pool.num_rows:.3f}\n")
        print(f"    axelrod, difference, word, over seeds 1-{args.seeds}:")
        for out_model in ("cross-fit", "single"):
            got = [truth[select(root, f"seeds-{out_model}-{seed}", k, out_model=out_model, seed=seed)["line"]
                         .to_numpy() - 1].mean() for seed in range(1, args.seeds + 1)]
            print(f"    {out_model:<10} {' '.join(f'{g:.4f}' for g in got)}  mean {np.mean(got):.4f}")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
