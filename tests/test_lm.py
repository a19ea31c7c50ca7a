"""rnnenc.pipeline.lm: the KenLM toolchain lookup, lmplz training, cached loading, cross-entropy."""

from __future__ import annotations

import logging
import math
import os
import random
from pathlib import Path

import kenlm
import pytest

from rnnenc.pipeline import lm
from rnnenc.pipeline.errors import UserError


def _corpus(path: Path, lines: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    # Zipfian words, so that n-grams seen once and twice exist (lmplz's discounts need them).
    words = [f"w{i}" for i in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]
    sentences = [" ".join(rng.choices(words, weights, k=rng.randint(3, 12))) for _ in range(lines)]
    path.write_text("\n".join(sentences) + "\n")
    return sentences


def test_toolchain_lookup_and_missing_toolchain_message(tmp_path, monkeypatch):
    found = lm.find_kenlm_bin()
    assert (found / "lmplz").is_file() and (found / "build_binary").is_file()
    monkeypatch.setenv("KENLM_BIN", str(found))
    assert lm.find_kenlm_bin() == found
    monkeypatch.setenv("KENLM_BIN", str(tmp_path))
    with pytest.raises(UserError, match="build_kenlm.sh"):
        lm.find_kenlm_bin()
    # Without KENLM_BIN, an empty cache and nothing on PATH: the message says how to build.
    monkeypatch.delenv("KENLM_BIN")
    monkeypatch.setenv("RNNENC_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(UserError, match="apt-get install"):
        lm.find_kenlm_bin()


def test_train_binary_model_scores_as_documented(tmp_path):
    sentences = _corpus(tmp_path / "train.txt", 3000)
    trained = lm.train_lm([tmp_path / "train.txt"], tmp_path / "model.binary", lm.LMConfig(order=3, memory="64M"))
    assert not trained.discount_fallback
    assert Path(trained.path).read_bytes()[:4] != b"\\dat"  # binary, not ARPA
    model = lm.load_model(trained.path)
    assert model.order == 3
    assert lm.load_model(trained.path) is model  # loaded once per process
    # another model put at the same path is loaded, not answered from the cache
    other = lm.train_lm([tmp_path / "train.txt"], tmp_path / "other.binary", lm.LMConfig(order=2, memory="64M"))
    os.replace(other.path, trained.path)
    assert lm.load_model(trained.path).order == 2
    os.replace(lm.train_lm([tmp_path / "train.txt"], tmp_path / "again.binary",
                           lm.LMConfig(order=3, memory="64M")).path, trained.path)
    model = lm.load_model(trained.path)
    assert model.order == 3
    sentence = sentences[0]
    n = len(sentence.split())
    assert lm.cross_entropy(model, sentence) == pytest.approx(-model.score(sentence, bos=True, eos=True) / (n + 1))
    # H is log10 perplexity of the sentence, </s> counted: kenlm's own perplexity agrees.
    assert 10 ** lm.cross_entropy(model, sentence) == pytest.approx(model.perplexity(sentence))
    corpus_ppl = lm.perplexity(model, sentences[:50])
    total = sum(-model.score(s) for s in sentences[:50])
    words = sum(len(s.split()) + 1 for s in sentences[:50])
    assert corpus_ppl == pytest.approx(math.pow(10, total / words))


def test_vocabulary_limit_prunes_other_words(tmp_path):
    _corpus(tmp_path / "train.txt", 2000)
    (tmp_path / "vocab.txt").write_text("".join(f"w{i}\n" for i in range(100)))
    limited = lm.train_lm([tmp_path / "train.txt"], tmp_path / "limited.binary", lm.LMConfig(order=3, memory="64M"),
                          vocab_file=tmp_path / "vocab.txt")
    model = kenlm.Model(limited.path)
    assert "w5" in model and "w150" not in model
    # An out-of-vocabulary word costs the same as any other unknown word.
    assert model.score("w5 w150 w6") == pytest.approx(model.score("w5 zzz w6"))


def test_tiny_corpus_falls_back_with_a_warning(tmp_path, caplog):
    (tmp_path / "tiny.txt").write_text("a b c d\n" * 20 + "e f g\n" * 20)
    with caplog.at_level(logging.WARNING, logger="rnnenc"):
        trained = lm.train_lm([tmp_path / "tiny.txt"], tmp_path / "tiny.binary", lm.LMConfig(order=4, memory="64M"))
    assert trained.discount_fallback
    assert "--discount_fallback" in caplog.text
    assert lm.load_model(trained.path).order == 4


def test_missing_unreadable_model_and_empty_text(tmp_path):
    with pytest.raises(UserError, match="language model not found"):
        lm.load_model(str(tmp_path / "nope.binary"))
    (tmp_path / "junk.binary").write_bytes(b"not a language model\n")
    with pytest.raises(UserError, match="junk.binary: cannot read language model"):
        lm.check_model(tmp_path / "junk.binary")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="no text"):
        lm.train_lm([tmp_path / "empty.txt"], tmp_path / "empty.binary")
