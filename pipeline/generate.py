"""Target phrases from the model itself: beam search, ancestral sampling, and the paper's Table 2-3.

Cho et al. (2014) §4.2 look at what the RNN Encoder-Decoder learnt by letting it propose
targets for source phrases: the phrase table's top entries by phi(e|f) next to the table's
entries ranked by the model (their Table 2), and phrases the model generates on its own
(Table 3). This module does the three, on the model's public API only
(``encode``, ``readout``, ``src_embed``/``tgt_embed``, ``init_state``, ``decoder``, ``out_c``).

Decoding follows the training equations (``pipeline.model``): the source gets ``</s>``
appended, h'_0 = tanh(W c + b), e(y_0) = 0, h'_t = GRU([e(y_{t-1}); c], h'_{t-1}), and a
hypothesis ends when it emits ``</s>``, whose log-probability is part of its score. Scores
are sums of token log-probabilities, no length normalisation, so every score returned here is
the model's log p(target | source) of that pair: ``score_pairs`` gives the same number, up
to float32 rounding (about 1e-5 at a trained model's logits, which is also how much
``score_pairs`` itself moves with the batch a pair is in; a float64 model agrees to 1e-12).
``<pad>`` is never generated; ``<unk>`` is unless ``ban_unk``. A phrase has at least one word
(``</s>`` is not allowed first) and after ``max_length`` words the only continuation allowed
is ``</s>``, so every hypothesis ends as the model scores it.

Beam search is GroundHog's (the paper's code, ``sample.py``): at each step the
``beam - finished`` best expansions of the live hypotheses are kept, those ending in ``</s>``
move to the finished list, and a source is done once ``beam`` hypotheses have finished. With
``beam=1`` this is greedy decoding. Sources are decoded in batches (``batch_size`` sources x
``beam`` rows), finished sources leave the batch.

Sampling is ancestral: each step draws the next word from the model's distribution (after
``temperature``); the draws come from uniforms fixed in advance per (seed, source text), so a
source's samples do not depend on the batch it is decoded in or on the other sources.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.model import EncoderDecoder, make_batch, resolve_device, score_pairs
from rnnenc.pipeline.train_config import TrainConfig
from rnnenc.pipeline.vocab import EOS_ID, PAD_ID, UNK_ID, Vocabulary

DEFAULT_MAX_LENGTH = TrainConfig.max_length  # target words before </s>: training's default max_length


class Hypothesis(NamedTuple):
    """A target phrase (tokens, ``</s>`` excluded) and its log p(target | source)."""

    tokens: list[str]
    logp: float


def _on_device(model: EncoderDecoder, device: str | torch.device | None) -> torch.device:
    """The device to decode on: the model's own unless ``device`` is given (the model is moved there)."""
    if device is None:
        return next(model.parameters()).device
    device = resolve_device(device)
    if next(model.parameters()).device != device:
        model.to(device)
    return device


def _tokens(source: str | Sequence[str]) -> list[str]:
    return source.split() if isinstance(source, str) else list(source)


def _check(beam: int, nbest: int, max_length: int) -> None:
    if beam < 1:
        raise UserError(f"beam size must be at least 1 (got {beam})")
    if not 1 <= nbest <= beam:
        raise UserError(f"n-best must be between 1 and the beam size {beam} (got {nbest})")
    if max_length < 1:
        raise UserError(f"max length must be at least 1 (got {max_length})")


class _Decoder:
    """One decoder step at a time for a set of rows, each row a hypothesis of some source.

    The GRU step is written out with ``model.decoder``'s own parameters (torch's GRU form:
    the reset gate applied after U) rather than called through ``nn.GRU``: the input
    projection of c (W_c c + b_i), the larger half of the input matrix, is the same at every
    step, so it is computed once per source instead of once per row and step.
    """

    def __init__(self, model: EncoderDecoder, src_vocab: Vocabulary, sources: list[list[str]], device: torch.device):
        self.model = model
        # make_batch appends </s> to the sources as training did; the targets ([] -> </s>) are unused
        batch = make_batch(sources, [[] for _ in sources], src_vocab, src_vocab)
        c = model.encode(batch.src.to(device), batch.src_lengths.to(device))  # (B, H)
        dec = model.decoder
        E = model.tgt_embed.embedding_dim
        w_e, w_c = dec.weight_ih_l0.split([E, c.shape[1]], dim=1)
        self.w_e = w_e.contiguous()  # a column slice: F.linear would copy it at every step
        self.w_hh, self.b_hh = dec.weight_hh_l0, dec.bias_hh_l0
        self.gi_c = F.linear(c, w_c, dec.bias_ih_l0)  # (B, 3H) per source
        self.c_out = model.out_c(c)  # (B, 2M) per source
        self.h0 = torch.tanh(model.init_state(c))  # (B, H)
        self.E = E

    def step(self, h: Tensor, prev: Tensor | None, source: Tensor) -> tuple[Tensor, Tensor]:
        """(new states (N, H), log-probabilities (N, V), float32 or float64) for rows of ``source`` (N,)."""
        gi = self.gi_c.index_select(0, source)
        if prev is not None:  # e(y_0) = 0 adds nothing at the first step
            gi = gi + F.linear(prev, self.w_e)
        gh = torch.mm(h, self.w_hh.t()).add_(self.b_hh)  # not addmm: on the CPU it copies the bias in first
        H = h.shape[1]
        r, z = torch.sigmoid(gi[:, : 2 * H] + gh[:, : 2 * H]).chunk(2, dim=1)
        n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = n + z * (h - n)  # (1 - z) n + z h
        e_prev = prev if prev is not None else h.new_zeros(h.shape[0], self.E)
        logits = self.model.readout(h, e_prev, self.c_out.index_select(0, source))
        # at least float32 (as training's cross-entropy); a float64 model keeps float64
        return h, torch.log_softmax(logits if logits.dtype == torch.float64 else logits.float(), dim=-1)


def _masks(vocab_size: int, ban_unk: bool, max_length: int, device: torch.device) -> list[Tensor]:
    """The words each step may not emit (True), per step 0..max_length: never ``<pad>`` (nor
    ``<unk>`` with ``ban_unk``); not ``</s>`` at step 0, as no phrase is empty (the phrase table
    has none, so the model never learnt what an empty target is worth); only ``</s>`` at the last."""
    banned = torch.zeros(vocab_size, dtype=torch.bool, device=device)
    banned[PAD_ID] = True
    if ban_unk:
        banned[UNK_ID] = True
    first = banned.clone()
    first[EOS_ID] = True
    last = torch.ones(vocab_size, dtype=torch.bool, device=device)
    last[EOS_ID] = False
    return [first] + [banned] * (max_length - 1) + [last]


def _batches(sources: list[list[str]], batch_size: int) -> Iterable[list[int]]:
    """Indices of ``sources`` in batches of similar length (less padding in the encoder)."""
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def beam_search(model: EncoderDecoder, src_vocab: Vocabulary, tgt_vocab: Vocabulary,
                sources: Sequence[str | Sequence[str]], beam: int = 5, nbest: int | None = None,
                max_length: int = DEFAULT_MAX_LENGTH, device: str | torch.device | None = None,
                batch_size: int = 64, ban_unk: bool = False) -> list[list[Hypothesis]]:
    """The ``nbest`` best targets the beam finds for each source, best first.

    Parameters:
        model: the encoder-decoder (put in eval mode here).
        src_vocab, tgt_vocab: its vocabularies (``load_model`` returns them).
        sources: source phrases, each a token list or a string of space-separated tokens
            (tokenised as the phrase table is); unknown words become ``<unk>``.
        beam: hypotheses kept per source (GroundHog's scheme, see the module docstring;
            1 = greedy decoding).
        nbest: finished hypotheses returned per source (default: ``beam``); at most ``beam``.
        max_length: target words before ``</s>``; past it only ``</s>`` may follow.
        device: None: the model's device; else ``auto``/``cpu``/``cuda`` (the model is moved).
        batch_size: sources decoded together (``batch_size * beam`` rows per step).
        ban_unk: never generate ``<unk>``.

    Returns, per source in input order, a list of ``Hypothesis(tokens, logp)`` sorted by
    ``logp`` descending (ties in the order they finished); ``logp`` includes ``</s>``.
    """
    nbest = beam if nbest is None else nbest
    _check(beam, nbest, max_length)
    device = _on_device(model, device)
    model.eval()
    token_lists = [_tokens(s) for s in sources]
    results: list[list[Hypothesis]] = [[] for _ in token_lists]
    for chunk in _batches(token_lists, batch_size):
        found = _beam_batch(_Decoder(model, src_vocab, [token_lists[i] for i in chunk], device), len(tgt_vocab),
                            beam, max_length, device, ban_unk)
        for i, hyps in zip(chunk, found, strict=True):
            hyps.sort(key=lambda h: -h[1])  # stable: equal scores stay in finishing order
            results[i] = [Hypothesis(tgt_vocab.decode(ids), logp) for ids, logp in hyps[:nbest]]
    return results


def _beam_batch(dec: _Decoder, V: int, K: int, max_length: int, device: torch.device, ban_unk: bool
                ) -> list[list[tuple[list[int], float]]]:
    """Finished (target ids, logp) per source of the batch ``dec`` encoded, unsorted."""
    B = dec.h0.shape[0]
    finished: list[list[tuple[list[int], float]]] = [[] for _ in range(B)]
    where = torch.arange(B, device=device)  # batch index of each source still decoding
    source = torch.arange(B, device=device).repeat_interleave(K)  # row -> source (into dec's tensors)
    h = dec.h0.repeat_interleave(K, dim=0)
    prev: Tensor | None = None
    # one live hypothesis per source to start with: the other slots are empty (-inf)
    # float64 sums: a float32 running sum drifts by ulps of the total (~4e-6 at -40)
    scores = torch.full((B, K), -math.inf, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    n_finished = torch.zeros(B, dtype=torch.long, device=device)
    history = torch.zeros(B, K, 0, dtype=torch.long, device=device)
    masks = _masks(V, ban_unk, max_length, device)
    slot = torch.arange(K, device=device)
    k_row = min(K, V)
    for t in range(max_length + 1):
        h, logp = dec.step(h, prev, source)
        logp = logp.masked_fill_(masks[t], -math.inf)
        b = scores.shape[0]
        # the K best of a source's K x V expansions are among the K best words of each row: rank
        # those K x K only (a full (b, K x V) float64 sum costs as much as the rest of the step)
        row_top, row_word = logp.topk(k_row, dim=1)
        candidates = (scores.unsqueeze(2) + row_top.view(b, K, k_row)).view(b, K * k_row)
        top, index = candidates.topk(K, dim=1)  # sorted, best first
        parent, token = index // k_row, row_word.view(b, K * k_row).gather(1, index)
        keep = (slot < (K - n_finished).unsqueeze(1)) & torch.isfinite(top)
        ends = keep & (token == EOS_ID)
        alive = keep & ~ends
        history = history.gather(1, parent.unsqueeze(2).expand(-1, -1, history.shape[2]))
        if bool(ends.any()):
            rows, slots = ends.nonzero(as_tuple=True)
            ids = history[rows, slots].tolist()
            values = top[rows, slots].tolist()
            for r, seq, value in zip(where[rows].tolist(), ids, values, strict=True):
                finished[r].append((seq, value))
            n_finished = n_finished + ends.sum(1)
        history = torch.cat([history, token.unsqueeze(2)], dim=2)
        scores = top.masked_fill(~alive, -math.inf)
        row = (torch.arange(b, device=device).unsqueeze(1) * K + parent).view(-1)
        h = h.index_select(0, row)
        prev = dec.model.tgt_embed(token.view(-1))
        done = (n_finished >= K) | ~alive.any(1)
        if bool(done.any()):
            going = ~done
            if not bool(going.any()):
                break
            rows_going = going.repeat_interleave(K)
            where, scores, n_finished, history = where[going], scores[going], n_finished[going], history[going]
            h, prev, source = h[rows_going], prev[rows_going], source[rows_going]
    return finished


def _uniforms(text: str, seed: int, n: int, steps: int) -> np.ndarray:
    """(n, steps) uniforms in [0, 1) fixed by the seed and the source's text alone."""
    import xxhash

    key = xxhash.xxh64_intdigest(text.encode("utf-8"))
    rng = np.random.default_rng([seed, key >> 32, key & 0xFFFFFFFF])
    return rng.random((n, steps))


@torch.no_grad()
def sample(model: EncoderDecoder, src_vocab: Vocabulary, tgt_vocab: Vocabulary,
           sources: Sequence[str | Sequence[str]], n: int = 10, seed: int = 0,
           max_length: int = DEFAULT_MAX_LENGTH, temperature: float = 1.0,
           device: str | torch.device | None = None, batch_size: int = 64,
           ban_unk: bool = False) -> list[list[Hypothesis]]:
    """``n`` targets per source drawn word by word from the model (ancestral sampling).

    Parameters:
        model, src_vocab, tgt_vocab, sources, max_length, device, batch_size, ban_unk: as for
            ``beam_search``.
        n: samples per source.
        seed: the same seed gives the same samples for the same source, model and options,
            whatever the other sources or the batching (the log-probabilities may differ in
            their last bits with the batch; on another kind of device, CPU or GPU, such bits
            can also move a draw that falls on the edge between two words).
        temperature: the draws come from softmax(logits / temperature); 1 = the model's own.

    Returns, per source in input order, its ``n`` samples in draw order as
    ``Hypothesis(tokens, logp)``; ``logp`` is the model's log p(target | source) (at
    temperature 1, whatever the temperature of the draws), ``</s>`` included.
    """
    if n < 1:
        raise UserError(f"the number of samples must be at least 1 (got {n})")
    if max_length < 1:
        raise UserError(f"max length must be at least 1 (got {max_length})")
    if not temperature > 0:
        raise UserError(f"temperature must be positive (got {temperature})")
    device = _on_device(model, device)
    model.eval()
    token_lists = [_tokens(s) for s in sources]
    results: list[list[Hypothesis]] = [[] for _ in token_lists]
    V = len(tgt_vocab)
    masks = _masks(V, ban_unk, max_length, device)
    for chunk in _batches(token_lists, batch_size):
        dec = _Decoder(model, src_vocab, [token_lists[i] for i in chunk], device)
        u = torch.as_tensor(np.concatenate([_uniforms(" ".join(token_lists[i]), seed, n, max_length + 1)
                                            for i in chunk]), device=device)  # (rows, steps) float64
        rows = len(chunk) * n
        source = torch.arange(len(chunk), device=device).repeat_interleave(n)
        where = torch.arange(rows, device=device)  # row of each sequence still going
        h = dec.h0.repeat_interleave(n, dim=0)
        prev: Tensor | None = None
        total = torch.zeros(rows, dtype=torch.float64, device=device)
        tokens = torch.full((rows, max_length + 1), PAD_ID, dtype=torch.long, device=device)
        lengths = torch.zeros(rows, dtype=torch.long, device=device)
        for t in range(max_length + 1):
            h, logp = dec.step(h, prev, source)
            logits = logp.double() if temperature == 1.0 else logp.double() / temperature
            # float64 CDF: a float32 cumulative sum over 15k words is off by ~1e-4 at its end
            probs = torch.softmax(logits.masked_fill(masks[t], -math.inf), dim=-1)
            cdf = probs.cumsum(-1)
            # inverse CDF; scaled by the last value so rounding never leaves u beyond it
            draw = (u[where, t] * cdf[:, -1]).unsqueeze(1)
            word = torch.searchsorted(cdf, draw, right=True).squeeze(1).clamp_(max=V - 1)
            total[where] += logp.gather(1, word.unsqueeze(1)).squeeze(1).double()
            tokens[where, t] = word
            lengths[where] += 1
            going = word != EOS_ID
            if not bool(going.any()):
                break
            where, h, source = where[going], h[going], source[going]
            prev = model.tgt_embed(word[going])
        ids, logps, lens = tokens.tolist(), total.tolist(), lengths.tolist()
        for j, i in enumerate(chunk):
            results[i] = [Hypothesis(tgt_vocab.decode(ids[r][: lens[r] - 1]), logps[r])
                          for r in range(j * n, (j + 1) * n)]
    return results


# ---------------------------------------------------------------------------------------------
# Table 2-3: the phrase table's top entries, the model's ranking of them, its own generations


@dataclass
class Entry:
    """One target phrase of a comparison list, with what is known of it."""

    target: str
    logp: float | None = None  # the model's log p(target | source)
    phi: float | None = None  # the table's phi(e|f), when the pair is in the table
    in_table: bool = False


@dataclass
class Comparison:
    """For one source: the table's top-k by phi(e|f), the table's entries ranked by the model,
    and the model's own beam n-best and samples."""

    source: str
    candidates: int  # the table's target phrases for this source
    table_top: list[Entry] = field(default_factory=list)
    model_top: list[Entry] = field(default_factory=list)
    beam: list[Entry] = field(default_factory=list)
    samples: list[Entry] = field(default_factory=list)


def phi_column(schema, name: str | None = None) -> str:
    """The score column holding phi(e|f): ``name`` if given, else Moses's third score.

    Parameters:
        schema: the phrase table's Arrow schema (its ``rnnenc.scores`` metadata gives the score
            columns in Moses order, else its ``score<N>`` columns).
        name: an explicit column name, checked to exist and to be a float.
    """
    import pyarrow as pa

    from rnnenc.pipeline.phrase_table import read_score_columns

    if name is not None:
        index = schema.get_field_index(name)
        if index < 0 or not pa.types.is_floating(schema.field(index).type):
            raise UserError(f"phrase table: no float score column '{name}' (columns: {', '.join(schema.names)})")
        return name
    scores = read_score_columns(schema)
    if len(scores) < 3:
        raise UserError(f"phrase table: {len(scores)} score column(s); phi(e|f) is Moses's third "
                        "(phi(f|e) lex(f|e) phi(e|f) lex(e|f)); name it with --phi-column")
    return scores[2]["name"]


def table_candidates(table: str | Path, sources: Iterable[str], phi: str | None = None,
                     batch_rows: int = 1 << 16) -> tuple[dict[str, list[tuple[str, float]]], str]:
    """The phrase table's (target, phi(e|f)) entries of each of ``sources``, and the column used.

    Parameters:
        table: a Parquet phrase table directory (``part-*.parquet``) or one Parquet file.
        sources: source phrases (tokens joined by single spaces, as in the table).
        phi: the score column to read (default: Moses's third score, see ``phi_column``).
        batch_rows: rows read at a time: the table is streamed, memory holds only the matches.

    Returns ``({source: [(target, phi), ...] in table order}, phi column name)``; a source the
    table lacks maps to an empty list. A (source, target) listed twice keeps its first row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from rnnenc.pipeline.phrase_table import list_parts

    wanted = list(dict.fromkeys(sources))
    found: dict[str, dict[str, float]] = {s: {} for s in wanted}
    value_set = pa.array(wanted, pa.string())
    column = None
    for part in list_parts(table):
        handle = pq.ParquetFile(part)
        column = phi_column(handle.schema_arrow, phi) if column is None else column
        for batch in handle.iter_batches(batch_size=batch_rows, columns=["source", "target", column]):
            hits = batch.filter(pc.is_in(batch.column(0), value_set=value_set))
            for s, t, v in zip(*(hits.column(i).to_pylist() for i in range(3)), strict=True):
                found[s].setdefault(t, float(v) if v is not None else math.nan)
    assert column is not None
    return {s: list(found[s].items()) for s in wanted}, column


def compare_with_table(model: EncoderDecoder, src_vocab: Vocabulary, tgt_vocab: Vocabulary,
                       table: str | Path, sources: Sequence[str], k: int = 5, beam: int = 5,
                       nbest: int | None = None, samples: int = 0, seed: int = 0,
                       max_length: int = DEFAULT_MAX_LENGTH, phi: str | None = None,
                       device: str | torch.device | None = None, batch_size: int = 64,
                       ban_unk: bool = False,
                       beams: Sequence[Sequence[Hypothesis]] | None = None) -> list[Comparison]:
    """The paper's Tables 2-3 for ``sources``: table top-k by phi(e|f), top-k of the table's
    entries by the model, the model's beam n-best and (``samples`` > 0) its samples.

    Parameters:
        model, src_vocab, tgt_vocab: the model and its vocabularies.
        table: the Parquet phrase table whose entries are compared.
        sources: source phrases (space-separated tokens, as in the table).
        k: entries of the two table lists per source.
        beam, nbest, max_length, device, batch_size, ban_unk: the beam search's
            (``beam_search``); nbest defaults to ``k`` (at most ``beam``).
        samples, seed: ancestral samples per source and their seed (``sample``); 0: none.
        phi: the score column holding phi(e|f) (default: the table's third score).
        beams: beam results already computed for ``sources`` (as ``beam_search`` returns
            them), to reuse instead of searching again.

    Returns one ``Comparison`` per source, in input order. Ties in phi or logp are broken by
    the target's text, so the lists are reproducible.
    """
    if k < 1:
        raise UserError(f"--top must be at least 1 (got {k})")
    sources = [" ".join(_tokens(s)) for s in sources]
    candidates, _column = table_candidates(table, sources, phi)
    pairs = [(s, t) for s in dict.fromkeys(sources) for t, _ in candidates[s]]
    logps = score_pairs(model, [s.split() for s, _ in pairs], [t.split() for _, t in pairs], src_vocab, tgt_vocab,
                        batch_size=256).tolist() if pairs else []
    model_score = dict(zip(pairs, logps, strict=True))
    if beams is None:
        beams = beam_search(model, src_vocab, tgt_vocab, sources, beam=beam, nbest=min(nbest or k, beam),
                            max_length=max_length, device=device, batch_size=batch_size, ban_unk=ban_unk)
    drawn = sample(model, src_vocab, tgt_vocab, sources, n=samples, seed=seed, max_length=max_length,
                   device=device, batch_size=batch_size, ban_unk=ban_unk) if samples else [[] for _ in sources]
    out = []
    for source, found, sampled in zip(sources, beams, drawn, strict=True):
        phis = dict(candidates[source])

        def entry(target: str, logp: float | None = None, source: str = source,
                  phis: Mapping[str, float] = phis) -> Entry:
            return Entry(target, model_score.get((source, target), logp), phis.get(target),
                         target in phis)

        by_phi = sorted(phis, key=lambda t: (-phis[t], t))[:k]
        by_model = sorted(phis, key=lambda t: (-model_score[(source, t)], t))[:k]
        out.append(Comparison(
            source=source, candidates=len(phis),
            table_top=[entry(t) for t in by_phi], model_top=[entry(t) for t in by_model],
            beam=[entry(" ".join(h.tokens), h.logp) for h in found],
            samples=[entry(" ".join(h.tokens), h.logp) for h in sampled]))
    return out


LISTS = (("table_top", "phrase table, top by phi(e|f)"), ("model_top", "phrase table, top by RNN log p"),
         ("beam", "RNN beam search"), ("samples", "RNN samples"))


def comparison_rows(comparisons: Sequence[Comparison]) -> list[dict[str, object]]:
    """The comparisons as flat rows: source, list, rank, target, logp, phi, in_table."""
    rows = []
    for comp in comparisons:
        for name, _title in LISTS:
            for rank, e in enumerate(getattr(comp, name), 1):
                rows.append({"source": comp.source, "list": name, "rank": rank, "target": e.target,
                             "logp": e.logp, "phi": e.phi, "in_table": e.in_table})
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def comparison_tsv(comparisons: Sequence[Comparison]) -> str:
    """Tab-separated text with a header line (``comparison_rows``' columns)."""
    lines = ["source\tlist\trank\ttarget\tlogp\tphi\tin_table"]
    for r in comparison_rows(comparisons):
        lines.append(f"{r['source']}\t{r['list']}\t{r['rank']}\t{r['target']}\t{_fmt(r['logp'], '.4f')}\t"
                     f"{_fmt(r['phi'], '.6g')}\t{int(bool(r['in_table']))}")
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def comparison_markdown(comparisons: Sequence[Comparison], title: str = "Target phrases: phrase table "
                        "and RNN Encoder-Decoder") -> str:
    """A markdown page: per source one table with the lists side by side, as the paper's Tables 2-3.

    Cells: ``target (score)``; the table lists show phi(e|f) and the model's log p, the RNN
    lists log p, with ``†`` on generated phrases the phrase table does not have.
    """
    used = [(name, head) for name, head in LISTS if any(getattr(c, name) for c in comparisons)]
    lines = [f"# {title}", "",
             "phi = the table's phi(e|f); log p = the RNN Encoder-Decoder's log p(e | f) (`</s>` included, "
             "no length normalisation); † = generated, not in the phrase table.", ""]
    for comp in comparisons:
        lines += [f"## {_md(comp.source)}", "", f"{comp.candidates} target phrase(s) in the table.", ""]
        lines.append("| rank | " + " | ".join(_md(head) for _, head in used) + " |")
        lines.append("|---:|" + "---|" * len(used))
        depth = max((len(getattr(comp, name)) for name, _ in used), default=0)
        for rank in range(depth):
            cells = []
            for name, _ in used:
                items = getattr(comp, name)
                if rank >= len(items):
                    cells.append("")
                    continue
                e = items[rank]
                if name in ("table_top", "model_top"):
                    score = f"phi {_fmt(e.phi, '.3g')}, log p {_fmt(e.logp, '.2f')}"
                else:
                    score = f"log p {_fmt(e.logp, '.2f')}" + ("" if e.in_table else " †")
                cells.append(f"{_md(e.target) or '(empty)'} ({score})")
            lines.append(f"| {rank + 1} | " + " | ".join(cells) + " |")
        if depth == 0:
            lines.append("| 1 |" + " |" * len(used))
        lines.append("")
    return "\n".join(lines)


__all__ = ["DEFAULT_MAX_LENGTH", "Comparison", "Entry", "Hypothesis", "beam_search", "compare_with_table",
           "comparison_markdown", "comparison_rows", "comparison_tsv", "phi_column", "sample",
           "table_candidates"]
