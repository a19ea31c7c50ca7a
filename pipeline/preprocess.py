"""Per-pair preprocessing: Moses punctuation normalisation, tokenisation, cleaning.

Tokenisation is sacremoses' port of Moses ``tokenizer.perl`` with Moses escaping (``|`` becomes
``&#124;`` and so on), so the ``|||`` separator stays unambiguous downstream. Cleaning follows
Moses ``clean-corpus-n.perl``: a pair is dropped when a side has fewer than ``min_tokens`` or
more than ``max_tokens`` tokens, or when one side is more than ``max_ratio`` times longer than
the other. Every dropped pair is returned with its reason and the original bytes of both sides.
"""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from sacremoses import MosesPunctNormalizer, MosesTokenizer

from rnnenc.pipeline import truecase
from rnnenc.pipeline.corpus import REJECT_SCHEMA
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.language_id import WRONG_LANGUAGE, wrong_language

CORPUS_SCHEMA = pa.schema([
    ("source", pa.string()), ("target", pa.string()),
    ("source_tokens", pa.int32()), ("target_tokens", pa.int32()),
    ("corpus", pa.string()), ("line", pa.int64()),
    ("source_raw", pa.string()), ("target_raw", pa.string()),
])
#: the columns holding each side's original text, untokenised (absent from corpora ingested
#: before rnnenc kept it)
RAW_COLUMNS = {"source": "source_raw", "target": "target_raw"}

EMPTY = "empty side"
TOO_LONG = "too long"
TOO_SHORT = "too short"
RATIO = "length ratio"


@dataclass(frozen=True)
class PreprocessConfig:
    source_lang: str
    target_lang: str
    lowercase: bool = False
    normalize_punctuation: bool = True
    min_tokens: int = 1
    max_tokens: int = 80
    max_ratio: float = 9.0
    #: False for tuning and test sets: no line may be lost (no empty-side, length or ratio filter)
    clean: bool = True
    #: tokenizer.perl -a: split hyphens inside words ("well @-@ known")
    aggressive_dash_splits: bool = False
    #: False is tokenizer.perl -no-escape: | < > & ' " [ ] stay as they are (Moses needs them escaped)
    escape: bool = True
    #: languages whose side is truecased (a trained or given Moses truecase model, ``pipeline.truecase``)
    truecase: tuple[str, ...] = ()
    #: --langid: drop a pair when py3langid does not find each side's language (``pipeline.language_id``)
    langid: bool = False
    #: --langid-min-prob: the least probability of the expected language that is kept
    langid_min_prob: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"truecase": list(self.truecase)}

    def tokenize(self, text: str, lang: str) -> str:
        """One side's text tokenised as this configuration says (truecasing aside: it needs the
        model, ``pipeline.truecase``)."""
        return tokenize(text, lang, self.lowercase, self.normalize_punctuation,
                        aggressive_dash_splits=self.aggressive_dash_splits, escape=self.escape)


#: The recorded settings that change a corpus's text (not which pairs are kept): two corpora
#: compared by a later stage must agree on every one (``pipeline.preprocess.recorded_preprocessing``).
TEXT_SETTINGS = ("lowercase", "normalize_punctuation", "aggressive_dash_splits", "escape", "truecase")


def recorded_preprocessing(config: dict[str, Any], corpus_dir: str | Path) -> dict[str, Any] | None:
    """The text settings an ingest manifest's config records (``TEXT_SETTINGS``, with this
    version's defaults for those an older ingest did not record), and for each truecased
    language the hash of its model in ``corpus_dir`` (two corpora truecased by different models
    differ too); None when the config records none of them (not an ingest output).
    """
    if not any(key in config for key in TEXT_SETTINGS):
        return None
    defaults = PreprocessConfig("", "").to_dict()
    settings = {key: config.get(key, defaults[key]) for key in TEXT_SETTINGS}
    for lang in settings["truecase"]:
        model = Path(corpus_dir) / truecase.model_name(lang)
        settings[model.name] = xxhash.xxh3_64_hexdigest(model.read_bytes()) if model.is_file() else None
    return settings


def describe_settings(settings: dict[str, Any], keys: Sequence[str]) -> str:
    """``key=value`` for the given settings, for a one-line message."""
    return ", ".join(f"{key}={settings.get(key)}" for key in keys)


class TextPreprocessor:
    """A corpus's recorded preprocessing applied to more text of one of its languages (an
    in-domain or dev set given as plain text), so that it is tokenised exactly as the corpus was.

    Parameters:
        config: the corpus manifest's config (``PreprocessConfig.to_dict`` keys).
        corpus_dir: the corpus directory (where its truecase models are).
        lang: the text's language.
    """

    def __init__(self, config: dict[str, Any], corpus_dir: str | Path, lang: str):
        known = PreprocessConfig("", "").to_dict()
        self.config = PreprocessConfig(**({k: v for k, v in config.items() if k in known}
                                          | {"truecase": tuple(config.get("truecase", ()))}))
        self.lang = lang
        model = Path(corpus_dir) / truecase.model_name(lang)
        self.model = str(model) if lang in self.config.truecase else None
        if self.model is not None and not model.is_file():
            raise UserError(f"{model}: missing (the corpus's config says its '{lang}' side is truecased)")

    def __call__(self, text: str) -> str:
        tokens = self.config.tokenize(text, self.lang)
        return truecase.truecase(tokens, self.model) if self.model else tokens


@functools.lru_cache(maxsize=8)
def _tokenizer(lang: str) -> MosesTokenizer:
    return MosesTokenizer(lang=lang)


class CompiledPunctNormalizer(MosesPunctNormalizer):
    """sacremoses' punctuation normaliser with its substitution table compiled once.

    ``MosesPunctNormalizer.normalize`` calls ``re.sub`` with the pattern strings of its 45
    substitutions for every sentence, and the ``re`` module's cache look-up and argument checks
    cost as much as the matching itself on sentence-length text: with the same table compiled
    once, normalisation runs about twice as fast (``benchmarks/ingest.py``). Same table, same
    order, same output (``tests/test_ingest.py`` compares them on every character the table names).
    """

    def __init__(self, lang: str = "en", **kwargs: Any):
        super().__init__(lang=lang, **kwargs)
        self.compiled_substitutions = [(re.compile(pattern), replacement)
                                       for pattern, replacement in self.substitutions]

    def normalize(self, text: str) -> str:
        if getattr(self, "pre_replace_unicode_punct", False) or getattr(self, "post_remove_control_chars", False):
            return super().normalize(text)
        text = str(text)
        for pattern, replacement in self.compiled_substitutions:
            text = pattern.sub(replacement, text)
        return text.strip()


@functools.lru_cache(maxsize=8)
def _normalizer(lang: str) -> CompiledPunctNormalizer:
    return CompiledPunctNormalizer(lang=lang)


def tokenize(text: str, lang: str, lowercase: bool = False, normalize_punctuation: bool = True, *,
             aggressive_dash_splits: bool = False, escape: bool = True) -> str:
    """One sentence normalised, tokenised and (by default) Moses-escaped, tokens joined by single spaces.

    Parameters:
        text: the raw sentence.
        lang: its language (sacremoses' non-breaking prefixes and rules).
        lowercase: lowercase the tokens.
        normalize_punctuation: Moses normalize-punctuation.perl first.
        aggressive_dash_splits: tokenizer.perl -a ("well-known" -> "well @-@ known").
        escape: Moses escaping (tokenizer.perl without -no-escape).
    """
    if normalize_punctuation:
        text = _normalizer(lang).normalize(text)
    tokens = _tokenizer(lang).tokenize(text, aggressive_dash_splits=aggressive_dash_splits, escape=escape,
                                       return_str=True)
    tokens = " ".join(tokens.split())
    return tokens.lower() if lowercase else tokens


def clean_reason(source_tokens: int, target_tokens: int, config: PreprocessConfig) -> str | None:
    """Why clean-corpus-n would drop a pair with these lengths, or None to keep it (always None
    when ``config.clean`` is off)."""
    if not config.clean:
        return None
    if source_tokens == 0 or target_tokens == 0:
        return EMPTY
    if source_tokens < config.min_tokens or target_tokens < config.min_tokens:
        return TOO_SHORT
    if source_tokens > config.max_tokens or target_tokens > config.max_tokens:
        return TOO_LONG
    if source_tokens / target_tokens > config.max_ratio or target_tokens / source_tokens > config.max_ratio:
        return RATIO
    return None


def reject_record(corpus: str, line: int, reason: str, source: str, target: str,
                  raw_source: bytes | None, raw_target: bytes | None) -> dict[str, Any]:
    """A dropped pair as a ``REJECT_SCHEMA`` record: its original bytes are the raw ones where
    the reader kept them (``RAW_SCHEMA``), else its text's UTF-8."""
    return {"corpus": corpus, "line": line, "reason": reason, "source": source, "target": target,
            "raw_source": source.encode("utf-8") if raw_source is None else raw_source,
            "raw_target": target.encode("utf-8") if raw_target is None else raw_target}


def preprocess_table(raw: pa.Table, corpus: str, config: PreprocessConfig) -> tuple[pa.Table, list[dict], Counter]:
    """Tokenise, clean and (with ``config.langid``) language-check one partition of raw pairs
    (columns source, target, line); truecasing comes later (it needs the whole corpus's model).

    Returns the kept pairs (``CORPUS_SCHEMA``: ``source_raw``/``target_raw`` hold each side's
    text as the reader decoded it, before any preprocessing), the dropped ones as reject records
    (``REJECT_SCHEMA``: with the original bytes of both sides, from the optional ``raw_source``
    and ``raw_target`` columns, else the text's UTF-8), and the counts of dropped pairs by reason.
    """
    kept: dict[str, list] = {name: [] for name in CORPUS_SCHEMA.names}
    rejects: list[dict] = []
    dropped: Counter = Counter()
    none = [None] * raw.num_rows
    raw_sources = raw.column("raw_source").to_pylist() if "raw_source" in raw.column_names else none
    raw_targets = raw.column("raw_target").to_pylist() if "raw_target" in raw.column_names else none
    for source, target, line, raw_source, raw_target in zip(
            raw.column("source").to_pylist(), raw.column("target").to_pylist(), raw.column("line").to_pylist(),
            raw_sources, raw_targets, strict=True):
        source_tok = config.tokenize(source, config.source_lang)
        target_tok = config.tokenize(target, config.target_lang)
        n_source = len(source_tok.split()) if source_tok else 0
        n_target = len(target_tok.split()) if target_tok else 0
        reason = clean_reason(n_source, n_target, config)
        if reason is None and config.langid and (
                wrong_language(source, config.source_lang, config.langid_min_prob)
                or wrong_language(target, config.target_lang, config.langid_min_prob)):
            reason = WRONG_LANGUAGE
        if reason is not None:
            dropped[reason] += 1
            rejects.append(reject_record(corpus, line, reason, source, target, raw_source, raw_target))
            continue
        kept["source"].append(source_tok)
        kept["target"].append(target_tok)
        kept["source_tokens"].append(n_source)
        kept["target_tokens"].append(n_target)
        kept["corpus"].append(corpus)
        kept["line"].append(line)
        kept["source_raw"].append(source)
        kept["target_raw"].append(target)
    return pa.table(kept, schema=CORPUS_SCHEMA), rejects, dropped


def write_parquet_atomic(table: pa.Table, path: str | Path, row_group_size: int = 50_000) -> None:
    """Write a part under a temporary name and rename it: a killed worker leaves no part that
    looks complete."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=max(1, row_group_size))
    tmp.replace(path)


def preprocess_shard(raw_path: str, out_path: str, rejects_path: str, corpus: str,
                     config: PreprocessConfig, casing_paths: dict[str, str] | None = None) -> dict[str, Any]:
    """Worker task: read a raw shard, write its tokenised part and its rejects; return counts.

    ``casing_paths`` maps a side ("source", "target") whose truecaser is trained on the corpus
    to where this part's truecasing counts go (``pipeline.truecase.count_casing``).

    Files are written under temporary names and renamed, so a killed worker never leaves a
    part that looks complete (Dask reruns the task elsewhere).
    """
    raw = pq.read_table(raw_path)
    # Tokenising is pure Python: in a Dask worker the event-loop thread would otherwise take the
    # GIL every 5 ms; a longer switch interval cost nothing measurable there and saved 5-10 %.
    previous = sys.getswitchinterval()
    sys.setswitchinterval(max(previous, 0.05))
    try:
        table, rejects, dropped = preprocess_table(raw, corpus, config)
    finally:
        sys.setswitchinterval(previous)
    write_parquet_atomic(table, out_path)
    write_parquet_atomic(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), rejects_path)
    for side, path in (casing_paths or {}).items():
        truecase.write_casing(truecase.count_casing(table.column(side).to_pylist()), path)
    return {
        "pairs_in": raw.num_rows,
        "pairs_out": table.num_rows,
        "source_words": int(pc.sum(table.column("source_tokens")).as_py() or 0),
        "target_words": int(pc.sum(table.column("target_tokens")).as_py() or 0),
        "dropped": dict(dropped),
    }
