"""A Moses baseline built by Moses itself: train-model.perl on a corpus (or a selection), as a
Moses user builds one, so rnnenc's own phrase extraction can be compared with it and its table
rescored like any imported one.

Word alignment is the user's (a Pharaoh ``i-j`` file, one line per sentence pair of the corpus,
symmetrised) or, by default, fast_align in both directions symmetrised with atools'
grow-diag-final-and (fast_align and atools come with ``scripts/build_moses.sh``). Then
train-model.perl runs its steps 4 to 9: lexical translation tables, phrase extraction (up to
``max_phrase_length`` words), scoring (the four standard features), the lexicalised reordering
model (msd-bidirectional-fe by default) and moses.ini with distortion, word penalty, phrase
penalty, the table, the reordering model and the language model.

Outputs (in the stage's directory): ``model/phrase-table.gz``, ``model/reordering-table.*.gz``,
``model/moses.ini`` (every path absolute, pointing into the final directory), ``model/lex.*``,
``model/aligned.grow-diag-final-and``, ``logs/*.log``, ``_report.json``, ``_manifest.json`` last.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from rnnenc.pipeline.errors import UserError

ALIGNMENT_NAME = "grow-diag-final-and"
DEFAULT_REORDERING = "msd-bidirectional-fe"
MODEL_DIR = "model"
TRAINING_PROGRAMS = ("bin/extract", "bin/score", "bin/consolidate", "bin/symal", "scripts/training/train-model.perl")


def write_corpus_text(corpus: str | os.PathLike, prefix: Path, source_lang: str, target_lang: str) -> int:
    """The tokenised sides of an rnnenc corpus (or selection) as ``prefix.<src>`` and ``prefix.<tgt>``;
    returns the number of pairs."""
    import pyarrow.parquet as pq

    from rnnenc.pipeline.artifacts import corpus_path

    parts = sorted(corpus_path(corpus).glob("part-*.parquet"))
    if not parts:
        raise UserError(f"{corpus}: no part-*.parquet files: not a corpus written by 'rnnenc ingest' or 'select'")
    pairs = 0
    with open(f"{prefix}.{source_lang}", "w", encoding="utf-8") as src, \
            open(f"{prefix}.{target_lang}", "w", encoding="utf-8") as tgt:
        for part in parts:
            table = pq.read_table(part, columns=["source", "target"])
            sources, targets = table.column("source").to_pylist(), table.column("target").to_pylist()
            for line, (s, t) in enumerate(zip(sources, targets, strict=True), start=pairs + 1):
                if not s.strip() or not t.strip():
                    raise UserError(f"{part}: pair {line} has an empty side; Moses's training needs both "
                                    "(ingest it with cleaning on)")
            src.writelines(f"{s}\n" for s in sources)
            tgt.writelines(f"{t}\n" for t in targets)
            pairs += len(sources)
    return pairs


def run_logged(command: list[str], log_path: Path, what: str, **kwargs: Any) -> None:
    """Run ``command`` with its stderr (and stdout, unless redirected) in ``log_path``; a failure is
    one line naming the log, which is kept."""
    with open(log_path, "ab") as log_file:
        result = subprocess.run(command, **({"stdout": log_file, "stderr": log_file} | kwargs))
    if result.returncode:
        raise UserError(f"{what} failed (exit {result.returncode}); its log: {log_path}")


def fast_align(moses: Path, prefix: Path, source_lang: str, target_lang: str, out: Path, logs: Path) -> None:
    """fast_align forward and reverse (``-d -o -v``, its recommended settings), symmetrised with
    ``atools -c grow-diag-final-and`` into ``out``."""
    bitext = prefix.with_suffix(".fast_align")
    with open(f"{prefix}.{source_lang}", encoding="utf-8") as src, open(f"{prefix}.{target_lang}",
                                                                           encoding="utf-8") as tgt, \
            open(bitext, "w", encoding="utf-8") as both:
        both.writelines(f"{s.rstrip()} ||| {t.rstrip()}\n" for s, t in zip(src, tgt, strict=True))
    for direction, flags in (("forward", []), ("reverse", ["-r"])):
        with open(prefix.with_suffix(f".{direction}"), "wb") as alignment:
            run_logged([str(moses / "bin/fast_align"), "-i", str(bitext), "-d", "-o", "-v", *flags],
                       logs / f"fast_align.{direction}.log", f"fast_align ({direction})", stdout=alignment)
    with open(out, "wb") as symmetrised:
        run_logged([str(moses / "bin/atools"), "-i", str(prefix.with_suffix(".forward")), "-j",
                    str(prefix.with_suffix(".reverse")), "-c", ALIGNMENT_NAME], logs / "atools.log",
                   "atools", stdout=symmetrised)
    bitext.unlink()


def count_lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def train_moses_baseline(corpus: str | os.PathLike, out_dir: str | os.PathLike, *, moses: Path,
                         lm: str | os.PathLike, source_lang: str, target_lang: str,
                         alignment: str | os.PathLike | None = None, reordering: str = DEFAULT_REORDERING,
                         max_phrase_length: int = 7, cores: int = 1) -> dict[str, Any]:
    """Build a Moses baseline into ``out_dir`` with train-model.perl (steps 4-9) from ``corpus``
    (an ingest or select output), the language model ``lm`` (an lm output or a KenLM file) and
    the word alignment ``alignment`` (default: fast_align + grow-diag-final-and).

    Parameters:
        moses: the Moses installation (bin/ with extract, score, consolidate, symal; fast_align and
            atools unless an alignment is given; scripts/).
        reordering: train-model.perl's ``-reordering`` (``none`` for distance-based reordering only).
        max_phrase_length: the longest phrase extracted.
        cores: train-model.perl's ``-cores`` (parallel extraction and scoring).
    Returns the report (pairs, phrase-table entries, seconds per step).
    """
    from rnnenc.pipeline.artifacts import REPORT_NAME, atomic_output_dir, write_json_atomic, write_manifest
    from rnnenc.pipeline.moses import language_model

    needed = [*TRAINING_PROGRAMS, *(() if alignment else ("bin/fast_align", "bin/atools"))]
    if reordering != "none":
        needed.append("bin/lexical-reordering-score")
    missing = [p for p in needed if not (moses / p).exists()]
    if missing:
        raise UserError(f"{moses}: this Moses installation lacks {', '.join(missing)} (rebuild it with "
                        "scripts/build_moses.sh, which builds the training programs and fast_align)")
    lm_path, lm_order = language_model(lm)
    out_dir = Path(out_dir).absolute()
    inputs = [corpus, lm, *([alignment] if alignment else [])]
    seconds: dict[str, float] = {}
    with atomic_output_dir(out_dir, stage="moses-train", inputs=inputs) as tmp:
        logs, model, work = tmp / "logs", tmp / MODEL_DIR, tmp / "corpus"
        for directory in (logs, model, work):
            directory.mkdir()
        started = time.perf_counter()
        pairs = write_corpus_text(corpus, work / "train", source_lang, target_lang)
        aligned = model / f"aligned.{ALIGNMENT_NAME}"
        if alignment:
            lines = count_lines(Path(alignment))
            if lines != pairs:
                raise UserError(f"{alignment}: {lines} alignment line(s) for the corpus's {pairs} pairs: "
                                "not this corpus's alignment")
            aligned.write_bytes(Path(alignment).read_bytes())
        else:
            fast_align(moses, work / "train", source_lang, target_lang, aligned, logs)
        seconds["alignment"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        command = [str(moses / "scripts/training/train-model.perl"), "-root-dir", str(tmp),
                   "-corpus", str(work / "train"), "-f", source_lang, "-e", target_lang,
                   "-alignment", ALIGNMENT_NAME, "-alignment-file", str(model / "aligned"),
                   "-first-step", "4", "-last-step", "9", "-model-dir", str(model),
                   "-max-phrase-length", str(max_phrase_length), "-lm", f"0:{lm_order}:{lm_path}:8",
                   "-external-bin-dir", str(moses / "bin"), "-cores", str(max(1, cores))]
        if reordering != "none":
            command += ["-reordering", reordering]
        run_logged(command, logs / "train-model.log", "train-model.perl", cwd=tmp,
                   env=dict(os.environ, LC_ALL="C"))
        seconds["train_model"] = round(time.perf_counter() - started, 1)
        ini = model / "moses.ini"
        if not ini.is_file() or not (model / "phrase-table.gz").is_file():
            raise UserError(f"train-model.perl wrote no moses.ini or phrase-table.gz; its log: "
                            f"{out_dir / 'logs' / 'train-model.log'}")
        # train-model.perl wrote paths into the temporary directory: point them at the final one
        ini.write_text(ini.read_text(encoding="utf-8").replace(str(tmp), str(out_dir)), encoding="utf-8")
        for extract in model.glob("extract.*"):
            extract.unlink()
        for text in work.iterdir():
            text.unlink()
        work.rmdir()
        report = {"stage": "moses-train", "pairs": pairs, "alignment": str(alignment) if alignment else
                  f"fast_align + atools -c {ALIGNMENT_NAME}", "reordering": reordering,
                  "max_phrase_length": max_phrase_length,
                  "phrase_table_entries": count_lines_gz(model / "phrase-table.gz"), "seconds": seconds}
        write_json_atomic(tmp / REPORT_NAME, report)
    write_manifest(out_dir, stage="moses-train", inputs=inputs,
                   config={"source_lang": source_lang, "target_lang": target_lang, "reordering": reordering,
                           "max_phrase_length": max_phrase_length, "moses_home": str(moses),
                           "lm": lm_path, "lm_order": lm_order},
                   counts={"pairs": pairs, "phrase_table_entries": report["phrase_table_entries"]})
    return report


def count_lines_gz(path: Path) -> int:
    import gzip

    with gzip.open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


__all__ = ["ALIGNMENT_NAME", "DEFAULT_REORDERING", "MODEL_DIR", "fast_align", "train_moses_baseline",
           "write_corpus_text"]
