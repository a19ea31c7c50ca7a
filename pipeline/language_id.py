"""Language identification of a pair's sides, with py3langid (its model ships in the package).

Scoring (``identify``: the most probable language and its probability) is kept apart from
deciding (``wrong_language``), as OpusFilter's LanguageIDFilter does: a side is in the expected
language when py3langid's most probable language is that one with at least ``min_prob``.
Probabilities are normalised (``norm_probs``), so ``min_prob`` is between 0 and 1.
"""

from __future__ import annotations

import functools

from rnnenc.pipeline.errors import UserError

WRONG_LANGUAGE = "wrong language"


@functools.lru_cache(maxsize=1)
def _identifier():
    # Loaded once per process (a worker keeps it for all its parts): about 0.2 s.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> frozenset[str]:
    """The language codes py3langid can identify (ISO 639-1, e.g. en, fr)."""
    return frozenset(_identifier().nb_classes)


def check_languages(langs: tuple[str, ...]) -> None:
    """Refuse, before any work, a language py3langid would never identify (every pair would go)."""
    unknown = [lang for lang in langs if lang not in known_languages()]
    if unknown:
        raise UserError(f"--langid: py3langid does not know the language {', '.join(unknown)} "
                        f"(it knows ISO 639-1 codes such as en, fr, de)")


def identify(text: str) -> tuple[str, float]:
    """The most probable language of ``text`` and its probability (0 to 1)."""
    lang, prob = _identifier().classify(text)
    return str(lang), float(prob)


def wrong_language(text: str, expected: str, min_prob: float = 0.0) -> bool:
    """Whether ``text`` is not identified as ``expected`` with at least ``min_prob``.

    Parameters:
        text: one side's raw text.
        expected: the language code it should be in.
        min_prob: the least probability of ``expected`` that is accepted.
    """
    lang, prob = identify(text)
    return lang != expected or prob < min_prob
