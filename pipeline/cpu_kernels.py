"""The CPU fast path of ``EncoderDecoder.token_logprobs``: the same equations, packed.

On CUDA ``nn.GRU`` is cuDNN's fused kernel over the padded batch. On the CPU torch's GRU has no
fused kernel, and the padded batch would run every pad step, the decoder's W_c c at every step
and every backward product per step as a thin GEMM. This module runs training and the CPU
forward pass instead (``EncoderDecoder.packed_cpu_gru = False`` turns it off):

- ``PackedGRU``: the recurrence over length-sorted, time-major packed steps (no padding step),
  each step ``pipeline.model.gru_step``, with a hand-written backward that forms dU as one GEMM;
- ``LogSoftmaxPick``: the log-softmax of the chosen words in the logits' own buffer;
- ``packed_token_logprobs``: the model's ``token_logprobs`` through both, c's products once
  per pair and every input projection one GEMM.

tests/test_model.py holds them to the plain path (``nn.GRU``), values and gradients.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from rnnenc.pipeline.model import gru_step

if TYPE_CHECKING:
    from rnnenc.pipeline.model import Batch, EncoderDecoder


class PackedGRU(torch.autograd.Function):
    """The GRU recurrence over length-sorted, time-major packed steps.

    ``apply(gi, h0, w_hh, b_hh, sizes, zero_h0)`` -> the states (N, H), packed like ``gi``.

    Args:
        gi: (N, 3H) every step's input projection W x + b_ih, computed beforehand in one GEMM;
            step t holds the first ``sizes[t]`` rows of the batch (sizes non-increasing), so no
            padding step is computed.
        h0: (sizes[0], H) the initial states.
        w_hh: (3H, H) U.
        b_hh: (3H,) b_hh.
        sizes: rows per step.
        zero_h0: ``h0`` is known to be 0: the first step's U h_0 is skipped.

    Each step is ``gru_step`` (``fused``: the rounding this kernel has always had). Backward
    runs per step only the product giving dh_{t-1}, then forms dU as one (3H x N) x (N x H)
    GEMM over all steps (not one thin GEMM per step).
    """

    @staticmethod
    def forward(ctx, gi: Tensor, h0: Tensor, w_hh: Tensor, b_hh: Tensor, sizes: list[int],
                zero_h0: bool) -> Tensor:
        N, H = gi.shape[0], w_hh.shape[1]
        out = gi.new_empty(N, H)
        # what backward reads, per step; contiguous per step (their layout is part of the bits)
        rz_all = gi.new_empty(N, 2 * H)  # sigmoid(r), sigmoid(z)
        n_all = gi.new_empty(N, H)  # n
        ghn_all = gi.new_empty(N, H)  # U_n h_prev + b_hn
        gh = gi.new_empty(sizes[0] if sizes else 0, 3 * H)  # U h + b_hh of the step under way
        start = 0
        h_prev: Tensor | None = None if zero_h0 else h0
        for size in sizes:
            rows = slice(start, start + size)
            h_prev = gru_step(gi[rows], None if h_prev is None else h_prev[:size], w_hh, b_hh, fused=True,
                              gh=gh[:size], rz=rz_all[rows], n=n_all[rows], out=out[rows])
            ghn_all[rows].copy_(gh[:size, 2 * H:])
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


class LogSoftmaxPick(torch.autograd.Function):
    """log softmax(x W^T + b)[target] per row, the logits' buffer reused in place.

    ``apply(x, weight, bias, target)`` -> (N,) log-probabilities.

    Args:
        x: (N, R) inputs (G_r m_t).
        weight: (V, R) G_o.
        bias: (V,) b_o.
        target: (N,) the words whose log-probability to return.

    Forward: one GEMM into the (N, V) logits, the bias, log-softmax in place, pick. Backward: the
    saved log-probabilities become the softmax in place, d logits = g (onehot - softmax), then
    the two GEMMs and the bias sum. No (N, V) buffer beyond the logits, no zero-filled one-hot
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
            raise RuntimeError("LogSoftmaxPick: backward runs once (its buffer is reused in place)")
        ctx.used = True
        x, weight, target, logp = ctx.saved_tensors
        d = logp.exp_().mul_(-grad.unsqueeze(1))  # -g softmax
        rows = torch.arange(len(target), device=target.device)
        d.index_put_((rows, target), grad, accumulate=True)  # + g onehot
        d_x = d @ weight if ctx.needs_input_grad[0] else None
        d_w = d.t() @ x if ctx.needs_input_grad[1] else None
        d_b = d.sum(0) if ctx.needs_input_grad[2] else None
        return d_x, d_w, d_b, None


def packed_token_logprobs(model: EncoderDecoder, batch: Batch) -> tuple[Tensor, Tensor]:
    """``model.token_logprobs(batch)`` on the CPU through ``PackedGRU`` and ``LogSoftmaxPick``.

    Each side is sorted by length (longest first) and packed time-major, so step t runs only
    the sequences still going; W_c c + b_i and O_c c are computed once per pair; the encoder's
    first step skips U h_0 (h_0 = 0). Every input projection is one GEMM. Rows are gathered with
    ``index_select`` (its backward, ``index_add_``, is ~3x faster on the CPU than advanced
    indexing's ``index_put_`` with repeated indices).

    Args:
        model: the model, on the CPU.
        batch: padded pairs (``pipeline.model.make_batch``), on the CPU.

    Returns:
        As ``EncoderDecoder.token_logprobs``: (log p of each real target token, pair of each),
        in row-major order.
    """
    src, src_lengths, tgt, tgt_lengths = batch.src, batch.src_lengths, batch.tgt, batch.tgt_lengths
    B, E, H = src.shape[0], model.config.embedding, model.config.hidden
    enc, dec = model.encoder, model.decoder
    # encoder: c = the state after each source's last token
    order = torch.argsort(src_lengths, descending=True, stable=True)
    lengths = src_lengths[order]
    live = torch.arange(src.shape[1]).unsqueeze(1) < lengths  # (S, B) time-major
    sizes = live.sum(1)
    gi = F.linear(model.src_embed(src[order].t()[live]), enc.weight_ih_l0, enc.bias_ih_l0)
    states = PackedGRU.apply(gi, gi.new_zeros(B, H), enc.weight_hh_l0, enc.bias_hh_l0, sizes.tolist(), True)
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
    prev = model.tgt_embed(tgt_sorted[:-1][live[1:]])  # e(y_{t-1}) of the rows of steps t >= 1
    # step 0 holds every pair and e(y_0) = 0: its rows are W_c c + b_i alone
    gi = torch.cat([gi_c, gi_c.index_select(0, row[B:]) + F.linear(prev, w_e)])
    h0 = torch.tanh(model.init_state(c))
    states = PackedGRU.apply(gi, h0, dec.weight_hh_l0, dec.bias_hh_l0, t_sizes.tolist(), False)
    prev = torch.cat([prev.new_zeros(B, E), prev])
    rank = model.readout_rank(states, prev, model.out_c(c).index_select(0, row))
    logp = LogSoftmaxPick.apply(rank, model.out_vocab.weight, model.out_vocab.bias, tgt_sorted[live])
    # back to row-major order: packed (t, i) is token t of pair t_order[i]
    step = torch.arange(tgt.shape[1]).unsqueeze(1).expand(live.shape)[live]
    pair_of = t_order[row]
    position = (torch.cumsum(tgt_lengths, 0) - tgt_lengths)[pair_of] + step
    logp = torch.empty_like(logp).index_copy(0, position, logp)
    return logp, torch.arange(B).repeat_interleave(tgt_lengths)


__all__ = ["LogSoftmaxPick", "PackedGRU", "packed_token_logprobs"]
