"""The select stage body: Moore-Lewis / Axelrod selection of a pool, on an executor.

Trains the in-domain and (for the score ``difference``) the out-of-domain KenLM models per
scored language, cross-fitted or single (``pipeline.selection`` gives the formulas), scores
every pool pair with the executor's tasks, finds the budget's cut (``pipeline.selection``),
optionally sweeps sizes against a dev set, and writes the selected subset, its scores, the
models and the manifest that ``rnnenc regenerate`` rebuilds it from. The command line is
``workflows.select``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kenlm

from rnnenc.pipeline import ingested, lm, selection
from rnnenc.pipeline.artifacts import (
    REPORT_NAME,
    atomic_output_dir,
    changed_inputs,
    file_hash,
    manifest_path,
    require_manifest,
    write_json_atomic,
    write_manifest,
)
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import Executor, map_grouped
from rnnenc.pipeline.selection import Cut, SideModels

log = logging.getLogger("rnnenc")

MODES = ("pairs", "words", "fraction", "threshold", "sweep")
DEFAULT_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass
class SelectConfig:
    """Everything that determines a selection (stored in the manifest's config)."""

    pool: str
    in_domain: str
    mode: str
    amount: str | None = None  # pairs/words: a count (348M); fraction: 0-1; threshold: a score
    method: str = "axelrod"
    score: str = "difference"  # or "in-domain" (H_in alone: no out-of-domain model)
    out_model: str = "cross-fit"  # or "single" (one out-of-domain model scores every pair)
    normalise: str = "word"  # or "sentence" (H not divided by the length)
    lang: str | None = None  # moore-lewis: the scored language (default: the pool's source)
    budget_lang: str | None = None  # words: the counted side (default: the pool's source)
    dev: str | None = None  # sweep: dev set (default: the in-domain set)
    sweep_grid: list[float] = field(default_factory=lambda: list(DEFAULT_GRID))
    sweep_refine: int = 3
    order: int = 4
    lm_memory: str = "1G"
    seed: int = 1  # of the out-of-domain samples and the folds
    in_lms: dict[str, str] = field(default_factory=dict)  # lang -> existing model (else trained)
    out_lms: dict[str, str] = field(default_factory=dict)
    hf_dataset: bool = False
    max_candidates: int = selection.MAX_CANDIDATES


def _spec_inputs(spec: str, langs: Sequence[str]) -> list[str]:
    path = Path(spec)
    return [str(path)] if path.is_dir() else [f"{spec}.{lang}" for lang in langs]


def _sample_prefix(work: Path, index: int) -> str:
    """Where ``sample_partition`` writes part ``index``'s samples (and its folds)."""
    return str(work / "sample" / f"part-{index:05d}")


def _texts(work: Path, name: str, count: int, side: str) -> list[Path]:
    return [work / name / f"part-{i:05d}.{side}" for i in range(count)]


def run_selection(cfg: SelectConfig, out: str | Path, executor: Executor) -> dict[str, Any]:
    """Run a whole selection into ``out`` (atomically) and return its manifest."""
    started = time.monotonic()
    for option, value, choices in (("--method", cfg.method, selection.METHODS),
                                   ("--score", cfg.score, selection.SCORES),
                                   ("--out-model", cfg.out_model, selection.OUT_MODELS),
                                   ("--normalise", cfg.normalise, selection.NORMALISATIONS)):
        if value not in choices:
            raise UserError(f"{option} {value}: unknown (choose from {', '.join(choices)})")
    with_out = cfg.score == "difference"
    if not with_out and cfg.out_lms:
        raise UserError(f"--out-lm {','.join(sorted(cfg.out_lms))}: --score in-domain uses no out-of-domain model")
    pool = ingested.open_corpus(cfg.pool)
    langs = {"source": pool.source_lang, "target": pool.target_lang}
    sides = (("source", "target") if cfg.method == "axelrod"
             else (pool.column(cfg.lang or pool.source_lang),))
    scored_langs = [langs[s] for s in sides]
    budget_side = pool.column(cfg.budget_lang or pool.source_lang)
    given = sorted(set(cfg.in_lms) | set(cfg.out_lms))
    if given:
        kinds = (("--in-lm", cfg.in_lms), ("--out-lm", cfg.out_lms))[:2 if with_out else 1]
        missing = [f"{kind} {lang}" for lang in scored_langs for kind, lms in kinds if lang not in lms]
        if missing:
            raise UserError(f"given language models must cover every scored language; missing: {', '.join(missing)}")
        out_paths = [p for v in cfg.out_lms.values() for p in _out_paths(v, cfg.out_model)]
        for path in [*cfg.in_lms.values(), *out_paths]:
            lm.check_model(path)
    lm_config = lm.LMConfig(order=cfg.order, memory=cfg.lm_memory)
    names = [Path(p).name for p in pool.parts]
    formula = selection.describe_score(cfg.score, cfg.out_model, cfg.normalise, scored_langs)
    raw_text = ingested.has_raw_text(pool.parts)
    if cfg.hf_dataset and not raw_text:
        raise UserError(f"--hf-dataset: the pool {pool.path} holds no original text (source_raw/target_raw: "
                        "ingested by an older rnnenc); ingest it again to get the dataset of raw pairs")
    report: dict[str, Any] = {"method": cfg.method, "languages": scored_langs, "score": formula, "timings_s": {},
                              "raw_text": raw_text}
    if not raw_text:
        report["raw_text_note"] = (f"{pool.path} holds no source_raw/target_raw columns (ingested by an older "
                                   "rnnenc): no selected.raw.<lang> files; ingest it again to get them")
        log.warning("select: %s", report["raw_text_note"])
    timings = report["timings_s"]

    def lap(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = round(now - since, 3)
        return now

    with atomic_output_dir(out, stage="select", inputs=[pool.path, *_spec_inputs(cfg.in_domain, scored_langs)]) as tmp:
        work, lm_dir = tmp / ".work", tmp / "lm"
        for directory in (work / "sample", work / "text", lm_dir, tmp / "scores", tmp / "selected"):
            directory.mkdir(parents=True)
        t = time.monotonic()
        counts = executor.map(selection.count_partition, pool.parts, desc="counting the pool")
        totals = _sum(counts)
        part_pairs = [c["pairs"] for c in counts]
        report["pool"] = totals
        if totals["pairs"] == 0:
            raise UserError(f"{pool.path}: the pool is empty")

        in_domain: dict[str, Any] = {}
        for side in sides:
            lang = langs[side]
            lines, tokens, vocab = selection.export_side(cfg.in_domain, lang, work / f"in_domain.{lang}", pool)
            selection.write_vocab(vocab, lm_dir / f"vocab.{lang}.txt")
            in_domain[lang] = {"lines": lines, "tokens": tokens, "vocabulary": len(vocab)}
        report["in_domain"] = in_domain
        t = lap("in_domain", t)

        if given:
            models = [SideModels(s, cfg.in_lms[langs[s]], _out_paths(cfg.out_lms[langs[s]], cfg.out_model)
                                 if with_out else ()) for s in sides]
            lm_records: dict[str, Any] = {"given": True}
        else:
            models, lm_records, sample = _train_language_models(
                cfg, pool, sides, langs, totals, part_pairs, in_domain, work, lm_dir, lm_config, executor)
            if sample is not None:
                report["out_domain_sample"] = sample
        report["lms"] = lm_records
        t = lap("language_models", t)

        score_parts = [str(tmp / "scores" / name) for name in names]
        # where this run's sampling pass drew the folds already (trained cross-fit models), scoring reads them
        folds = [path if Path(path).is_file() else None
                 for path in (selection.folds_file(_sample_prefix(work, i)) for i in range(len(names)))]
        scored = map_grouped(executor, selection.score_partition, list(zip(pool.parts, score_parts, folds, strict=True)),
                             part_pairs, floor=selection.MIN_TASK_PAIRS, desc="scoring", models=models, seed=cfg.seed,
                             normalise=cfg.normalise)
        t = lap("scoring", t)

        cut, sweep = _decide(cfg, pool, sides, langs, budget_side, totals, part_pairs, score_parts, work, lm_dir,
                             tmp, lm_config, executor, [r["first_round"] for r in scored])
        if sweep is not None:
            report["sweep"] = sweep
        t = lap("deciding", t)

        tasks = [(p, s, str(tmp / "selected" / name), str(work / "text" / f"part-{i:05d}"))
                 for i, (p, s, name) in enumerate(zip(pool.parts, score_parts, names, strict=True))]
        kept = _sum(map_grouped(executor, selection.keep_partition, tasks, part_pairs, floor=selection.MIN_TASK_PAIRS,
                                desc="writing the selection", cut=cut, raw_text=raw_text))
        for side, lang in langs.items():
            selection.concatenate(_texts(work, "text", len(pool.parts), side), tmp / f"selected.{lang}")
            if raw_text:
                selection.concatenate(_texts(work, "text", len(pool.parts), f"raw.{side}"),
                                      tmp / f"selected.raw.{lang}")
        if raw_text:
            report["raw_line_breaks_replaced"] = kept.pop("raw_line_breaks_replaced")
        report["input_scores"] = selection.write_input_scores(pool, score_parts, work, tmp, executor)
        if not report["input_scores"]["written"]:
            log.warning("select: no input-aligned scores: %s", report["input_scores"]["reason"])
        if cfg.hf_dataset:
            _save_hf(sorted((tmp / "selected").glob(ingested.PART_GLOB)), tmp / "hf", work, langs)
        shutil.rmtree(work)
        lap("writing", t)
        cut_record = cut.record() | {"pairs": kept["pairs"], "weight": kept[f"{budget_side}_tokens"]
                                     if cfg.mode == "words" else kept["pairs"]}
        report["selected"] = kept
        report["cut"] = cut_record
        report["timings_s"]["total"] = round(time.monotonic() - started, 3)
        write_json_atomic(tmp / REPORT_NAME, report)

    inputs = [pool.path, *_spec_inputs(cfg.in_domain, scored_langs)]
    if cfg.mode == "sweep" and cfg.dev:
        inputs += _spec_inputs(cfg.dev, scored_langs)
    inputs += [*cfg.in_lms.values(),
               *sorted({p for v in cfg.out_lms.values() for p in _out_paths(v, cfg.out_model)})]
    counts = {"pool_pairs": totals["pairs"], "selected_pairs": kept["pairs"],
              "selected_source_tokens": kept["source_tokens"], "selected_target_tokens": kept["target_tokens"],
              "pool_source_tokens": totals["source_tokens"], "pool_target_tokens": totals["target_tokens"]}
    return write_manifest(out, stage="select", inputs=inputs, config=dataclasses.asdict(cfg), counts=counts,
                          extra={"selection": {"cut": cut_record, "languages": langs, "scored": scored_langs,
                                               "lms": lm_records}})


def _train_language_models(cfg: SelectConfig, pool: ingested.Corpus, sides: Sequence[str], langs: dict[str, str],
                           totals: dict[str, int], part_pairs: list[int], in_domain: dict[str, Any], work: Path,
                           lm_dir: Path, lm_config: lm.LMConfig, executor: Executor
                           ) -> tuple[list[SideModels], dict[str, Any], dict[str, Any] | None]:
    """Per scored side: the in-domain model and, for the score ``difference``, the out-of-domain
    model(s) on seeded pool samples of about the in-domain size: one per fold (``cross-fit``: a
    pair is scored by the fold that did not see it) or one (``single``). Returns the models,
    their records for the manifest, and the samples' report (None: nothing was sampled)."""
    samples: dict[str, tuple[float, float]] = {}
    sample: dict[str, Any] | None = None
    if cfg.score == "difference":
        rate, samples = selection.out_domain_samples(cfg.out_model,
                                                     sum(in_domain[langs[s]]["tokens"] for s in sides),
                                                     sum(totals[f"{s}_tokens"] for s in sides))
        tasks = [(p, _sample_prefix(work, i)) for i, p in enumerate(pool.parts)]
        sample = {"rate": rate, "seed": cfg.seed} | _sum(map_grouped(
            executor, selection.sample_partition, tasks, part_pairs, floor=selection.MIN_TASK_PAIRS, desc="sampling the pool",
            sides=sides, samples=samples, seed=cfg.seed, keep_folds=cfg.out_model == "cross-fit"))
    models: list[SideModels] = []
    records: dict[str, Any] = {"given": False, "models": {}}
    for side in sides:
        lang = langs[side]
        vocab = lm_dir / f"vocab.{lang}.txt"
        trained_in = lm.train_lm([work / f"in_domain.{lang}"], lm_dir / f"in.{lang}.binary", lm_config, vocab)
        record = {"in": {"path": f"lm/in.{lang}.binary", "discount_fallback": trained_in.discount_fallback}}
        outs = []
        for name in samples:
            if sample[f"{name}_{side}_tokens"] == 0:
                raise UserError(f"{pool.path}: the out-of-domain sample ({name}) of the '{lang}' side is empty")
            # cross-fit: out.fold0/out.fold1 (records out_fold0/out_fold1); single: out
            stem = "out" if name == "sample" else f"out.{name}"
            trained_out = lm.train_lm(_texts(work, "sample", len(pool.parts), f"{name}.{side}"),
                                      lm_dir / f"{stem}.{lang}.binary", lm_config, vocab)
            outs.append(trained_out.path)
            record[stem.replace(".", "_")] = {"path": f"lm/{stem}.{lang}.binary",
                                              "discount_fallback": trained_out.discount_fallback}
        models.append(SideModels(side, trained_in.path, tuple(outs)))
        records["models"][lang] = record
    return models, records, sample


def _out_paths(paths: str, out_model: str) -> tuple[str, ...]:
    """``--out-lm LANG=PATH[,PATH]``: cross-fit: the models of folds 0 and 1 (one path: both);
    single: the one model."""
    parts = tuple(paths.split(","))
    if out_model == "single":
        if len(parts) != 1:
            raise UserError(f"--out-lm {paths}: --out-model single uses one out-of-domain model per language")
        return parts
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) != selection.FOLDS:
        raise UserError(f"--out-lm {paths}: give one model, or one per fold (A,B)")
    return parts


def _sum(results: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for result in results:
        for key, value in result.items():
            total[key] = total.get(key, 0) + value
    return total


def _decide(cfg: SelectConfig, pool: ingested.Corpus, sides: Sequence[str], langs: dict[str, str],
            budget_side: str, totals: dict[str, int], part_pairs: list[int], score_parts: list[str], work: Path,
            lm_dir: Path, out: Path, lm_config: lm.LMConfig, executor: Executor,
            first_rounds: Sequence[dict[str, Any]]) -> tuple[Cut, dict[str, Any] | None]:
    """The cut for the configured mode (and the sweep record when sweeping); ``first_rounds``
    are the score parts' first-round histograms (``score_partition``'s)."""
    merged: dict[str, tuple[Any, Any]] = {}

    def cut_for(budget: int, weight: str, total: int) -> Cut:
        if weight not in merged:
            merged[weight] = selection.merge_first_rounds(first_rounds, weight)
        return selection.find_cut(score_parts, budget, weight, total, executor, max_candidates=cfg.max_candidates,
                                  first_round=merged[weight], part_rows=part_pairs)

    if cfg.mode == "pairs":
        budget = selection.parse_count(_amount(cfg))
        if budget > totals["pairs"]:
            raise UserError(f"--budget-pairs {cfg.amount}: larger than the pool ({totals['pairs']} pairs)")
        return cut_for(budget, "pairs", totals["pairs"]), None
    if cfg.mode == "words":
        budget = selection.parse_count(_amount(cfg))
        total = totals[f"{budget_side}_tokens"]
        if budget > total:
            raise UserError(f"--budget-words {cfg.amount}: larger than the pool "
                            f"({total} words on the '{langs[budget_side]}' side)")
        return cut_for(budget, f"{budget_side}_tokens", total), None
    if cfg.mode == "fraction":
        try:
            fraction = float(_amount(cfg))
        except ValueError:
            fraction = math.nan
        if not 0.0 <= fraction <= 1.0:
            raise UserError(f"--fraction {cfg.amount}: not a number between 0 and 1")
        return cut_for(math.floor(fraction * totals["pairs"]), "pairs", totals["pairs"]), None
    if cfg.mode == "threshold":
        try:
            threshold = float(_amount(cfg))
        except ValueError:
            raise UserError(f"--threshold {cfg.amount}: not a number") from None
        return selection.threshold_cut(threshold), None
    if cfg.mode == "sweep":
        best, record = _sweep(cfg, pool, sides, langs, totals, part_pairs, score_parts, work, lm_dir, out,
                              lm_config, executor, cut_for)
        return cut_for(best, "pairs", totals["pairs"]), record
    raise UserError(f"unknown selection mode '{cfg.mode}' (choose from {', '.join(MODES)})")


def _amount(cfg: SelectConfig) -> str:
    if cfg.amount is None:
        raise UserError(f"selection mode '{cfg.mode}' needs an amount")
    return cfg.amount


def _sweep(cfg: SelectConfig, pool: ingested.Corpus, sides: Sequence[str], langs: dict[str, str],
           totals: dict[str, int], part_pairs: list[int], score_parts: list[str], work: Path, lm_dir: Path,
           out: Path, lm_config: lm.LMConfig, executor: Executor, cut_for) -> tuple[int, dict[str, Any]]:
    """XenC's method: dev perplexity of LMs trained on the top-k for a grid of k, refined at the minimum."""
    dev_spec = cfg.dev or cfg.in_domain
    dev_lines: dict[str, list[str]] = {}
    for side in sides:
        lang = langs[side]
        selection.export_side(dev_spec, lang, work / f"dev.{lang}", pool)
        dev_lines[side] = (work / f"dev.{lang}").read_text(encoding="utf-8").splitlines()
    points: dict[int, selection.SweepPoint] = {}

    def evaluate(n: int, refined: bool) -> None:
        cut = cut_for(n, "pairs", totals["pairs"])
        where = work / f"sweep-{n}"
        where.mkdir()
        tasks = [(p, s, None, str(where / f"part-{i:05d}")) for i, (p, s) in enumerate(zip(pool.parts, score_parts,
                                                                                             strict=True))]
        kept = _sum(map_grouped(executor, selection.keep_partition, tasks, part_pairs, floor=selection.MIN_TASK_PAIRS,
                                desc=f"sweep: top {n}", cut=cut, text_sides=sides))
        ppl = {}
        for side in sides:
            model_path = where / f"lm.{langs[side]}.binary"
            lm.train_lm(sorted(where.glob(f"part-*.{side}")), model_path, lm_config, lm_dir / f"vocab.{langs[side]}.txt")
            ppl[side] = lm.perplexity(kenlm.Model(str(model_path)), dev_lines[side])
        points[n] = selection.SweepPoint(n, n / totals["pairs"], kept["source_tokens"], kept["target_tokens"],
                                         ppl, refined)
        log.info("sweep: top %d pairs -> dev perplexity %s", n,
                 ", ".join(f"{langs[s]} {p:.2f}" for s, p in ppl.items()))
        shutil.rmtree(where)

    grid = selection.sweep_sizes(totals["pairs"], cfg.sweep_grid)
    for n in grid:
        evaluate(n, refined=False)
    best = min(points.values(), key=lambda p: (p.objective, p.pairs))
    for n in selection.refine_sizes(grid, best.pairs, cfg.sweep_refine):
        if n not in points:
            evaluate(n, refined=True)
    best = min(points.values(), key=lambda p: (p.objective, p.pairs))
    selection.write_sweep_curve(list(points.values()), best, out / "sweep.csv", out / "sweep.png",
                                {s: langs[s] for s in sides})
    return best.pairs, {"points": len(points), "best_pairs": best.pairs, "best_perplexity": best.objective}


def _save_hf(parts: list[Path], out: Path, work: Path, langs: dict[str, str]) -> None:
    """The selection as a Hugging Face dataset of raw pairs, in the shape of wmt14 and what
    translation trainers read: ``{"translation": {src: raw text, tgt: raw text}}``, with
    ``corpus``, ``line`` and ``score``; converted a part at a time."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rnnenc.pipeline.preprocess import RAW_COLUMNS

    converted = work / "hf-parts"
    converted.mkdir()
    files = []
    for i, part in enumerate(parts):
        table = pq.read_table(part, columns=[*RAW_COLUMNS.values(), "corpus", "line", "score"])
        pairs = pa.StructArray.from_arrays([table[RAW_COLUMNS[side]].combine_chunks() for side in langs],
                                           names=list(langs.values()))
        files.append(str(converted / f"part-{i:05d}.parquet"))
        pq.write_table(pa.table({"translation": pairs, "corpus": table["corpus"], "line": table["line"],
                                 "score": table["score"]}), files[-1])
    dataset = datasets.Dataset.from_parquet(files, cache_dir=str(work / "hf-cache"))
    dataset.save_to_disk(str(out))


# --------------------------------------------------------------------------------------------
# Regenerating a selection from its manifest (the command line is workflows.regenerate)

# Outputs that must come out byte-identical (hf/ holds fingerprints, the report timings).
COMPARED = ("selected/", "scores/", "selected.", f"{selection.INPUT_SCORES_DIR}/")
#: outputs an older rnnenc did not write: compared only when the manifest records them
NEWER_OUTPUTS = ("selected.raw.", f"{selection.INPUT_SCORES_DIR}/")


def _load(given: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(given)
    if path.is_dir():
        path = manifest_path(path)
    manifest = require_manifest(path)
    if manifest.get("stage") != "select":
        raise UserError(f"{path}: not the manifest of an 'rnnenc select' output (stage: {manifest.get('stage')})")
    return path, manifest


def regenerate(manifest_path: str | Path, out: str | Path, executor: Executor) -> dict[str, Any]:
    """Rebuild the subset described by ``manifest_path`` into ``out``; return the new manifest."""
    path, manifest = _load(manifest_path)
    changed = changed_inputs(manifest)
    if changed:
        raise UserError(f"{path}: inputs changed since the selection, not regenerating: {', '.join(changed)}")
    cfg = SelectConfig(**manifest["config"])
    root = path.parent
    lms = manifest["selection"]["lms"]
    if not lms.get("given"):
        recorded = {o["path"]: o["hash"] for o in manifest["outputs"]}
        for lang, models in lms["models"].items():
            for record in models.values():
                model = root / record["path"]
                if not model.is_file() or file_hash(model) != recorded.get(record["path"]):
                    raise UserError(f"{model}: language model missing or changed since the selection; "
                                    "cannot regenerate")
            cfg.in_lms[lang] = str(root / models["in"]["path"])
            outs = [str(root / models[name]["path"]) for name in ("out_fold0", "out_fold1", "out")
                    if name in models]
            if outs:  # none for --score in-domain
                cfg.out_lms[lang] = ",".join(outs)
    # Any mode keeps a prefix of the score order: the same number of pairs is the same subset.
    cfg = dataclasses.replace(cfg, mode="pairs", amount=str(manifest["counts"]["selected_pairs"]), dev=None)
    rebuilt = run_selection(cfg, out, executor)
    before = {o["path"]: o["hash"] for o in manifest["outputs"] if o["path"].startswith(COMPARED)}
    after = {o["path"]: o["hash"] for o in rebuilt["outputs"] if o["path"].startswith(COMPARED)}
    for prefix in NEWER_OUTPUTS:  # a selection by an older rnnenc, which did not write them
        if not any(path.startswith(prefix) for path in before):
            after = {path: digest for path, digest in after.items() if not path.startswith(prefix)}
    differ = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if differ:
        raise UserError(f"{out}: the rebuilt subset differs from {path} in: {', '.join(differ)}")
    if rebuilt["selection"]["cut"]["first_excluded"] != manifest["selection"]["cut"]["first_excluded"]:
        raise UserError(f"{out}: the rebuilt cut differs from the one recorded in {path}")
    return rebuilt
