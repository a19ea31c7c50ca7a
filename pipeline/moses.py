"""Moses side of the export: the updated moses.ini and the export stage's output directory.

``update_moses_ini`` takes the user's moses.ini (the one ``train-model.perl`` wrote, or a tuned
one) and returns a copy in which the phrase dictionary (``PhraseDictionaryMemory``,
``PhraseDictionaryCompact``, ``PhraseDictionaryOnDisk``, ...) named ``TranslationModel0``
(or the only one there is, or the one asked for)

* has ``num-features`` raised by the number of score columns the table has beyond it,
* has ``path=`` pointing at the exported table (for Compact/OnDisk: at the binarised table the
  ``binarise`` command of the report makes from it),
* has one initial weight per added column appended to its line under ``[weight]``
  (default 0.2 each, the value train-model.perl gives every phrase-table feature, and -0.2 for
  a column declared a penalty, such as the unknown-word count ``rnn_unk``: Moses reads
  exp(count) through log(), so a positive weight would reward unknown words; set one per
  column with ``weights={"rnn_logp": 0.5}``),

so the result goes straight into ``mert-moses.pl``, which tunes the new weights. The ini must
have ``num-features`` on that feature and as many weights as features; a table with fewer
score columns than the ini's ``num-features`` is refused (it is not this ini's table).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import SERIAL, Executor

PHRASE_DICTIONARY_PREFIX = "PhraseDictionary"
DEFAULT_INITIAL_WEIGHT = 0.2
TABLE_NAME = "phrase-table.gz"


@dataclass
class IniUpdate:
    text: str
    feature: str                      # the phrase dictionary's name
    feature_type: str                 # PhraseDictionaryMemory, ...
    old_features: int
    new_features: int
    added: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    path: str = ""
    binarise: str | None = None       # command that makes the binarised table the ini points at


def _format_weight(value: float) -> str:
    return f"{value:g}"


def _parse_feature(line: str) -> tuple[str, dict[str, str], list[str]]:
    tokens = line.split()
    options = {}
    for token in tokens[1:]:
        if "=" in token:
            key, value = token.split("=", 1)
            options[key] = value
    return tokens[0], options, tokens


def binarise_command(feature_type: str, table: str, num_scores: int, target: str) -> str | None:
    if feature_type == "PhraseDictionaryCompact":
        return f"processPhraseTableMin -in {table} -nscores {num_scores} -out {target}"
    if feature_type == "PhraseDictionaryOnDisk":
        return f"CreateOnDiskPt 1 1 {num_scores} 100 2 {table} {target}"
    return None


def update_moses_ini(text: str, *, table_path: str, score_names: Sequence[str], name: str | None = None,
                     initial_weight: float = DEFAULT_INITIAL_WEIGHT,
                     weights: Mapping[str, float] | None = None, source: str = "moses.ini",
                     penalties: Sequence[str] = ()) -> IniUpdate:
    """The moses.ini ``text`` updated for a table with the score columns ``score_names``;
    added columns named in ``penalties`` start at ``-initial_weight``."""
    weights = dict(weights or {})
    lines = text.split("\n")
    section = None
    features: list[tuple[int, str, str, dict[str, str], list[str]]] = []   # line index, name, type, ...
    per_type: dict[str, int] = {}
    weight_lines: dict[str, int] = {}
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = re.fullmatch(r"\[([^\]]+)\]", stripped)
        if header:
            section = header.group(1).strip()
            continue
        if section == "feature":
            ftype, options, tokens = _parse_feature(stripped)
            index = per_type.get(ftype, 0)
            per_type[ftype] = index + 1
            if ftype.startswith(PHRASE_DICTIONARY_PREFIX):
                features.append((i, options.get("name", f"{ftype}{index}"), ftype, options, tokens))
        elif section == "weight":
            match = re.match(r"\s*([^=\s]+)\s*=", line)
            if match:
                weight_lines[match.group(1)] = i
    if not features:
        if re.search(r"^\s*\[ttable-file\]", text, re.M):
            raise UserError(f"{source}: an old-format moses.ini ([ttable-file]); convert it to the "
                            "[feature]/[weight] format (Moses 2.1+) first")
        raise UserError(f"{source}: no phrase dictionary (PhraseDictionary...) under [feature]")
    names = [f[1] for f in features]
    if name is None:
        name = names[0] if len(features) == 1 else ("TranslationModel0" if "TranslationModel0" in names else None)
        if name is None:
            raise UserError(f"{source}: several phrase dictionaries ({', '.join(names)}); say which one")
    if name not in names:
        raise UserError(f"{source}: no phrase dictionary named '{name}' (there are: {', '.join(names)})")
    index, _, ftype, options, tokens = features[names.index(name)]
    where = f"{source}:{index + 1}"
    if "num-features" not in options:
        raise UserError(f"{where}: {name} has no num-features=")
    try:
        old = int(options["num-features"])
    except ValueError:
        raise UserError(f"{where}: {name}: num-features={options['num-features']} is not a number") from None
    if name not in weight_lines:
        raise UserError(f"{source}: no weights for {name} under [weight] (a line '{name}= w1 ... w{old}')")
    w_index = weight_lines[name]
    current = lines[w_index].split("=", 1)[1].split()
    if len(current) != old:
        raise UserError(f"{source}:{w_index + 1}: {name} has num-features={old} but {len(current)} weight(s)")
    total = len(score_names)
    if total < old:
        raise UserError(f"{where}: {name} has num-features={old}, but the phrase table has only {total} "
                        f"score column(s) ({', '.join(score_names)}): not this moses.ini's table?")
    added = list(score_names[old:])
    new_weights = [float(weights.pop(n, -initial_weight if n in penalties else initial_weight)) for n in added]
    if weights:
        raise UserError(f"weights given for {', '.join(sorted(weights))}, which the export does not add "
                        f"(added columns: {', '.join(added) or 'none'})")
    binarise = None
    path = table_path
    if ftype in ("PhraseDictionaryCompact", "PhraseDictionaryOnDisk"):
        stem = table_path[: -len(".gz")] if table_path.endswith(".gz") else table_path
        path = stem + (".minphr" if ftype == "PhraseDictionaryCompact" else ".ondisk")
        binarise = binarise_command(ftype, table_path, total, stem if ftype == "PhraseDictionaryCompact" else path)
    new_tokens = []
    seen_path = False
    for token in tokens:
        if token.startswith("num-features="):
            token = f"num-features={total}"
        elif token.startswith("path="):
            token, seen_path = f"path={path}", True
        new_tokens.append(token)
    if not seen_path:
        new_tokens.append(f"path={path}")
    indent = lines[index][: len(lines[index]) - len(lines[index].lstrip())]
    lines[index] = indent + " ".join(new_tokens)
    if new_weights:
        lines[w_index] = lines[w_index].rstrip() + " " + " ".join(_format_weight(w) for w in new_weights)
    return IniUpdate(text="\n".join(lines), feature=name, feature_type=ftype, old_features=old,
                     new_features=total, added=added, weights=new_weights, path=path, binarise=binarise)


LM_WEIGHT = 0.5  # train-model.perl's initial LM weight


def new_moses_ini(table_path: str, scores: Sequence[Mapping[str, Any]], lm_path: str, order: int, *,
                  initial_weight: float = DEFAULT_INITIAL_WEIGHT, weights: Mapping[str, float] | None = None,
                  distortion_limit: int = 6) -> tuple[str, list[float]]:
    """A moses.ini (and the table's initial weights) in train-model.perl's layout for a table with the score columns ``scores``
    (in-memory phrase dictionary, distance-based reordering, word and phrase penalties, the KenLM
    model ``lm_path``), with train-model.perl's initial weights (a penalty column: negative)."""
    weights = dict(weights or {})
    table_weights = [float(weights.pop(s["name"], -initial_weight if s.get("penalty") else initial_weight))
                     for s in scores]
    if weights:
        raise UserError(f"weights given for {', '.join(sorted(weights))}, which the table has no column of "
                        f"(columns: {', '.join(s['name'] for s in scores)})")
    return "\n".join([
        "# written by rnnenc export, in train-model.perl's layout",
        "# columns: " + " ".join(s["name"] for s in scores),
        "", "[input-factors]", "0", "", "[mapping]", "0 T 0", "",
        "[distortion-limit]", str(distortion_limit), "",
        "[feature]", "UnknownWordPenalty", "WordPenalty", "PhrasePenalty",
        f"PhraseDictionaryMemory name=TranslationModel0 num-features={len(scores)} path={table_path} "
        "input-factor=0 output-factor=0",
        "Distortion", f"KENLM name=LM0 factor=0 path={lm_path} order={order}", "",
        "[weight]", "UnknownWordPenalty0= 1", "WordPenalty0= -1", "PhrasePenalty0= 0.2",
        "TranslationModel0= " + " ".join(_format_weight(w) for w in table_weights),
        "Distortion0= 0.3", f"LM0= {_format_weight(LM_WEIGHT)}", ""]), table_weights


def set_language_model(text: str, lm_path: str, order: int) -> str:
    """moses.ini ``text`` whose (first) KenLM feature reads ``lm_path`` at ``order``; an ini without
    one gets ``KENLM name=LM0`` after its last feature, with the initial weight train-model.perl
    gives it."""
    lines = text.split("\n")
    section, feature_end, weight_end = None, None, None
    for i, line in enumerate(lines):
        stripped = line.strip()
        header = re.fullmatch(r"\[([^\]]+)\]", stripped)
        if header:
            section = header.group(1).strip()
            continue
        if section == "feature" and stripped and not stripped.startswith("#"):
            feature_end = i
            if stripped.split()[0] == "KENLM":
                tokens = [t for t in stripped.split() if not t.startswith(("path=", "order="))]
                indent = line[: len(line) - len(line.lstrip())]
                lines[i] = indent + " ".join(tokens + [f"path={lm_path}", f"order={order}"])
                return "\n".join(lines)
        if section == "weight" and stripped and not stripped.startswith("#"):
            weight_end = i
    if feature_end is None or weight_end is None:
        raise UserError("moses.ini has no [feature] or [weight] section to add the language model to")
    lines.insert(weight_end + 1, f"LM0= {_format_weight(LM_WEIGHT)}")
    lines.insert(feature_end + 1, f"KENLM name=LM0 factor=0 path={lm_path} order={order}")
    return "\n".join(lines)


def language_model(path: str | os.PathLike) -> tuple[str, int]:
    """(binary path, order) of an lm stage output or of a KenLM model file."""
    from rnnenc.pipeline.artifacts import read_artifact

    artifact = read_artifact(path, expect=("language-model",))
    if not artifact.main.is_file():
        raise UserError(f"{artifact.main}: no such language model")
    if artifact.kind == "language-model":
        from rnnenc.pipeline.artifacts import read_manifest

        return str(artifact.main.resolve()), int((read_manifest(artifact.path) or {})["config"]["order"])
    import kenlm

    return str(artifact.main.resolve()), int(kenlm.Model(str(artifact.main)).order)


def export_stage(table_dir: str | os.PathLike, out_dir: str | os.PathLike, *, moses_ini: str | os.PathLike | None = None,
                 config=None, feature: str | None = None, initial_weight: float = DEFAULT_INITIAL_WEIGHT,
                 weights: Mapping[str, float] | None = None, executor: Executor = SERIAL,
                 lm: str | os.PathLike | None = None,
                 filter_to: Sequence[str | os.PathLike] = (),
                 max_phrase_length: int | None = None) -> dict[str, Any]:
    """``out_dir/phrase-table.gz``, ``_report.json``, manifest last, and ``moses.ini``: the given
    one updated (reading the language model ``lm`` when given: an lm stage output or a KenLM
    file), or, with ``lm`` and no ``moses_ini``, a new one in train-model.perl's layout.
    ``filter_to``: write only the rows whose source phrase occurs in these inputs (corpus
    directories, or text preprocessed as the table's corpus records, as ``rnnenc filter`` reads
    them; n-grams up to ``max_phrase_length``)."""
    from rnnenc.pipeline.artifacts import REPORT_NAME, atomic_output_dir, write_json_atomic, write_manifest
    from rnnenc.pipeline.phrase_filter import DEFAULT_MAX_PHRASE_LENGTH, source_phrases
    from rnnenc.pipeline.phrase_table import (
        ExportConfig,
        export_moses,
        list_parts,
        read_score_columns,
        select_scores,
    )

    config = config or ExportConfig()
    out_dir = Path(out_dir)
    started = time.perf_counter()
    ini_text = None
    if moses_ini is not None:
        moses_ini = Path(moses_ini)
        if not moses_ini.is_file():
            raise UserError(f"{moses_ini}: no such file")
        ini_text = moses_ini.read_text(encoding="utf-8")
        # Check the ini against the table before the long part.
        import pyarrow.parquet as pq

        scores = select_scores(read_score_columns(pq.read_schema(list_parts(table_dir)[0])), config.scores,
                               str(table_dir))
        update_moses_ini(ini_text, table_path=str(out_dir.resolve() / TABLE_NAME),
                         score_names=[s["name"] for s in scores], name=feature, initial_weight=initial_weight,
                         weights=weights, source=str(moses_ini), penalties=[s["name"] for s in scores if s.get("penalty")])
    lm_model = language_model(lm) if lm is not None else None
    from rnnenc.pipeline.ingested import recorded_corpus

    # text inputs are preprocessed as the table's corpus records (phrase_filter.input_sentences)
    phrases = (source_phrases(filter_to, max_phrase_length or DEFAULT_MAX_PHRASE_LENGTH, recorded_corpus(table_dir))
               if filter_to else None)
    given = [table_dir, *([moses_ini] if moses_ini is not None else []), *([lm] if lm is not None else []),
             *filter_to]
    with atomic_output_dir(out_dir, stage="export", inputs=given) as tmp:
        result = export_moses(table_dir, tmp / TABLE_NAME, config, executor=executor,
                              tmp_dir=out_dir.parent / f".{out_dir.name}.runs-{os.getpid()}", phrases=phrases)
        names = [s["name"] for s in result["scores"]]
        report: dict[str, Any] = {
            "stage": "export",
            "table": str(out_dir / TABLE_NAME),
            "rows": result["rows"],
            "scores": result["scores"],
            "clipped": result["clipped"],
            "clipped_total": result["clipped_total"],
            "precision": config.precision,
            "sorter": config.sorter,
            "parts": result["parts"],
            "runs": result["runs"],
        }
        if phrases is not None:
            report["filtered_to"] = {"inputs": [str(p) for p in filter_to], "input_phrases": len(phrases),
                                     "max_phrase_length": max_phrase_length or DEFAULT_MAX_PHRASE_LENGTH}
        if ini_text is None and lm_model is not None:
            table_path = str(out_dir.resolve() / TABLE_NAME)
            text, table_weights = new_moses_ini(table_path, result["scores"], *lm_model,
                                                initial_weight=initial_weight, weights=weights)
            (tmp / "moses.ini").write_text(text, encoding="utf-8")
            report["moses_ini"] = {"path": str(out_dir / "moses.ini"), "feature": "TranslationModel0",
                                   "type": "PhraseDictionaryMemory", "num_features": [0, len(names)],
                                   "added": names, "new": True, "table_path": table_path, "binarise": None,
                                   "weights": table_weights}
        if ini_text is not None:
            update = update_moses_ini(ini_text, table_path=str(out_dir.resolve() / TABLE_NAME), score_names=names,
                                      name=feature, initial_weight=initial_weight, weights=weights,
                                      source=str(moses_ini),
                                      penalties=[s["name"] for s in result["scores"] if s.get("penalty")])
            text = set_language_model(update.text, *lm_model) if lm_model is not None else update.text
            (tmp / "moses.ini").write_text(text, encoding="utf-8")
            report["moses_ini"] = {"path": str(out_dir / "moses.ini"), "feature": update.feature,
                                   "type": update.feature_type, "num_features": [update.old_features,
                                                                                 update.new_features],
                                   "added": update.added, "weights": update.weights, "table_path": update.path,
                                   "binarise": update.binarise}
        seconds = time.perf_counter() - started
        report["seconds"] = round(seconds, 3)
        report["rows_per_second"] = round(result["rows"] / seconds, 1) if seconds else None
        write_json_atomic(tmp / REPORT_NAME, report)
    inputs = given
    write_manifest(out_dir, stage="export", inputs=inputs,
                   config=config.to_dict() | {"feature": feature, "initial_weight": initial_weight,
                                              "filter_to": [str(p) for p in filter_to],
                                              "weights": dict(weights or {})},
                   counts={"rows": report["rows"], "clipped_total": report["clipped_total"]})
    return report
