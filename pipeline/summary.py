"""What a stage output holds, for people: ``rnnenc show``.

A Parquet table (a corpus, a phrase table, a selection's ``selected/`` and ``scores/``) is
summarised by streaming it once in record batches (memory bounded by a batch, never by the
table): its schema, row count, first rows, per-column statistics (numbers: min, mean, max,
nulls; strings: mean tokens, empty values) and, for a phrase table's score columns, a histogram
in the domain Moses reads (log10 of a ``prob`` column, the natural log kept in a ``log`` one).
A model file is summarised by its configuration, vocabulary sizes and parameter count, and the
training report's vocabulary coverage when it lies beside it. Any stage directory also shows
its manifest (stage, kind, creation time, counts) and its report.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rnnenc.pipeline.errors import UserError

HISTOGRAM_BINS = 20
HEAD_ROWS = 5


def _numeric(field: pa.Field) -> bool:
    return pa.types.is_integer(field.type) or pa.types.is_floating(field.type)


def table_summary(directory: str | os.PathLike, head: int = HEAD_ROWS, bins: int = HISTOGRAM_BINS) -> dict[str, Any]:
    """Schema, rows, first ``head`` rows, per-column statistics and score histograms of the Parquet
    table in ``directory`` (its ``part-*.parquet`` files, or every ``*.parquet``)."""
    from rnnenc.pipeline.phrase_table import read_score_columns

    directory = Path(directory)
    parts = sorted(directory.glob("part-*.parquet")) or sorted(directory.glob("*.parquet"))
    if not parts:
        raise UserError(f"{directory}: no Parquet files")
    schema = pq.read_schema(parts[0])
    try:
        scores = {s["name"]: s["domain"] for s in read_score_columns(schema)}
    except UserError:
        scores = {}
    stats: dict[str, dict[str, float]] = {}
    for field in schema:
        if _numeric(field):
            stats[field.name] = {"min": math.inf, "max": -math.inf, "sum": 0.0, "count": 0, "nulls": 0}
        elif pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            stats[field.name] = {"tokens": 0, "count": 0, "empty": 0, "nulls": 0}
    histogram_values: dict[str, list[np.ndarray]] = {name: [] for name in scores}
    rows, first = 0, []
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=65_536):
            rows += batch.num_rows
            if len(first) < head:
                first += batch.slice(0, head - len(first)).to_pylist()
            for name, stat in stats.items():
                column = batch.column(name)
                stat["nulls"] += column.null_count
                valid = pc.drop_null(column)
                stat["count"] += len(valid)
                if not len(valid):
                    continue
                if "sum" in stat:
                    values = valid.to_numpy(zero_copy_only=False).astype(np.float64)
                    stat["min"], stat["max"] = min(stat["min"], values.min()), max(stat["max"], values.max())
                    stat["sum"] += float(values.sum())
                    if name in histogram_values:
                        histogram_values[name].append(_in_moses_domain(values, scores[name]))
                else:
                    stat["tokens"] += int(pc.sum(pc.list_value_length(pc.utf8_split_whitespace(valid))).as_py() or 0)
                    stat["empty"] += int(pc.sum(pc.equal(valid, "")).as_py() or 0)
    columns = {}
    for name, stat in stats.items():
        if "sum" in stat:
            columns[name] = {"min": stat["min"] if stat["count"] else None, "max": stat["max"] if stat["count"] else None,
                             "mean": stat["sum"] / stat["count"] if stat["count"] else None, "nulls": stat["nulls"]}
        else:
            columns[name] = {"mean_tokens": stat["tokens"] / stat["count"] if stat["count"] else None,
                             "empty": stat["empty"], "nulls": stat["nulls"]}
    histograms = {}
    for name, chunks in histogram_values.items():
        values = np.concatenate(chunks) if chunks else np.zeros(0)
        values = values[np.isfinite(values)]
        if len(values):
            counts, edges = np.histogram(values, bins=bins)
            histograms[name] = {"domain": scores[name], "axis": _axis(scores[name]), "counts": counts.tolist(),
                                "edges": [float(e) for e in edges]}
    return {"path": str(directory), "parts": len(parts), "rows": rows,
            "schema": [{"name": f.name, "type": str(f.type)} for f in schema], "head": first,
            "columns": columns, "scores": scores, "histograms": histograms}


def _in_moses_domain(values: np.ndarray, domain: str) -> np.ndarray:
    """log10 of a probability (what a reader compares), the natural log of a log column as kept."""
    if domain == "prob":
        with np.errstate(divide="ignore"):
            return np.log10(values)
    return values


def _axis(domain: str) -> str:
    return "log10(score)" if domain == "prob" else "value (natural log, as Moses reads it)"


def model_summary(path: str | os.PathLike) -> dict[str, Any]:
    """The configuration, vocabulary sizes and parameters of an rnnenc model file (loaded with
    ``weights_only=True``), and the vocabulary coverage of its training report when beside it."""
    import io

    import torch

    path = Path(path)
    try:
        payload = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise UserError(f"{path}: not a readable rnnenc model ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "config" not in payload or "state_dict" not in payload:
        raise UserError(f"{path}: not an rnnenc model file")
    parameters = sum(int(t.numel()) for t in payload["state_dict"].values())
    summary: dict[str, Any] = {"path": str(path), "config": payload["config"], "parameters": parameters,
                               "vocabulary": {payload[f"{side}_vocab"].get("lang") or side:
                                              len(payload[f"{side}_vocab"].get("itos", []))
                                              for side in ("src", "tgt") if isinstance(payload.get(f"{side}_vocab"), dict)}}
    from rnnenc.pipeline.artifacts import report_path

    report = report_path(path.parent)
    if report.is_file():
        trained = json.loads(report.read_text())
        summary["vocabulary_coverage"] = trained.get("vocabulary_coverage")
        summary["training"] = trained.get("counts")
    return summary


def plot_histograms(histograms: dict[str, dict[str, Any]], out: str | os.PathLike, title: str) -> None:
    """One panel per score column into the PNG ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(histograms))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 2.8), squeeze=False)
    for ax, (name, hist) in zip(axes[0], histograms.items(), strict=False):
        edges = np.asarray(hist["edges"])
        ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(hist["axis"], fontsize=8)
        ax.set_ylabel("rows", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = Path(out).with_name(f".{Path(out).name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out)


__all__ = ["model_summary", "plot_histograms", "table_summary"]
