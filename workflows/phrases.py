"""Build a Moses-style phrase table from a corpus: eflomal alignment, extraction, scoring.

Input: a corpus directory of part-*.parquet with tokenised source/target columns (an
`rnnenc ingest` output, or an `rnnenc select` output whose selected/ parts are used).
Steps, each a Dask map: align every part in both directions with eflomal and symmetrise
with grow-diag-final-and (or reuse --alignment DIR); extract every phrase pair consistent
with the alignment (up to --max-phrase-length tokens a side); score them as Moses's
score/consolidate do, by distributed group-bys over on-disk buckets (by target phrase for
p(f|e), by source range for p(e|f)); export the Moses text table.

Outputs in --out: table/part-*.parquet (Parquet phrase table, scores p(f|e) lex(f|e) p(e|f)
lex(e|f), alignment, counts "c(e) c(f) c(f,e)", in LC_ALL=C order), phrase-table.gz (Moses
text, sorted), alignment/part-*.parquet (line-aligned with the corpus parts: alignment,
forward, reverse, line), lex.f2e / lex.e2f (Moses lexical tables) and lex.parquet,
report.json and, last, manifest.json. The corpus and --out must be on a filesystem the
workers share.

eflomal seeds itself from /dev/urandom, so a new alignment differs slightly from run to
run; given the same alignment (--alignment), the table is byte-identical whatever the
partitioning or the number of workers.

example:
  rnnenc phrases artifacts/run/select --out artifacts/run/phrases --min-count 2
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.alignment import AlignConfig, align_part
from pipeline.artifacts import atomic_output_dir, read_manifest, write_json_atomic, write_manifest
from pipeline.errors import UserError
from pipeline.phrase_table import ExportConfig, export_moses, list_parts
from pipeline.phrases import PhraseConfig, build_phrase_table
from workflows.cli import add_cluster_arguments
from workflows.cluster import DaskExecutor, dask_client
from workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "corpus", help="corpus directory (part-*.parquet, or a select output with selected/)")
    output_path(parser, "--out", required=True, help="output directory")
    input_path(parser, "--alignment", metavar="DIR",
                        help="reuse this alignment (part-*.parquet with an 'alignment' column, one part per "
                             "corpus part, e.g. OUT/alignment of an earlier run) instead of running eflomal")
    parser.add_argument("--max-phrase-length", type=int, default=7, metavar="N",
                        help="longest phrase, in tokens, on either side (default: 7, as Moses)")
    parser.add_argument("--min-count", type=int, default=1, metavar="N",
                        help="drop pairs seen fewer than N times, after scoring (2 removes singletons; default: 1)")
    parser.add_argument("--buckets", type=int, metavar="N",
                        help="shuffle buckets (default: one per 500k source tokens); each must fit in a "
                             "worker's memory")
    align = parser.add_argument_group("eflomal")
    align.add_argument("--align-model", type=int, choices=(1, 2, 3), default=3,
                       help="1 = IBM1, 2 = HMM, 3 = HMM + fertility (default)")
    align.add_argument("--align-iterations", metavar="I1,I2,I3",
                       help="sampling iterations for the IBM1, HMM and fertility stages (default: eflomal's)")
    align.add_argument("--align-samplers", type=int, default=2, metavar="N",
                       help="independent samplers per shard, each a thread (default: 2)")
    input_path(align, "--priors", metavar="FILE", help="eflomal priors file passed to every shard")
    add_cluster_arguments(parser)


def _iterations(text: str | None) -> tuple[int, int, int] | None:
    if not text:
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise UserError(f"--align-iterations: want three counts like 4,4,4, not '{text}'")
    return values  # type: ignore[return-value]


def corpus_parts(corpus: str | Path) -> tuple[Path, list[Path]]:
    """The corpus directory to read (``selected/`` inside a select output) and its parts."""
    corpus = Path(corpus)
    if corpus.is_dir() and not any(corpus.glob("part-*.parquet")) and (corpus / "selected").is_dir():
        corpus = corpus / "selected"
    parts = list_parts(corpus)
    for part in parts:
        names = pq.read_schema(part).names
        if "source" not in names or "target" not in names:
            raise UserError(f"{part}: no source/target columns (want a corpus from rnnenc ingest or select)")
    return corpus, parts


def run_phrases(client, corpus: str | Path, out: str | Path, config: PhraseConfig, align: AlignConfig, *,
                alignment: str | Path | None = None, quiet: bool = False) -> dict[str, Any]:
    """The whole stage on ``client``; returns the manifest."""
    corpus_dir, parts = corpus_parts(corpus)
    out = Path(out)
    if config.max_length < 1 or config.min_count < 1 or (config.buckets is not None and config.buckets < 1):
        raise UserError("phrases: --max-phrase-length, --min-count and --buckets must be at least 1")

    executor = DaskExecutor(client, quiet=quiet)
    given = list_parts(alignment) if alignment else None
    if given is not None and len(given) != len(parts):
        raise UserError(f"{alignment}: {len(given)} alignment parts for the {len(parts)} parts of {corpus_dir}")
    timings: dict[str, float] = {}
    with atomic_output_dir(out, stage="phrases", inputs=[corpus, *([alignment] if alignment else [])]) as tmp:
        (tmp / "alignment").mkdir()
        aligned = [tmp / "alignment" / f"part-{i:05d}.parquet" for i in range(len(parts))]
        started = time.perf_counter()
        if given is None:
            results = executor.map(_align_item, [(str(p), str(a), align) for p, a in zip(parts, aligned, strict=True)],
                                   desc="align")
            align_counts = {k: sum(r[k] for r in results) for k in ("pairs", "aligned_pairs", "empty_pairs", "links")}
        else:
            for source, target in zip(given, aligned, strict=True):
                shutil.copyfile(source, target)
            align_counts = {"reused_from": str(alignment)}
        timings["align_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        report = build_phrase_table([str(p) for p in parts], [str(a) for a in aligned], tmp, config,
                                    executor=executor)
        timings["extract_score_s"] = round(time.perf_counter() - started, 3)
        started = time.perf_counter()
        exported = export_moses(tmp / "table", tmp / "phrase-table.gz", ExportConfig(), executor=executor,
                                tmp_dir=tmp / ".export")
        timings["export_s"] = round(time.perf_counter() - started, 3)
        if exported["rows"] != report["table_rows"]:
            raise RuntimeError(f"export wrote {exported['rows']} lines for {report['table_rows']} rows")
        timings.update(report["timings"])
        report.update({"alignment": align_counts, "align_config": align.to_dict(), "timings": timings,
                       "corpus_dir": str(corpus_dir), "corpus_parts": len(parts)})
        write_json_atomic(tmp / "report.json", report)
    source_manifest = read_manifest(corpus_dir) or read_manifest(corpus_dir.parent) or {}
    langs = {k: v for k, v in (source_manifest.get("config") or {}).items() if k in ("source_lang", "target_lang")}
    inputs = [corpus_dir] + ([Path(alignment)] if alignment else []) + ([Path(align.priors)] if align.priors else [])
    counts = {"pairs": report["corpus"]["pairs"], "phrase_pairs": report["table_rows"],
              "extracted_occurrences": report["extracted_occurrences"], "pruned_pairs": report["pruned_pairs"]}
    return write_manifest(out, stage="phrases", inputs=inputs,
                          config={"phrases": config.to_dict(), "align": align.to_dict(),
                                  "alignment": str(alignment) if alignment else None} | langs,
                          counts=counts)


def _align_item(item: tuple[str, str, AlignConfig]) -> dict[str, int]:
    part, out_path, config = item
    return align_part(part, out_path, config)


def config_from_args(args: argparse.Namespace) -> tuple[PhraseConfig, AlignConfig]:
    phrases = PhraseConfig(max_length=args.max_phrase_length, min_count=args.min_count, buckets=args.buckets)
    align = AlignConfig(model=args.align_model, iterations=_iterations(args.align_iterations),
                        samplers=args.align_samplers, priors=args.priors)
    if align.samplers < 1:
        raise UserError("--align-samplers must be at least 1")
    return phrases, align


def main(args: argparse.Namespace) -> int:
    phrases, align = config_from_args(args)
    # Input mistakes are reported before a cluster is started.
    _, parts = corpus_parts(args.corpus)
    if args.alignment and len(list_parts(args.alignment)) != len(parts):
        raise UserError(f"{args.alignment}: {len(list_parts(args.alignment))} alignment parts for the "
                        f"{len(parts)} corpus parts")
    with dask_client(args.scheduler, args.workers) as client:
        manifest = run_phrases(client, args.corpus, args.out, phrases, align, alignment=args.alignment,
                               quiet=args.quiet)
    counts = manifest["counts"]
    log.info("%d phrase pairs from %d sentence pairs into %s", counts["phrase_pairs"], counts["pairs"], args.out)
    return 0

