"""Generate the synthetic demo data and run the whole workflow on it (what `make demo` runs).

Writes DIR/data/ (a mixed general pool with its in-domain ground truth, an in-domain corpus,
a dev set and a Moses phrase table, all generated, seeded), DIR/demo.yaml (the workflow, a copy
of workflows/workflows/demo.yaml), runs it into DIR/<stage>/ with the embedded local Dask
cluster (or --scheduler), and ends with a summary: where each output is, the selection
precision against the ground truth, the validation perplexity, the rescoring throughput and
the Moses files written. A rerun skips what is already done.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rnnenc.pipeline.artifacts import (
    LEGACY_MANIFEST_NAME,
    LEGACY_REPORT_NAME,
    MANIFEST_NAME,
    REPORT_NAME,
    report_path,
)
from rnnenc.workflows.cli import add_cluster_arguments

if TYPE_CHECKING:  # numpy, pyarrow, yaml, pydantic: loaded to run the demo, not for --help
    from rnnenc.pipeline.synthetic import DemoConfig

log = logging.getLogger("rnnenc")
TEMPLATE = "demo.yaml"


def demo_workflow_text() -> str:
    return resources.files("rnnenc.workflows").joinpath("workflows", TEMPLATE).read_text(encoding="utf-8")


def prepare_data(data_dir: Path, config: DemoConfig) -> None:
    """Generate the demo data unless the same config already generated it."""
    from rnnenc.pipeline.synthetic import generate_demo

    truth = data_dir / "truth.json"
    wanted = json.loads(json.dumps(asdict(config)))
    if truth.is_file():
        try:
            if json.loads(truth.read_text()).get("config") == wanted:
                log.info("demo data in %s is up to date", data_dir)
                return
        except json.JSONDecodeError:
            pass
    log.info("generating demo data in %s (%d pool pairs)", data_dir, config.pool_size)
    generate_demo(data_dir, config)


def baseline_moses_ini(phrase_table: str | Path, lm: str | Path) -> str:
    """The demo baseline's moses.ini: the table's four Moses scores and a 4-gram KenLM model, in
    train-model.perl's layout with its initial weights (``pipeline.moses.new_moses_ini``)."""
    from rnnenc.pipeline.moses import new_moses_ini
    from rnnenc.pipeline.phrase_table import MOSES_SCORE_NAMES

    text, _weights = new_moses_ini(str(phrase_table), [{"name": name} for name in MOSES_SCORE_NAMES], str(lm), 4)
    body = text.split("\n", 1)[1]  # new_moses_ini's first line says rnnenc export wrote it
    return ("# Moses configuration of the demo's phrase-based baseline, as train-model.perl writes it.\n"
            "# 'rnnenc export' writes an updated copy with the RNN features added.\n" + body)


def write_baseline_moses_ini(data_dir: Path, root: Path) -> Path:
    path = data_dir / "moses.ini"
    path.write_text(baseline_moses_ini((data_dir / "phrase-table.gz").resolve(),
                                       (root / "select" / "lm" / "in.fr.binary").resolve()))
    return path


def selection_precision(select_dir: Path, truth_file: Path) -> dict[str, float] | None:
    import numpy as np
    import pyarrow.parquet as pq

    parts = sorted((select_dir / "selected").glob("part-*.parquet"))
    if not parts:
        return None
    truth = np.loadtxt(truth_file, dtype=np.int8)
    lines = np.concatenate([pq.read_table(p, columns=["line"]).column("line").to_numpy() for p in parts])
    selected = truth[lines - 1]
    return {"selected": int(len(lines)), "precision": float(selected.mean()) if len(lines) else 0.0,
            "recall": float(selected.sum() / max(1, truth.sum())), "pool_in_domain_share": float(truth.mean())}


def _report(out: Path) -> dict[str, Any]:
    path = report_path(out)  # a stage skipped as up to date may be older than the rename
    return json.loads(path.read_text()) if path.is_file() else {}


def summarise(root: Path, data_dir: Path, records: list[dict[str, Any]]) -> list[str]:
    lines = ["", "rnnenc demo: summary", ""]
    for record in records:
        took = f"{record['seconds']:7.1f}s" if "seconds" in record else " " * 8
        lines.append(f"  {record['stage']:<12} {record['status']:<8} {took} {record['out']}")
    lines.append("")
    stages = {record["stage"]: Path(record["out"]) for record in records}
    if "pool" in stages:
        report = _report(stages["pool"])
        if report:
            lines.append(f"  ingestion: {report['pairs_written']:,} of {report['lines_read']:,} pool pairs kept, "
                         f"{report['words_per_second']:,.0f} words/s")
    if "select" in stages:
        precision = selection_precision(stages["select"], data_dir / "pool.in_domain")
        if precision:
            lines.append(f"  selection: {precision['selected']:,} pairs, precision {precision['precision']:.3f} "
                         f"and recall {precision['recall']:.3f} against the true in-domain lines "
                         f"(random selection: {precision['pool_in_domain_share']:.3f})")
    if "phrases" in stages:
        report = _report(stages["phrases"])
        if report:
            lines.append(f"  phrase table: {report['table_rows']:,} phrase pairs extracted from "
                         f"{report['corpus']['pairs']:,} selected sentence pairs (eflomal, grow-diag-final-and)")
    if "train" in stages:
        counts = _report(stages["train"]).get("counts", {})
        if counts.get("final_valid_perplexity"):
            lines.append(f"  training: validation perplexity {counts['final_valid_perplexity']:.2f} "
                         f"(best {counts['best_valid_perplexity']:.2f} at update {counts['best_update']:,}) "
                         f"on {counts['valid_pairs']:,} held-out pairs; {counts['train_pairs']:,} training pairs")
    if "rescore" in stages:
        report = _report(stages["rescore"])
        rate = report.get("pairs_per_second")
        if rate:
            lines.append(f"  rescoring: {report.get('rows', report.get('pairs', 0)):,} phrase pairs at "
                         f"{rate:,.0f} pairs/s")
    if "export" in stages:
        sidecars = (LEGACY_MANIFEST_NAME, LEGACY_REPORT_NAME)  # and every "_" or "." name
        files = sorted(p.name for p in stages["export"].iterdir()
                       if p.is_file() and not p.name.startswith(("_", ".")) and p.name not in sidecars)
        lines.append(f"  Moses files: {', '.join(str(stages['export'] / f) for f in files)}")
    missing = [s for s in ("select", "vocab", "train", "rescore", "export") if s not in stages]
    if missing:
        lines.append(f"  (stages not in this version yet: {', '.join(missing)})")
    lines.append("")
    lines.append(f"  every stage's {MANIFEST_NAME} and {REPORT_NAME} are under {root}")
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dir", default="artifacts/demo", help="demo directory (default: %(default)s)")
    parser.add_argument("--pool-size", type=int, default=50_000, help="pairs in the general pool "
                                                                       "(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=1234, help="seed of the generator (default: %(default)s)")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="rerun this stage and what follows ('all' for everything)")
    add_cluster_arguments(parser)


def main(args: argparse.Namespace) -> int:
    import yaml

    from rnnenc.pipeline.synthetic import DemoConfig
    from rnnenc.workflows.config import load_workflow
    from rnnenc.workflows.run import run_workflow

    root = Path(args.dir)
    data_dir = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    prepare_data(data_dir, DemoConfig(seed=args.seed, pool_size=args.pool_size))
    write_baseline_moses_ini(data_dir, root)
    workflow_file = root / "demo.yaml"
    spec = yaml.safe_load(demo_workflow_text())
    spec["run"], spec["artifacts"] = root.resolve().name, str(root.resolve().parent)
    header = "# Written by 'rnnenc demo' from workflows/workflows/demo.yaml; rerun with 'rnnenc run' on this file.\n"
    workflow_file.write_text(header + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    workflow = load_workflow(workflow_file)
    records = run_workflow(workflow, scheduler=args.scheduler, workers=args.workers, quiet=args.quiet,
                           debug=args.debug, force=set(args.force))
    print("\n".join(summarise(workflow.root, data_dir, records)))
    return 0
