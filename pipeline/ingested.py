"""An ingested corpus (an ``rnnenc ingest`` output) as the later stages read it, and the text
settings it records, followed wherever its text goes.

``rnnenc ingest`` records its preprocessing (normalisation, tokenisation, case) in the corpus's
manifest. Every later output whose text comes from that corpus (a selection, a phrase table, a
rescored or exported table, a Moses model) leads back to it through the manifests
(``recorded_corpus``), so that text a user gives a later stage (a filter's test set, an LM's
corpus, a tuning set) can be preprocessed exactly as the table's words were
(``text_preprocessor``), and an ingested corpus preprocessed otherwise is refused in one line
(``check_same_preprocessing``) instead of silently matching nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq

from rnnenc.pipeline.artifacts import manifest_path, output_stage, read_manifest, require_manifest
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.preprocess import (
    RAW_COLUMNS,
    TextPreprocessor,
    describe_settings,
    recorded_preprocessing,
)

Side = Literal["source", "target"]
PART_GLOB = "part-*.parquet"


@dataclass(frozen=True)
class Corpus:
    """An ingested corpus directory: its parts in corpus order, its languages and the config
    its manifest records (its preprocessing: ``pipeline.preprocess.recorded_preprocessing``)."""

    path: str
    parts: tuple[str, ...]
    source_lang: str
    target_lang: str
    config: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def preprocessing(self) -> dict[str, Any] | None:
        """The recorded text settings, None when the manifest records none."""
        return recorded_preprocessing(self.config, self.path)

    def column(self, lang: str) -> Side:
        """``"source"`` or ``"target"``: the column holding ``lang``."""
        if lang == self.source_lang:
            return "source"
        if lang == self.target_lang:
            return "target"
        raise UserError(f"{self.path}: language '{lang}' is not in this corpus "
                        f"({self.source_lang}-{self.target_lang})")


def open_corpus(path: str | Path) -> Corpus:
    """Read an ``rnnenc ingest`` output directory (parts + the manifest's languages)."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: not a corpus directory")
    manifest_file = manifest_path(path)
    manifest = require_manifest(manifest_file, "missing; an incomplete corpus is never read")
    config = manifest.get("config") or {}
    langs = config.get("source_lang"), config.get("target_lang")
    if not all(isinstance(lang, str) and lang for lang in langs):
        raise UserError(f"{manifest_file}: config has no source_lang/target_lang")
    parts = tuple(str(p) for p in sorted(path.glob(PART_GLOB)))
    if not parts:
        raise UserError(f"{path}: no {PART_GLOB} files")
    return Corpus(str(path), parts, langs[0], langs[1], config)


def check_same_preprocessing(corpus: Corpus, pool: Corpus, reference: str | None = None) -> None:
    """Refuse, in one line naming both settings, a corpus whose recorded preprocessing differs
    from the pool's: its sentences would not match the pool's tokens (a corpus that records none,
    not written by ``rnnenc ingest``, is taken as it is). ``reference`` names ``pool`` in the
    message (default: "the pool PATH")."""
    mine, theirs = corpus.preprocessing(), pool.preprocessing()
    if mine is None or theirs is None:
        return
    differ = [key for key in sorted(set(mine) | set(theirs)) if mine.get(key) != theirs.get(key)]
    if differ:
        advice = "the pool's options" if reference is None else f"the options of {pool.path}"
        raise UserError(f"{corpus.path}: preprocessed as {describe_settings(mine, differ)} but "
                        f"{reference or f'the pool {pool.path}'} as {describe_settings(theirs, differ)}; "
                        f"ingest it with {advice}")


#: the stages whose text follows that of their first input (a corpus or a table built from one)
_TEXT_FROM_FIRST_INPUT = ("phrases", "rescore", "filter", "export", "moses-train")


def recorded_corpus(path: str | Path) -> Corpus | None:
    """The ingested corpus whose recorded preprocessing the text of the rnnenc output ``path``
    follows, found through the manifests: an ingest output itself, a select output's pool, the
    corpus of a phrases or moses-train output, the table of a filter, rescore or export output
    (a file or table inside an output, ``phrases/table`` or ``export/moses.ini``, stands for it).
    None where the chain leaves rnnenc (an imported Moses table, a plain file, a moved input) or
    the corpus records no preprocessing: text is then taken as it is."""
    path = Path(path)
    for _ in range(32):
        manifest = read_manifest(path) if path.is_dir() else None
        for _up in range(2):  # a file or table inside an output, or inside its model/ (moses-train)
            if manifest is not None:
                break
            path = path.parent
            manifest = read_manifest(path)
        if manifest is None:
            return None
        stage, config = manifest.get("stage"), manifest.get("config") or {}
        if stage == "ingest":
            corpus = open_corpus(path)
            return corpus if corpus.preprocessing() is not None else None
        inputs = manifest.get("inputs") or []
        following = config.get("pool") if stage == "select" else (
            inputs[0].get("path") if stage in _TEXT_FROM_FIRST_INPUT and inputs else None)
        if not following or not Path(following).exists():
            return None
        path = Path(following)
    return None


def text_preprocessor(reference: Corpus | None, lang: str) -> Callable[[str], str]:
    """Plain text of ``lang`` preprocessed as ``reference`` records (``TextPreprocessor``), or taken
    as it is when there is no reference or it records nothing."""
    if reference is None or reference.preprocessing() is None:
        return str
    return TextPreprocessor(reference.config, reference.path, lang)


def preprocess_file(path: str | Path, preprocess: Callable[[str], str], out: str | Path) -> None:
    """The text file ``path`` preprocessed line by line (``text_preprocessor``) into ``out``, one
    sentence a line (the line count kept)."""
    with open(path, encoding="utf-8", errors="strict") as handle, open(out, "w", encoding="utf-8",
                                                                       newline="\n") as target:
        done = 0
        try:
            for line in handle:
                target.write(" ".join(preprocess(line.rstrip("\r\n")).split()) + "\n")
                done += 1
        except UnicodeDecodeError as exc:
            raise UserError(f"{path}:{done + 1}: invalid UTF-8 ({exc.reason})") from None


def check_corpus_input(path: str | Path, reference: Corpus | None, what: str) -> None:
    """Refuse an ingested corpus ``path`` preprocessed otherwise than ``reference`` (``what`` names
    the reference in the one-line message); anything else passes."""
    if reference is not None and Path(path).is_dir() and output_stage(path) == "ingest":
        check_same_preprocessing(open_corpus(path), reference, what)




def has_raw_text(parts: Sequence[str]) -> bool:
    """Whether every part holds the original text (``RAW_COLUMNS``: corpora ingested before rnnenc
    kept it have none)."""
    return all(set(RAW_COLUMNS.values()) <= set(pq.read_schema(part).names) for part in parts)

