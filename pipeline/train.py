"""Training the encoder-decoder on a phrase table's unique pairs, as Cho et al. (2014) did.

``train`` runs four phases, one function each, over a typed loop state (``TrainState``):
``load_data`` (table, vocabularies, validation split, sampler), ``build_model`` (a new model,
or the checkpoint's to resume), ``run_loop`` (updates, validation, early stopping,
checkpoints, logging) and ``write_outputs`` (model.pt, metrics, report, manifest). The
optimizer step (clipping + Adadelta) is ``pipeline.optim``'s.

Data. The Parquet phrase table's ``source``/``target`` columns are opened as a ``datasets``
Dataset: an Arrow cache file, memory-mapped, read by random access. Update ``k`` draws its
pairs uniformly from ``numpy.random.default_rng([seed, k])``, so the sampler's whole state is
the update counter: 100M+ pairs train in bounded RAM, no shuffled copy, exact resumption.
Validation pairs are drawn once (``default_rng([seed, VALID_STREAM])``) and never trained on.
Pairs with more than ``max_length`` tokens on a side are skipped and counted: in the table
(one streaming pass at start), in the validation set and at each draw.

Optimisation. Adadelta (rho 0.95, eps 1e-6), gradient-norm clipping at 1 (GroundHog), loss =
summed token negative log-likelihood over the 64 pairs.

Outputs in ``out``: ``checkpoints/last.pt`` (every ``checkpoint_every`` updates and at the end,
atomic; tensors and plain data only, read back with ``weights_only=True``), ``checkpoints/best.pt``
(best validation), ``metrics.csv``, ``tensorboard/``, ``model.pt`` (the best validated
parameters, else the last), ``learning_curve.png``, ``_report.json`` and, last, ``_manifest.json``.
A resumed run replays exactly what the interrupted one would have done: on the CPU it ends with
bitwise the same parameters.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import io
import logging
import math
import os
import pickle
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from rnnenc.pipeline.artifacts import (
    REPORT_NAME,
    read_manifest,
    remove_manifest,
    write_json_atomic,
    write_manifest,
)
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.model import (
    Batch,
    EncoderDecoder,
    EncoderDecoderConfig,
    make_batch,
    resolve_device,
    save_model,
)
from rnnenc.pipeline.optim import make_clip_and_step
from rnnenc.pipeline.phrase_table import list_parts
from rnnenc.pipeline.progress import progress
from rnnenc.pipeline.train_config import TrainConfig
from rnnenc.pipeline.vocab import Vocabulary

log = logging.getLogger("rnnenc")

CHECKPOINT_FORMAT = "rnnenc-train-checkpoint-1"
VALID_STREAM = 2**32 - 1  # rng stream of the validation draw, apart from every update's stream
METRIC_FIELDS = ["update", "split", "nll_per_token", "perplexity", "tokens", "updates_per_s", "seconds"]
LAST_CHECKPOINT = Path("checkpoints", "last.pt")  # in the output directory
BEST_CHECKPOINT = Path("checkpoints", "best.pt")
VALID_BATCH = 256  # validation pairs per forward pass


@dataclass
class TrainState:
    """The loop's state: what a checkpoint needs, besides the model and optimizer, to resume.

    Saved as plain data (``to_plain``, whose entries and types are ``STATE_TYPES``): the
    checkpoint format predates this class and does not change with it.
    """

    update: int = 0  # updates done
    best_valid: float | None = None  # best validation log-likelihood per target token
    best_update: int | None = None  # the update that reached it (whose parameters are best.pt)
    bad_validations: int = 0  # validations since the last improvement
    stopped_early: bool = False
    draws_too_long: int = 0  # drawn pairs skipped for their length
    target_tokens: int = 0  # target tokens trained on
    # the training-loss row being summed: since the last one, as resumption must replay it
    window_nll: float = 0.0  # summed negative log-likelihood
    window_tokens: int = 0  # its target tokens
    seconds: float = 0.0  # training time up to the last checkpoint

    def record_validation(self, log_likelihood: float, update: int, patience: int) -> bool:
        """Count a validation result; True when it is the best so far.

        Args:
            log_likelihood: the validation log-likelihood per target token at ``update``.
            update: the update validated.
            patience: validations without improvement after which training stops; 0: never.
        """
        if self.best_valid is None or log_likelihood > self.best_valid:
            self.best_valid, self.best_update, self.bad_validations = log_likelihood, update, 0
            return True
        self.bad_validations += 1
        if patience and self.bad_validations >= patience:
            self.stopped_early = True
        return False

    def to_plain(self) -> dict[str, Any]:
        """The checkpoint's ``state`` entry: plain data, the window as ``[nll, tokens]``."""
        return {"update": self.update, "best_valid": self.best_valid, "best_update": self.best_update,
                "bad_validations": self.bad_validations, "stopped_early": self.stopped_early,
                "draws_too_long": self.draws_too_long, "target_tokens": self.target_tokens,
                "window": [self.window_nll, self.window_tokens], "seconds": self.seconds}

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> TrainState:
        """The state a checkpoint's ``state`` entry holds (its types checked by ``load_checkpoint``).

        Args:
            plain: what ``to_plain`` returned.
        """
        nll, tokens = plain["window"]
        return cls(update=plain["update"], best_valid=plain["best_valid"], best_update=plain["best_update"],
                   bad_validations=plain["bad_validations"], stopped_early=plain["stopped_early"],
                   draws_too_long=plain["draws_too_long"], target_tokens=plain["target_tokens"],
                   window_nll=nll, window_tokens=tokens, seconds=plain["seconds"])


def train(config: TrainConfig, phrase_table: str | os.PathLike, src_vocab_path: str | os.PathLike,
          tgt_vocab_path: str | os.PathLike, out: str | os.PathLike, *, resume: bool = False,
          cache_dir: str | os.PathLike | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train (or resume) a model; write the outputs into ``out``; return the report.

    Args:
        config: the run's configuration.
        phrase_table: the Parquet phrase table directory.
        src_vocab_path: the source vocabulary file.
        tgt_vocab_path: the target vocabulary file.
        out: the output directory: new or empty, or with ``resume`` one this function wrote.
        resume: continue from ``out/checkpoints/last.pt``.
        cache_dir: where the table's Arrow cache goes (default: ``out``.arrow-cache beside ``out``).
        quiet: no progress bar.

    Raises:
        UserError: bad configuration, input, output directory or checkpoint.
    """
    started = time.perf_counter()
    out = Path(out)
    config.check()
    resumed = read_resume_checkpoint(out, resume)  # before the table's pass: a bad file fails at once
    cache = Path(cache_dir or out.with_name(out.name + ".arrow-cache"))
    data = load_data(config, Path(phrase_table), Path(src_vocab_path), Path(tgt_vocab_path), cache)
    learner, state = build_model(config, data, resumed, out)
    rows = run_loop(config, data, learner, state, out, quiet=quiet)
    report = write_outputs(config, data, learner, state, rows, out, started)
    if cache_dir is None:  # the default cache is ours and only speeds up a resumed run: gone once done
        shutil.rmtree(cache, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------------
# phase 1: data


@dataclass
class TrainData:
    """The data phase's result: the table, its vocabularies, the validation set and the sampler."""

    table: Path
    src_vocab_path: Path
    tgt_vocab_path: Path
    src_vocab: Vocabulary
    tgt_vocab: Vocabulary
    pairs: PhrasePairs
    coverage: dict[str, float]  # check_vocabularies'
    lengths: dict[str, int]  # PhrasePairs.length_stats'
    valid_drawn: int  # validation pairs drawn
    valid_kept: int  # of which short enough to validate on
    valid_batches: list[Batch]
    sampler: PairSampler


def load_data(config: TrainConfig, table: Path, src_vocab_path: Path, tgt_vocab_path: Path,
              cache_dir: Path) -> TrainData:
    """Open the table, check the vocabularies fit it, count its pairs by length, draw the validation set.

    Args:
        config: ``max_length``, ``valid_pairs`` and ``seed`` are used.
        table: the Parquet phrase table directory.
        src_vocab_path: the source vocabulary file.
        tgt_vocab_path: the target vocabulary file.
        cache_dir: where the table's Arrow cache goes.

    Raises:
        UserError: an unreadable or empty table, vocabularies that are not its, too few usable pairs.
    """
    src_vocab, tgt_vocab = Vocabulary.load(src_vocab_path), Vocabulary.load(tgt_vocab_path)
    pairs = PhrasePairs(table, cache_dir)
    coverage = check_vocabularies(pairs, src_vocab, tgt_vocab, src_vocab_path, tgt_vocab_path)
    lengths = pairs.length_stats(config.max_length)
    usable = len(pairs) - lengths["too_long"] - lengths["empty"]
    if usable <= 0:
        raise UserError(f"{table}: no pair has 1 to {config.max_length} tokens on both sides")
    if config.valid_pairs >= len(pairs):
        raise UserError(f"--valid-pairs {config.valid_pairs}: the table has only {len(pairs)} pairs")
    valid_index = draw_validation(len(pairs), config.valid_pairs, config.seed)
    valid_src, valid_tgt = pairs.get(valid_index) if len(valid_index) else ([], [])
    kept = [i for i, (s, t) in enumerate(zip(valid_src, valid_tgt, strict=True)) if fits(s, t, config.max_length)]
    valid_batches = [make_batch([valid_src[i] for i in kept[k:k + VALID_BATCH]],
                                [valid_tgt[i] for i in kept[k:k + VALID_BATCH]], src_vocab, tgt_vocab)
                     for k in range(0, len(kept), VALID_BATCH)]
    sampler = PairSampler(len(pairs), valid_index, config.seed)
    if sampler.n_train <= 0:
        raise UserError(f"{table}: no pairs left for training after the validation set")
    return TrainData(table=table, src_vocab_path=src_vocab_path, tgt_vocab_path=tgt_vocab_path,
                     src_vocab=src_vocab, tgt_vocab=tgt_vocab, pairs=pairs, coverage=coverage, lengths=lengths,
                     valid_drawn=len(valid_index), valid_kept=len(kept), valid_batches=valid_batches,
                     sampler=sampler)


class PhrasePairs:
    """Random access to a Parquet phrase table's (source, target) pairs via a memory-mapped Arrow cache."""

    def __init__(self, table: str | os.PathLike, cache_dir: str | os.PathLike):
        """Open ``table``.

        Args:
            table: the Parquet phrase table directory (``part-*.parquet`` with ``source``, ``target``).
            cache_dir: where ``datasets`` writes the Arrow cache.

        Raises:
            UserError: no parts, an unreadable part, no ``source``/``target`` columns, no rows.
        """
        import datasets  # heavy import, only where the data is read

        self.table = Path(table)
        parts = list_parts(self.table)
        rows = {}
        for part in parts:
            try:
                meta = pq.ParquetFile(part).metadata
            except (OSError, pa.ArrowException) as exc:
                raise UserError(f"{part}: not a readable Parquet file ({exc})") from exc
            missing = {"source", "target"} - set(meta.schema.names)
            if missing:
                raise UserError(f"{part}: no column(s) {', '.join(sorted(missing))}: not a phrase table")
            rows[part] = meta.num_rows
        if sum(rows.values()) == 0:
            raise UserError(f"{self.table}: the phrase table is empty")
        datasets.disable_progress_bars()
        # empty parts are legal in a table but datasets cannot read them; they hold no rows anyway
        self.data = datasets.Dataset.from_parquet([str(p) for p in parts if rows[p]], columns=["source", "target"],
                                                  cache_dir=str(cache_dir))
        if len(self.data) == 0:
            raise UserError(f"{self.table}: the phrase table is empty")

    def __len__(self) -> int:
        return len(self.data)

    def get(self, indices: Sequence[int] | np.ndarray) -> tuple[list[list[str]], list[list[str]]]:
        """The tokenised sources and targets of the pairs at ``indices`` (table rows), in that order.

        Args:
            indices: row numbers in the table.
        """
        rows = self.data[np.asarray(indices, dtype=np.int64)]
        return [s.split() for s in rows["source"]], [t.split() for t in rows["target"]]

    def length_stats(self, max_length: int) -> dict[str, int]:
        """One streaming pass: how many pairs are empty or longer than ``max_length`` on a side.

        Args:
            max_length: the most tokens a side may have.
        """
        too_long = empty = 0
        for batch in self.data.with_format("arrow").iter(batch_size=1 << 16):
            lengths = [pc.list_value_length(pc.utf8_split_whitespace(batch[c])) for c in ("source", "target")]
            longest = pc.max_element_wise(*lengths)
            shortest = pc.min_element_wise(*lengths)
            too_long += pc.sum(pc.greater(longest, max_length)).as_py() or 0
            empty += pc.sum(pc.equal(shortest, 0)).as_py() or 0
        return {"too_long": too_long, "empty": empty}


def check_vocabularies(pairs: PhrasePairs, src_vocab: Vocabulary, tgt_vocab: Vocabulary,
                       src_path: Path, tgt_path: Path, sample: int = 20_000) -> dict[str, float]:
    """Token coverage of each vocabulary on each side; UserError when they cannot be this table's.

    Args:
        pairs: the table.
        src_vocab: the source vocabulary.
        tgt_vocab: the target vocabulary.
        src_path: ``src_vocab``'s file, for the messages.
        tgt_path: ``tgt_vocab``'s file, for the messages.
        sample: pairs (the table's first) the coverage is measured on.
    """
    sources, targets = pairs.get(np.arange(min(sample, len(pairs))))

    def coverage(vocab: Vocabulary, phrases: list[list[str]]) -> float:
        tokens = [t for p in phrases for t in p]
        return 1.0 - vocab.count_unknown(tokens) / max(1, len(tokens))

    cov = {"src_vocab_on_source": coverage(src_vocab, sources), "src_vocab_on_target": coverage(src_vocab, targets),
           "tgt_vocab_on_target": coverage(tgt_vocab, targets), "tgt_vocab_on_source": coverage(tgt_vocab, sources)}
    manifest = read_manifest(pairs.table) or {}
    table_langs = (manifest.get("config", {}).get("source_lang"), manifest.get("config", {}).get("target_lang"))
    for side, vocab, path, lang in (("source", src_vocab, src_path, table_langs[0]),
                                    ("target", tgt_vocab, tgt_path, table_langs[1])):
        if lang and vocab.lang and lang != vocab.lang:
            raise UserError(f"{path}: a '{vocab.lang}' vocabulary, but the phrase table's {side} side is '{lang}'")
    if cov["src_vocab_on_target"] > cov["src_vocab_on_source"] and cov["tgt_vocab_on_source"] > cov["tgt_vocab_on_target"]:
        raise UserError(f"{src_path}, {tgt_path}: the vocabularies fit the other side of {pairs.table} "
                        "better: source and target vocabularies swapped?")
    for key, path, side in (("src_vocab_on_source", src_path, "source"), ("tgt_vocab_on_target", tgt_path, "target")):
        if cov[key] < 0.5:
            raise UserError(f"{path}: covers only {cov[key]:.0%} of the {side} tokens of {pairs.table}: "
                            "not this table's vocabulary")
    return cov


class PairSampler:
    """Uniform draws of training pairs; update ``k`` uses ``default_rng([seed, k])`` only.

    Validation indices (sorted) are excluded by drawing among the ``n - n_valid`` others and
    mapping the j-th to its table index, so nothing is materialised per table row.
    """

    def __init__(self, n_pairs: int, valid: np.ndarray, seed: int):
        """Sample the ``n_pairs`` rows of a table but ``valid``.

        Args:
            n_pairs: rows in the table.
            valid: the validation rows (``draw_validation``'s), never drawn.
            seed: the run's seed.
        """
        self.n_train = n_pairs - len(valid)
        self.seed = seed
        self._shift = np.sort(valid) - np.arange(len(valid))  # valid[i] - i is non-decreasing

    def to_table_index(self, j: np.ndarray) -> np.ndarray:
        """The table rows of the ``j``-th training pairs.

        Args:
            j: indices among the training pairs, 0 to ``n_train - 1``.
        """
        return j + np.searchsorted(self._shift, j, side="right")

    def draw(self, update: int, count: int) -> np.ndarray:
        """``count`` table rows drawn uniformly (with replacement) for ``update``.

        Args:
            update: the update number (its random stream).
            count: rows to draw.
        """
        rng = np.random.default_rng([self.seed, update])
        return self.to_table_index(rng.integers(0, self.n_train, size=count))


def draw_validation(n_pairs: int, n_valid: int, seed: int) -> np.ndarray:
    """The validation rows, sorted: ``n_valid`` of ``n_pairs`` without replacement.

    Args:
        n_pairs: rows in the table.
        n_valid: rows to hold out.
        seed: the run's seed.
    """
    rng = np.random.default_rng([seed, VALID_STREAM])
    return np.sort(rng.choice(n_pairs, size=n_valid, replace=False))


def fits(src: list[str], tgt: list[str], max_length: int) -> bool:
    """Whether a pair is trained and validated on: 1 to ``max_length`` tokens on each side.

    Args:
        src: the source phrase's tokens.
        tgt: the target phrase's tokens.
        max_length: the most tokens a side may have.
    """
    return 0 < len(src) <= max_length and 0 < len(tgt) <= max_length


def draw_batch(pairs: PhrasePairs, sampler: PairSampler, update: int, size: int, max_length: int
               ) -> tuple[list[list[str]], list[list[str]], int]:
    """``size`` pairs for ``update``; over-long draws are replaced from the same stream.

    Args:
        pairs: the table.
        sampler: the training pairs' sampler.
        update: the update the batch is for (its draw's random stream).
        size: pairs in the batch.
        max_length: the most tokens a side may have (``fits``).

    Returns:
        The sources, the targets, and how many drawn pairs were skipped for their length.
    """
    rng_draws = sampler.draw(update, size)
    sources, targets = [], []
    skipped = extra = 0
    while True:
        src, tgt = pairs.get(rng_draws)
        for s, t in zip(src, tgt, strict=True):
            if len(sources) == size:
                break
            if fits(s, t, max_length):
                sources.append(s)
                targets.append(t)
            else:
                skipped += 1
        if len(sources) == size:
            return sources, targets, skipped
        extra += 1  # a further deterministic stream for the same update
        rng_draws = sampler.to_table_index(np.random.default_rng([sampler.seed, update, extra])
                                           .integers(0, sampler.n_train, size=size))


# ---------------------------------------------------------------------------------------------
# phase 2: the model, new or resumed


@dataclass
class TrainModel:
    """The model phase's result: the model, its optimizer, its sizes and its device."""

    model: EncoderDecoder
    optimizer: torch.optim.Adadelta
    config: EncoderDecoderConfig
    device: torch.device


def read_resume_checkpoint(out: Path, resume: bool) -> dict[str, Any] | None:
    """The checkpoint to resume from, or None for a new run into an empty ``out``.

    Args:
        out: the output directory.
        resume: continue the run in ``out``.

    Raises:
        UserError: nothing to resume, a checkpoint that is not one, or a new run into a non-empty ``out``.
    """
    if resume:
        if not (out / LAST_CHECKPOINT).is_file():
            raise UserError(f"{out / LAST_CHECKPOINT}: no checkpoint to resume from")
        return load_checkpoint(out / LAST_CHECKPOINT)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty: pass --resume to continue its training, "
                        "or choose a new output directory")
    return None


def build_model(config: TrainConfig, data: TrainData, resumed: dict[str, Any] | None, out: Path
                ) -> tuple[TrainModel, TrainState]:
    """Set up torch (device, threads, seed), then the model and Adadelta: initialised, or resumed.

    Args:
        config: the run's configuration.
        data: the data phase's result (the vocabularies' sizes, the table's).
        resumed: a checkpoint from ``read_resume_checkpoint``, or None for a new model.
        out: the output directory (whose ``checkpoints/last.pt`` ``resumed`` is).

    Returns:
        The model and optimizer, and the loop state: new, or the checkpoint's.

    Raises:
        UserError: no such device, or a checkpoint made with another configuration or table.
    """
    device = resolve_device(config.device)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    model_config = EncoderDecoderConfig(src_vocab_size=len(data.src_vocab), tgt_vocab_size=len(data.tgt_vocab),
                                        embedding=config.embedding, hidden=config.hidden,
                                        maxout=config.maxout, output_rank=config.output_rank,
                                        init_std=config.init_std)
    # resumed: no initialisation, weights and RNG state are loaded below
    model = EncoderDecoder(model_config, initialise=resumed is None).to(device)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=config.rho, eps=config.eps)
    learner = TrainModel(model=model, optimizer=optimizer, config=model_config, device=device)
    if resumed is None:
        return learner, TrainState()
    path = out / LAST_CHECKPOINT
    free = ("updates", "early_stopping", "device", "threads", "valid_every", "checkpoint_every", "compile")
    fixed = {k: v for k, v in resumed["config"].items() if k not in free}
    unknown = object()  # a key this TrainConfig lacks differs from every value
    changed = [k for k, v in fixed.items() if getattr(config, k, unknown) != v]
    if changed or resumed["n_pairs"] != len(data.pairs) or resumed["model_config"] != model_config.to_dict():
        raise UserError(f"{path}: was made with another configuration or table "
                        f"({', '.join(changed) or 'table or vocabulary sizes'} differ)")
    try:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        torch.set_rng_state(resumed["torch_rng"])
    except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:  # right keys, wrong contents
        raise UserError(f"{path}: not an rnnenc training checkpoint for this model "
                        f"({type(exc).__name__}: {_one_line(str(exc))[:200]})") from exc
    state = TrainState.from_plain(resumed["state"])
    log.info("resuming %s at update %d", out, state.update)
    return learner, state


# ---------------------------------------------------------------------------------------------
# phase 3: the loop


def run_loop(config: TrainConfig, data: TrainData, learner: TrainModel, state: TrainState, out: Path, *,
             quiet: bool = False) -> list[dict[str, Any]]:
    """Update until ``config.updates`` or early stopping: validate, checkpoint and log on the way.

    ``state`` is updated in place. The output directory loses its manifest first: an output
    being changed is not complete.

    Args:
        config: the run's configuration.
        data: the data phase's result.
        learner: the model phase's model and optimizer.
        state: the loop state to continue from.
        out: the output directory.
        quiet: no progress bar.

    Returns:
        The rows of metrics.csv, this run's and those it resumed.
    """
    out.mkdir(parents=True, exist_ok=True)
    remove_manifest(out)
    (out / LAST_CHECKPOINT).parent.mkdir(exist_ok=True)
    model, optimizer, device = learner.model, learner.optimizer, learner.device
    model.train()
    clip_and_step = make_clip_and_step(model, optimizer, config)
    metrics = Metrics(out, state.update)
    bar = progress(config.updates, initial=state.update, unit="upd", desc="train", quiet=quiet)
    # updates/s over the updates since the last checkpoint, whose time is in state.seconds
    window_start = time.perf_counter()
    window_updates = 0
    try:
        while state.update < config.updates and not state.stopped_early:
            update = state.update + 1
            sources, targets, skipped = draw_batch(data.pairs, data.sampler, update, config.batch_size,
                                                   config.max_length)
            batch = make_batch(sources, targets, data.src_vocab, data.tgt_vocab).to(device)
            with autocast(device):
                loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_and_step()
            state.update = update
            state.draws_too_long += skipped
            state.target_tokens += batch.n_target_tokens
            state.window_nll += float(loss.detach())
            state.window_tokens += batch.n_target_tokens
            window_updates += 1
            bar.update(1)
            if update % config.log_every == 0:
                nll = state.window_nll / state.window_tokens
                elapsed = time.perf_counter() - window_start
                rate = window_updates / elapsed if elapsed > 0 else 0.0
                metrics.add(update, "train", nll, state.window_tokens, rate, state.seconds + elapsed)
                bar.set_postfix(loss=f"{nll:.3f}", refresh=False)
                state.window_nll, state.window_tokens = 0.0, 0
            if data.valid_batches and update % config.valid_every == 0:
                validate(config, data, learner, state, metrics, out)
            if update % config.checkpoint_every == 0 or update == config.updates or state.stopped_early:
                state.seconds += time.perf_counter() - window_start
                window_start, window_updates = time.perf_counter(), 0
                save_checkpoint(out / LAST_CHECKPOINT, checkpoint_dict(config, data, learner, state))
    finally:
        bar.close()
        metrics.close()
    if state.update % config.checkpoint_every and not state.stopped_early:
        # a resumed run that was already complete
        save_checkpoint(out / LAST_CHECKPOINT, checkpoint_dict(config, data, learner, state))
    return metrics.rows


def validate(config: TrainConfig, data: TrainData, learner: TrainModel, state: TrainState, metrics: Metrics,
             out: Path) -> None:
    """Score the validation set at ``state.update``: log it, save best.pt or count towards early stopping.

    Args:
        config: ``early_stopping`` is used.
        data: the validation batches and the vocabularies (saved with best.pt).
        learner: the model and its device.
        state: the loop state, updated.
        metrics: where the validation row goes.
        out: the output directory.
    """
    total, tokens = evaluate(learner.model, data.valid_batches, learner.device)
    per_token = total / tokens
    metrics.add(state.update, "valid", -per_token, tokens, 0.0, state.seconds)
    log.info("update %d: validation perplexity %.3f", state.update, math.exp(-per_token))
    if state.record_validation(per_token, state.update, config.early_stopping):
        save_model(out / BEST_CHECKPOINT, learner.model, data.src_vocab, data.tgt_vocab,
                   extra={"update": state.update})
    elif state.stopped_early:
        log.info("early stopping at update %d: %d validations without improvement", state.update,
                 state.bad_validations)


@torch.no_grad()
def evaluate(model: EncoderDecoder, batches: Sequence[Batch], device: torch.device) -> tuple[float, int]:
    """(summed log-likelihood, target tokens) over validation batches.

    Args:
        model: the model, left in training mode.
        batches: the validation batches.
        device: where ``model`` is.
    """
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        with autocast(device):
            total += float(model(batch.to(device)).double().sum())
        tokens += batch.n_target_tokens
    model.train()
    return total, tokens


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of the forward passes on ``device``.

    Args:
        device: where the model is.
    """
    # bf16 on the GPU; fp32 on the CPU, whose bf16 matmuls are not faster here
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Metrics:
    """metrics.csv (rows after ``start`` dropped on resume) and TensorBoard, written as we go."""

    def __init__(self, out: Path, start: int):
        """Open ``out``'s metrics.csv and TensorBoard log, truncated after update ``start``.

        Args:
            out: the output directory.
            start: the update training continues from (0: a new run).
        """
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.csv"
        rows = []
        if self.path.is_file():
            with open(self.path, newline="") as handle:
                rows = [r for r in csv.DictReader(handle) if int(r["update"]) <= start]
        self.rows: list[dict[str, Any]] = rows
        with open(self.path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        self.handle = open(self.path, "a", newline="")
        self.writer = csv.DictWriter(self.handle, METRIC_FIELDS)
        self.tb = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)

    def add(self, update: int, split: str, nll: float, tokens: int, updates_per_s: float, seconds: float) -> None:
        """Write a row.

        Args:
            update: the update it is for.
            split: ``train`` (the loss since the previous row) or ``valid``.
            nll: negative log-likelihood per target token.
            tokens: the target tokens it is over.
            updates_per_s: the training speed (0 for validation rows).
            seconds: training time so far.
        """
        row = {"update": update, "split": split, "nll_per_token": f"{nll:.6f}",
               "perplexity": f"{math.exp(min(nll, 700)):.4f}", "tokens": tokens,
               "updates_per_s": f"{updates_per_s:.3f}", "seconds": f"{seconds:.1f}"}
        self.rows.append(row)
        self.writer.writerow(row)
        self.handle.flush()
        self.tb.add_scalar(f"{split}/nll_per_token", nll, update)
        self.tb.add_scalar(f"{split}/perplexity", math.exp(min(nll, 700)), update)
        if split == "train":
            self.tb.add_scalar("train/updates_per_s", updates_per_s, update)

    def close(self) -> None:
        """Close metrics.csv and the TensorBoard log."""
        self.handle.close()
        self.tb.close()


# ---------------------------------------------------------------------------------------------
# phase 4: outputs


def write_outputs(config: TrainConfig, data: TrainData, learner: TrainModel, state: TrainState,
                  rows: list[dict[str, Any]], out: Path, started: float) -> dict[str, Any]:
    """Write model.pt, learning_curve.png, _report.json and, last, _manifest.json; return the report.

    Args:
        config: the run's configuration.
        data: the data phase's result (its counts, the inputs of the manifest).
        learner: the trained model.
        state: the loop's final state.
        rows: the rows of metrics.csv.
        out: the output directory.
        started: ``time.perf_counter()`` when this run started.
    """
    # model.pt: the best validated parameters (early stopping's model), else the last
    best = out / BEST_CHECKPOINT
    if best.is_file() and state.best_update is not None:
        shutil.copyfile(best, out / ".model.pt.tmp")
        os.replace(out / ".model.pt.tmp", out / "model.pt")
    else:
        save_model(out / "model.pt", learner.model, data.src_vocab, data.tgt_vocab, extra={"update": state.update})
    plot_learning_curve(rows, out / "learning_curve.png")
    final_valid = [r for r in rows if r["split"] == "valid"]
    counts = {
        "pairs": len(data.pairs), "pairs_empty": data.lengths["empty"], "pairs_too_long": data.lengths["too_long"],
        "valid_pairs_drawn": data.valid_drawn, "valid_pairs": data.valid_kept,
        "valid_pairs_too_long": data.valid_drawn - data.valid_kept, "train_pairs": data.sampler.n_train,
        "updates": state.update, "draws_skipped_too_long": state.draws_too_long,
        "target_tokens_trained": state.target_tokens,
        "best_valid_perplexity": math.exp(-state.best_valid) if state.best_valid is not None else None,
        "best_update": state.best_update,
        "final_valid_perplexity": float(final_valid[-1]["perplexity"]) if final_valid else None,
        "stopped_early": state.stopped_early,
    }
    model_config = learner.config.to_dict()
    report = {"counts": counts, "vocabulary_coverage": data.coverage, "device": str(learner.device),
              "threads": torch.get_num_threads(), "train_seconds": round(state.seconds, 2),
              "updates_per_s": round(state.update / state.seconds, 3) if state.seconds else None,
              "wall_seconds_this_run": round(time.perf_counter() - started, 2), "config": config.to_dict(),
              "model_config": model_config}
    write_json_atomic(out / REPORT_NAME, report)
    write_manifest(out, stage="train", inputs=[data.table, data.src_vocab_path, data.tgt_vocab_path],
                   config=config.to_dict() | {"model": model_config}, counts=counts)
    return report


def plot_learning_curve(rows: list[dict[str, Any]], path: Path) -> None:
    """Plot the train and valid rows' loss per update into ``path`` (atomically).

    Args:
        rows: metrics.csv's rows.
        path: the PNG file written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for split, style in (("train", "-"), ("valid", "o-")):
        points = [(int(r["update"]), float(r["nll_per_token"])) for r in rows if r["split"] == split]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=split, markersize=3)
    ax.set_xlabel("update")
    ax.set_ylabel("negative log-likelihood per target token (nats)")
    ax.set_title("RNN Encoder-Decoder learning curve")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# checkpoints


# A checkpoint is read with ``torch.load(weights_only=True)``: a file in the output directory
# is not trusted to run code (a full unpickle of a crafted last.pt runs whatever it names before
# its format can be checked). So everything in it is a tensor or plain data (dict, list, tuple,
# str, int, float, bool, None): the model's and Adadelta's state dicts, torch's RNG state as a
# uint8 tensor, and the loop state below. The sampler needs no state of its own (update k's
# draw is ``default_rng([seed, k])``), and neither numpy's nor Python's global RNG is used.
PLAIN_TYPES = (str, int, float, bool, type(None))
# the loop state as saved (``TrainState.to_plain()``) and the type of each entry
STATE_TYPES: dict[str, tuple[type, ...]] = {
    "update": (int,), "best_valid": (float, type(None)), "best_update": (int, type(None)),
    "bad_validations": (int,), "stopped_early": (bool,), "draws_too_long": (int,), "target_tokens": (int,),
    "window": (list,), "seconds": (float,)}
CHECKPOINT_TYPES: dict[str, type] = {
    "format": str, "config": dict, "model_config": dict, "n_pairs": int, "model": dict, "optimizer": dict,
    "torch_rng": torch.Tensor, "state": dict}


def checkpoint_dict(config: TrainConfig, data: TrainData, learner: TrainModel, state: TrainState
                    ) -> dict[str, Any]:
    """What ``checkpoints/last.pt`` holds: plain data and tensors, the entries of ``CHECKPOINT_TYPES``.

    Args:
        config: the run's configuration.
        data: the data phase's result (the table's size).
        learner: the model and optimizer.
        state: the loop state.
    """
    return {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model_config": learner.config.to_dict(),
            "n_pairs": len(data.pairs), "model": learner.model.state_dict(),
            "optimizer": learner.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "state": state.to_plain()}


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``value`` is tensors and plain data only, as weights_only loads them.

    Run on every save, so that a numpy scalar or array slipping into the state fails the run
    that writes it rather than the ``--resume`` that would read it.

    Args:
        value: what is to be saved.
        where: its name in the messages.
    """
    # exact types: numpy.float64 is a float subclass, yet weights_only refuses it
    if isinstance(value, torch.Tensor) or type(value) in PLAIN_TYPES:
        return
    if type(value) in (dict, collections.OrderedDict):  # state_dict()s are OrderedDicts
        for key, item in value.items():
            if type(key) not in PLAIN_TYPES:
                raise TypeError(f"{where}: key {key!r} of type {type(key).__name__} is not plain data")
            check_plain(item, f"{where}[{key!r}]")
    elif type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
    else:
        raise TypeError(f"{where}: {type(value).__name__} is neither a tensor nor plain data "
                        "(torch.load(weights_only=True) would refuse the checkpoint)")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename).

    Args:
        path: the checkpoint file.
        state: the checkpoint (``checkpoint_dict``'s); checked by ``check_plain`` first.

    Raises:
        TypeError: ``state`` holds something that is neither a tensor nor plain data.
    """
    check_plain(state)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _refusal_detail(exc: BaseException) -> str:
    """The line of torch's weights-only refusal that says what was refused (the rest is advice)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue", "(1)", "(2)")
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    detail = [line for line in lines if line and not line.startswith(boilerplate)]
    if not detail:
        return type(exc).__name__
    # its first sentence; the rest advises allow-listing the global, which is not wanted here
    first = _one_line(" ".join(detail)).removeprefix("WeightsUnpickler error: ").split(". ")[0]
    return first[:200].rstrip(".") + "."


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint at ``path``, unpickled with ``weights_only=True`` and checked key by key.

    Anything else (objects that are not tensors or plain data, a truncated file, missing or
    ill-typed entries, another format) is a one-line UserError naming ``path``.

    Args:
        path: the checkpoint file.
    """
    not_ours = f"{path}: not an rnnenc training checkpoint, or one from an incompatible version of rnnenc"
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read the checkpoint ({_one_line(str(exc))})") from exc
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on stderr: the error says enough
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object, or the pickle is cut short
        raise UserError(f"{not_ours}: it is not only tensors and plain data, and rnnenc unpickles "
                        f"nothing else ({_refusal_detail(exc)})") from exc
    except Exception as exc:  # truncated or foreign files raise many types
        raise UserError(f"{path}: corrupt checkpoint ({type(exc).__name__}: "
                        f"{_one_line(str(exc))[:200]})") from exc
    if not isinstance(state, dict) or not isinstance(state.get("format"), str):
        raise UserError(f"{path}: not an rnnenc training checkpoint (format {CHECKPOINT_FORMAT} expected)")
    if state["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"{not_ours} (format {state['format'][:80]!r}, this rnnenc reads {CHECKPOINT_FORMAT})")
    wrong = [k for k, kind in CHECKPOINT_TYPES.items() if not isinstance(state.get(k), kind)]
    loop, model, optimizer = ({} if k in wrong else state[k] for k in ("state", "model", "optimizer"))
    if "state" not in wrong:  # else its entries need no listing
        wrong += [f"state.{k}" for k, kinds in STATE_TYPES.items() if not isinstance(loop.get(k), kinds)]
    if not all(isinstance(v, torch.Tensor) for v in model.values()):
        wrong.append("model tensors")
    if optimizer and not (isinstance(optimizer.get("state"), dict)
                          and isinstance(optimizer.get("param_groups"), list)):
        wrong.append("optimizer.state/param_groups")
    if "torch_rng" not in wrong and state["torch_rng"].dtype != torch.uint8:
        wrong.append("torch_rng")
    window = loop.get("window")
    if isinstance(window, list) and (len(window) != 2 or not all(isinstance(x, (int, float)) for x in window)):
        wrong.append("state.window")
    if wrong:
        raise UserError(f"{not_ours} ({', '.join(wrong)} missing or of the wrong type)")
    return state
