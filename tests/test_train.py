"""Training: outputs, exact resumption after a kill, bad input, and learning on the demo data."""

from __future__ import annotations

import collections
import csv
import gzip
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from rnnenc.pipeline.artifacts import REPORT_NAME, read_manifest
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.model import EncoderDecoder, EncoderDecoderConfig, load_model, score_pairs
from rnnenc.pipeline.optim import ADADELTA_CHUNK, clip_and_adadelta_, make_clip_and_step
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.pipeline.train import (
    CHECKPOINT_FORMAT,
    STATE_TYPES,
    PairSampler,
    TrainConfig,
    TrainState,
    check_plain,
    draw_validation,
    save_checkpoint,
    train,
)
from rnnenc.pipeline.vocab import Vocabulary

TINY = dict(embedding=8, hidden=16, maxout=8, output_rank=8, threads=1, seed=7)
SRC_WORDS = "the a cat dog sat on mat red big small house".split()
TGT_WORDS = "le la chat chien assis sur tapis rouge grand petit maison".split()


def write_table(table: Path, pairs: list[tuple[str, str]], parts: int = 2) -> Path:
    """A Parquet phrase table in the project's schema (source, target, scores, line)."""
    table.mkdir(parents=True)
    bounds = np.linspace(0, len(pairs), parts + 1).astype(int)
    for k in range(parts):
        chunk = pairs[bounds[k]:bounds[k + 1]]
        pq.write_table(pa.table({
            "source": pa.array([s for s, _ in chunk], pa.string()),
            "target": pa.array([t for _, t in chunk], pa.string()),
            "score0": pa.array([0.5] * len(chunk), pa.float32()),
            "line": pa.array(range(bounds[k] + 1, bounds[k + 1] + 1), pa.int64()),
        }), table / f"part-{k:05d}.parquet")
    return table


def toy_pairs(n: int = 300, seed: int = 0) -> list[tuple[str, str]]:
    """Word-for-word 'translations' of random phrases, unique, plus one over-long pair."""
    rng = np.random.default_rng(seed)
    pairs = set()
    while len(pairs) < n:
        ids = rng.integers(0, len(SRC_WORDS), size=rng.integers(1, 5))
        pairs.add((" ".join(SRC_WORDS[i] for i in ids), " ".join(TGT_WORDS[i] for i in ids)))
    return sorted(pairs) + [(" ".join(["cat"] * 12), " ".join(["chat"] * 12))]


@pytest.fixture()
def toy(tmp_path: Path) -> dict[str, Path]:
    table = write_table(tmp_path / "table", toy_pairs())
    Vocabulary(SRC_WORDS, lang="en").save(tmp_path / "vocab.en.txt")
    Vocabulary(TGT_WORDS, lang="fr").save(tmp_path / "vocab.fr.txt")
    return {"table": table, "src": tmp_path / "vocab.en.txt", "tgt": tmp_path / "vocab.fr.txt",
            "cache": tmp_path / "cache"}


def run(toy: dict[str, Path], out: Path, config: TrainConfig, resume: bool = False) -> dict:
    return train(config, toy["table"], toy["src"], toy["tgt"], out, resume=resume, cache_dir=toy["cache"],
                 quiet=True)


def test_training_writes_every_output(toy, tmp_path):
    config = TrainConfig(updates=30, batch_size=16, max_length=10, valid_pairs=40, valid_every=10,
                         checkpoint_every=10, log_every=5, **TINY)
    report = run(toy, tmp_path / "out", config)
    out = tmp_path / "out"
    counts = report["counts"]
    assert counts["pairs"] == 301 and counts["pairs_too_long"] == 1 and counts["updates"] == 30
    assert counts["valid_pairs"] + counts["valid_pairs_too_long"] == 40
    assert counts["target_tokens_trained"] > 30 * 16
    assert report["device"] == "cpu"
    for name in ("model.pt", "checkpoints/last.pt", "checkpoints/best.pt", "learning_curve.png", REPORT_NAME):
        assert (out / name).is_file(), name
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [int(r["update"]) for r in rows if r["split"] == "valid"] == [10, 20, 30]
    assert [int(r["update"]) for r in rows if r["split"] == "train"] == [5, 10, 15, 20, 25, 30]
    manifest = read_manifest(out)
    assert manifest["stage"] == "train" and manifest["counts"]["updates"] == 30
    model, src_vocab, tgt_vocab = load_model(out / "model.pt")
    assert (model.config.hidden, len(src_vocab), tgt_vocab.lang) == (16, len(SRC_WORDS) + 3, "fr")
    # model.pt holds the best validated parameters
    best = min(rows, key=lambda r: (float(r["nll_per_token"]) if r["split"] == "valid" else math.inf))
    assert counts["best_update"] == int(best["update"])


def test_sampler_is_uniform_over_training_pairs_and_never_draws_validation():
    valid = draw_validation(1000, 100, seed=3)
    sampler = PairSampler(1000, valid, seed=3)
    train_rows = np.setdiff1d(np.arange(1000), valid)
    np.testing.assert_array_equal(sampler.to_table_index(np.arange(900)), train_rows)
    draws = np.concatenate([sampler.draw(k, 64) for k in range(1, 501)])
    assert not np.isin(draws, valid).any()
    hist = np.bincount(draws, minlength=1000)[train_rows]
    assert hist.min() > 10 and hist.max() < 70  # 32 expected per pair
    np.testing.assert_array_equal(sampler.draw(17, 64), PairSampler(1000, valid, seed=3).draw(17, 64))


def test_the_default_arrow_cache_is_removed_once_training_is_done(toy, tmp_path):
    config = TrainConfig(updates=4, batch_size=16, max_length=10, valid_pairs=10, valid_every=2,
                         checkpoint_every=2, log_every=2, **TINY)
    train(config, toy["table"], toy["src"], toy["tgt"], tmp_path / "out", quiet=True)
    assert (tmp_path / "out" / "model.pt").is_file() and not (tmp_path / "out.arrow-cache").exists()


@pytest.mark.determinism
def test_resume_after_a_kill_ends_with_the_same_parameters(toy, tmp_path):
    common = dict(updates=240, batch_size=16, max_length=10, valid_pairs=40, valid_every=30,
                  checkpoint_every=20, log_every=10, **TINY)
    run(toy, tmp_path / "straight", TrainConfig(**common))

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "rnnenc.workflows.cli", "train", "--phrase-table", str(toy["table"]),
           "--src-vocab", str(toy["src"]), "--tgt-vocab", str(toy["tgt"]), "--out", str(killed),
           "--cache-dir", str(toy["cache"]), "--quiet", "--updates", "240", "--batch-size", "16",
           "--max-length", "10", "--valid-pairs", "40", "--valid-every", "30", "--checkpoint-every", "20",
           "--embedding", "8", "--hidden", "16", "--maxout", "8", "--threads", "1", "--seed", "7"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, env=os.environ | {"PYTHONHASHSEED": "0"})
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    stopped_at = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)["state"]["update"]
    assert 0 < stopped_at < 240
    assert read_manifest(killed) is None  # an interrupted output is not trusted

    report = run(toy, killed, TrainConfig(**common), resume=True)
    assert report["counts"]["updates"] == 240
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=True)
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for key, state in a["optimizer"]["state"].items():
        for name, tensor in state.items():
            assert torch.equal(tensor, b["optimizer"]["state"][key][name]), name
    assert a["state"]["best_update"] == b["state"]["best_update"]
    rows = list(csv.DictReader(open(killed / "metrics.csv")))
    updates = [int(r["update"]) for r in rows if r["split"] == "train"]
    assert updates == list(range(10, 241, 10))  # rows after the checkpoint were replaced, not repeated
    assert read_manifest(killed)["counts"]["updates"] == 240


def test_bad_input_gives_clear_errors(toy, tmp_path):
    config = TrainConfig(updates=2, batch_size=4, valid_pairs=0, **TINY)
    empty = write_table(tmp_path / "empty", [], parts=1)
    with pytest.raises(UserError, match="the phrase table is empty"):
        train(config, empty, toy["src"], toy["tgt"], tmp_path / "o1", cache_dir=toy["cache"], quiet=True)
    with pytest.raises(UserError, match="no part-\\*.parquet"):
        train(config, tmp_path, toy["src"], toy["tgt"], tmp_path / "o2", cache_dir=toy["cache"], quiet=True)
    with pytest.raises(UserError, match="swapped"):
        train(config, toy["table"], toy["tgt"], toy["src"], tmp_path / "o3", cache_dir=toy["cache"], quiet=True)
    Vocabulary("un deux trois".split(), lang="xx").save(tmp_path / "vocab.xx.txt")
    with pytest.raises(UserError, match="vocab.xx.txt: covers only 0% of the target tokens"):
        train(config, toy["table"], toy["src"], tmp_path / "vocab.xx.txt", tmp_path / "o4",
              cache_dir=toy["cache"], quiet=True)
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        run(toy, tmp_path / "o5", config, resume=True)

    run(toy, tmp_path / "done", config)
    with pytest.raises(UserError, match="exists and is not empty"):
        run(toy, tmp_path / "done", config)
    with pytest.raises(UserError, match="another configuration"):
        run(toy, tmp_path / "done", TrainConfig(**(config.to_dict() | {"hidden": 32})), resume=True)
    last = tmp_path / "done" / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(UserError, match="last.pt: corrupt checkpoint"):
        run(toy, tmp_path / "done", TrainConfig(**(config.to_dict() | {"updates": 4})), resume=True)



class RunsOnUnpickle:
    """A pickle payload: unpickling it calls ``function(*args)`` (what a crafted last.pt does)."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def test_resume_never_unpickles_code_from_a_crafted_checkpoint(toy, tmp_path):
    """A last.pt whose unpickling runs a shell command or opens a file: refused before it runs,
    in every pickle form (torch's zip, raw pickle, protocol 2 and 5), with a one-line error."""
    config = TrainConfig(updates=2, batch_size=4, valid_pairs=0, checkpoint_every=1, **TINY)
    out = tmp_path / "out"
    run(toy, out, config)
    last = out / "checkpoints" / "last.pt"
    marker = tmp_path / "MARKER"
    shell = RunsOnUnpickle(os.system, f"touch {marker}")
    payloads = {
        "torch.save": lambda path: torch.save({"format": CHECKPOINT_FORMAT, "model": shell}, path),
        "pickle protocol 2": lambda path: path.write_bytes(pickle.dumps(shell, protocol=2)),
        "pickle protocol 5": lambda path: path.write_bytes(pickle.dumps(shell, protocol=5)),
        "builtins.open": lambda path: torch.save(RunsOnUnpickle(open, str(marker), "w"), path),
    }
    for name, write in payloads.items():
        write(last)
        with pytest.raises(UserError) as caught:
            run(toy, out, TrainConfig(**(config.to_dict() | {"updates": 4})), resume=True)
        message = str(caught.value)
        assert not marker.exists(), f"{name}: the checkpoint ran code"
        assert "\n" not in message and message.startswith(f"{last}: not an rnnenc training checkpoint"), \
            (name, message)

    # the command line: exit status 1, one line on stderr, nothing run
    proc = subprocess.run(
        [sys.executable, "-m", "rnnenc.workflows.cli", "train", "--phrase-table", str(toy["table"]),
         "--src-vocab", str(toy["src"]), "--tgt-vocab", str(toy["tgt"]), "--out", str(out),
         "--cache-dir", str(toy["cache"]), "--quiet", "--updates", "4", "--batch-size", "4", "--valid-pairs", "0",
         "--checkpoint-every", "1", "--embedding", "8", "--hidden", "16", "--maxout", "8", "--threads", "1",
         "--seed", "7", "--resume"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert not marker.exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"rnnenc: error: {last}: not an rnnenc training checkpoint"), \
        proc.stderr
    assert read_manifest(out)["counts"]["updates"] == 2  # a refused resume leaves the output as it was


def test_resume_rejects_checkpoints_without_the_expected_entries(toy, tmp_path):
    """Plain data that weights_only loads, but not this rnnenc's checkpoint: one-line errors, no KeyError."""
    config = TrainConfig(updates=2, batch_size=4, valid_pairs=0, checkpoint_every=1, **TINY)
    out = tmp_path / "out"
    run(toy, out, config)
    last = out / "checkpoints" / "last.pt"
    good = torch.load(last, weights_only=True)
    more = TrainConfig(**(config.to_dict() | {"updates": 4}))
    cases = {
        "not a dict": ([1, 2, 3], "not an rnnenc training checkpoint"),
        "another format": (good | {"format": "rnnenc-train-checkpoint-0"}, "incompatible version"),
        "no optimizer": ({k: v for k, v in good.items() if k != "optimizer"}, "optimizer missing"),
        "no update counter": (good | {"state": {k: v for k, v in good["state"].items() if k != "update"}},
                              "state.update missing"),
        "a string for the RNG": (good | {"torch_rng": "seed"}, "torch_rng missing"),
        "wrong tensor shapes": (good | {"model": {k: v[:1] for k, v in good["model"].items()}},
                                "not an rnnenc training checkpoint for this model"),
    }
    for name, (content, expected) in cases.items():
        torch.save(content, last)
        with pytest.raises(UserError) as caught:
            run(toy, out, more, resume=True)
        message = str(caught.value)
        assert message.startswith(f"{last}: ") and expected in message and "\n" not in message, (name, message)

    # the untouched checkpoint still resumes
    torch.save(good, last)
    assert run(toy, out, more, resume=True)["counts"]["updates"] == 4


def test_checkpoints_hold_only_what_weights_only_loads(tmp_path):
    """A numpy value in the training state fails the save, not a later --resume."""
    check_plain({"a": [1, 2.0, None, True, "x", (torch.zeros(2),)], "b": {"c": torch.ones(1)}})
    for bad in (np.zeros(2), np.int64(3), np.float64(0.5), Path("x")):
        with pytest.raises(TypeError, match="neither a tensor nor plain data"):
            save_checkpoint(tmp_path / "last.pt", {"format": CHECKPOINT_FORMAT, "state": {"seconds": bad}})
    assert not list(tmp_path.iterdir())  # nothing written


def test_train_state_is_saved_in_the_checkpoints_plain_form():
    """The typed state converts to the format's ``state`` entry (STATE_TYPES, window a 2-list) and back."""
    plain = TrainState().to_plain()
    assert plain == {"update": 0, "best_valid": None, "best_update": None, "bad_validations": 0,
                     "stopped_early": False, "draws_too_long": 0, "target_tokens": 0, "window": [0.0, 0],
                     "seconds": 0.0}
    assert list(plain) == list(STATE_TYPES)
    state = TrainState(update=5, best_valid=-1.5, best_update=4, bad_validations=1, stopped_early=True,
                       draws_too_long=2, target_tokens=90, window_nll=3.25, window_tokens=7, seconds=1.5)
    check_plain(state.to_plain())
    assert all(isinstance(state.to_plain()[k], kinds) for k, kinds in STATE_TYPES.items())
    assert TrainState.from_plain(state.to_plain()) == state


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + ties / 2)


def test_learns_the_demo_phrase_table(tmp_path):
    demo = generate_demo(tmp_path / "demo", DemoConfig(
        seed=5, pool_size=500, in_domain_size=100, dev_size=50, phrase_table_pairs=3000,
        general_concepts=100, in_domain_concepts=30, shared_concepts=30, one_side_concepts=10))
    with gzip.open(demo.phrase_table, "rt", encoding="utf-8") as handle:
        lines = [line.rstrip("\n").split(" ||| ") for line in handle]
    table = write_table(tmp_path / "table", [(f[0], f[1]) for f in lines], parts=3)
    src_count = collections.Counter(w for f in lines for w in f[0].split())
    tgt_count = collections.Counter(w for f in lines for w in f[1].split())
    Vocabulary([w for w, _ in src_count.most_common()], lang="en").save(tmp_path / "vocab.en.txt")
    Vocabulary([w for w, _ in tgt_count.most_common()], lang="fr").save(tmp_path / "vocab.fr.txt")
    # a small model: init std 0.1 instead of the paper's 0.01 (meant for 1000 units), else it
    # spends its first thousand updates on a plateau before using the source
    config = TrainConfig(updates=1500, valid_pairs=300, valid_every=250, checkpoint_every=1500, log_every=50,
                         embedding=32, hidden=64, maxout=64, output_rank=32, init_std=0.1, threads=1, seed=1)
    report = train(config, table, tmp_path / "vocab.en.txt", tmp_path / "vocab.fr.txt", tmp_path / "model",
                   cache_dir=tmp_path / "cache", quiet=True)

    # unigram model of target tokens (incl. </s>, add-one) from the training pairs, on the validation pairs
    valid = draw_validation(len(lines), 300, seed=1)
    counts = collections.Counter()
    for i in np.setdiff1d(np.arange(len(lines)), valid):
        counts.update(lines[i][1].split() + ["</s>"])
    total = sum(counts.values())
    valid_tokens = [w for i in valid for w in lines[i][1].split() + ["</s>"]]
    unigram_ppl = math.exp(-sum(math.log((counts[w] + 1) / (total + len(counts) + 1)) for w in valid_tokens)
                           / len(valid_tokens))
    model_ppl = report["counts"]["best_valid_perplexity"]
    assert model_ppl < unigram_ppl / 4, (model_ppl, unigram_ppl)

    # held-out true pairs against the same sources with corrupted targets (the targets of other
    # held-out true pairs, so a target-only model would score both sides alike: AUC 0.5)
    model, src_vocab, tgt_vocab = load_model(tmp_path / "model" / "model.pt")
    truth = [line.split("\t") for line in demo.phrase_table_truth.read_text(encoding="utf-8").splitlines()]
    assert [(t[0], t[1]) for t in truth] == [(f[0], f[1]) for f in lines]
    held_out_true = [i for i in valid if truth[i][2] == "1"]
    sources = [truth[i][0].split() for i in held_out_true]
    targets = [truth[i][1].split() for i in held_out_true]
    shift = np.roll(np.arange(len(targets)), 1)
    true_scores = score_pairs(model, sources, targets, src_vocab, tgt_vocab).numpy()
    corrupted = score_pairs(model, sources, [targets[j] for j in shift], src_vocab, tgt_vocab).numpy()
    auc = roc_auc(np.concatenate([true_scores, corrupted]),
                  np.concatenate([np.ones(len(true_scores)), np.zeros(len(corrupted))]))
    assert auc >= 0.9, auc
    # the table's own noisy pairs were trained on, so they separate less well; report it
    scores = score_pairs(model, [t[0].split() for t in truth], [t[1].split() for t in truth],
                         src_vocab, tgt_vocab).numpy()
    table_auc = roc_auc(scores, np.array([int(t[2]) for t in truth]))
    print(json.dumps({"held_out_auc": auc, "table_truth_auc": table_auc, "valid_ppl": model_ppl,
                      "unigram_ppl": unigram_ppl, "held_out_true_pairs": len(held_out_true)}))


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.determinism
@pytest.mark.parametrize("hidden, chunk", [(6, 7), (200, None)])
def test_chunked_clip_and_adadelta_is_torchs_bit_for_bit(hidden, chunk, two_threads):
    """Chunks that cut tensors (7 elements), and the default chunks on 2 threads over tensors
    large enough (120k elements) for torch to split each op between the threads."""
    torch.manual_seed(0)
    config = EncoderDecoderConfig(src_vocab_size=30, tgt_vocab_size=40, embedding=4, hidden=hidden, maxout=5,
                                  output_rank=3)
    models = [EncoderDecoder(config) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    optimizers = [torch.optim.Adadelta(m.parameters(), lr=1.0, rho=0.95, eps=1e-6) for m in models]
    for step in range(4):  # norms above and below the clipping threshold
        grads = [torch.randn_like(p) * (0.01 if step % 2 else 1.0) for p in models[0].parameters()]
        for name, grad in zip(dict(models[0].named_parameters()), grads, strict=True):
            if name.endswith("embed.weight"):  # rows no word of the batch touched
                grad[torch.randperm(len(grad))[: len(grad) // 2]] = 0
        for model in models:
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
        torch.nn.utils.clip_grad_norm_(list(models[0].parameters()), 1.0)
        optimizers[0].step()
        clip_and_adadelta_(list(models[1].parameters()), optimizers[1], 1.0, chunk=chunk or ADADELTA_CHUNK,
                           row_sparse=[models[1].src_embed.weight, models[1].tgt_embed.weight])
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    ref, got = optimizers[0].state_dict(), optimizers[1].state_dict()
    assert ref["param_groups"] == got["param_groups"]
    for i, state in ref["state"].items():
        for key, value in state.items():
            assert torch.equal(value, got["state"][i][key]), (i, key)


def _tiny_model_and_grads(seed: int = 0) -> tuple[list[EncoderDecoder], list[list[torch.Tensor]]]:
    torch.manual_seed(seed)
    config = EncoderDecoderConfig(src_vocab_size=30, tgt_vocab_size=40, embedding=4, hidden=6, maxout=5,
                                  output_rank=3)
    models = [EncoderDecoder(config) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    grads = [[torch.randn_like(p) * scale for p in models[0].parameters()] for scale in (1.0, 0.01, 1.0)]
    return models, grads


def _steps(model: EncoderDecoder, grads: list[list[torch.Tensor]], compile_step: bool) -> torch.optim.Optimizer:
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, eps=1e-6)
    step = make_clip_and_step(model, optimizer, TrainConfig(compile=compile_step))
    for update in grads:
        for p, g in zip(model.parameters(), update, strict=True):
            p.grad = g.clone()
        step()
    return optimizer


def test_compiled_clip_and_adadelta_matches_eager():
    models, grads = _tiny_model_and_grads()
    _steps(models[0], grads, compile_step=False)
    _steps(models[1], grads, compile_step=True)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_failed_compile_falls_back_to_eager_with_a_warning(tmp_path, monkeypatch, caplog):
    """A machine without a working C++ compiler (a real failure: the compiler path does not exist)."""
    import torch._inductor.config as inductor_config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled to reuse
    monkeypatch.setattr(inductor_config.cpp, "cxx", (str(tmp_path / "no-such-c++"),))
    models, grads = _tiny_model_and_grads(seed=1)
    reference = _steps(models[0], grads, compile_step=False)
    with caplog.at_level("WARNING", logger="rnnenc"):
        fallback = _steps(models[1], grads, compile_step=True)
    assert "torch.compile failed" in caplog.text
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)  # restored, then the eager step: as if never compiled
    for i, state in reference.state_dict()["state"].items():
        for key, value in state.items():
            assert torch.equal(value, fallback.state_dict()["state"][i][key]), (i, key)
