"""Training the encoder-decoder on a phrase table's unique pairs, as Cho et al. (2014) did.

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
parameters, else the last), ``learning_curve.png``, ``report.json`` and, last, ``manifest.json``.
A resumed run replays exactly what the interrupted one would have done: on the CPU it ends with
bitwise the same parameters.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import csv
import dataclasses
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from pipeline.artifacts import MANIFEST_NAME, read_manifest, write_json_atomic, write_manifest
from pipeline.errors import UserError
from pipeline.model import Batch, EncoderDecoder, EncoderDecoderConfig, make_batch, save_model
from pipeline.phrase_table import list_parts
from pipeline.vocab import Vocabulary

log = logging.getLogger("rnnenc")

CHECKPOINT_FORMAT = "rnnenc-train-checkpoint-1"
VALID_STREAM = 2**32 - 1  # rng stream of the validation draw, apart from every update's stream
METRIC_FIELDS = ["update", "split", "nll_per_token", "perplexity", "tokens", "updates_per_s", "seconds"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (the model's sizes included)."""

    updates: int = 100_000
    batch_size: int = 64
    embedding: int = 100
    hidden: int = 1000
    maxout: int = 500
    output_rank: int = 100
    init_std: float = 0.01  # the paper's, for 1000 units; small models learn faster with ~0.1
    max_length: int = 30  # tokens per side, </s> excluded
    valid_pairs: int = 1000
    valid_every: int = 1000
    checkpoint_every: int = 1000
    early_stopping: int = 0  # stop after this many validations without improvement; 0 = never
    log_every: int = 10  # updates per training-loss row of metrics.csv / TensorBoard
    seed: int = 1234
    rho: float = 0.95
    eps: float = 1e-6
    clip_norm: float = 1.0
    device: str = "auto"
    threads: int = 0  # CPU threads; 0 = all cores
    compile: bool = False  # torch.compile the clip + Adadelta step into one pass over memory

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# data


class PhrasePairs:
    """Random access to a Parquet phrase table's (source, target) pairs via a memory-mapped Arrow cache."""

    def __init__(self, table: str | os.PathLike, cache_dir: str | os.PathLike):
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
        rows = self.data[np.asarray(indices, dtype=np.int64)]
        return [s.split() for s in rows["source"]], [t.split() for t in rows["target"]]

    def length_stats(self, max_length: int) -> dict[str, int]:
        """One streaming pass: how many pairs are empty or longer than ``max_length`` on a side."""
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
    """Token coverage of each vocabulary on each side; UserError when they cannot be this table's."""
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
        self.n_train = n_pairs - len(valid)
        self.seed = seed
        self._shift = np.sort(valid) - np.arange(len(valid))  # valid[i] - i is non-decreasing

    def to_table_index(self, j: np.ndarray) -> np.ndarray:
        return j + np.searchsorted(self._shift, j, side="right")

    def draw(self, update: int, count: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, update])
        return self.to_table_index(rng.integers(0, self.n_train, size=count))


def draw_validation(n_pairs: int, n_valid: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, VALID_STREAM])
    return np.sort(rng.choice(n_pairs, size=n_valid, replace=False))


# ---------------------------------------------------------------------------------------------
# checkpoints


# A checkpoint is read with ``torch.load(weights_only=True)``: a file in the output directory
# is not trusted to run code (a full unpickle of a crafted last.pt runs whatever it names before
# its format can be checked). So everything in it is a tensor or plain data (dict, list, tuple,
# str, int, float, bool, None): the model's and Adadelta's state dicts, torch's RNG state as a
# uint8 tensor, and the loop state below. The sampler needs no state of its own (update k's
# draw is ``default_rng([seed, k])``), and neither numpy's nor Python's global RNG is used.
PLAIN_TYPES = (str, int, float, bool, type(None))
# the loop state (``train``'s ``state``) and the type of each entry
STATE_TYPES: dict[str, tuple[type, ...]] = {
    "update": (int,), "best_valid": (float, type(None)), "best_update": (int, type(None)),
    "bad_validations": (int,), "stopped_early": (bool,), "draws_too_long": (int,), "target_tokens": (int,),
    "window": (list,), "seconds": (float,)}
CHECKPOINT_TYPES: dict[str, type] = {
    "format": str, "config": dict, "model_config": dict, "n_pairs": int, "model": dict, "optimizer": dict,
    "torch_rng": torch.Tensor, "state": dict}


def check_plain(value: Any, where: str = "checkpoint") -> None:
    """Raise TypeError unless ``value`` is tensors and plain data only, as weights_only loads them.

    Run on every save, so that a numpy scalar or array slipping into the state fails the run
    that writes it rather than the ``--resume`` that would read it.
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
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename)."""
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
    if isinstance(loop.get("window"), list) and len(loop["window"]) != 2:
        wrong.append("state.window")
    if wrong:
        raise UserError(f"{not_ours} ({', '.join(wrong)} missing or of the wrong type)")
    return state


# ---------------------------------------------------------------------------------------------
# the loop


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device available")
    if name not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu or cuda")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: EncoderDecoder, batches: Sequence[Batch], device: torch.device) -> tuple[float, int]:
    """(summed log-likelihood, target tokens) over validation batches."""
    model.eval()
    total, tokens = 0.0, 0
    for batch in batches:
        with autocast(device):
            total += float(model(batch.to(device)).double().sum())
        tokens += batch.n_target_tokens
    model.train()
    return total, tokens


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    # bf16 on the GPU; fp32 on the CPU, whose bf16 matmuls are not faster here
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Metrics:
    """metrics.csv (rows after ``start`` dropped on resume) and TensorBoard, written as we go."""

    def __init__(self, out: Path, start: int):
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
        self.handle.close()
        self.tb.close()


def plot_learning_curve(rows: list[dict[str, Any]], path: Path) -> None:
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


def train(config: TrainConfig, phrase_table: str | os.PathLike, src_vocab_path: str | os.PathLike,
          tgt_vocab_path: str | os.PathLike, out: str | os.PathLike, *, resume: bool = False,
          cache_dir: str | os.PathLike | None = None, quiet: bool = False) -> dict[str, Any]:
    """Train (or resume) a model; write the outputs into ``out``; return the report."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    table, out = Path(phrase_table), Path(out)
    src_vocab_path, tgt_vocab_path = Path(src_vocab_path), Path(tgt_vocab_path)
    for name, value in (("updates", config.updates), ("batch_size", config.batch_size),
                        ("valid_every", config.valid_every), ("checkpoint_every", config.checkpoint_every),
                        ("max_length", config.max_length), ("log_every", config.log_every)):
        if value < 1:
            raise UserError(f"{name} must be at least 1 (got {value})")
    checkpoint_path = out / "checkpoints" / "last.pt"
    resumed: dict[str, Any] | None = None
    if resume:
        if not checkpoint_path.is_file():
            raise UserError(f"{checkpoint_path}: no checkpoint to resume from")
        resumed = load_checkpoint(checkpoint_path)  # before the table's pass: a bad file fails at once
    elif out.exists() and any(out.iterdir()):
        raise UserError(f"{out}: exists and is not empty: pass --resume to continue its training, "
                        "or choose a new output directory")
    src_vocab, tgt_vocab = Vocabulary.load(src_vocab_path), Vocabulary.load(tgt_vocab_path)
    pairs = PhrasePairs(table, cache_dir or out.with_name(out.name + ".arrow-cache"))
    coverage = check_vocabularies(pairs, src_vocab, tgt_vocab, src_vocab_path, tgt_vocab_path)
    lengths = pairs.length_stats(config.max_length)
    usable = len(pairs) - lengths["too_long"] - lengths["empty"]
    if usable <= 0:
        raise UserError(f"{table}: no pair has 1 to {config.max_length} tokens on both sides")
    if config.valid_pairs >= len(pairs):
        raise UserError(f"--valid-pairs {config.valid_pairs}: the table has only {len(pairs)} pairs")

    def fits(src: list[str], tgt: list[str]) -> bool:
        return 0 < len(src) <= config.max_length and 0 < len(tgt) <= config.max_length

    valid_index = draw_validation(len(pairs), config.valid_pairs, config.seed)
    valid_src, valid_tgt = pairs.get(valid_index) if len(valid_index) else ([], [])
    kept = [i for i, (s, t) in enumerate(zip(valid_src, valid_tgt, strict=True)) if fits(s, t)]
    valid_batches = [make_batch([valid_src[i] for i in kept[k:k + 256]], [valid_tgt[i] for i in kept[k:k + 256]],
                                src_vocab, tgt_vocab) for k in range(0, len(kept), 256)]
    sampler = PairSampler(len(pairs), valid_index, config.seed)
    if sampler.n_train <= 0:
        raise UserError(f"{table}: no pairs left for training after the validation set")

    device = pick_device(config.device)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(config.seed)
    model_config = EncoderDecoderConfig(src_vocab_size=len(src_vocab), tgt_vocab_size=len(tgt_vocab),
                                        embedding=config.embedding, hidden=config.hidden,
                                        maxout=config.maxout, output_rank=config.output_rank,
                                        init_std=config.init_std)
    model = EncoderDecoder(model_config, initialise=not resume).to(device)  # resumed: weights and RNG loaded below
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=config.rho, eps=config.eps)
    # the loop state, saved in every checkpoint: its entries and their types are STATE_TYPES
    state: dict[str, Any] = {"update": 0, "best_valid": None, "best_update": None, "bad_validations": 0,
                             "stopped_early": False, "draws_too_long": 0, "target_tokens": 0,
                             "window": [0.0, 0], "seconds": 0.0}
    if resumed is not None:
        free = ("updates", "early_stopping", "device", "threads", "valid_every", "checkpoint_every", "compile")
        fixed = {k: v for k, v in resumed["config"].items() if k not in free}
        unknown = object()  # a key this TrainConfig lacks differs from every value
        changed = [k for k, v in fixed.items() if getattr(config, k, unknown) != v]
        if changed or resumed["n_pairs"] != len(pairs) or resumed["model_config"] != model_config.to_dict():
            raise UserError(f"{checkpoint_path}: was made with another configuration or table "
                            f"({', '.join(changed) or 'table or vocabulary sizes'} differ)")
        try:
            model.load_state_dict(resumed["model"])
            optimizer.load_state_dict(resumed["optimizer"])
            torch.set_rng_state(resumed["torch_rng"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError) as exc:  # right keys, wrong contents
            raise UserError(f"{checkpoint_path}: not an rnnenc training checkpoint for this model "
                            f"({type(exc).__name__}: {_one_line(str(exc))[:200]})") from exc
        state = resumed["state"]
        log.info("resuming %s at update %d", out, state["update"])
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_NAME).unlink(missing_ok=True)  # an output being changed is not complete
    (out / "checkpoints").mkdir(exist_ok=True)
    model.train()

    def checkpoint() -> None:
        save_checkpoint(checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "model_config": model_config.to_dict(),
            "n_pairs": len(pairs), "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(), "state": state})

    clip_and_step = make_clip_and_step(model, optimizer, config)
    metrics = Metrics(out, state["update"])
    bar = tqdm(total=config.updates, initial=state["update"], unit="upd", desc="train", disable=quiet,
               dynamic_ncols=True)
    window_start = time.perf_counter()
    window_updates = 0
    try:
        while state["update"] < config.updates and not state["stopped_early"]:
            update = state["update"] + 1
            sources, targets = draw_batch(pairs, sampler, update, config.batch_size, fits, state)
            batch = make_batch(sources, targets, src_vocab, tgt_vocab).to(device)
            with autocast(device):
                loss = model.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_and_step()
            state["update"] = update
            state["target_tokens"] += batch.n_target_tokens
            state["window"][0] += float(loss.detach())
            state["window"][1] += batch.n_target_tokens
            window_updates += 1
            bar.update(1)
            if update % config.log_every == 0:
                nll = state["window"][0] / state["window"][1]
                elapsed = time.perf_counter() - window_start
                rate = window_updates / elapsed if elapsed > 0 else 0.0
                metrics.add(update, "train", nll, state["window"][1], rate, state["seconds"] + elapsed)
                bar.set_postfix(loss=f"{nll:.3f}", refresh=False)
                state["window"] = [0.0, 0]
            if valid_batches and update % config.valid_every == 0:
                validate(model, valid_batches, device, update, state, config, metrics, out, src_vocab, tgt_vocab)
            if update % config.checkpoint_every == 0 or update == config.updates or state["stopped_early"]:
                state["seconds"] += time.perf_counter() - window_start
                window_start, window_updates = time.perf_counter(), 0
                checkpoint()
    finally:
        bar.close()
        metrics.close()
    if state["update"] % config.checkpoint_every and not state["stopped_early"]:
        checkpoint()  # resumed runs that were already complete
    # model.pt: the best validated parameters (early stopping's model), else the last
    best = out / "checkpoints" / "best.pt"
    if best.is_file() and state["best_update"] is not None:
        shutil.copyfile(best, out / ".model.pt.tmp")
        os.replace(out / ".model.pt.tmp", out / "model.pt")
    else:
        save_model(out / "model.pt", model, src_vocab, tgt_vocab, extra={"update": state["update"]})
    plot_learning_curve(metrics.rows, out / "learning_curve.png")
    final_valid = [r for r in metrics.rows if r["split"] == "valid"]
    counts = {
        "pairs": len(pairs), "pairs_empty": lengths["empty"], "pairs_too_long": lengths["too_long"],
        "valid_pairs_drawn": len(valid_index), "valid_pairs": len(kept),
        "valid_pairs_too_long": len(valid_index) - len(kept), "train_pairs": sampler.n_train,
        "updates": state["update"], "draws_skipped_too_long": state["draws_too_long"],
        "target_tokens_trained": state["target_tokens"],
        "best_valid_perplexity": math.exp(-state["best_valid"]) if state["best_valid"] is not None else None,
        "best_update": state["best_update"],
        "final_valid_perplexity": float(final_valid[-1]["perplexity"]) if final_valid else None,
        "stopped_early": state["stopped_early"],
    }
    report = {"counts": counts, "vocabulary_coverage": coverage, "device": str(device),
              "threads": torch.get_num_threads(), "train_seconds": round(state["seconds"], 2),
              "updates_per_s": round(state["update"] / state["seconds"], 3) if state["seconds"] else None,
              "wall_seconds_this_run": round(time.perf_counter() - started, 2), "config": config.to_dict(),
              "model_config": model_config.to_dict()}
    write_json_atomic(out / "report.json", report)
    write_manifest(out, stage="train", inputs=[table, src_vocab_path, tgt_vocab_path],
                   config=config.to_dict() | {"model": model_config.to_dict()}, counts=counts)
    return report


def make_clip_and_step(model: EncoderDecoder, optimizer: torch.optim.Optimizer, config: TrainConfig
                       ) -> Callable[[], None]:
    """Gradient-norm clipping then the Adadelta update; compiled on request.

    Eager Adadelta makes about ten passes over the 17M parameters and its state, each a
    memory-bound kernel: on the CPU that costs as much as a third of the model's matmuls
    (``foreach=True`` does not help: the tensors are large, the passes are the cost). On the
    CPU the update therefore runs cache-sized chunk by chunk (``clip_and_adadelta_``): the
    same operations, the same results, about 20% less time than torch's step at the paper's
    size (``row_sparse``: only the embedding rows the batch touched get the full update).
    Compiled (``config.compile``), it is one fused loop (the first call compiles: seconds with
    a warm inductor cache, about a minute cold).
    """
    params = list(model.parameters())

    def clip_and_step() -> None:
        torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
        optimizer.step()

    eager = clip_and_step
    if all(p.device.type == "cpu" for p in params) and isinstance(optimizer, torch.optim.Adadelta):
        embeddings = [model.src_embed.weight, model.tgt_embed.weight]

        def chunked_step() -> None:
            clip_and_adadelta_(params, optimizer, config.clip_norm, row_sparse=embeddings)

        eager = chunked_step
    if config.compile:
        return _compiled_or_eager(torch.compile(clip_and_step), eager, params, optimizer)
    return eager


def _compiled_or_eager(compiled: Callable[[], None], eager: Callable[[], None], params: list[torch.Tensor],
                       optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    """``compiled``, or ``eager`` from the first update on if compiling fails (no C++ compiler,
    an unsupported platform): the parameters, gradients and optimizer state are restored to
    what they were before the failed call, so the run goes on as if it had been eager."""
    chosen: list[Callable[[], None]] = []

    def step() -> None:
        if chosen:
            chosen[0]()
            return
        log.info("compiling the clip + Adadelta step (first update: seconds, up to a minute on a cold cache)")
        saved = ([p.detach().clone() for p in params], [None if p.grad is None else p.grad.clone() for p in params],
                 copy.deepcopy(optimizer.state_dict()))
        try:
            compiled()
        except Exception as exc:  # torch raises many types (InductorError, BackendCompilerFailed, ...)
            log.warning("--compile: torch.compile failed (%s: %s); clip + Adadelta run uncompiled",
                        type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
            with torch.no_grad():
                for p, value, grad in zip(params, *saved[:2], strict=True):
                    p.copy_(value)
                    p.grad = grad
            optimizer.load_state_dict(saved[2])
            chosen.append(eager)
            eager()
            return
        chosen.append(compiled)

    return step


# elements: each of 2 threads takes half of a chunk's parameter, gradient, state and buffers (3.5 MB)
# into its L2. Measured at the paper's size on 2 cores (benchmarks/train.py, waiters spinning as
# `rnnenc train` runs): 2^17 on 2 threads 67 ms, 2^15 on 1 thread 106 ms, torch's eager 81 ms.
ADADELTA_CHUNK = 1 << 17


@torch.no_grad()
def clip_and_adadelta_(params: list[torch.Tensor], optimizer: torch.optim.Adadelta, max_norm: float,
                       chunk: int = ADADELTA_CHUNK, row_sparse: Sequence[torch.Tensor] = ()) -> None:
    """``clip_grad_norm_(params, max_norm)`` then ``optimizer.step()``, computed chunk by chunk.

    Each chunk goes through all of Adadelta's operations (torch's, in its order) while it is in
    cache; the clipped gradient g * coef is formed per chunk (p.grad is left unscaled, unlike
    ``clip_grad_norm_``). The optimizer's state is torch's own (``state_dict`` unchanged).

    ``row_sparse`` parameters (the embeddings: a batch touches a few hundred of 15k rows) get the
    full update on their rows with a non-zero gradient only; on the others Adadelta reduces,
    bit for bit, to square_avg *= rho and acc_delta *= rho (g = 0 gives delta = 0 exactly).
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    scale = float(coef) != 1.0  # g * 1.0 == g: skip the pass
    for group in optimizer.param_groups:
        if group["weight_decay"] or group["maximize"] or group.get("differentiable"):
            raise ValueError("clip_and_adadelta_ implements plain Adadelta only")
    buffers = [params[0].new_empty(chunk) for _ in range(3)]
    sparse = {id(p) for p in row_sparse}

    def update(P: torch.Tensor, G: torch.Tensor, S: torch.Tensor, A: torch.Tensor) -> None:
        """torch's Adadelta step on flat tensors, chunk by chunk."""
        for i in range(0, P.numel(), chunk):
            p, g, s, a = (t[i: i + chunk] for t in (P, G, S, A))
            n = p.numel()
            g = torch.mul(g, coef, out=buffers[0][:n]) if scale else g
            s.mul_(rho).addcmul_(g, g, value=1 - rho)
            std = torch.add(s, eps, out=buffers[1][:n]).sqrt_()
            delta = torch.add(a, eps, out=buffers[2][:n]).sqrt_().div_(std).mul_(g)
            a.mul_(rho).addcmul_(delta, delta, value=1 - rho)
            p.add_(delta, alpha=-lr)

    for group in optimizer.param_groups:
        rho, eps, lr = group["rho"], group["eps"], group["lr"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = optimizer.state[p]
            if not state:  # as torch.optim.Adadelta initialises it
                state["step"] = torch.zeros((), dtype=torch.get_default_dtype())
                state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["acc_delta"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            tensors = (p, p.grad, state["square_avg"], state["acc_delta"])
            if id(p) in sparse and p.dim() == 2:
                rows = p.grad.ne(0).any(1).nonzero().squeeze(1)
                P, G, S, A = (t.index_select(0, rows) for t in tensors)
                update(P.view(-1), G.view(-1), S.view(-1), A.view(-1))
                for t, new in ((state["square_avg"], S), (state["acc_delta"], A)):
                    t.mul_(rho).index_copy_(0, rows, new)
                p.index_copy_(0, rows, P)
            else:
                update(*(t.view(-1) for t in tensors))


def draw_batch(pairs: PhrasePairs, sampler: PairSampler, update: int, size: int,
               fits: Callable[[list[str], list[str]], bool], state: dict[str, Any]
               ) -> tuple[list[list[str]], list[list[str]]]:
    """``size`` pairs for ``update``; over-long draws are counted and replaced from the same stream."""
    rng_draws = sampler.draw(update, size)
    sources, targets = [], []
    extra = 0
    while True:
        src, tgt = pairs.get(rng_draws)
        for s, t in zip(src, tgt, strict=True):
            if len(sources) == size:
                break
            if fits(s, t):
                sources.append(s)
                targets.append(t)
            else:
                state["draws_too_long"] += 1
        if len(sources) == size:
            return sources, targets
        extra += 1  # a further deterministic stream for the same update
        rng_draws = sampler.to_table_index(np.random.default_rng([sampler.seed, update, extra])
                                           .integers(0, sampler.n_train, size=size))


def validate(model: EncoderDecoder, batches: Sequence[Batch], device: torch.device, update: int,
             state: dict[str, Any], config: TrainConfig, metrics: Metrics, out: Path,
             src_vocab: Vocabulary, tgt_vocab: Vocabulary) -> None:
    total, tokens = evaluate(model, batches, device)
    per_token = total / tokens
    metrics.add(update, "valid", -per_token, tokens, 0.0, state["seconds"])
    log.info("update %d: validation perplexity %.3f", update, math.exp(-per_token))
    if state["best_valid"] is None or per_token > state["best_valid"]:
        state["best_valid"], state["best_update"], state["bad_validations"] = per_token, update, 0
        save_model(out / "checkpoints" / "best.pt", model, src_vocab, tgt_vocab, extra={"update": update})
    else:
        state["bad_validations"] += 1
        if config.early_stopping and state["bad_validations"] >= config.early_stopping:
            log.info("early stopping at update %d: %d validations without improvement", update,
                     state["bad_validations"])
            state["stopped_early"] = True
