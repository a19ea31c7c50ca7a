"""What ingest's cleaning options cost: --dedup, --truecase and --langid against plain ingest.

The demo pool (--pairs pairs) with a share of its lines repeated (--duplicates, spread over the
corpus) is ingested in this process (no Dask: the per-part work is what is measured), in parts
of --rows-per-part pairs, once plainly and once per option; each line gives the seconds, the
extra seconds per 1,000 pairs over plain ingest and what was dropped. The demo's words are
made up, so --langid drops most of them: its line measures the cost of identification only.

usage: python benchmarks/cleaning.py [--pairs 20000] [--duplicates 0.3] [--rows-per-part 2000]

One run (2 shared vCPUs, busy with another job, under nice -n 19; 2026-12-02):

    cleaning benchmark: 20,000 demo pairs (30% repeated), parts of 2,000 pairs, one process

    run           seconds  extra s / 1k pairs  dropped
    plain            5.42                   -  {'empty side': 10, 'length ratio': 10, 'too long': 3}
    --dedup          6.64               0.061  {'duplicate': 4629, 'empty side': 10, ...}
    --truecase       9.62               0.210  {'empty side': 10, 'length ratio': 10, 'too long': 3}
    --langid         9.44               0.201  {..., 'wrong language': 16474}

(4,629 and not 6,000 duplicates: a repeated line may copy one that was itself replaced.)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rnnenc.pipeline.corpus import CorpusInput
from rnnenc.pipeline.executor import SERIAL
from rnnenc.pipeline.ingest import ingest
from rnnenc.pipeline.preprocess import PreprocessConfig
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=20_000)
    parser.add_argument("--duplicates", type=float, default=0.3, help="share of lines that repeat an earlier one")
    parser.add_argument("--rows-per-part", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        demo = generate_demo(root / "demo", DemoConfig(pool_size=args.pairs, in_domain_size=100, dev_size=10,
                                                       phrase_table_pairs=100))
        en = demo.pool_src.read_text(encoding="utf-8").splitlines()
        fr = demo.pool_tgt.read_text(encoding="utf-8").splitlines()
        rng = np.random.default_rng(1)
        repeat = rng.random(len(en)) < args.duplicates
        earlier = [int(rng.integers(0, i)) if i else 0 for i in range(len(en))]
        for lines, lang in ((en, "en"), (fr, "fr")):
            text = [lines[earlier[i]] if repeat[i] else line for i, line in enumerate(lines)]
            (root / f"pool.{lang}").write_text("".join(f"{line}\n" for line in text), encoding="utf-8")
        corpus = [CorpusInput("text", (str(root / "pool.en"), str(root / "pool.fr")), "pool")]
        runs = {"plain": (PreprocessConfig("en", "fr"), {}),
                "--dedup": (PreprocessConfig("en", "fr"), {"deduplicate": True}),
                "--truecase": (PreprocessConfig("en", "fr", truecase=("en", "fr")), {}),
                "--langid": (PreprocessConfig("en", "fr", langid=True), {})}
        print(f"cleaning benchmark: {len(en):,} demo pairs ({repeat.mean():.0%} repeated), parts of "
              f"{args.rows_per_part:,} pairs, one process\n")
        print(f"{'run':<12} {'seconds':>8} {'extra s / 1k pairs':>19}  dropped")
        plain = None
        for name, (config, options) in runs.items():
            started = time.perf_counter()
            report = ingest(SERIAL, corpus, root / name.strip("-"), config, rows_per_part=args.rows_per_part,
                            **options)
            seconds = time.perf_counter() - started
            plain = seconds if plain is None else plain
            extra = f"{(seconds - plain) / len(en) * 1000:19.3f}" if name != "plain" else f"{'-':>19}"
            print(f"{name:<12} {seconds:8.2f} {extra}  {report['dropped_by_reason']}")


if __name__ == "__main__":
    main()
