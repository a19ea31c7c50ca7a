"""Data selection end to end: precision on the demo data, exact and partition-independent cuts,
sweep, outputs, regeneration, the scoring variants (single out-of-domain model, in-domain score,
sentence normalisation) against their formulas, and one-line errors. Real lmplz models, real Dask
workers."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import kenlm
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xxhash

from rnnenc.pipeline import dedup, selection
from rnnenc.pipeline.artifacts import MANIFEST_NAME, REPORT_NAME
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.executor import SERIAL
from rnnenc.pipeline.ingested import open_corpus
from rnnenc.pipeline.select import SelectConfig, regenerate, run_selection
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows import cli
from rnnenc.workflows.cluster import DaskExecutor

# The demo text separates words by spaces except punctuation: enough of a tokeniser here.
_TOKEN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?|\S")


def _tokenise(line: str) -> str:
    return " ".join(_TOKEN.findall(line))


def write_corpus(src: Path, tgt: Path, out: Path, parts: int, name: str = "pool", raw: bool = True) -> Path:
    """A corpus directory in the format of `rnnenc ingest` (CONTRIBUTING.md, "Corpus"); without
    ``raw``, as rnnenc wrote it before it kept the original text (no source_raw/target_raw)."""
    raw_en, raw_fr = src.read_text().splitlines(), tgt.read_text().splitlines()
    en = [_tokenise(line) for line in raw_en]
    fr = [_tokenise(line) for line in raw_fr]
    out.mkdir(parents=True)
    step = -(-len(en) // parts)
    for i in range(parts):
        rows = slice(i * step, (i + 1) * step)
        table = pa.table({
            "source": en[rows], "target": fr[rows],
            "source_tokens": pa.array([len(s.split()) for s in en[rows]], pa.int32()),
            "target_tokens": pa.array([len(t.split()) for t in fr[rows]], pa.int32()),
            "corpus": [name] * len(en[rows]),
            "line": pa.array(range(i * step + 1, i * step + 1 + len(en[rows])), pa.int64())})
        if raw:
            table = table.append_column("source_raw", pa.array(raw_en[rows])).append_column(
                "target_raw", pa.array(raw_fr[rows]))
        pq.write_table(table, out / f"part-{i:05d}.parquet")
    (out / REPORT_NAME).write_text(json.dumps({"corpora": {name: {"lines_read": len(en)}}}))
    (out / MANIFEST_NAME).write_text(json.dumps({"stage": "ingest",
                                                   "config": {"source_lang": "en", "target_lang": "fr"}}))
    return out


def read_dir(path: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(path.glob("part-*.parquet"))])


def hashes(out: Path) -> dict[str, str]:
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    return {o["path"]: o["hash"] for o in manifest["outputs"]
            if o["path"].startswith(("selected", "scores", "input_scores"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict[str, Path]:
    """A 3,000-pair pool (10 % in-domain) as 1 and as 7 partitions, and an in-domain corpus."""
    root = tmp_path_factory.mktemp("small")
    files = generate_demo(root / "demo", DemoConfig(seed=11, pool_size=3000, in_domain_size=1000, dev_size=300,
                                                    phrase_table_pairs=100))
    return {"pool1": write_corpus(files.pool_src, files.pool_tgt, root / "pool1", 1),
            "pool7": write_corpus(files.pool_src, files.pool_tgt, root / "pool7", 7),
            "in_domain": write_corpus(files.in_domain_src, files.in_domain_tgt, root / "in_domain", 1, "in"),
            "dev": files.dev_src.with_suffix(""), "root": root}


def test_axelrod_precision_beats_random_and_moore_lewis(tmp_path):
    files = generate_demo(tmp_path / "demo", DemoConfig(seed=5, pool_size=20000, in_domain_size=3000,
                                                        dev_size=100, phrase_table_pairs=100))
    pool = write_corpus(files.pool_src, files.pool_tgt, tmp_path / "pool", 4)
    in_domain = write_corpus(files.in_domain_src, files.in_domain_tgt, tmp_path / "in_domain", 1, "in")
    truth = np.array([int(x) for x in files.pool_in_domain.read_text().split()], dtype=np.int8)
    n_true = int(truth.sum())

    def precision(method: str) -> float:
        out = tmp_path / method
        run_selection(SelectConfig(pool=str(pool), in_domain=str(in_domain), mode="pairs", amount=str(n_true),
                                   method=method), out, SERIAL)
        lines = read_dir(out / "selected")["line"].to_numpy()
        assert len(lines) == n_true
        return float(truth[lines - 1].mean())

    axelrod, moore_lewis = precision("axelrod"), precision("moore-lewis")
    random_lines = np.array(random.Random(0).sample(range(1, len(truth) + 1), n_true))
    random_precision = float(truth[random_lines - 1].mean())
    assert axelrod >= 0.9, (axelrod, moore_lewis, random_precision)
    assert axelrod > moore_lewis > random_precision + 0.5


def test_cut_is_exact_with_ties_and_duplicates(tmp_path):
    """The histogram search finds the same prefix as sorting everything, whatever the ties."""
    rng = np.random.default_rng(0)
    n = 5000
    scores = rng.choice([-1.5, -0.25, 0.0, 0.5, 2.0], size=n)  # heavy score ties
    tiebreak = rng.integers(0, 40, size=n).astype(np.uint64)  # heavy hash ties too (duplicates)
    tokens = rng.integers(0, 30, size=n).astype(np.int32)
    parts = []
    for i, rows in enumerate(np.array_split(np.arange(n), 6)):
        path = tmp_path / f"part-{i:05d}.parquet"
        pq.write_table(pa.table({"corpus": ["c"] * len(rows), "line": pa.array(rows + 1, pa.int64()),
                                 "key": selection.sortable_key(scores[rows]), "tiebreak": tiebreak[rows],
                                 "source_tokens": tokens[rows], "target_tokens": tokens[rows]}), path)
        parts.append(str(path))
    order = sorted(range(n), key=lambda i: (scores[i], int(tiebreak[i]), "c", i + 1))
    for weight, budget in (("pairs", 1234), ("pairs", 0), ("source_tokens", 40000), ("source_tokens", 7)):
        w = np.ones(n, dtype=np.int64) if weight == "pairs" else tokens.astype(np.int64)
        cumulative = np.cumsum(w[order])
        expected = set(np.array(order)[: int(np.searchsorted(cumulative, budget, side="right"))].tolist())
        for max_candidates in (10, 100_000):
            cut = selection.find_cut(parts, budget, weight, int(w.sum()), SERIAL,
                                     max_candidates=max_candidates)
            kept = set()
            for part in parts:
                table = pq.read_table(part)
                kept |= set((table["line"].to_numpy()[selection.keep_mask(table, cut)] - 1).tolist())
            assert kept == expected, (weight, budget, max_candidates)
            assert cut.pairs == len(expected)
            if max_candidates == 10:
                assert cut.rounds > 2  # the small limit forced the narrowing rounds (and the hash level)
            # the first round as scoring counts it: the same cut, one pass fewer
            histograms = []
            for part in parts:
                table = pq.read_table(part)
                histograms.append(selection.first_round_histogram(
                    np.asarray(table["key"]), {side: np.asarray(table[f"{side}_tokens"], dtype=np.int64)
                                               for side in ("source", "target")}))
            fused = selection.find_cut(parts, budget, weight, int(w.sum()), SERIAL, max_candidates=max_candidates,
                                       first_round=selection.merge_first_rounds(histograms, weight))
            assert fused.first_excluded == cut.first_excluded and fused.pairs == cut.pairs
            if cut.first_excluded is not None:
                assert fused.rounds == cut.rounds - 1



def test_arrow_hashes_and_byte_scoring_equal_the_python_ones(tmp_path):
    """score_partition hashes the UTF-8 bytes it hands kenlm: the same tiebreaks,
    folds and cross-entropies as from Python strings, non-ASCII, empty and odd text included."""
    source = ["la maison", "", "été à l'œuvre", "日本語 の 文", "a\tb", "emoji 🙂 ok", "the"]
    target = ["the house", "x", "", "japanese text", "tab", "🙂", "le"]
    expected = np.array([xxhash.xxh3_64_intdigest(f"{s}\t{t}".encode()) for s, t in zip(source, target, strict=True)],
                        dtype=np.uint64)
    assert (dedup.pair_hash(source, target) == expected).all()
    assert (dedup.pair_hash(pa.chunked_array([source[:3], source[3:]]), pa.chunked_array([target])) == expected).all()
    as_bytes = [s.encode() for s in source], [t.encode() for t in target]
    assert (dedup.pair_hash(*as_bytes) == expected).all()  # the bytes score_partition hands kenlm
    with pytest.raises(ValueError, match="7 sources but 6 targets"):
        dedup.pair_hash(as_bytes[0], as_bytes[1][:-1])
    with_null = pa.chunked_array([[*source[:-1], None]])  # never written by ingest: the Python spelling
    assert (dedup.pair_hash(with_null, pa.chunked_array([target]))
            == dedup.pair_hash([*source[:-1], None], target)).all()

    corpus = ["pool", "pool", "in:été", "pool", "c", "c", "c"]
    line = [1, 2, 3, 10**12, 7, 2**62, 5]
    for seed in (0, 1, 2**63):
        u_list, fold_list = selection.folds(seed, corpus, line)
        u_arrow, fold_arrow = selection.folds(seed, pa.chunked_array([corpus]), pa.chunked_array([line], pa.int64()))
        assert (u_list == u_arrow).all() and (fold_list == fold_arrow).all()

    arpa = tmp_path / "tiny.arpa"
    words = {"<unk>": -2.0, "<s>": -99.0, "</s>": -0.7, "la": -0.9, "maison": -1.1, "été": -1.3, "à": -1.2,
             "日本語": -1.7, "🙂": -1.9}
    arpa.write_text(f"\\data\\\nngram 1={len(words)}\nngram 2=2\n\n\\1-grams:\n"
                    + "".join(f"{p}\t{w}\t-0.3\n" for w, p in words.items())
                    + "\n\\2-grams:\n-0.2\tla maison\n-0.4\tété à\n\n\\end\\\n", encoding="utf-8")
    model = kenlm.Model(str(arpa))
    lengths = [len(s.split()) for s in source]
    for normalise in selection.NORMALISATIONS:
        from_str = selection.cross_entropies(model, source, lengths, normalise)
        from_bytes = selection.cross_entropies(model, [s.encode() for s in source], lengths, normalise)
        assert from_str.tobytes() == from_bytes.tobytes()
    assert model.score("été 日本語") == model.score("été 日本語".encode()) != model.score("<unk> <unk>")


def test_scoring_reads_the_folds_the_sampling_drew_and_they_are_the_folds_it_would_draw(small, tmp_path,
                                                                                       monkeypatch):
    """With trained cross-fit models the sampling pass keeps each part's folds and scoring reads
    them instead of drawing them again: the score parts are those of folds drawn while scoring
    (given models, or no folds file), byte for byte; a folds file of another part is refused."""
    read = []
    real_read = selection._read_folds
    monkeypatch.setattr(selection, "_read_folds", lambda path, rows: read.append(path) or real_read(path, rows))
    out = tmp_path / "trained"
    run_selection(SelectConfig(pool=str(small["pool7"]), in_domain=str(small["in_domain"]), mode="pairs",
                               amount="100"), out, SERIAL)
    pool = open_corpus(str(small["pool7"]))
    assert len(read) == len(pool.parts) == 7
    lms = {lang: str(out / "lm" / f"in.{lang}.binary") for lang in ("en", "fr")}
    outs = {lang: f"{out / 'lm' / f'out.fold0.{lang}.binary'},{out / 'lm' / f'out.fold1.{lang}.binary'}"
            for lang in ("en", "fr")}
    given = tmp_path / "given"
    run_selection(SelectConfig(pool=str(small["pool7"]), in_domain=str(small["in_domain"]), mode="pairs",
                               amount="100", in_lms=lms, out_lms=outs), given, SERIAL)
    assert len(read) == 7  # no sampling pass, so the folds were drawn while scoring
    for part in pool.parts:
        name = Path(part).name
        assert (given / "scores" / name).read_bytes() == (out / "scores" / name).read_bytes(), name

    models = [selection.SideModels(side, lms[lang], tuple(outs[lang].split(",")))
              for side, lang in (("source", "en"), ("target", "fr"))]
    prefix = str(tmp_path / "sample")
    selection.sample_partition((pool.parts[0], prefix), sides=("source",), samples={"fold0": (0.0, 0.1)}, seed=1,
                               keep_folds=True)
    drawn, kept = tmp_path / "drawn.parquet", tmp_path / "kept.parquet"
    selection.score_partition((pool.parts[0], str(drawn)), models=models, seed=1)
    selection.score_partition((pool.parts[0], str(kept), selection.folds_file(prefix)), models=models, seed=1)
    assert drawn.read_bytes() == kept.read_bytes() == (out / "scores" / Path(pool.parts[0]).name).read_bytes()
    selection.sample_partition((pool.parts[-1], prefix), sides=("source",), samples={"fold0": (0.0, 0.1)}, seed=1,
                               keep_folds=True)
    assert pq.ParquetFile(pool.parts[-1]).metadata.num_rows != pq.ParquetFile(pool.parts[0]).metadata.num_rows
    with pytest.raises(ValueError, match="folds for a part of 429 pairs"):
        selection.score_partition((pool.parts[0], str(kept), selection.folds_file(prefix)), models=models, seed=1)


@pytest.mark.determinism
def test_small_parts_share_tasks_and_give_the_bytes_of_a_task_per_part(small, tmp_path, dask_client, monkeypatch):
    """A small pool's parts run several to a task on the cluster (one task per worker here) in
    every per-part pass, cut rounds included; a part per task gives the very same files."""
    tasks: dict[str, list[int]] = {}

    class Recording(DaskExecutor):
        def map(self, func, items, **kwargs):
            items = list(items)
            tasks.setdefault(kwargs.get("desc", ""), []).append(len(items))
            return super().map(func, items, **kwargs)

    mapper = Recording(dask_client, quiet=True)
    # no candidate gathered before the last round: the cut search makes rounds of its own
    cfg = SelectConfig(pool=str(small["pool7"]), in_domain=str(small["in_domain"]), mode="words", amount="3k",
                       max_candidates=0)
    run_selection(cfg, tmp_path / "grouped", mapper)
    grouped = dict(tasks)
    workers = min(7, mapper.workers)
    for desc in ("sampling the pool", "scoring", "cut search, round 1", "cut search, candidates",
                 "writing the selection"):
        assert grouped.get(desc) == [workers], (desc, grouped)
    assert grouped["counting the pool"] == [7]
    tasks.clear()
    monkeypatch.setattr(selection, "MIN_TASK_PAIRS", 1)
    run_selection(cfg, tmp_path / "alone", mapper)
    assert tasks["scoring"] == tasks["writing the selection"] == tasks["cut search, candidates"] == [7]
    assert hashes(tmp_path / "grouped") == hashes(tmp_path / "alone")
    assert len(hashes(tmp_path / "alone")) >= 16


@pytest.mark.determinism
def test_same_bytes_for_any_partitioning_and_workers(small, tmp_path, dask_client):
    cfg = dict(in_domain=str(small["in_domain"]), mode="words", amount="3k", max_candidates=50, hf_dataset=True)
    serial = run_selection(SelectConfig(pool=str(small["pool1"]), **cfg), tmp_path / "serial",
                           SERIAL)
    mapper = DaskExecutor(dask_client, quiet=True)
    cluster = run_selection(SelectConfig(pool=str(small["pool1"]), **cfg), tmp_path / "cluster", mapper)
    seven = run_selection(SelectConfig(pool=str(small["pool7"]), **cfg), tmp_path / "seven", mapper)
    # 1 worker vs 2: every selected/scores file byte-identical.
    assert hashes(tmp_path / "serial") == hashes(tmp_path / "cluster")
    assert {"selected.raw.en", "selected.raw.fr", "input_scores/pool.txt"} <= set(hashes(tmp_path / "serial"))
    # 1 partition vs 7: the same text files (tokenised, raw, input-aligned scores), and the same
    # rows in the same order.
    for name in ("selected.en", "selected.fr", "selected.raw.en", "selected.raw.fr", "input_scores/pool.txt"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "seven" / name).read_bytes(), name
    assert read_dir(tmp_path / "serial" / "selected").equals(read_dir(tmp_path / "seven" / "selected"))
    assert len(list((tmp_path / "seven" / "selected").glob("part-*.parquet"))) == 7
    # The word budget is met by the longest prefix of the score order.
    counts = serial["counts"]
    assert counts["selected_source_tokens"] <= 3000
    scores = read_dir(tmp_path / "serial" / "scores")
    assert scores.num_rows == counts["pool_pairs"] == 3000
    selected = read_dir(tmp_path / "serial" / "selected")
    assert selected["score"].to_numpy().max() <= scores["score"].to_numpy()[
        ~np.isin(scores["line"].to_numpy(), selected["line"].to_numpy())].min()
    assert (tmp_path / "serial" / "selected.en").read_text().count("\n") == counts["selected_pairs"]
    assert seven["counts"] == cluster["counts"] == counts
    import datasets

    hf = datasets.load_from_disk(str(tmp_path / "serial" / "hf"))
    assert hf.num_rows == counts["selected_pairs"]
    assert hf[0]["translation"] == {"en": selected["source_raw"][0].as_py(), "fr": selected["target_raw"][0].as_py()}
    report = json.loads((tmp_path / "serial" / REPORT_NAME).read_text())
    assert report["selected"]["pairs"] == counts["selected_pairs"] and report["out_domain_sample"]["fold0_pairs"] > 0


@pytest.mark.determinism
def test_regenerate_is_byte_identical_and_stops_on_changes(small, tmp_path, dask_client):
    pool = tmp_path / "pool"
    pool.mkdir()
    for file in small["pool7"].iterdir():
        (pool / file.name).write_bytes(file.read_bytes())
    out = tmp_path / "sel"
    run_selection(SelectConfig(pool=str(pool), in_domain=str(small["in_domain"]), mode="fraction", amount="0.15",
                               method="moore-lewis", lang="fr"), out, SERIAL)
    code = cli.main(["regenerate", str(out / MANIFEST_NAME), "--out", str(tmp_path / "again"),
                     "--scheduler", dask_client.scheduler.address, "--quiet"])
    assert code == 0
    assert hashes(out) == hashes(tmp_path / "again")
    # A selection by an rnnenc that wrote neither raw files nor input-aligned scores regenerates too.
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    manifest["outputs"] = [o for o in manifest["outputs"]
                           if not o["path"].startswith(("selected.raw.", "input_scores/"))]
    (out / MANIFEST_NAME).write_text(json.dumps(manifest))
    regenerate(out, tmp_path / "older", SERIAL)
    # A changed model is named...
    model = out / "lm" / "in.fr.binary"
    original = model.read_bytes()
    model.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(UserError, match="in.fr.binary: language model missing or changed"):
        regenerate(out, tmp_path / "third", SERIAL)
    model.write_bytes(original)
    # ...and so is a changed input.
    table = pq.read_table(pool / "part-00003.parquet")
    pq.write_table(table.slice(1), pool / "part-00003.parquet")
    with pytest.raises(UserError, match=f"inputs changed since the selection.*{pool}"):
        regenerate(out, tmp_path / "third", SERIAL)
    assert not (tmp_path / "third").exists()


def test_sweep_writes_curve_and_picks_a_small_in_domain_share(small, tmp_path):
    out = tmp_path / "sweep"
    manifest = run_selection(SelectConfig(pool=str(small["pool1"]), in_domain=str(small["in_domain"]), mode="sweep",
                                          dev=str(small["dev"]), sweep_grid=[0.05, 0.1, 0.2, 0.4, 0.8],
                                          sweep_refine=1, order=3), out, SERIAL)
    rows = (out / "sweep.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert header[:4] == ["pairs", "fraction", "source_tokens", "target_tokens"]
    points = [dict(zip(header, r.split(","), strict=True)) for r in rows[1:]]
    assert len(points) >= 5 and any(p["refined"] == "1" for p in points)
    chosen = [p for p in points if p["chosen"] == "1"]
    assert len(chosen) == 1
    best = min(points, key=lambda p: float(p["objective"]))
    assert chosen[0] is best and int(best["pairs"]) == manifest["counts"]["selected_pairs"]
    # 10 % of this pool is in-domain: adding general data beyond ~20 % only hurts dev perplexity.
    assert float(best["fraction"]) <= 0.2
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"


# (config overrides, the LM files the stage trains): each variant, and the default for its formula
VARIANTS = {
    "default": ({}, {"in.en", "in.fr", "out.fold0.en", "out.fold1.en", "out.fold0.fr", "out.fold1.fr"}),
    "single": ({"out_model": "single"}, {"in.en", "in.fr", "out.en", "out.fr"}),
    "in-domain": ({"score": "in-domain"}, {"in.en", "in.fr"}),
    "sentence": ({"normalise": "sentence"},
                 {"in.en", "in.fr", "out.fold0.en", "out.fold1.en", "out.fold0.fr", "out.fold1.fr"}),
    "ml-single-sentence": ({"method": "moore-lewis", "lang": "fr", "out_model": "single", "normalise": "sentence"},
                           {"in.fr", "out.fr"}),
}


def formula_scores(out: Path, pool: pa.Table, lines: list[int]) -> dict[int, float]:
    """The documented score of the pool's ``lines``, computed here with kenlm and the stage's LMs."""
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    cfg, models = manifest["config"], manifest["selection"]["lms"]["models"]
    sides = {manifest["selection"]["languages"][side]: side for side in ("source", "target")}
    rows = {line: i for i, line in enumerate(pool["line"].to_pylist())}
    expected = dict.fromkeys(lines, 0.0)
    for lang in manifest["selection"]["scored"]:
        record = models[lang]
        model_in = kenlm.Model(str(out / record["in"]["path"]))
        outs = [kenlm.Model(str(out / record[k]["path"])) for k in ("out_fold0", "out_fold1", "out")
                if k in record]
        for line in lines:
            sentence = pool[sides[lang]][rows[line]].as_py()
            n = len(sentence.split())
            # H(s) = -log10 p(s </s> | <s>), divided by n + 1 for the per-word normalisation
            length = n + 1 if cfg["normalise"] == "word" else 1
            h_in = -model_in.score(sentence, bos=True, eos=True) / length
            if not outs:
                expected[line] += h_in
            else:
                u = xxhash.xxh3_64_intdigest(f"{pool['corpus'][rows[line]].as_py()}\t{line}".encode(),
                                             seed=cfg["seed"]) / 2.0**64
                # cross-fit: a pair of fold f (u >= 0.5: fold 1) is scored by the other fold's model
                model_out = outs[0] if len(outs) == 1 else outs[1 - int(u >= 0.5)]
                expected[line] += h_in - (-model_out.score(sentence, bos=True, eos=True) / length)
    return expected


@pytest.mark.determinism
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_variant_scores_follow_their_formula_and_regenerate(variant, small, tmp_path, dask_client):
    overrides, trained = VARIANTS[variant]
    out = tmp_path / "sel"
    executor = DaskExecutor(dask_client, quiet=True)
    manifest = run_selection(SelectConfig(pool=str(small["pool7"]), in_domain=str(small["in_domain"]), mode="pairs",
                                          amount="300", **overrides), out, executor)
    assert {p.name.removesuffix(".binary") for p in (out / "lm").glob("*.binary")} == trained
    assert all(manifest["config"][k] == v for k, v in overrides.items())
    report = json.loads((out / REPORT_NAME).read_text())
    scores, pool = read_dir(out / "scores"), read_dir(small["pool7"])
    scored = manifest["selection"]["scored"]
    side_of = {"en": "source", "fr": "target"}
    assert [c for c in scores.column_names if c.startswith("h_")] == [
        f"h_{kind}_{side_of[lang]}" for lang in scored
        for kind in (("in",) if overrides.get("score") == "in-domain" else ("in", "out"))]
    assert ("fold" in scores.column_names) == (overrides.get("out_model", "cross-fit") == "cross-fit"
                                               and overrides.get("score") != "in-domain")
    lines = scores["line"].to_pylist()
    chosen = random.Random(variant).sample(lines, 6)
    if overrides.get("out_model") == "single":
        # the classic method scores the pairs of its own out-of-domain sample too
        assert report["out_domain_sample"]["sample_pairs"] > 0 and "fold0_pairs" not in report["out_domain_sample"]
        rate = report["out_domain_sample"]["rate"]
        drawn = [line for line in lines
                 if xxhash.xxh3_64_intdigest(f"pool\t{line}".encode(), seed=1) / 2.0**64 < rate]
        assert len(drawn) == report["out_domain_sample"]["sample_pairs"]
        chosen += drawn[:3]
    if overrides.get("score") == "in-domain":
        assert "out_domain_sample" not in report and "H_out" not in report["score"]
    expected = formula_scores(out, pool, chosen)
    got = dict(zip(lines, scores["score"].to_pylist(), strict=True))
    for line in chosen:
        assert got[line] == pytest.approx(expected[line], rel=1e-12, abs=1e-12), (variant, line)
    # the subset is the 300 best by that score
    selected = read_dir(out / "selected")
    assert selected.num_rows == 300
    rest = ~np.isin(scores["line"].to_numpy(), selected["line"].to_numpy())
    assert selected["score"].to_numpy().max() <= scores["score"].to_numpy()[rest].min()
    # regenerate reproduces the variant byte for byte, from the manifest alone
    code = cli.main(["regenerate", str(out / MANIFEST_NAME), "--out", str(tmp_path / "again"),
                     "--scheduler", dask_client.scheduler.address, "--quiet"])
    assert code == 0
    assert hashes(out) == hashes(tmp_path / "again")
    again = json.loads((tmp_path / "again" / MANIFEST_NAME).read_text())["config"]
    assert {k: again[k] for k in ("score", "out_model", "normalise")} == \
        {k: manifest["config"][k] for k in ("score", "out_model", "normalise")}


def test_default_score_columns_are_todays(small, tmp_path):
    """The default (cross-fit, difference, word) writes the columns it always wrote, in order."""
    out = tmp_path / "sel"
    run_selection(SelectConfig(pool=str(small["pool1"]), in_domain=str(small["in_domain"]), mode="pairs",
                               amount="10"), out, SERIAL)
    assert read_dir(out / "scores").column_names == [
        "corpus", "line", "score", "h_in_source", "h_out_source", "h_in_target", "h_out_target", "fold", "key",
        "tiebreak", "source_tokens", "target_tokens"]
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert set(manifest["selection"]["lms"]["models"]["en"]) == {"in", "out_fold0", "out_fold1"}


# --------------------------------------------------------------------------------------------
# The original text through selection, and scores aligned with the input files


def test_raw_text_hf_dataset_and_input_aligned_scores(tmp_path):
    """An ingested pool's original text comes out of selection as it went in (apostrophes and
    ampersands unescaped): in selected/, selected.raw.<lang> and the HF dataset; the
    input-aligned scores have one line per input line, -inf where ingest dropped the pair."""
    import datasets

    from rnnenc.pipeline.corpus import CorpusInput
    from rnnenc.pipeline.ingest import ingest
    from rnnenc.pipeline.preprocess import PreprocessConfig

    files = generate_demo(tmp_path / "demo", DemoConfig(seed=3, pool_size=400, in_domain_size=100, dev_size=20,
                                                        phrase_table_pairs=100))
    en, fr = files.pool_src.read_text().splitlines(), files.pool_tgt.read_text().splitlines()
    en[4], fr[4] = "Tom & Jerry's tasks are running.", "Il y a des tâches en cours d'exécution."
    en[7] = ""                      # empty side: dropped
    fr[9] = " ".join(["mot"] * 90)  # too long: dropped
    (tmp_path / "p.en").write_text("".join(f"{line}\n" for line in en))
    (tmp_path / "p.fr").write_text("".join(f"{line}\n" for line in fr))
    ingest(SERIAL, [CorpusInput("text", (str(tmp_path / "p.en"), str(tmp_path / "p.fr")), "p")], tmp_path / "pool",
           PreprocessConfig("en", "fr"), rows_per_part=150)
    ingest(SERIAL, [CorpusInput("text", (str(files.in_domain_src), str(files.in_domain_tgt)), "in")],
           tmp_path / "in", PreprocessConfig("en", "fr"))
    out = tmp_path / "sel"
    run_selection(SelectConfig(pool=str(tmp_path / "pool"), in_domain=str(tmp_path / "in"), mode="fraction",
                               amount="1.0", order=3, hf_dataset=True), out, SERIAL)
    selected = read_dir(out / "selected")
    lines = selected["line"].to_pylist()
    dropped = sorted(set(range(1, 401)) - set(lines))  # ours (8, 10) and the demo's own (length ratio)
    assert {8, 10} <= set(dropped) and lines == read_dir(tmp_path / "pool")["line"].to_pylist()
    row = lines.index(5)
    assert selected["target"][row].as_py() == "Il y a des tâches en cours d&apos; exécution ."
    assert selected["target_raw"][row].as_py().encode() == "Il y a des tâches en cours d'exécution.".encode()
    assert selected["source_raw"][row].as_py() == "Tom & Jerry's tasks are running."
    for lang, original in (("en", en), ("fr", fr)):
        text = (out / f"selected.raw.{lang}").read_bytes()
        assert text == "".join(f"{original[n - 1]}\n" for n in lines).encode()
        assert (out / f"selected.{lang}").read_text().count("\n") == len(lines)
    hf = datasets.load_from_disk(str(out / "hf"))
    assert hf.column_names == ["translation", "corpus", "line", "score"] and hf.num_rows == len(lines)
    assert hf[row]["translation"] == {"en": "Tom & Jerry's tasks are running.",
                                      "fr": "Il y a des tâches en cours d'exécution."}
    # One score per input line, in input order; -inf (never kept by mml-filter) where ingest dropped.
    aligned = (out / "input_scores" / "p.txt").read_text().splitlines()
    assert len(aligned) == len(en) == 400
    assert [n for n, value in enumerate(aligned, 1) if value == "-inf"] == dropped
    scores = read_dir(out / "scores")
    assert all(float(aligned[n - 1]) == -s for n, s in zip(scores["line"].to_pylist(), scores["score"].to_pylist(),
                                                            strict=True))
    report = json.loads((out / REPORT_NAME).read_text())
    assert report["raw_text"] is True
    assert report["input_scores"]["files"] == {"input_scores/p.txt": {"lines": 400, "scored": len(lines),
                                                                      "dropped": len(dropped)}}


def test_a_pool_without_raw_text_is_still_selectable(small, tmp_path):
    """A pool ingested before rnnenc kept the original text: selected without raw files (said in
    the report); --hf-dataset, a dataset of raw pairs, is refused in one line."""
    pool = tmp_path / "old"
    pool.mkdir()
    for part in small["pool1"].glob("part-*.parquet"):
        pq.write_table(pq.read_table(part).drop_columns(["source_raw", "target_raw"]), pool / part.name)
    (pool / MANIFEST_NAME).write_bytes((small["pool1"] / MANIFEST_NAME).read_bytes())  # no ingest report either
    cfg = dict(pool=str(pool), in_domain=str(small["in_domain"]), mode="pairs", amount="100")
    with pytest.raises(UserError, match=r"^--hf-dataset: the pool .*old holds no original text"):
        run_selection(SelectConfig(**cfg, hf_dataset=True), tmp_path / "hf", SERIAL)
    assert not (tmp_path / "hf").exists()
    run_selection(SelectConfig(**cfg), tmp_path / "sel", SERIAL)
    assert (tmp_path / "sel" / "selected.en").read_text().count("\n") == 100
    assert not list((tmp_path / "sel").glob("selected.raw.*")) and not (tmp_path / "sel" / "input_scores").exists()
    report = json.loads((tmp_path / "sel" / REPORT_NAME).read_text())
    assert report["raw_text"] is False and "no selected.raw.<lang> files" in report["raw_text_note"]
    assert report["input_scores"]["written"] is False and "no per-corpus line counts" in \
        report["input_scores"]["reason"]


def test_single_given_model_scores_as_cross_fit_with_that_model_on_both_folds(small, tmp_path):
    """With one given out-of-domain model, cross-fitting has nothing to choose: both agree."""
    first = tmp_path / "first"
    run_selection(SelectConfig(pool=str(small["pool1"]), in_domain=str(small["in_domain"]), mode="pairs",
                               amount="100", out_model="single"), first, SERIAL)
    models = {"in_lms": {lang: str(first / "lm" / f"in.{lang}.binary") for lang in ("en", "fr")},
              "out_lms": {lang: str(first / "lm" / f"out.{lang}.binary") for lang in ("en", "fr")}}
    for out_model in ("single", "cross-fit"):
        run_selection(SelectConfig(pool=str(small["pool1"]), in_domain=str(small["in_domain"]), mode="pairs",
                                   amount="100", out_model=out_model, **models), tmp_path / out_model, SERIAL)
    assert read_dir(tmp_path / "single" / "scores")["score"].equals(read_dir(first / "scores")["score"])
    assert read_dir(tmp_path / "cross-fit" / "scores")["score"].equals(read_dir(first / "scores")["score"])


def test_sweep_plot_names_its_objective(monkeypatch, tmp_path):
    """sweep.png says what is minimised: per side, and combined when there are two sides."""
    from matplotlib.figure import Figure

    shown: dict[str, object] = {}
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        ax = fig.axes[0]
        shown.update(title=ax.get_title(), ylabel=ax.get_ylabel(),
                     legend=[t.get_text() for t in ax.get_legend().get_texts()])
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    points = [selection.SweepPoint(n, n / 100, n * 10, n * 11, {"source": 50.0 + n, "target": 80.0 - n / 2}, False)
              for n in (10, 20, 40)]
    best = min(points, key=lambda p: p.objective)
    selection.write_sweep_curve(points, best, tmp_path / "s.csv", tmp_path / "s.png",
                                {"source": "en", "target": "fr"})
    assert "geometric mean of the en and fr dev perplexities" in shown["title"]
    assert "(ppl_en * ppl_fr)^(1/2)" in shown["title"]
    assert "dev perplexity" in shown["ylabel"]
    assert "objective: (ppl_en * ppl_fr)^(1/2)" in shown["legend"]
    assert any(t.startswith("chosen:") for t in shown["legend"])
    assert best.objective == pytest.approx(((50.0 + best.pairs) * (80.0 - best.pairs / 2)) ** 0.5)
    one = [selection.SweepPoint(p.pairs, p.fraction, p.source_tokens, p.target_tokens,
                                {"target": p.perplexity["target"]}, False) for p in points]
    selection.write_sweep_curve(one, one[-1], tmp_path / "t.csv", tmp_path / "t.png", {"target": "fr"})
    assert "dev perplexity of the fr LM trained on the top-k" in shown["title"]
    assert not any(t.startswith("objective") for t in shown["legend"])


def test_bad_input_gives_one_error_line(small, tmp_path, dask_client, capsys):
    (tmp_path / "empty.en").write_text("\n\n")
    (tmp_path / "empty.fr").write_text("\n")
    base = ["select", str(small["pool1"]), "--scheduler", dask_client.scheduler.address, "--quiet"]
    cases = [
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "a"), "--budget-pairs", "10",
          "--in-lm", f"en={tmp_path / 'missing.binary'}", "--out-lm", f"en={tmp_path / 'missing.binary'}",
          "--in-lm", f"fr={tmp_path / 'missing.binary'}", "--out-lm", f"fr={tmp_path / 'missing.binary'}"],
         "missing.binary: language model not found"),
        (["--in-domain", str(tmp_path / "empty"), "--out", str(tmp_path / "b"), "--budget-pairs", "10"],
         "empty.en: the 'en' side is empty"),
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "c"), "--budget-words", "10M"],
         "larger than the pool"),
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "d"), "--budget-pairs", "10",
          "--method", "moore-lewis", "--lang", "de"],
         "language 'de' is not in this corpus (en-fr)"),
        # options that would be silently ignored
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "e"), "--budget-pairs", "10",
          "--lang", "fr"], "--lang fr: only moore-lewis scores one language (axelrod scores both sides)"),
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "f"), "--budget-pairs", "10",
          "--budget-lang", "fr"], "--budget-lang fr: counts words, so it needs --budget-words (this selection is by pairs)"),
        # scoring variants that would ignore an option, or cannot use it
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "g"), "--budget-pairs", "10",
          "--score", "in-domain", "--out-lm", f"en={tmp_path / 'x.binary'}"],
         "--out-lm: --score in-domain uses no out-of-domain model"),
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "h"), "--budget-pairs", "10",
          "--score", "in-domain", "--out-model", "single"],
         "--out-model: --score in-domain uses no out-of-domain model"),
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "i"), "--budget-pairs", "10",
          "--score", "in-domain", "--seed", "3"], "--seed: --score in-domain uses no out-of-domain model"),
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "j"), "--budget-pairs", "10",
          "--out-model", "single", "--in-lm", f"en={tmp_path / 'x.binary'}",
          "--in-lm", f"fr={tmp_path / 'x.binary'}", "--out-lm", f"en={tmp_path / 'a.binary'},{tmp_path / 'b.binary'}",
          "--out-lm", f"fr={tmp_path / 'x.binary'}"],
         "--out-model single uses one out-of-domain model per language"),
        (["--in-domain", str(small["in_domain"]), "--out", str(tmp_path / "k"), "--budget-pairs", "10",
          "--out-model", "single", "--seed", "3", "--in-lm", f"en={tmp_path / 'x.binary'}",
          "--out-lm", f"en={tmp_path / 'x.binary'}"],
         "--seed 3: nothing is drawn (--out-model single with --out-lm)"),
    ]
    for args, message in cases:
        assert cli.main(base + args) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not any((tmp_path / d).exists() for d in "abcdefghijk")


# --------------------------------------------------------------------------------------------
# In-domain and dev sets preprocessed as the pool was


@pytest.fixture(scope="module")
def ingested(tmp_path_factory) -> dict[str, Path]:
    """A 600-pair demo pool and its 100-pair in-domain set, really ingested (lowercased, and
    cased), and the in-domain set as raw text (PREFIX.en, PREFIX.fr)."""
    from rnnenc.pipeline.corpus import CorpusInput
    from rnnenc.pipeline.ingest import ingest
    from rnnenc.pipeline.preprocess import PreprocessConfig

    root = tmp_path_factory.mktemp("ingested")
    files = generate_demo(root / "demo", DemoConfig(seed=7, pool_size=600, in_domain_size=100, dev_size=20,
                                                    phrase_table_pairs=100))
    out: dict[str, Path] = {"raw_in_domain": root / "in_domain_text"}
    for name, (src, tgt) in {"pool": (files.pool_src, files.pool_tgt),
                             "in_domain": (files.in_domain_src, files.in_domain_tgt)}.items():
        for lowercase in (True, False):
            key = f"{name}_{'lower' if lowercase else 'cased'}"
            ingest(SERIAL, [CorpusInput("text", (str(src), str(tgt)), name)], root / key,
                   PreprocessConfig("en", "fr", lowercase=lowercase, clean=False))
            out[key] = root / key
    for lang, path in (("en", files.in_domain_src), ("fr", files.in_domain_tgt)):
        Path(f"{out['raw_in_domain']}.{lang}").write_bytes(path.read_bytes())
    return out


def test_in_domain_corpus_preprocessed_otherwise_than_the_pool_is_refused_in_one_line(ingested, tmp_path):
    with pytest.raises(UserError) as error:
        run_selection(SelectConfig(pool=str(ingested["pool_lower"]), in_domain=str(ingested["in_domain_cased"]),
                                   mode="pairs", amount="10"), tmp_path / "sel", SERIAL)
    message = str(error.value)
    assert "\n" not in message
    assert message == (f"{ingested['in_domain_cased']}: preprocessed as lowercase=False but the pool "
                       f"{ingested['pool_lower']} as lowercase=True; ingest it with the pool's options")
    assert not (tmp_path / "sel").exists()
    # The dev set of a sweep too.
    with pytest.raises(UserError, match="preprocessed as lowercase=False"):
        run_selection(SelectConfig(pool=str(ingested["pool_lower"]), in_domain=str(ingested["in_domain_lower"]),
                                   dev=str(ingested["in_domain_cased"]), mode="sweep", sweep_grid=[0.5],
                                   sweep_refine=0, order=3), tmp_path / "sweep", SERIAL)


def test_plain_text_in_domain_set_is_preprocessed_as_the_pool_was(ingested, tmp_path):
    """Raw text given as --in-domain selects exactly what the same text ingested as the pool was
    selects (taken as it is, its untokenised and cased words would have missed the pool's)."""
    pool = open_corpus(ingested["pool_lower"])
    selection.export_side(ingested["raw_in_domain"], "en", tmp_path / "text.en", pool)
    selection.export_side(ingested["in_domain_lower"], "en", tmp_path / "corpus.en", pool)
    assert (tmp_path / "text.en").read_bytes() == (tmp_path / "corpus.en").read_bytes()
    raw = Path(f"{ingested['raw_in_domain']}.en").read_text().splitlines()
    assert (tmp_path / "text.en").read_text().splitlines() != raw
    for in_domain in ("raw_in_domain", "in_domain_lower"):
        run_selection(SelectConfig(pool=str(ingested["pool_lower"]), in_domain=str(ingested[in_domain]),
                                   mode="pairs", amount="100", order=3), tmp_path / in_domain, SERIAL)
    assert (tmp_path / "raw_in_domain" / "selected.en").read_bytes() == \
        (tmp_path / "in_domain_lower" / "selected.en").read_bytes()


def test_plain_text_is_truecased_with_the_pools_model(tmp_path):
    from rnnenc.pipeline.corpus import CorpusInput
    from rnnenc.pipeline.ingest import ingest
    from rnnenc.pipeline.preprocess import PreprocessConfig

    (tmp_path / "p.en").write_text("The cat sat on the mat.\nParis is big.\nWe like Paris.\nthe end.\n")
    (tmp_path / "p.fr").write_text("Le chat.\nParis est grand.\nNous aimons Paris.\nla fin.\n")
    config = PreprocessConfig("en", "fr", truecase=("en", "fr"), aggressive_dash_splits=True)
    ingest(SERIAL, [CorpusInput("text", (str(tmp_path / "p.en"), str(tmp_path / "p.fr")), "p")], tmp_path / "pool",
           config)
    (tmp_path / "t.en").write_text("The well-known cat.\n")
    selection.export_side(tmp_path / "t", "en", tmp_path / "out.en", open_corpus(tmp_path / "pool"))
    assert (tmp_path / "out.en").read_text() == "the well @-@ known cat .\n"
    # An in-domain corpus ingested with another truecase model is refused, naming the model.
    (tmp_path / "i.en").write_text("The cat.\nThe Cat is here.\n")
    (tmp_path / "i.fr").write_text("Le chat.\nLe chat est ici.\n")
    ingest(SERIAL, [CorpusInput("text", (str(tmp_path / "i.en"), str(tmp_path / "i.fr")), "i")], tmp_path / "in",
           config)
    with pytest.raises(UserError, match=r"preprocessed as _truecase-model\.en="):
        selection.export_side(tmp_path / "in", "en", tmp_path / "x.en", open_corpus(tmp_path / "pool"))
    # Ingested with the pool's models, it is accepted.
    ingest(SERIAL, [CorpusInput("text", (str(tmp_path / "i.en"), str(tmp_path / "i.fr")), "i")], tmp_path / "in2",
           config, truecase_models={lang: str(tmp_path / "pool" / f"_truecase-model.{lang}") for lang in ("en", "fr")})
    selection.export_side(tmp_path / "in2", "en", tmp_path / "y.en", open_corpus(tmp_path / "pool"))
