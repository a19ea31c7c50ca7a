"""Cho et al. (2014) Table 1 on a real corpus with real Moses: baseline, +RNN, +RNN+WP, each
re-tuned with mert-moses.pl three times (different mert seeds), test BLEU mean ± sd, with the
baseline table built by rnnenc (``rnnenc phrases``: eflomal + extraction + Moses scores) and by
Moses (``rnnenc moses-train``: fast_align + train-model.perl, with its lexicalised reordering).

Data: Multi30k task 1 (github:multi30k/dataset), en→de by default: train (29,000 pairs) for the
tables, the LM and the RNN; val (1,014) for MERT; test_2016_flickr (1,000) for test. BLEU and
chrF are sacrebleu's on the detokenised output against the raw references (signature printed).

Everything runs as one rnnenc workflow (written to WORK/table1.yaml), so it resumes stage by
stage: rerun the same command after an interruption and finished stages are skipped. Steps:
ingest (train cleaned; val and test never) → lm (5-gram on train.de) → phrases (rnnenc) and
moses-train (Moses) → phrase-table (import Moses's table) → vocab (15k) → train (the RNN, on
rnnenc's table) → filter (both tables, to val + test, as filter-model-given-input.pl) → rescore
(both) → export (3 systems × 2 tables; rnnenc's with a new moses.ini, Moses's into its own) →
moses (18 tunings: --mert-iterations capped, --seed 1..3, decoding test).

    .venv/bin/python benchmarks/table1.py --multi30k /work/.mirror/multi30k+dataset/repo
    .venv/bin/python benchmarks/table1.py --report-only      # the table from finished runs

--measure-dims times training updates and rescoring at candidate model sizes on the real table
first (the trade-off behind --hidden/--embedding/--maxout/--updates).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from rnnenc.pipeline.artifacts import report_path

ROOT = Path(__file__).resolve().parent.parent
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
BASE = "p_f_given_e,lex_f_given_e,p_e_given_f,lex_e_given_f"  # Moses's four (pipeline.phrase_table.MOSES_SCORE_NAMES)
SYSTEMS = {  # the paper's rows: which score columns the exported table carries
    "baseline": BASE,
    "rnn": f"{BASE},rnn_logp",
    "rnn_wp": f"{BASE},rnn_logp,rnn_unk",
}
LABELS = {"baseline": "Baseline", "rnn": "RNN", "rnn_wp": "RNN + WP"}
TABLES = {"rnnenc": "rnnenc phrases (eflomal)", "moses": "Moses train-model.perl (fast_align, msd-bidirectional-fe)"}


def unpack_multi30k(source: Path, data: Path, src: str, tgt: str) -> None:
    """data/{train,val,test}.{src,tgt} from a Multi30k checkout or a bare git snapshot of it."""
    data.mkdir(parents=True, exist_ok=True)
    for split, name in SPLITS.items():
        for lang in (src, tgt):
            out = data / f"{split}.{lang}"
            if out.is_file():
                continue
            member = f"data/task1/raw/{name}.{lang}.gz"
            if (source / member).is_file():
                raw = (source / member).read_bytes()
            elif (source / "HEAD").is_file() and (source / "objects").is_dir():
                raw = subprocess.run(["git", "--git-dir", str(source), "show", f"HEAD:{member}"], check=True,
                                     capture_output=True).stdout
            else:
                sys.exit(f"table1: {source}: neither a Multi30k checkout nor a git snapshot with {member}")
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_bytes(gzip.decompress(raw))
            tmp.rename(out)


def workflow(args: argparse.Namespace) -> str:
    """The experiment as an rnnenc workflow file."""
    s, t = args.src, args.tgt
    model = (f"hidden: {args.hidden}, embedding: {args.embedding}, maxout: {args.maxout}, updates: {args.updates}, "
             f"valid_pairs: 1000, valid_every: {max(1, args.updates // 10)}, checkpoint_every: 1000")
    lines = [
        "# Written by benchmarks/table1.py: Cho et al. (2014) Table 1 on Multi30k with real Moses.",
        f"run: {args.work.name}", "artifacts: ..", f"languages: {{source: {s}, target: {t}}}", "stages:",
        f"  train_corpus: {{command: ingest, src: data/train.{s}, tgt: data/train.{t}}}",
        f"  dev: {{command: ingest, src: data/val.{s}, tgt: data/val.{t}, no_clean: true}}",
        f"  test: {{command: ingest, src: data/test.{s}, tgt: data/test.{t}, no_clean: true}}",
        f"  lm: {{command: lm, corpus: [\"${{train_corpus}}\"], lang: {t}, order: 5}}",
        "  phrases: {command: phrases, corpus: \"${train_corpus}\"}",
        "  vocab: {command: vocab, phrase_table: \"${phrases}\", size: 15000}",
        # the RNN trains on rnnenc's table whichever tables are tuned; no Moses needed up to here
        f"  train: {{command: train, phrase_table: \"${{phrases}}\", src_vocab: \"${{vocab}}\", "
        f"tgt_vocab: \"${{vocab}}\", {model}}}",
    ]
    for table, source in (("rnnenc", "${phrases}"), ("moses", "${moses_table}")):
        if table not in args.tables:
            continue
        if table == "moses":
            lines += ["  moses_baseline: {command: moses-train, corpus: \"${train_corpus}\", lm: \"${lm}\"}",
                      "  moses_table: {command: phrase-table, input: [\"${moses_baseline}\"]}"]
        lines.append(f"  filter_{table}: {{command: filter, table: \"{source}\", input: [\"${{dev}}\", \"${{test}}\"]}}")
    for table in args.tables:
        lines.append(f"  rescore_{table}: {{command: rescore, phrase_table: \"${{filter_{table}}}\", "
                     f"model: \"${{train}}\"}}")
        ini = "" if table == "rnnenc" else ", moses_ini: \"${moses_baseline}\""
        for system in args.systems:
            scores = SYSTEMS[system]
            lines.append(f"  export_{table}_{system}: {{command: export, table: \"${{rescore_{table}}}\", "
                         f"lm: \"${{lm}}\", scores: \"{scores}\"{ini}}}")
    for table in args.tables:
        for system in args.systems:
            for seed in args.seeds or range(1, args.runs + 1):
                lines.append(
                    f"  moses_{table}_{system}_{seed}: {{command: moses, moses_ini: \"${{export_{table}_{system}}}\", "
                    f"dev: \"${{dev}}\", test: \"${{test}}\", test_raw_ref: data/test.{t}, "
                    f"mert_iterations: {args.mert_iterations}, seed: {seed}, "
                    f"threads: {args.threads}, decoder_flags: \"{args.decoder_flags}\"}}")
    return "\n".join(lines) + "\n"


def mean_sd(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def report(work: Path, runs: int) -> str:
    """The paper's Table 1 from the finished moses stages (mean ± sd over the MERT runs)."""
    out = []
    for table, label in TABLES.items():
        out += ["", f"Baseline table: {label}", "",
                "| Models | BLEU dev (mert) | BLEU test | chrF test | Δ test BLEU | runs |",
                "|---|---|---|---|---|---|"]
        base = None
        for system in SYSTEMS:
            dev, test, chrf = [], [], []
            for seed in range(1, runs + 1):
                # report_path: a run directory written before the sidecars' "_" still counts
                path = report_path(work / f"moses_{table}_{system}_{seed}")
                if path.is_file():
                    rep = json.loads(path.read_text())
                    test.append(rep["test"]["bleu"])
                    chrf.append(rep["test"]["chrf"])
                    if rep.get("mert", {}).get("dev_bleu") is not None:
                        dev.append(rep["mert"]["dev_bleu"])
            delta = "—"
            if system == "baseline":
                base = statistics.mean(test) if test else None
            elif base is not None and test:
                delta = f"{statistics.mean(test) - base:+.2f}"
            out.append(f"| {LABELS[system]} | {mean_sd(dev)} | {mean_sd(test)} | {mean_sd(chrf)} | {delta} | "
                       f"{len(test)} |")
    reports = [report_path(work / f"moses_{table}_{system}_{seed}") for table in TABLES for system in SYSTEMS
               for seed in range(1, runs + 1)]
    signature = next((json.loads(p.read_text())["test"]["signature"] for p in reports if p.is_file()), None)
    if signature:
        out += ["", f"sacrebleu: {signature}"]
    return "\n".join(out)


def measure_dims(work: Path, candidates: list[str], updates: int, sample_rows: int = 5000) -> None:
    """Training updates/s (``updates`` updates on rnnenc's table) and rescoring pairs/s (the first
    ``sample_rows`` rows of the filtered table) for each HIDDEN/EMBEDDING/MAXOUT, and what the
    experiment's training and two rescorings would then take."""
    import pyarrow.parquet as pq

    env = os.environ | {"PYTHONPATH": str(ROOT)}
    filtered = sorted((work / "filter_rnnenc").glob("part-*.parquet"))
    sample = work / "dims-sample"
    sample.mkdir(exist_ok=True)
    pq.write_table(pq.read_table(filtered[0]).slice(0, sample_rows), sample / "part-00000.parquet")
    to_rescore = 2 * json.loads(report_path(work / "filter_rnnenc").read_text())["kept"]
    print(f"{updates} updates per size; rescoring {sample_rows:,} rows; load average {os.getloadavg()[0]:.2f}")
    print("| hidden/embedding/maxout | updates/s | min per 1k updates | rescore pairs/s | "
          f"min to rescore {to_rescore:,} rows |")
    print("|---|---|---|---|---|")
    for dims in candidates:
        hidden, embedding, maxout = dims.split("/")
        out = work / f"dims-{hidden}-{embedding}-{maxout}"
        subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "train", "--phrase-table", str(work / "phrases"),
                        "--src-vocab", str(work / "vocab"), "--tgt-vocab", str(work / "vocab"), "--out", str(out),
                        "--hidden", hidden, "--embedding", embedding, "--maxout", maxout, "--updates", str(updates),
                        "--valid-pairs", "64", "--valid-every", str(updates), "--checkpoint-every", str(updates),
                        "--quiet"], check=True, env=env, stdout=subprocess.DEVNULL)
        rate = json.loads(report_path(out).read_text())["updates_per_s"]
        subprocess.run([sys.executable, "-m", "rnnenc.workflows.cli", "rescore", "--phrase-table", str(sample),
                        "--model", str(out), "--out", str(out) + "-rescored", "--workers", "2", "--quiet"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
        pairs_per_s = json.loads(report_path(Path(str(out) + "-rescored")).read_text())["pairs_per_second"]
        print(f"| {dims} | {rate:.2f} | {1000 / rate / 60:.1f} | {pairs_per_s:.0f} | "
              f"{to_rescore / pairs_per_s / 60:.1f} |", flush=True)


def names(known: dict[str, str]):
    """An argparse type: a comma-separated subset of ``known``'s keys, in the given order."""
    def parse(text: str) -> list[str]:
        chosen = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in chosen if name not in known]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(known)} (got {text!r})")
        return chosen
    return parse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--multi30k", type=Path, help="a Multi30k checkout or bare git snapshot (github:multi30k/dataset)")
    parser.add_argument("--work", type=Path, default=ROOT / "artifacts" / "table1", help="the run's directory")
    parser.add_argument("--src", default="en")
    parser.add_argument("--tgt", default="de")
    parser.add_argument("--runs", type=int, default=3, help="MERT runs (seeds) per system (default: %(default)s)")
    parser.add_argument("--mert-iterations", type=int, default=4, help="mert-moses.pl cap (default: %(default)s)")
    parser.add_argument("--decoder-flags", default="-search-algorithm 1 -cube-pruning-pop-limit 200 -s 200",
                        help="the decoder's flags while tuning and testing (default: cube pruning with a pop "
                             "limit of 200: on 200 val sentences 5.5x faster than the default stack search and "
                             "0.3 BLEU below a pop limit of 500 with untuned weights: %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="decoder threads")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--embedding", type=int, default=100)
    parser.add_argument("--maxout", type=int, default=128)
    parser.add_argument("--updates", type=int, default=8000)
    parser.add_argument("--seeds", type=lambda text: [int(x) for x in text.split(",")],
                        help="comma-separated MERT seeds to tune, in this order (default: 1 to --runs)")
    parser.add_argument("--until", help="stop after this workflow stage")
    parser.add_argument("--tables", type=names(TABLES), default=list(TABLES),
                        help="comma-separated baseline tables to run, in this order (default: %(default)s)")
    parser.add_argument("--systems", type=names(SYSTEMS), default=list(SYSTEMS),
                        help="comma-separated systems to tune, in this order (default: %(default)s)")
    parser.add_argument("--measure-dims", nargs="*", metavar="H/E/M",
                        help="time training and rescoring at these sizes (needs the phrases, vocab and "
                             "filter_rnnenc stages), e.g. 128/64/64 256/100/128 1000/100/500")
    parser.add_argument("--measure-updates", type=int, default=40)
    parser.add_argument("--report-only", action="store_true", help="print the table from finished runs")
    args = parser.parse_args()
    work = args.work.resolve()
    if args.report_only:
        print(report(work, args.runs))
        return 0
    if args.measure_dims:
        measure_dims(work, args.measure_dims, args.measure_updates)
        return 0
    if args.multi30k:
        unpack_multi30k(args.multi30k, work / "data", args.src, args.tgt)
    elif not (work / "data" / f"train.{args.src}").is_file():
        parser.error("give --multi30k (the data is unpacked into WORK/data once)")
    (work / "table1.yaml").write_text(workflow(args))
    command = [sys.executable, "-m", "rnnenc.workflows.cli", "run", str(work / "table1.yaml"),
               *(["--until", args.until] if args.until else [])]
    started = time.perf_counter()
    status = subprocess.run(command, env=os.environ | {"PYTHONPATH": str(ROOT)}).returncode
    print(f"table1: the workflow ran {time.perf_counter() - started:.0f} s (exit {status})")
    print(report(work, args.runs))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
