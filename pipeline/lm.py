"""KenLM n-gram language models: finding the toolchain, training, loading, scoring.

Training pipes text into ``lmplz`` (modified Kneser-Ney) and binarises the ARPA with
``build_binary`` (probing), because ``kenlm.Model`` mmaps a binary file read-only (shared by
every process on a machine) but parses an ARPA into private memory.

Cross-entropy convention (REFERENCE.md section 4, the project's choice): a sentence of ``n``
tokens has ``H(s) = -log10 p(s </s> | <s>) / (n + 1)``, i.e. ``-Model.score(s, bos=True,
eos=True) / (n + 1)``, which is what ``kenlm.Model.perplexity`` exponentiates.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Any

import kenlm

from rnnenc.pipeline.artifacts import published_path
from rnnenc.pipeline.errors import UserError

log = logging.getLogger("rnnenc")

TOOLS = ("lmplz", "build_binary")
BUILD_HINT = ("build them with scripts/build_kenlm.sh (needs cmake, g++, boost, zlib: sudo apt-get install "
              "cmake build-essential libboost-program-options-dev libboost-system-dev libboost-thread-dev "
              "libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev), or set KENLM_BIN to a directory holding lmplz and build_binary")
# lmplz's message when modified Kneser-Ney discounts cannot be estimated (tiny or artificial data).
_BAD_DISCOUNT_MARKERS = ("discount_fallback", "BadDiscountException", "Kneser-Ney discounts")


def _has_tools(directory: Path) -> bool:
    return all(os.access(directory / tool, os.X_OK) for tool in TOOLS)


def find_kenlm_bin() -> Path:
    """The directory holding ``lmplz`` and ``build_binary``.

    Looked up in order: ``$KENLM_BIN``; the cache of scripts/build_kenlm.sh
    (``${RNNENC_CACHE:-~/.cache/rnnenc}/kenlm-*/bin``, newest version first); ``PATH``.
    """
    explicit = os.environ.get("KENLM_BIN")
    if explicit:
        if _has_tools(Path(explicit)):
            return Path(explicit)
        raise UserError(f"KENLM_BIN={explicit}: no executable lmplz and build_binary there; {BUILD_HINT}")
    cache = Path(os.environ.get("RNNENC_CACHE") or Path.home() / ".cache" / "rnnenc")
    for candidate in sorted(cache.glob("kenlm-*/bin"), reverse=True):
        if _has_tools(candidate):
            return candidate
    found = [shutil.which(tool) for tool in TOOLS]
    if all(found) and Path(found[0]).parent == Path(found[1]).parent:
        return Path(found[0]).parent
    raise UserError(f"KenLM's lmplz and build_binary were not found (KENLM_BIN, {cache}/kenlm-*/bin, PATH); "
                    f"{BUILD_HINT}")


@dataclass(frozen=True)
class LMConfig:
    """How ``lmplz`` runs. ``memory`` is its ``-S`` (GNU sort syntax: 1G, 20%)."""

    order: int = 4
    memory: str = "1G"
    temp_dir: str | None = None  # lmplz -T; default: beside the output model


@dataclass(frozen=True)
class TrainedLM:
    path: str
    order: int
    discount_fallback: bool


def _run_lmplz(bin_dir: Path, text_files: Iterable[str | os.PathLike], arpa: Path, config: LMConfig,
               temp_dir: Path, vocab_file: str | os.PathLike | None, fallback: bool) -> subprocess.CompletedProcess:
    command = [str(bin_dir / "lmplz"), "-o", str(config.order), "-S", config.memory,
               "-T", str(temp_dir) + os.sep, "--arpa", str(arpa)]
    if vocab_file is not None:
        command += ["--limit_vocab_file", str(vocab_file)]
    if fallback:
        command.append("--discount_fallback")
    # stderr goes to a file, not a pipe: lmplz's progress output could fill a pipe while we
    # are still feeding it stdin, and both sides would block.
    with tempfile.TemporaryFile(dir=temp_dir) as errors:
        with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=errors) as process:
            try:
                for text_file in text_files:
                    with open(text_file, "rb") as handle:
                        shutil.copyfileobj(handle, process.stdin, 1 << 20)
            except BrokenPipeError:
                pass  # lmplz died early; its stderr says why
            finally:
                try:
                    process.stdin.close()
                except BrokenPipeError:
                    pass
            process.wait()
        errors.seek(0)
        stderr = errors.read()
    return subprocess.CompletedProcess(command, process.returncode, b"", stderr)


def train_lm(text_files: Iterable[str | os.PathLike], out_path: str | os.PathLike, config: LMConfig = LMConfig(),
             vocab_file: str | os.PathLike | None = None) -> TrainedLM:
    """Train an order-``config.order`` model on the concatenated ``text_files`` into a binary file.

    ``vocab_file`` restricts the model to those words (``--limit_vocab_file``): n-grams with
    other words are pruned, so two models sharing the file assign comparable probabilities.
    When lmplz cannot estimate discounts (tiny data) it is rerun with ``--discount_fallback``
    and a warning is logged.
    """
    text_files = [str(p) for p in text_files]
    out_path = Path(out_path)
    bin_dir = find_kenlm_bin()
    if not any(Path(p).stat().st_size for p in text_files):
        raise UserError(f"{out_path}: no text to train a language model on")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lmplz-", dir=config.temp_dir or out_path.parent) as tmp:
        arpa = Path(tmp) / "model.arpa"
        fallback = False
        result = _run_lmplz(bin_dir, text_files, arpa, config, Path(tmp), vocab_file, fallback)
        message = result.stderr.decode(errors="replace")
        if result.returncode != 0 and any(marker in message for marker in _BAD_DISCOUNT_MARKERS):
            log.warning("%s: too little data for Kneser-Ney discount estimation; retrying lmplz with "
                        "--discount_fallback (the model will be weak)", published_path(out_path))
            fallback = True
            result = _run_lmplz(bin_dir, text_files, arpa, config, Path(tmp), vocab_file, fallback)
            message = result.stderr.decode(errors="replace")
        if result.returncode != 0:
            tail = " | ".join(message.strip().splitlines()[-3:])
            raise UserError(f"{out_path}: lmplz failed (exit {result.returncode}): {tail}")
        partial = out_path.with_name(out_path.name + ".partial")
        built = subprocess.run([str(bin_dir / "build_binary"), "-S", config.memory, "-T", str(tmp) + os.sep,
                                "probing", str(arpa), str(partial)], capture_output=True)
        if built.returncode != 0:
            partial.unlink(missing_ok=True)
            tail = " | ".join(built.stderr.decode(errors="replace").strip().splitlines()[-3:])
            raise UserError(f"{out_path}: build_binary failed (exit {built.returncode}): {tail}")
        os.replace(partial, out_path)
    return TrainedLM(path=str(out_path), order=config.order, discount_fallback=fallback)


def load_model(path: str) -> kenlm.Model:
    """The model at ``path``, loaded once per process while the file stays the same one.

    A scoring task asks for the same models part after part; loading them again would cost ~0.1 ms
    each and the first queries' page faults. The cache is keyed by the file's identity (device,
    inode, size, modification time) as well as its path, so a model retrained or replaced at the
    same path (a long-lived ``--scheduler`` cluster between two runs) is loaded anew, never
    answered from the old one.
    """
    try:
        stat = os.stat(path)
    except OSError:
        raise UserError(f"{path}: language model not found") from None
    if not S_ISREG(stat.st_mode):
        raise UserError(f"{path}: language model not found (not a file)")
    return _load_file(path, (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns))


@functools.lru_cache(maxsize=16)
def _load_file(path: str, identity: tuple[int, int, int, int]) -> kenlm.Model:
    # identity only keys the cache (see load_model)
    try:
        return kenlm.Model(path)
    except (OSError, RuntimeError) as exc:
        raise UserError(f"{path}: cannot read language model ({str(exc).splitlines()[0][:200]})") from None


def check_model(path: str | os.PathLike) -> None:
    """Raise a UserError naming ``path`` unless it is a readable KenLM model."""
    load_model(str(path))


def cross_entropy(model: kenlm.Model, sentence: str, n_tokens: int | None = None) -> float:
    """Per-word cross-entropy (log10) of a tokenised sentence, ``</s>`` counted as a word."""
    if n_tokens is None:
        n_tokens = len(sentence.split())
    return -model.score(sentence, bos=True, eos=True) / (n_tokens + 1)


def perplexity(model: kenlm.Model, sentences: Iterable[str]) -> float:
    """Corpus perplexity: 10 ** (total -log10 p over all sentences / total words incl. ``</s>``)."""
    total, words = 0.0, 0
    for sentence in sentences:
        total -= model.score(sentence, bos=True, eos=True)
        words += len(sentence.split()) + 1
    if words == 0:
        raise UserError("perplexity of an empty text")
    return math.pow(10.0, total / words)


# ---------------------------------------------------------------------------------------------
# The lm stage: the decoder's target language model (the command line is workflows.lm)

LM_NAME = "lm.binary"


def _side_text(corpus: Path, lang: str, work: Path, index: int, reference: Any) -> Path:
    """One side of ``corpus`` as tokenised text: a select output's ``selected.<lang>``, an ingest
    output's parts, or a text file, preprocessed as ``reference`` records (as it is without one)."""
    from rnnenc.pipeline.artifacts import output_stage
    from rnnenc.pipeline.ingested import preprocess_file, text_preprocessor
    from rnnenc.pipeline.selection import export_side

    text = work / f"corpus-{index}.{lang}"
    if corpus.is_file():
        if reference is None:
            return corpus
        preprocess_file(corpus, text_preprocessor(reference, lang), text)
        return text
    if output_stage(corpus) == "select":
        selected = corpus / f"selected.{lang}"
        if not selected.is_file():
            raise UserError(f"{selected}: missing from the select output {corpus}")
        return selected
    export_side(corpus, lang, text)
    return text


def _reference_corpus(corpora: Iterable[Path]) -> Any:
    """The ingested corpus whose recorded preprocessing the corpora given to the lm stage follow
    (``ingested.recorded_corpus`` of each output given); two that differ are refused in one line."""
    from rnnenc.pipeline.ingested import check_same_preprocessing, recorded_corpus

    reference = None
    for corpus in corpora:
        found = recorded_corpus(corpus) if corpus.is_dir() else None
        if found is None:
            continue
        if reference is None:
            reference = found
        elif found.path != reference.path:
            check_same_preprocessing(found, reference, f"{reference.path} (an earlier --corpus's text)")
    return reference


def build_target_lm(corpora: Iterable[str | os.PathLike], lang: str, out: str | os.PathLike, *,
                    order: int = 5, memory: str = "1G") -> dict[str, Any]:
    """The lm stage: a binarised KenLM model of order ``order`` on the ``lang`` side of ``corpora``
    (the selection's target side and the in-domain target text, as Cho et al. built the Moses LM
    from the selected data), written to ``out/lm.binary`` (atomically, manifest last).

    The outputs given must follow one recorded preprocessing (``ingested.recorded_corpus``: an
    ingested corpus recording another is refused in one line), and text files are preprocessed
    as it records (taken as they are when no output given records one).

    Parameters:
        corpora: select outputs, ingest outputs or text files.
        lang: the side to model (the target language).
        out: the output directory.
        order: the n-gram order (5, as Moses baselines use).
        memory: lmplz's sorting memory (``-S``).
    """
    from rnnenc.pipeline.artifacts import REPORT_NAME, atomic_output_dir, write_json_atomic, write_manifest

    corpora = [Path(c) for c in corpora]
    if not corpora:
        raise UserError("lm: give at least one --corpus")
    if order < 1:
        raise UserError("lm: --order must be at least 1")
    started = time.perf_counter()
    with atomic_output_dir(out, stage="lm", inputs=corpora) as tmp:
        work = tmp / ".work"
        work.mkdir()
        reference = _reference_corpus(corpora)
        texts = [_side_text(c, lang, work, i, reference) for i, c in enumerate(corpora)]
        trained = train_lm(texts, tmp / LM_NAME, LMConfig(order=order, memory=memory))
        lines = sum(sum(1 for _ in open(t, encoding="utf-8")) for t in texts)
        shutil.rmtree(work)
        report = {"stage": "lm", "lang": lang, "order": order, "sentences": lines,
                  "text_preprocessed_as": reference.path if reference else None,
                  "discount_fallback": trained.discount_fallback, "seconds": round(time.perf_counter() - started, 3)}
        write_json_atomic(tmp / REPORT_NAME, report)
    write_manifest(out, stage="lm", inputs=corpora, config={"lang": lang, "order": order, "memory": memory},
                   counts={"sentences": lines})
    return report
