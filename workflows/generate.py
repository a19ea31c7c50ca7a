"""Let the trained encoder-decoder propose target phrases: beam search or sampling (paper §4.2).

Sources: phrases as arguments, --input FILE (one a line; blank lines skipped), or --parquet
TABLE --column source (the column's distinct phrases in table order, --limit N of them); they
are tokenised as the phrase table is (Moses-escaped tokens separated by spaces). Prints to
stdout a TSV with a header, `source rank target logp`: per source its --nbest best targets
from a beam of --beam (GroundHog's beam search; --beam 1 is greedy decoding), or with
--sample N its N ancestral samples in draw order (reproducible with --seed). logp is the
model's log p(target | source), `</s>` included and no length normalisation, as in training
and `rnnenc rescore`. A hypothesis ends with `</s>`, after one word at least (no phrase is
empty) and --max-length at most. Runs on the GPU when there is one (--device).

With --phrase-table T and --out DIR, the paper's Tables 2-3 for each source: the table's top
--top targets by phi(e|f) (Moses's third score, or --phi-column), the top --top of the table's
targets by the model's log p, and the model's own beam n-best (and samples with --sample).
Writes DIR/comparison.md, DIR/comparison.tsv, DIR/generations.tsv (what stdout shows) and,
last, DIR/_manifest.json. --out without --phrase-table writes generations.tsv alone.

example:
  rnnenc generate --model artifacts/run/train/model.pt "the european union" "at the end of"
  rnnenc generate --model model.pt --input phrases.txt --sample 10 --seed 1
  rnnenc generate --model model.pt --parquet artifacts/run/phrase-table --limit 20 \\
      --phrase-table artifacts/run/phrase-table --out artifacts/run/generate
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.train_config import TrainConfig
from rnnenc.workflows.stages import input_path, output_path

if TYPE_CHECKING:  # pipeline.generate imports torch: only main() loads it, never --help
    from rnnenc.pipeline.generate import Hypothesis

log = logging.getLogger("rnnenc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="*", metavar="SOURCE", help="source phrases (quote each phrase)")
    input_path(parser, "--model", required=True, metavar="FILE", help="the trained model (rnnenc train's model.pt)")
    inputs = parser.add_argument_group("more sources")
    input_path(inputs, "--input", metavar="FILE", help="source phrases, one a line")
    input_path(inputs, "--parquet", metavar="TABLE", help="a Parquet table (directory of part-*.parquet, or a file)")
    inputs.add_argument("--column", default="source", help="--parquet's column of phrases (default: %(default)s)")
    inputs.add_argument("--limit", type=int, metavar="N", help="--parquet: the first N distinct phrases only")
    search = parser.add_argument_group("decoding")
    search.add_argument("--beam", type=int, default=5, help="beam size (default: %(default)s; 1 = greedy)")
    search.add_argument("--nbest", type=int, help="targets printed per source (default: the beam size)")
    # pipeline.generate.DEFAULT_MAX_LENGTH, read where it comes from (that module imports torch)
    search.add_argument("--max-length", type=int, default=TrainConfig.max_length,
                        help="target words before </s> at most (default: %(default)s)")
    search.add_argument("--sample", type=int, default=0, metavar="N",
                        help="print N ancestral samples per source instead of the beam's n-best")
    search.add_argument("--seed", type=int, default=0, help="seed of --sample (default: %(default)s)")
    search.add_argument("--temperature", type=float, default=1.0,
                        help="--sample draws from softmax(logits / T) (default: %(default)s)")
    search.add_argument("--no-unk", action="store_true", help="never generate <unk>")
    search.add_argument("--batch-size", type=int, default=64, help="sources decoded together (default: %(default)s)")
    search.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="default: cuda when available")
    search.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads (default: all cores)")
    table = parser.add_argument_group("comparison with a phrase table (the paper's Tables 2-3)")
    input_path(table, "--phrase-table", metavar="DIR", help="the Parquet phrase table to compare with")
    table.add_argument("--top", type=int, default=5, help="entries of each table list (default: %(default)s)")
    table.add_argument("--phi-column", metavar="NAME",
                       help="the score column holding phi(e|f) (default: the table's third score)")
    output_path(parser, "--out", metavar="DIR", help="output directory (replaced atomically)")


def read_sources(args: argparse.Namespace) -> list[str]:
    """The source phrases of the command line, --input and --parquet, in that order, normalised
    to single spaces."""
    sources = [" ".join(s.split()) for s in args.sources]
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise UserError(f"{path}: input file not found")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        sources += [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    if args.parquet:
        sources += parquet_phrases(args.parquet, args.column, args.limit)
    elif args.limit is not None:
        raise UserError("--limit applies to --parquet")
    sources = [s for s in sources if s]
    if not sources:
        raise UserError("no source phrase: give phrases as arguments, --input FILE or --parquet TABLE")
    return sources


def parquet_phrases(table: str, column: str, limit: int | None) -> list[str]:
    """The distinct non-empty values of ``column`` in table order (the first ``limit``)."""
    import pyarrow.parquet as pq

    from rnnenc.pipeline.phrase_table import list_parts

    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit})")
    seen: dict[str, None] = {}
    for part in list_parts(table):
        handle = pq.ParquetFile(part)
        if column not in handle.schema_arrow.names:
            raise UserError(f"{part}: no column '{column}' (columns: {', '.join(handle.schema_arrow.names)})")
        for batch in handle.iter_batches(columns=[column], batch_size=1 << 16):
            for value in batch.column(0).to_pylist():
                if value and value.strip():
                    seen.setdefault(" ".join(value.split()))
                    if limit is not None and len(seen) >= limit:
                        return list(seen)
    return list(seen)


def generations_tsv(sources: list[str], results: list[list[Hypothesis]]) -> str:
    """``source rank target logp`` lines with a header; rank from 1."""
    lines = ["source\trank\ttarget\tlogp"]
    for source, hyps in zip(sources, results, strict=True):
        for rank, hyp in enumerate(hyps, 1):
            lines.append(f"{source}\t{rank}\t{' '.join(hyp.tokens)}\t{hyp.logp:.4f}")
    return "\n".join(lines) + "\n"


def main(args: argparse.Namespace) -> int:
    import torch

    from rnnenc.pipeline.artifacts import atomic_output_dir, model_path, phrase_table_path, write_manifest
    from rnnenc.pipeline.generate import (
        beam_search,
        compare_with_table,
        comparison_markdown,
        comparison_tsv,
        sample,
    )
    from rnnenc.pipeline.model import load_model, resolve_device

    if args.phrase_table:  # a phrases output stands for its table/
        args.phrase_table = str(phrase_table_path(args.phrase_table))
    if args.phrase_table and not args.out:
        raise UserError("--phrase-table: give --out DIR for comparison.md and comparison.tsv")
    if args.threads < 0:
        raise UserError(f"--threads must be at least 0 (got {args.threads})")
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1 (got {args.batch_size})")
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, src_vocab, tgt_vocab = load_model(model_path(args.model), device=device)  # a train output: its model.pt
    sources = read_sources(args)
    unknown = sum(bool(src_vocab.count_unknown(s.split())) for s in sources)
    if unknown:
        log.warning("%d of %d source phrase(s) have words outside the source vocabulary (read as <unk>)",
                    unknown, len(sources))
    options = dict(max_length=args.max_length, batch_size=args.batch_size, ban_unk=args.no_unk)
    beams = None
    if args.sample:
        results = sample(model, src_vocab, tgt_vocab, sources, n=args.sample, seed=args.seed,
                         temperature=args.temperature, **options)
    else:
        results = beams = beam_search(model, src_vocab, tgt_vocab, sources, beam=args.beam, nbest=args.nbest,
                                      **options)
    text = generations_tsv(sources, results)
    sys.stdout.write(text)
    sys.stdout.flush()
    if not args.out:
        return 0
    inputs = [args.model] + [p for p in (args.input, args.parquet, args.phrase_table) if p]
    counts: dict[str, int] = {"sources": len(sources), "generations": sum(map(len, results)),
                              "sources_with_unknown_words": unknown}
    with atomic_output_dir(args.out, stage="generate", inputs=inputs) as tmp:
        (tmp / "generations.tsv").write_text(text, encoding="utf-8")
        if args.phrase_table:
            comparisons = compare_with_table(
                model, src_vocab, tgt_vocab, args.phrase_table, sources, k=args.top, beam=args.beam,
                nbest=args.nbest, samples=args.sample, seed=args.seed, phi=args.phi_column, beams=beams, **options)
            (tmp / "comparison.tsv").write_text(comparison_tsv(comparisons), encoding="utf-8")
            (tmp / "comparison.md").write_text(comparison_markdown(comparisons), encoding="utf-8")
            counts["sources_in_table"] = sum(c.candidates > 0 for c in comparisons)
            counts["beam_in_table"] = sum(e.in_table for c in comparisons for e in c.beam)
            counts["beam_total"] = sum(len(c.beam) for c in comparisons)
    config = {k: getattr(args, k) for k in ("beam", "nbest", "max_length", "sample", "seed", "temperature",
                                            "no_unk", "top", "phi_column", "column", "limit")}
    write_manifest(args.out, stage="generate", inputs=inputs, config=config | {"device": str(device)},
                   counts=counts)
    log.info("wrote %s", args.out)
    return 0
