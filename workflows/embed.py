"""2-D maps of the trained encoder's word embeddings and phrase representations (paper §4.3).

Projects with Barnes-Hut t-SNE (scikit-learn, seeded by --seed):
  - the source word embeddings of the --words most frequent source words (Fig. 4 of the paper);
  - with --phrase-table T, the representations c (the encoder's last state, `</s>` appended as
    in training) of --sample distinct source phrases drawn uniformly from the table (Fig. 5).
Points are coloured by phrase length, or by a column of the table (--color-by COL: few integers
and strings as categories, other numbers on a colour scale; each phrase takes the value of its
first row). Labels: the --label most frequent words (phrases: shortest first, then those of
the most frequent words), plus every word or phrase listed in --label-words FILE (one a line;
a word is added to the word map if the vocabulary has it, a phrase of two or more words to
the phrase map). A label that would
cover another is left out, so the figure stays legible; the report counts them.

Writes OUT/words.png, OUT/phrases.png (with --phrase-table), OUT/coordinates.parquet (columns
kind, text, x, y, length, rank, labelled and the --color-by column), OUT/_report.json and,
last, OUT/_manifest.json.

example:
  rnnenc embed --model artifacts/run/train/model.pt --phrase-table artifacts/run/phrase-table \\
      --words 1000 --sample 2000 --label 80 --out artifacts/run/embed
"""

from __future__ import annotations

import argparse
import logging

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.tsne import DEFAULT_PERPLEXITY
from rnnenc.workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "--model", required=True, metavar="FILE", help="the trained model (rnnenc train's model.pt)")
    output_path(parser, "--out", required=True, metavar="DIR", help="output directory (replaced atomically)")
    parser.add_argument("--words", type=int, default=500, metavar="N",
                        help="map the N most frequent source words (default: %(default)s; 0: no word map)")
    input_path(parser, "--phrase-table", metavar="DIR", help="map phrases of this Parquet phrase table")
    parser.add_argument("--sample", type=int, default=1000, metavar="N",
                        help="distinct source phrases drawn from --phrase-table (default: %(default)s)")
    parser.add_argument("--color-by", metavar="COL", help="colour phrases by this table column (default: length)")
    parser.add_argument("--label", type=int, default=60, metavar="N", help="labels per map at most (default: %(default)s)")
    input_path(parser, "--label-words", metavar="FILE", help="words or phrases to label, one a line")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample and of t-SNE (default: %(default)s)")
    parser.add_argument("--perplexity", type=float, default=DEFAULT_PERPLEXITY,
                        help="t-SNE perplexity (default: %(default)s)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where phrases are encoded (default: cuda when available)")
    parser.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads (default: all cores)")


def main(args: argparse.Namespace) -> int:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from rnnenc.pipeline.artifacts import (
        REPORT_NAME,
        atomic_output_dir,
        model_path,
        phrase_table_path,
        write_json_atomic,
        write_manifest,
    )
    from rnnenc.pipeline.embed import (
        embed_phrases,
        embed_words,
        label_priority,
        plot_map,
        read_label_texts,
        sample_phrases,
    )
    from rnnenc.pipeline.model import load_model, resolve_device

    for name in ("words", "label", "threads"):
        if getattr(args, name) < 0:
            raise UserError(f"--{name} must be at least 0 (got {getattr(args, name)})")
    if args.words == 0 and not args.phrase_table:
        raise UserError("nothing to map: --words 0 and no --phrase-table")
    if args.color_by and not args.phrase_table:
        raise UserError("--color-by names a column of --phrase-table")
    if not args.perplexity > 0:
        raise UserError(f"--perplexity must be positive (got {args.perplexity})")
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.model = str(model_path(args.model))  # a train output stands for its model.pt
    if args.phrase_table:
        args.phrase_table = str(phrase_table_path(args.phrase_table))
    model, src_vocab, _tgt_vocab = load_model(args.model, device=device)
    label_texts = read_label_texts(args.label_words) if args.label_words else []
    inputs = [args.model] + [p for p in (args.phrase_table, args.label_words) if p]
    frames, report = [], {"device": str(device)}
    with atomic_output_dir(args.out, stage="embed", inputs=inputs) as tmp:
        if args.words:
            words = embed_words(model, src_vocab, n=args.words, seed=args.seed, perplexity=args.perplexity,
                                words=[t for t in label_texts if " " not in t])
            report["words"] = plot_map(
                words, tmp / "words.png", f"Source word embeddings: {len(words)} most frequent words (t-SNE)",
                labels=args.label, label_texts=label_texts, priority=label_priority(words), color_by=None)
            report["words"]["points"] = len(words)
            frames.append(words)
        if args.phrase_table:
            color = args.color_by or "length"
            keep = [args.color_by] if args.color_by and args.color_by != "length" else []
            drawn = sample_phrases(args.phrase_table, args.sample, seed=args.seed, keep=keep)
            phrases = drawn["source"].tolist()
            extra = {c: drawn[c].tolist() for c in keep}
            added = [t for t in dict.fromkeys(label_texts) if " " in t and t not in set(phrases)]
            if added:  # asked-for phrases outside the sample join the map, with no column values
                phrases += added
                extra = {c: v + [None] * len(added) for c, v in extra.items()}
            mapped = embed_phrases(model, src_vocab, phrases, seed=args.seed, perplexity=args.perplexity,
                                   extra=extra)
            unknown = sum(bool(src_vocab.count_unknown(p.split())) for p in phrases)
            report["phrases"] = plot_map(
                mapped, tmp / "phrases.png", f"Phrase representations c: {len(mapped)} source phrases (t-SNE)",
                labels=args.label, label_texts=label_texts, priority=label_priority(mapped, src_vocab),
                color_by=color)
            report["phrases"] |= {"points": len(mapped), "sampled": len(drawn), "added_from_label_words": len(added),
                                  "with_unknown_words": unknown}
            frames.append(mapped)
        coordinates = pd.concat(frames, ignore_index=True)
        for column in coordinates.columns:
            if coordinates[column].dtype == object and column not in ("kind", "text"):
                coordinates[column] = coordinates[column].map(lambda v: None if pd.isna(v) else v)
        pq.write_table(pa.Table.from_pandas(coordinates, preserve_index=False), tmp / "coordinates.parquet")
        write_json_atomic(tmp / REPORT_NAME, report)
    counts = {"words": report.get("words", {}).get("points", 0), "phrases": report.get("phrases", {}).get("points", 0)}
    config = {k: getattr(args, k) for k in ("words", "sample", "color_by", "label", "seed", "perplexity")}
    write_manifest(args.out, stage="embed", inputs=inputs, config=config | {"label_words": len(label_texts)},
                   counts=counts)
    print(f"mapped {counts['words']} words and {counts['phrases']} phrases into {args.out}")
    return 0
