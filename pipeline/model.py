"""The RNN Encoder-Decoder of Cho et al. (2014), read top to bottom next to the paper.

Shapes: B pairs, S source steps, T target steps (incl. the end-of-phrase ``</s>``), E the
embedding size (the paper's rank-100 input factorisation), H the GRU size, M the maxout units.

Encoder  h_t = GRU(e(x_t), h_{t-1}),  c = h_S  (last hidden state of the source + ``</s>``)
Decoder  h'_0 = tanh(W c + b)
         h'_t = GRU([e(y_{t-1}); c], h'_{t-1})          e(y_0) = 0
         c enters the input, update and reset signals through the input matrix: this is
         GroundHog's / dl4mt's conditioning (c projected without bias, outside the reset
         gate), and one fused ``nn.GRU`` call runs the whole teacher-forced decoder.
Output   s_t = O_h h'_t + O_y e(y_{t-1}) + O_c c        (2M units)
         m_t = maxout over adjacent pairs of s_t           (M units)
         p(y_t | y_<t, x) = softmax(G_o (G_r m_t) + b_o)   (rank-E factorised softmax)
log p(y | x) = sum over target tokens, ``</s>`` included, no length normalisation
(GroundHog ``score.py``).

GRU form: torch's, i.e. n = tanh(W_n x + b_in + r * (U_n h + b_hn)), the reset applied after
U (cuDNN, dl4mt, the paper's first arXiv version); see REFERENCE.md §1-2.

Sources and targets both end with ``</s>`` (GroundHog appends it to both sides).

Two implementations of the same equations (``token_logprobs``): on CUDA, fused ``nn.GRU``
calls (cuDNN) over the padded batch; on the CPU, where torch's GRU has no fused kernel, the
packed path (``_PackedGRU``, ``_LogSoftmaxPick``): steps over length-sorted sequences only, c's
products once per pair, every input projection and each dU one GEMM, the log-softmax in the
logits' own buffer. ``EncoderDecoder.packed_cpu_gru = False`` runs the CPU through ``nn.GRU`` too.
"""

from __future__ import annotations

import dataclasses
import io
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.errors import UserError
from pipeline.vocab import EOS_ID, PAD_ID, Vocabulary

MODEL_FORMAT = "rnnenc-encdec-1"


@dataclass
class EncoderDecoderConfig:
    """Sizes of the model; the defaults are the paper's (vocabulary sizes include specials)."""

    src_vocab_size: int = 15_003
    tgt_vocab_size: int = 15_003
    embedding: int = 100  # word embeddings = rank of the input factorisation
    hidden: int = 1000  # GRU units, encoder and decoder
    maxout: int = 500  # maxout units of the deep output
    maxout_pieces: int = 2
    output_rank: int = 100  # rank of the factorised softmax
    init_std: float = 0.01  # std of the Gaussian initial weights

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Batch:
    """Padded id tensors; every row of ``src``/``tgt`` ends with ``</s>`` then ``<pad>``s."""

    src: Tensor  # (B, S) long
    src_lengths: Tensor  # (B,) long, incl. </s>
    tgt: Tensor  # (B, T) long
    tgt_lengths: Tensor  # (B,) long, incl. </s>

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in dataclasses.astuple(self)))

    @property
    def n_target_tokens(self) -> int:
        return int(self.tgt_lengths.sum())


def pad_ids(sequences: Sequence[Sequence[int]]) -> tuple[Tensor, Tensor]:
    """(padded (B, L) long tensor, lengths (B,)) from lists of ids."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if len(sequences) == 0 or int(lengths.min()) == 0:
        raise ValueError("cannot batch an empty sequence")
    padded = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, seq in enumerate(sequences):
        padded[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return padded, lengths


def make_batch(sources: Sequence[Sequence[str]], targets: Sequence[Sequence[str]],
               src_vocab: Vocabulary, tgt_vocab: Vocabulary) -> Batch:
    """Token lists -> Batch: unknown words -> ``<unk>``, ``</s>`` appended to both sides."""
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    src, src_lengths = pad_ids([src_vocab.encode(s, add_eos=True) for s in sources])
    tgt, tgt_lengths = pad_ids([tgt_vocab.encode(t, add_eos=True) for t in targets])
    return Batch(src, src_lengths, tgt, tgt_lengths)


class _PackedGRU(torch.autograd.Function):
    """The GRU recurrence over length-sorted, time-major packed steps (the CPU training path).

    ``gi`` (N, 3H) holds every step's input projection W x + b_i, computed beforehand in one
    GEMM; step t runs the first ``sizes[t]`` rows (sizes non-increasing), so no padding step
    is computed. Backward runs per step only the product giving dh_{t-1}, then forms dU as
    one (3H x N) x (N x H) GEMM over all steps (not one thin GEMM per step). With
    ``zero_h0`` the initial state is known to be 0 and the first step's U h_0 is skipped.
    Same equations as ``nn.GRU``: n = tanh(gi_n + r * (U_n h + b_hn)), h = (1 - z) n + z h_prev.
    """

    @staticmethod
    def forward(ctx, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, sizes: list[int],
                zero_h0: bool) -> Tensor:
        N, H = gi.shape[0], w_hh.shape[1]
        out = gi.new_empty(N, H)
        rz_all = gi.new_empty(N, 2 * H)  # sigmoid(r), sigmoid(z)
        n_all = gi.new_empty(N, H)  # n
        ghn_all = gi.new_empty(N, H)  # U_n h_prev + b_hn
        start = 0
        h_prev = h0
        for t, size in enumerate(sizes):
            rows = slice(start, start + size)
            h_prev = h_prev[:size]
            gh = b_hh.expand(size, 3 * H) if t == 0 and zero_h0 else torch.addmm(b_hh, h_prev, w_hh.t())
            g = gi[rows]
            rz = torch.add(g[:, : 2 * H], gh[:, : 2 * H], out=rz_all[rows]).sigmoid_()
            ghn = ghn_all[rows]
            ghn.copy_(gh[:, 2 * H:])
            n = torch.addcmul(g[:, 2 * H:], rz[:, :H], ghn, out=n_all[rows]).tanh_()
            h_prev = torch.lerp(n, h_prev, rz[:, H:], out=out[rows])  # n + z (h_prev - n)
            start += size
        ctx.sizes, ctx.zero_h0 = sizes, zero_h0
        ctx.save_for_backward(h0, w_hh, out, rz_all, n_all, ghn_all)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor) -> tuple[Tensor | None, ...]:
        h0, w_hh, out, rz_all, n_all, ghn_all = ctx.saved_tensors
        sizes, zero_h0 = ctx.sizes, ctx.zero_h0
        N, H = out.shape
        d_out = d_out.contiguous()
        dgh_all = out.new_empty(N, 3 * H)  # d(U h + b_h): r, z, n (= d pre-n * r)
        dan_all = out.new_empty(N, H)  # d(pre-activation of n) = d(gi_n)
        starts = [0]
        for size in sizes[:-1]:
            starts.append(starts[-1] + size)
        carry = out.new_zeros(sizes[0], H)  # dL/dh_t from later steps; rows past a step's size stay 0
        for t in range(len(sizes) - 1, -1, -1):
            size, start = sizes[t], starts[t]
            rows = slice(start, start + size)
            h_prev = h0[:size] if t == 0 else out[starts[t - 1]: starts[t - 1] + size]
            dh = d_out[rows] + carry[:size]
            r, z = rz_all[rows, :H], rz_all[rows, H:]
            n = n_all[rows]
            dgh = dgh_all[rows]
            da_n = torch.mul(dh * (1 - z), 1 - n * n, out=dan_all[rows])
            torch.mul(da_n * ghn_all[rows], r * (1 - r), out=dgh[:, :H])
            torch.mul(dh * (h_prev - n), z * (1 - z), out=dgh[:, H: 2 * H])
            torch.mul(da_n, r, out=dgh[:, 2 * H:])
            if t == 0 and zero_h0:
                break
            carry[:size] = torch.addmm(dh * z, dgh, w_hh)
        d_gi = torch.cat([dgh_all[:, : 2 * H], dan_all], dim=1)
        d_h0 = d_w = d_b = None
        if ctx.needs_input_grad[2]:
            # one GEMM over every step that multiplied U (h_prev of step t: first rows of step t-1)
            prev = torch.cat([torch.arange(starts[t - 1], starts[t - 1] + sizes[t]) for t in range(1, len(sizes))]
                             + [torch.zeros(0, dtype=torch.long)]).to(out.device)
            h_prev_all = out.index_select(0, prev)
            if zero_h0:
                d_w = dgh_all[sizes[0]:].t() @ h_prev_all
            else:
                d_w = dgh_all.t() @ torch.cat([h0[: sizes[0]], h_prev_all])
        if ctx.needs_input_grad[1] and not zero_h0:
            d_h0 = carry
        if ctx.needs_input_grad[3]:
            d_b = dgh_all.sum(0)
        return d_gi, d_h0, d_w, d_b, None, None


class _LogSoftmaxPick(torch.autograd.Function):
    """log softmax(x W^T + b)[target] per row, the logits' buffer reused in place (the CPU path).

    Forward: one GEMM into the (N, V) logits, the bias, log-softmax in place, pick. Backward: the saved
    log-probabilities become the softmax in place, d logits = g (onehot - softmax), then the
    two GEMMs and the bias sum. No (N, V) buffer beyond the logits, no zero-filled one-hot
    gradient: at 15k words these memory passes cost about as much as a GEMM. One backward only.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, target: Tensor) -> Tensor:
        # mm then the bias: addmm broadcasts the bias into the (N, V) output first and then runs
        # its GEMM at about 100 GFLOP/s here, against about 180 for mm + add_ (2 cores, AVX-512)
        logp = torch.mm(x, weight.t()).add_(bias)
        torch._log_softmax(logp, 1, False, out=logp)
        ctx.save_for_backward(x, weight, target, logp)
        ctx.used = False
        return logp.gather(1, target.unsqueeze(1)).squeeze(1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        if ctx.used:
            raise RuntimeError("_LogSoftmaxPick: backward runs once (its buffer is reused in place)")
        ctx.used = True
        x, weight, target, logp = ctx.saved_tensors
        d = logp.exp_().mul_(-grad.unsqueeze(1))  # -g softmax
        rows = torch.arange(len(target), device=target.device)
        d.index_put_((rows, target), grad, accumulate=True)  # + g onehot
        d_x = d @ weight if ctx.needs_input_grad[0] else None
        d_w = d.t() @ x if ctx.needs_input_grad[1] else None
        d_b = d.sum(0) if ctx.needs_input_grad[2] else None
        return d_x, d_w, d_b, None


class EncoderDecoder(nn.Module):
    #: run ``token_logprobs`` on CPU tensors through the packed recurrences (``_PackedGRU``);
    #: False: through ``nn.GRU`` as on CUDA (cuDNN), the same equations
    packed_cpu_gru: bool = True

    def __init__(self, config: EncoderDecoderConfig, *, initialise: bool = True):
        """``initialise=False`` leaves torch's default initialisation, for weights about to be loaded
        (the paper's orthogonal initialisation costs seconds of SVDs at the paper's size)."""
        super().__init__()
        self.config = config
        E, H, M, K, R = (config.embedding, config.hidden, config.maxout, config.maxout_pieces,
                         config.output_rank)
        # encoder
        self.src_embed = nn.Embedding(config.src_vocab_size, E, padding_idx=PAD_ID)
        self.encoder = nn.GRU(E, H, batch_first=True)
        # decoder: input [e(y_{t-1}); c], initial state tanh(W c + b)
        self.tgt_embed = nn.Embedding(config.tgt_vocab_size, E, padding_idx=PAD_ID)
        self.init_state = nn.Linear(H, H)
        self.decoder = nn.GRU(E + H, H, batch_first=True)
        # deep output: one bias for s; O_y and O_c without
        self.out_h = nn.Linear(H, K * M)
        self.out_y = nn.Linear(E, K * M, bias=False)
        self.out_c = nn.Linear(H, K * M, bias=False)
        self.out_rank = nn.Linear(M, R, bias=False)
        self.out_vocab = nn.Linear(R, config.tgt_vocab_size)
        if initialise:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Weights N(0, init_std^2) (the paper: 0.01); recurrent matrices orthogonal per gate; biases 0."""
        for name, p in self.named_parameters():
            if name.endswith("weight_hh_l0"):
                with torch.no_grad():
                    for block in p.chunk(3, dim=0):  # r, z, n gates
                        u, _, _ = torch.linalg.svd(torch.randn(block.shape, dtype=torch.float64))
                        block.copy_(u.to(p.dtype))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, self.config.init_std)
            else:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.src_embed.weight[PAD_ID].zero_()
            self.tgt_embed.weight[PAD_ID].zero_()

    def encode(self, src: Tensor, src_lengths: Tensor) -> Tensor:
        """c: (B, H), the encoder's hidden state after the last real source token."""
        states, _ = self.encoder(self.src_embed(src))  # (B, S, H); GRU is causal, so pads after
        return states[torch.arange(src.shape[0], device=src.device), src_lengths - 1]  # don't matter

    def decode(self, c: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoder states h'_t (B, T, H) and the previous words' embeddings (B, T, E)."""
        B, T = tgt.shape
        prev = F.pad(self.tgt_embed(tgt[:, :-1]), (0, 0, 1, 0))  # e(y_0) = 0
        inputs = torch.cat([prev, c.unsqueeze(1).expand(B, T, c.shape[-1])], dim=-1)
        h0 = torch.tanh(self.init_state(c)).unsqueeze(0)
        states, _ = self.decoder(inputs, h0)
        return states, prev

    def readout(self, states: Tensor, prev: Tensor, c_out: Tensor) -> Tensor:
        """Logits over the target vocabulary from h'_t, e(y_{t-1}) and O_c c (any leading dims)."""
        return self.out_vocab(self.readout_rank(states, prev, c_out))

    def readout_rank(self, states: Tensor, prev: Tensor, c_out: Tensor) -> Tensor:
        """G_r m_t: the readout up to the rank-E factor of the softmax."""
        s = self.out_h(states) + self.out_y(prev) + c_out
        m = s.unflatten(-1, (self.config.maxout, self.config.maxout_pieces)).amax(-1)
        return self.out_rank(m)

    def token_logprobs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(log p of each real target token (N,), pair index of each (N,)), in row-major order.

        The readout and the softmax run only over real (non-pad) positions: on the CPU the
        rank-100 x 15k softmax, not the recurrence, is the costly part.
        """
        if self.packed_cpu_gru and batch.src.device.type == "cpu":
            return self._token_logprobs_packed(batch)
        c = self.encode(batch.src, batch.src_lengths)
        states, prev = self.decode(c, batch.tgt)
        mask = torch.arange(batch.tgt.shape[1], device=c.device) < batch.tgt_lengths.unsqueeze(1)
        pair = torch.arange(c.shape[0], device=c.device).repeat_interleave(batch.tgt_lengths)
        logits = self.readout(states[mask], prev[mask], self.out_c(c)[pair])
        return -F.cross_entropy(logits.float(), batch.tgt[mask], reduction="none"), pair

    def _token_logprobs_packed(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """``token_logprobs`` on the CPU: packed recurrences (``_PackedGRU``), same equations.

        Each side is sorted by length (longest first) and packed time-major, so step t runs
        only the sequences still going; W_c c + b_i and O_c c are computed once per pair; the
        encoder's first step skips U h_0 (h_0 = 0). Every input projection is one GEMM. Rows
        are gathered with ``index_select`` (its backward, ``index_add_``, is ~3x faster on the
        CPU than advanced indexing's ``index_put_`` with repeated indices).
        """
        src, src_lengths, tgt, tgt_lengths = batch.src, batch.src_lengths, batch.tgt, batch.tgt_lengths
        B, E, H = src.shape[0], self.config.embedding, self.config.hidden
        enc, dec = self.encoder, self.decoder
        # encoder: c = the state after each source's last token
        order = torch.argsort(src_lengths, descending=True, stable=True)
        lengths = src_lengths[order]
        live = torch.arange(src.shape[1]).unsqueeze(1) < lengths  # (S, B) time-major
        sizes = live.sum(1)
        gi = F.linear(self.src_embed(src[order].t()[live]), enc.weight_ih_l0, enc.bias_ih_l0)
        states = _PackedGRU.apply(gi, gi.new_zeros(B, H), enc.weight_hh_l0, enc.bias_hh_l0,
                                  sizes.tolist(), True)
        starts = torch.cumsum(sizes, 0) - sizes
        c_sorted = states.index_select(0, starts[lengths - 1] + torch.arange(B))
        # decoder, targets sorted by length: input [e(y_{t-1}); c], h'_0 = tanh(W c + b)
        t_order = torch.argsort(tgt_lengths, descending=True, stable=True)
        t_lengths = tgt_lengths[t_order]
        live = torch.arange(tgt.shape[1]).unsqueeze(1) < t_lengths  # (T, B)
        t_sizes = live.sum(1)
        c = c_sorted.index_select(0, torch.argsort(order)[t_order])  # (B, H), decoder order
        row = torch.arange(B).expand(live.shape)[live]  # packed row -> pair (decoder order)
        tgt_sorted = tgt[t_order].t()  # (T, B)
        w_e, w_c = dec.weight_ih_l0.split([E, H], dim=1)
        gi_c = F.linear(c, w_c, dec.bias_ih_l0)  # (B, 3H), once per pair
        prev = self.tgt_embed(tgt_sorted[:-1][live[1:]])  # e(y_{t-1}) of the rows of steps t >= 1
        # step 0 holds every pair and e(y_0) = 0: its rows are W_c c + b_i alone
        gi = torch.cat([gi_c, gi_c.index_select(0, row[B:]) + F.linear(prev, w_e)])
        h0 = torch.tanh(self.init_state(c))
        states = _PackedGRU.apply(gi, h0, dec.weight_hh_l0, dec.bias_hh_l0, t_sizes.tolist(), False)
        prev = torch.cat([prev.new_zeros(B, E), prev])
        rank = self.readout_rank(states, prev, self.out_c(c).index_select(0, row))
        logp = _LogSoftmaxPick.apply(rank, self.out_vocab.weight, self.out_vocab.bias, tgt_sorted[live])
        # back to row-major order: packed (t, i) is token t of pair t_order[i]
        step = torch.arange(tgt.shape[1]).unsqueeze(1).expand(live.shape)[live]
        pair_of = t_order[row]
        position = (torch.cumsum(tgt_lengths, 0) - tgt_lengths)[pair_of] + step
        logp = torch.empty_like(logp).index_copy(0, position, logp)
        return logp, torch.arange(B).repeat_interleave(tgt_lengths)

    def forward(self, batch: Batch) -> Tensor:
        """log p(target | source) per pair (B,), summed over tokens incl. ``</s>``."""
        logp, pair = self.token_logprobs(batch)
        return torch.zeros(batch.tgt.shape[0], dtype=logp.dtype, device=logp.device).index_add_(0, pair, logp)

    def loss(self, batch: Batch) -> Tensor:
        """Summed token negative log-likelihood of the batch (the paper's training cost)."""
        logp, _ = self.token_logprobs(batch)
        return -logp.sum()


def model_flops(config: EncoderDecoderConfig, src_tokens: int, tgt_tokens: int, pairs: int) -> int:
    """FLOPs (2 m n k per (m x k)(k x n) product) of one forward pass's matrix products.

    Counted over real tokens only (no padding), each product the equations need once:

    - per source token: W e(x_t) (3H x E); per source token after the first: U h_{t-1}
      (3H x H; h_0 = 0, so the first step's is not a product to make);
    - per pair: tanh(W c + b) (H x H), the decoder's W_c c (3H x H) and O_c c (2M x H): c is
      the same at every target step, so these are computed once per pair (on CUDA the fused
      ``nn.GRU`` recomputes W_c c at every step: extra work, not counted);
    - per target token: U h'_{t-1} (3H x H), O_h h'_t (2M x H), G_r m_t (R x M), G_o (V x R);
      per target token after the first: W_e e(y_{t-1}) (3H x E) and O_y e(y_{t-1}) (2M x E)
      (e(y_0) = 0).

    Embedding lookups, gates, maxout and softmax are not matrix products and are not counted.
    Training: every product above has both a weight and an input that need gradients (the
    inputs lead back to the embeddings), so its backward is two products of the same size
    and an update costs 3x this.
    """
    E, H, M, K, R, V = (config.embedding, config.hidden, config.maxout, config.maxout_pieces,
                        config.output_rank, config.tgt_vocab_size)
    encoder = src_tokens * 3 * H * E + (src_tokens - pairs) * 3 * H * H
    decoder = pairs * (H * H + 3 * H * H) + tgt_tokens * 3 * H * H + (tgt_tokens - pairs) * 3 * H * E
    output = (pairs * H * K * M + tgt_tokens * (H * K * M + M * R + R * V)
              + (tgt_tokens - pairs) * E * K * M)
    return 2 * (encoder + decoder + output)


def save_model(path: str | os.PathLike, model: EncoderDecoder, src_vocab: Vocabulary, tgt_vocab: Vocabulary,
               extra: dict[str, Any] | None = None) -> None:
    """One file with the config, both vocabularies and the weights (on CPU), written atomically."""
    path = Path(path)
    payload = {
        "format": MODEL_FORMAT,
        "config": model.config.to_dict(),
        "src_vocab": src_vocab.to_dict(),
        "tgt_vocab": tgt_vocab.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[EncoderDecoder, Vocabulary, Vocabulary]:
    """(model in eval mode on ``device``, source vocabulary, target vocabulary)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    try:
        payload = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise UserError(f"{path}: not a readable rnnenc model ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise UserError(f"{path}: not an rnnenc model file (format {MODEL_FORMAT} expected)")
    config = EncoderDecoderConfig(**payload["config"])
    src_vocab = Vocabulary.from_dict(payload["src_vocab"])
    tgt_vocab = Vocabulary.from_dict(payload["tgt_vocab"])
    if (len(src_vocab), len(tgt_vocab)) != (config.src_vocab_size, config.tgt_vocab_size):
        raise UserError(f"{path}: vocabulary sizes do not match the model's config")
    model = EncoderDecoder(config, initialise=False)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), src_vocab, tgt_vocab


@torch.no_grad()
def score_pairs(model: EncoderDecoder, sources: Sequence[Sequence[str]], targets: Sequence[Sequence[str]],
                src_vocab: Vocabulary, tgt_vocab: Vocabulary, batch_size: int = 256) -> Tensor:
    """log p(target | source) for each pair (float32 CPU tensor), in input order."""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(sources), batch_size):
        batch = make_batch(sources[start:start + batch_size], targets[start:start + batch_size],
                           src_vocab, tgt_vocab).to(device)
        scores.append(model(batch).float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


__all__ = ["EOS_ID", "Batch", "EncoderDecoder", "EncoderDecoderConfig", "load_model", "make_batch",
           "model_flops", "pad_ids", "save_model", "score_pairs"]
