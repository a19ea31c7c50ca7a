"""What a stage output holds: its manifest (stage, kind, counts), its report, and

- for a Parquet table (ingest, phrase-table, phrases, filter, rescore; a select output's
  selected/ and scores/): the schema, row count, first rows, per-column statistics (numbers:
  min, mean, max, nulls; text: mean tokens, empty values) and a histogram of each score column
  in the domain Moses reads (log10 of a probability; a log column as is); --plot FILE.png draws
  them;
- for a model (a train output or a model.pt): its configuration, vocabulary sizes, parameters
  and the training report's vocabulary coverage.

The table is streamed once (memory bounded by a batch). --json prints it all as JSON.

example:
  rnnenc show artifacts/demo/rescore --plot rescore-scores.png
  rnnenc show artifacts/demo/train
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rnnenc.workflows.stages import input_path, output_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "path", help="a stage output directory, a Parquet table directory or a model file")
    output_path(parser, "--plot", metavar="FILE.png", help="draw the score histograms into this PNG")
    parser.add_argument("--head", type=int, default=5, metavar="N", help="rows shown (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def _tables(path: Path) -> list[Path]:
    """The Parquet tables inside a stage output (the output itself, or its table/, selected/, scores/)."""
    if any(path.glob("*.parquet")):
        return [path]
    return [path / name for name in ("table", "selected", "scores") if (path / name).is_dir()
            and any((path / name).glob("*.parquet"))]


def _format_table(summary: dict[str, Any]) -> str:
    lines = [f"table {summary['path']}: {summary['rows']:,} rows in {summary['parts']} part(s)",
             "  schema: " + ", ".join(f"{c['name']} {c['type']}" for c in summary["schema"])]
    for name, stat in summary["columns"].items():
        if "mean" in stat:
            text = (f"min {stat['min']:.6g} mean {stat['mean']:.6g} max {stat['max']:.6g}" if stat["mean"] is not None
                    else "no values")
        else:
            text = (f"mean {stat['mean_tokens']:.2f} tokens, {stat['empty']:,} empty" if stat["mean_tokens"] is not None
                    else "no values")
        domain = f" [{summary['scores'][name]}]" if name in summary["scores"] else ""
        lines.append(f"  {name}{domain}: {text}" + (f", {stat['nulls']:,} null" if stat["nulls"] else ""))
    for name, hist in summary["histograms"].items():
        peak = max(hist["counts"]) or 1
        lines.append(f"  histogram of {name}, {hist['axis']}:")
        for count, low, high in zip(hist["counts"], hist["edges"][:-1], hist["edges"][1:], strict=True):
            lines.append(f"    {low:>10.3g} .. {high:<10.3g} {'#' * round(30 * count / peak):<30} {count:,}")
    lines.append(f"  first {len(summary['head'])} row(s):")
    lines += [f"    {json.dumps(row, ensure_ascii=False, default=str)}" for row in summary["head"]]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from rnnenc.pipeline.artifacts import read_artifact, read_manifest, report_path
    from rnnenc.pipeline.errors import UserError
    from rnnenc.pipeline.summary import model_summary, plot_histograms, table_summary

    path = Path(args.path)
    if not path.exists():
        raise UserError(f"{path}: no such file or directory")
    artifact = read_artifact(path)
    out: dict[str, Any] = {"path": str(path)}
    manifest = read_manifest(path) if path.is_dir() else None
    if manifest:
        out["manifest"] = {k: manifest.get(k) for k in ("stage", "kind", "created", "languages", "counts")}
    report = report_path(path)
    if path.is_dir() and report.is_file():
        out["report"] = json.loads(report.read_text())
    if artifact.kind == "model" or path.suffix == ".pt":
        out["model"] = model_summary(artifact.main if artifact.kind == "model" else path)
    elif path.is_dir():
        out["tables"] = [table_summary(table, head=args.head) for table in _tables(path)]
    if args.plot:
        histograms = {f"{Path(t['path']).name}: {name}": h for t in out.get("tables", [])
                      for name, h in t["histograms"].items()}
        if not histograms:
            raise UserError(f"{path}: no score column to plot")
        plot_histograms(histograms, args.plot, str(path))
    if args.json:
        print(json.dumps(out, indent=1, ensure_ascii=False, default=str))
        return 0
    text = [f"{path}: " + (f"the output of rnnenc {manifest['stage']} ({manifest['kind']}), created "
                           f"{manifest['created']}" if manifest else "not an rnnenc stage output")]
    if manifest and manifest.get("counts"):
        text.append("  counts: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}"
                                             for k, v in manifest["counts"].items()))
    for table in out.get("tables", []):
        text.append(_format_table(table))
    if "model" in out:
        model = out["model"]
        text.append(f"model {model['path']}: {model['parameters']:,} parameters; vocabularies "
                    + ", ".join(f"{k} {v:,}" for k, v in model["vocabulary"].items()))
        text.append("  config: " + ", ".join(f"{k}={v}" for k, v in model["config"].items()))
        if model.get("vocabulary_coverage"):
            text.append(f"  vocabulary coverage: {json.dumps(model['vocabulary_coverage'])}")
    if args.plot:
        text.append(f"histograms: {args.plot}")
    print("\n".join(text))
    return 0
