"""Moses truecasing (train-truecaser.perl, truecase.perl) with sacremoses, trained part by part.

Training counts, for every token's lowercase form, how often each surface form occurs away from
a sentence start (``MosesTruecaser.learn_truecase_weights``). Counts add up, so each part's
worker counts its own sentences (``count_casing``) and the driver adds the parts' counts in
part order (``merge_casing``): the merged counts, insertion order included, are those of one
pass over the whole corpus, and insertion order is what breaks ties between equally frequent
forms (``Counter.most_common``). So the model is the one sacremoses trains on the whole corpus
at once, whatever the number of parts or workers. The model file is Moses's format
(``token (count/total) other (count) ...``), so it can be given to truecase.perl, and a Moses
model can be given here (``load_truecaser``).
"""

from __future__ import annotations

import functools
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from sacremoses import MosesTruecaser

from rnnenc.pipeline.errors import UserError

Casing = dict[str, Counter]


def model_name(lang: str) -> str:
    """The model's file name in an ingest output: Moses EMS's name, after "_" like every file
    beside the parts (Parquet readers skip it)."""
    return f"_truecase-model.{lang}"


@functools.lru_cache(maxsize=1)
def _trainer() -> MosesTruecaser:
    return MosesTruecaser()


def count_casing(sentences: Iterable[str]) -> Casing:
    """The truecasing counts of tokenised sentences (tokens separated by spaces)."""
    casing: Casing = {}
    for sentence in sentences:
        for lower, surface, weight in _trainer().learn_truecase_weights(sentence.split()):
            casing.setdefault(lower, Counter())[surface] += weight
    return casing


def write_casing(casing: Casing, path: str | Path) -> None:
    """One part's counts as JSON, their insertion order kept (it breaks ties, see above)."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    tmp.write_text(json.dumps([[lower, list(forms.items())] for lower, forms in casing.items()],
                              ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, path)


def merge_casing(paths: Sequence[str | Path]) -> Casing:
    """The parts' counts (``write_casing`` files) added up in the given order."""
    casing: Casing = {}
    for path in paths:
        for lower, forms in json.loads(Path(path).read_text(encoding="utf-8")):
            counter = casing.setdefault(lower, Counter())
            for surface, count in forms:
                counter[surface] += count
    return casing


def write_model(casing: Casing, path: str | Path) -> None:
    """Write a Moses truecase model (train-truecaser.perl's format), atomically."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as out:
        for forms in casing.values():
            ranked = forms.most_common()
            total = sum(forms.values())
            words = [f"{ranked[0][0]} ({ranked[0][1]}/{total})", *(f"{w} ({c})" for w, c in ranked[1:])]
            out.write(" ".join(words) + "\n")
    os.replace(tmp, path)


@functools.lru_cache(maxsize=4)
def load_truecaser(path: str) -> MosesTruecaser:
    """A truecaser from a Moses model file (cached: a worker loads each model once)."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such truecase model")
    try:
        return MosesTruecaser(load_from=path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a Moses truecase model ({exc})") from None


def truecase(sentence: str, model_path: str) -> str:
    """One tokenised sentence truecased with the model at ``model_path``, as truecase.perl does:
    a sentence's first word takes its most frequent form, any other word seen in the model's
    counts (in any form) stays as it is, and an unseen form takes the most frequent one
    (sacremoses' ``use_known=True``; its default would also recase forms the model knows)."""
    if not sentence:
        return sentence
    return load_truecaser(model_path).truecase(sentence, return_str=True, use_known=True)
