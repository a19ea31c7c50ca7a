"""Rescoring a Parquet phrase table with the RNN Encoder-Decoder: the paper's RNN and +WP features.

For every pair the stage adds two float32 columns (names configurable):

``rnn_logp``  log p(target | source) under the model, summed over the target tokens including
              ``</s>``, no length normalisation (GroundHog ``score.py``);
``rnn_unk``   the "+WP" feature: source tokens missing from the source vocabulary plus target
              tokens missing from the target vocabulary.

Both are declared with domain ``log`` in the ``rnnenc.scores`` schema metadata, so the Moses
export writes exp(value) and Moses, which takes the log of every score, sees the values as is.

How it runs fast. Pairs are cut into groups of ``group_rows`` consecutive pairs (a phrase
table sorted by source repeats each source many times): each distinct source is encoded once
per group and its c, its decoder input projection W_c c + b, its initial state tanh(W c + b)
and its readout term O_c c are reused by every target of that source. Sources are batched by
exact length and targets by exact length, so no step runs over padding; the decoder is
unrolled here on the model's own parameters (``model.decoder``'s weights split into the
embedding and c parts) because the c-dependent part of the input is constant over time. Only
the recurrence runs step by step (one B x H x 3H product per step, the embeddings' input
projections of all steps being one product); the deep output then runs once over all B x T
positions of a batch ([O_h O_y] on [h'_t; e(y_{t-1})] as one product), and the rank-R x V
logits and their log-softmax in chunks of ``readout_rows`` rows (64 x 15k floats = 3.8 MB, in
L2 beside the factor). On the CPU the products write into buffers reused between batches (a
fresh multi-MB tensor is an mmap whose page faults cost a good part of the product), with the
biases folded into the products or the gates' in-place updates; the encoder is unrolled the
same way (h_0 = 0: no product at its first step), and c's three projections are one product.

Why the results do not depend on partitioning, by construction. A float32 product's bits can
depend on its shape and on which rows share it (how BLAS blocks a GEMM differs between CPUs:
MKL runs other kernels on AMD than on Intel), so no promise may rest on a row's bits being
independent of its company. Instead the company is fixed: the table's rows, in their global
order (parts sorted by name, row groups, rows), are cut into *groups* of ``group_rows``
consecutive rows, from row 0; a group is scored on its own (its distinct sources encoded,
its targets bucketed by length, every bucket's last batch padded with copies of its first row
to a multiple of 16 rows), and work units are whole groups. A pair therefore always meets the
same pairs in the same GEMM shapes, whatever the files, row groups, units or workers, and its
bits follow from the table, the model and the batch configuration alone (on one machine and
one thread count per worker: Dask runs one). Only the group size and the batch sizes change
the last bits, and they are part of the run's identity.

Work units. Unit ``u`` covers the global rows [u*R, (u+1)*R), R being ``rows_per_unit`` rounded
up to whole groups; it may span several input parts. It writes ``part-uuuuu.parquet``
atomically (temporary file, rename) and then its record ``.units/part-uuuuu.json`` (the row
ranges it read, with each file's size and mtime, and its counts). A unit whose part and record
exist and whose record matches is done: an interrupted run resumes there. Orchestration (Dask,
manifests) lives in ``workflows/rescore.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from pipeline.errors import UserError
from pipeline.model import EncoderDecoder, EncoderDecoderConfig, load_model
from pipeline.phrase_table import (
    RESERVED_COLUMNS,
    list_parts,
    read_score_columns,
    with_score_columns,
    with_scores_metadata,
)
from pipeline.vocab import EOS_ID, UNK_ID, Vocabulary

log = logging.getLogger("rnnenc")

UNITS_DIR = ".units"
REQUIRED_COLUMNS = ("source", "target")
# Batch sizes by measurement (benchmarks/rescore.py, whose docstring has the grid): on the CPU
# the readout's vocabulary-wide logits must stay in cache, so the readout runs in chunks
# smaller than the decoder batch; a decoder batch of 512 feeds the recurrence's product better
# than 256, 1024 no longer helps.
CPU_BATCH = {"encoder_batch": 256, "decoder_batch": 512, "readout_rows": 64}
GPU_BATCH = {"encoder_batch": 2048, "decoder_batch": 2048, "readout_rows": 2048}


@dataclass(frozen=True)
class RescoreConfig:
    """What to compute and how; every field that can change a float is part of the run's identity."""

    model: str
    logp_column: str = "rnn_logp"
    unk_column: str = "rnn_unk"
    device: str = "auto"  # auto (CUDA when the worker has it) | cpu | cuda | cuda:N
    encoder_batch: int | None = None  # distinct sources per encoder batch (None: by device)
    decoder_batch: int | None = None  # pairs per decoder batch
    readout_rows: int | None = None  # rows per vocabulary-wide softmax chunk (divides decoder_batch)
    group_rows: int = 8192  # consecutive rows of the table scored together (the determinism unit)
    bf16: bool = True  # GPU only: bf16 autocast for the matrix products
    threads: int | None = None  # torch intra-op threads while scoring (None: leave as is)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if not self.logp_column or not self.unk_column or self.logp_column == self.unk_column:
            raise UserError("rescore: the two new column names must be distinct and non-empty")
        for name in ("encoder_batch", "decoder_batch", "readout_rows", "group_rows", "threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserError(f"rescore: {name.replace('_', '-')} must be at least 1")
        if self.decoder_batch and self.readout_rows and self.decoder_batch % self.readout_rows:
            raise UserError("rescore: --readout-rows must divide --decoder-batch")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"rescore: device '{device}' requested but CUDA is not available on this worker")
    return resolved


def batch_sizes(config: RescoreConfig, device: torch.device) -> tuple[int, int, int]:
    """(encoder batch, decoder batch, readout rows) for ``device``, defaults filled in."""
    defaults = GPU_BATCH if device.type == "cuda" else CPU_BATCH
    encoder = config.encoder_batch or defaults["encoder_batch"]
    decoder = config.decoder_batch or defaults["decoder_batch"]
    readout = min(config.readout_rows or defaults["readout_rows"], decoder)
    if decoder % readout:
        readout = decoder  # a default that does not divide a user's batch: one chunk
    return encoder, decoder, readout


# ---------------------------------------------------------------------------------------------
# Scoring


@dataclass
class ScoreStats:
    """Counts of one scoring call (summed over calls by the report)."""

    pairs: int = 0
    groups: int = 0
    sources_encoded: int = 0  # distinct sources per group, summed over groups
    source_tokens: int = 0  # of encoded sources, incl. </s>
    target_tokens: int = 0  # incl. </s>
    padded_rows: int = 0  # dummy rows filling the last batch of a bucket (encoder + decoder)
    unknown_source_tokens: int = 0
    unknown_target_tokens: int = 0
    pairs_with_unknown: int = 0

    def add(self, other: ScoreStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def scoring_flops(config: EncoderDecoderConfig, stats: ScoreStats) -> int:
    """FLOPs (2 per multiply-add) of the matrix products this scorer needs for ``stats``' work.

    Per distinct source (per group): its encoder steps and the c-dependent projections
    (W_c c, tanh(W c + b), O_c c); per target token: the recurrence, W_e e(y), the deep output
    and the factorised softmax. Padding rows are not counted. Compare with
    ``pipeline.model.model_flops``, the cost of the plain forward pass over the same pairs.
    """
    E, H, M, K, R, V = (config.embedding, config.hidden, config.maxout, config.maxout_pieces,
                        config.output_rank, config.tgt_vocab_size)
    # the first step's U h_0 is not a product to make (h_0 = 0)
    encoder = (stats.source_tokens * 3 * H * E + (stats.source_tokens - stats.sources_encoded) * 3 * H * H
               + stats.sources_encoded * (3 * H * H + H * H + H * K * M))
    decoder = stats.target_tokens * (3 * H * H + 3 * H * E)
    output = stats.target_tokens * (H * K * M + E * K * M + M * R + R * V)
    return 2 * (encoder + decoder + output)


def _chunks(indices: np.ndarray, size: int, multiple: int) -> Iterator[tuple[np.ndarray, int]]:
    """Chunks of ``size`` elements of ``indices``; the last one filled with copies of its first
    element up to the next multiple of ``multiple`` (at most ``size``).

    Yields (padded chunk, number of real rows).
    """
    for start in range(0, len(indices), size):
        chunk = indices[start:start + size]
        real = len(chunk)
        padded = min(size, -(-real // multiple) * multiple)
        if real < padded:
            chunk = np.concatenate([chunk, np.full(padded - real, chunk[0], dtype=chunk.dtype)])
        yield chunk, real


#: a bucket's last batch is padded to a multiple of this many rows: the batch shapes are a
#: function of the group's content either way; multiples of 16 keep the element-wise loops free
#: of a scalar remainder (AVX-512 runs 16 floats at a time) at about 1% padding
ROW_MULTIPLE = 16


class PhraseScorer:
    """log p(target | source) and unknown-word counts for lists of phrase pairs, batched as above."""

    def __init__(self, model: EncoderDecoder, src_vocab: Vocabulary, tgt_vocab: Vocabulary, *,
                 encoder_batch: int, decoder_batch: int, readout_rows: int, group_rows: int = 8192,
                 bf16: bool = True):
        if decoder_batch % readout_rows:
            raise ValueError("readout_rows must divide decoder_batch")
        self.model = model
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.encoder_batch, self.decoder_batch, self.readout_rows = encoder_batch, decoder_batch, readout_rows
        if group_rows < 1:
            raise ValueError("group_rows must be at least 1")
        self.group_rows = group_rows
        self.device = next(model.parameters()).device
        self.autocast = bf16 and self.device.type == "cuda"
        E = model.config.embedding
        w_ih = model.decoder.weight_ih_l0.detach()  # (3H, E + H): input [e(y_{t-1}); c]
        self.w_emb = w_ih[:, :E].contiguous()
        self.w_c = w_ih[:, E:].contiguous()
        # the deep output's two products on h'_t and e(y_{t-1}) as one: [O_h O_y] on [h'_t; e(y_{t-1})]
        self.w_out = torch.cat([model.out_h.weight.detach(), model.out_y.weight.detach()], dim=1).contiguous()
        self._buffers: dict[str, torch.Tensor] = {}
        if self.device.type == "cpu":  # the CPU path's pre-arranged weights (see _decode_cpu)
            H, R = model.config.hidden, model.config.output_rank
            b_hh = model.decoder.bias_hh_l0.detach()
            self.b_hh_rz = torch.cat([b_hh[:2 * H], torch.zeros(H)])
            self.b_hn = b_hh[2 * H:].contiguous()
            # the K = 1000 products take their weights transposed in place (BLAS's 'NT' form)
            self.w_hh_t = model.decoder.weight_hh_l0.detach().t()
            self.w_emb_t = self.w_emb.t().contiguous()
            self.w_out_t = self.w_out.t()
            # q' = [G_r m; 1] and G' = [G_o^T; b_o^T]: the logits' bias comes out of the product
            self.w_rank_t = torch.cat([model.out_rank.weight.detach().t(), torch.zeros(model.config.maxout, 1)], 1)
            self.b_rank = torch.cat([torch.zeros(R), torch.ones(1)])
            self.w_vocab_t = torch.cat([model.out_vocab.weight.detach().t(), model.out_vocab.bias.detach()[None]])
            enc = model.encoder
            self.enc_w_ih_t = enc.weight_ih_l0.detach().t().contiguous()
            self.enc_b_ih = enc.bias_ih_l0.detach()
            self.enc_w_hh_t = enc.weight_hh_l0.detach().t()
            # c's three projections as one product: [W_c; W_init; O_c] c + [b_ih; b_init; 0]
            self.c_proj_t = torch.cat([self.w_c, model.init_state.weight.detach(),
                                       model.out_c.weight.detach()]).t()
            self.c_bias = torch.cat([model.decoder.bias_ih_l0.detach(), model.init_state.bias.detach(),
                                     torch.zeros(model.out_c.weight.shape[0])])

    # -- public ---------------------------------------------------------------------------
    def score(self, sources: Sequence[str], targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray, ScoreStats]:
        """(log p per pair (float64), unknown words per pair (int32), stats), in input order.

        ``sources``/``targets``: space-separated token strings, none empty. The pairs are scored in
        groups of ``group_rows`` consecutive pairs from the first: a pair's bits follow from its
        group alone, so callers that promise identical results pass whole groups of one global
        row order (``rescore_unit`` does).
        """
        n = len(sources)
        if len(targets) != n:
            raise ValueError(f"{n} sources but {len(targets)} targets")
        logp = np.zeros(n, dtype=np.float64)
        unk = np.zeros(n, dtype=np.int32)
        stats = ScoreStats(pairs=n)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.autocast
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            for start in range(0, n, self.group_rows):
                group = np.arange(start, min(n, start + self.group_rows))
                self._score_group(group, sources, targets, logp, unk, stats)
        return logp, unk, stats

    # -- internals ------------------------------------------------------------------------
    def _score_group(self, pairs: np.ndarray, sources: Sequence[str], targets: Sequence[str],
                     logp: np.ndarray, unk: np.ndarray, stats: ScoreStats) -> None:
        stoi_src, stoi_tgt = self.src_vocab.stoi, self.tgt_vocab.stoi
        distinct: dict[str, int] = {}
        src_ids: list[list[int]] = []
        src_unknown: list[int] = []
        pair_src = np.empty(len(pairs), dtype=np.int64)
        tgt_ids: list[list[int]] = []
        for k, i in enumerate(pairs):
            j = distinct.get(sources[i])
            if j is None:
                j = distinct[sources[i]] = len(src_ids)
                tokens = sources[i].split()
                src_unknown.append(sum(token not in stoi_src for token in tokens))
                src_ids.append([stoi_src.get(token, UNK_ID) for token in tokens] + [EOS_ID])
            pair_src[k] = j
            tokens = targets[i].split()
            tgt_unknown = sum(token not in stoi_tgt for token in tokens)
            tgt_ids.append([stoi_tgt.get(token, UNK_ID) for token in tokens] + [EOS_ID])
            unk[i] = src_unknown[j] + tgt_unknown
            stats.unknown_source_tokens += src_unknown[j]
            stats.unknown_target_tokens += tgt_unknown
        stats.groups += 1
        stats.sources_encoded += len(src_ids)
        stats.source_tokens += sum(map(len, src_ids))
        stats.target_tokens += sum(map(len, tgt_ids))
        stats.pairs_with_unknown += int((unk[pairs] > 0).sum())

        gi_c, h0, c_out = self._encode(src_ids, stats)
        tgt_len = np.fromiter(map(len, tgt_ids), dtype=np.int64, count=len(tgt_ids))
        for length in np.unique(tgt_len):
            bucket = np.flatnonzero(tgt_len == length)
            for chunk, real in _chunks(bucket, self.decoder_batch, ROW_MULTIPLE):
                stats.padded_rows += len(chunk) - real
                tgt = torch.tensor([tgt_ids[k] for k in chunk], dtype=torch.long).to(self.device)
                src = torch.from_numpy(pair_src[chunk]).to(self.device)
                scores = self._decode(tgt, gi_c[src], h0[src], c_out[src])
                logp[pairs[chunk[:real]]] = scores[:real].cpu().numpy()

    def _encode(self, src_ids: list[list[int]], stats: ScoreStats) -> tuple[torch.Tensor, ...]:
        """Per distinct source: W_c c + b_ih (3H), tanh(W c + b) (H), O_c c (K*M), float32."""
        m = self.model
        H = m.config.hidden
        n = len(src_ids)
        gi_c = torch.empty(n, 3 * H, device=self.device)
        h0 = torch.empty(n, H, device=self.device)
        c_out = torch.empty(n, m.config.maxout * m.config.maxout_pieces, device=self.device)
        lengths = np.fromiter(map(len, src_ids), dtype=np.int64, count=n)
        for length in np.unique(lengths):
            for chunk, real in _chunks(np.flatnonzero(lengths == length), self.encoder_batch, ROW_MULTIPLE):
                stats.padded_rows += len(chunk) - real
                src = torch.tensor([src_ids[k] for k in chunk], dtype=torch.long).to(self.device)
                rows = torch.from_numpy(chunk[:real]).to(self.device)
                if self.device.type == "cpu":
                    projected = self._encode_cpu(src)[:real]
                    gi_c[rows] = projected[:, :3 * H]
                    h0[rows] = projected[:, 3 * H:4 * H].tanh_()
                    c_out[rows] = projected[:, 4 * H:]
                    continue
                c = self._encoder_state(src)
                gi_c[rows] = F.linear(c, self.w_c, m.decoder.bias_ih_l0)[:real].float()
                h0[rows] = torch.tanh(m.init_state(c))[:real].float()
                c_out[rows] = m.out_c(c)[:real].float()
        return gi_c, h0, c_out

    def _encode_cpu(self, src: torch.Tensor) -> torch.Tensor:
        """[W_c c + b_ih; W c + b; O_c c] (B, 3H + H + K*M) for a (B, L) batch of exact-length
        sources, on the CPU: the encoder unrolled like ``_decode_cpu`` (every step's input
        projection one product; h_0 = 0, so the first step has no U h product), then the three
        c projections as one product."""
        enc = self.model.encoder
        B, L = src.shape
        H = self.model.config.hidden
        gi = torch.addmm(self.enc_b_ih, self.model.src_embed(src).view(B * L, -1), self.enc_w_ih_t,
                         out=self._scratch("enc_gi", B * L, 3 * H)).view(B, L, 3 * H)
        gh = self._scratch("enc_gh", B, 3 * H)
        h = self._scratch("enc_h", B, H)
        for t in range(L):
            if t == 0:
                gh.copy_(enc.bias_hh_l0.expand(B, 3 * H))
            else:
                torch.addmm(enc.bias_hh_l0, h, self.enc_w_hh_t, out=gh)
            rz = gh[:, :2 * H].add_(gi[:, t, :2 * H]).sigmoid_()
            n = gh[:, 2 * H:].mul_(rz[:, :H]).add_(gi[:, t, 2 * H:]).tanh_()
            if t == 0:
                torch.mul(n, 1 - rz[:, H:], out=h)  # h_0 = 0: h = (1 - z) n
            else:
                torch.lerp(n, h, rz[:, H:], out=h)  # z * h + (1 - z) * n
        return torch.addmm(self.c_bias, h, self.c_proj_t, out=self._scratch("enc_c", B, self.c_proj_t.shape[1]))

    def _encoder_state(self, src: torch.Tensor) -> torch.Tensor:
        """c for a (B, L) batch of exact-length sources: the encoder's last hidden state."""
        m = self.model
        return m.encoder(m.src_embed(src))[1][0]

    @staticmethod
    def _gru_step(gi: torch.Tensor, h: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
        """One step of torch's GRU given the input projection W x + b_ih: reset applied after U.

        The gates are computed in place in the product's buffer (no temporaries of B x 3H).
        """
        H = h.shape[1]
        gh = F.linear(h, w_hh, b_hh).float()
        rz = gh[:, :2 * H].add_(gi[:, :2 * H]).sigmoid_()
        n = gh[:, 2 * H:].mul_(rz[:, :H]).add_(gi[:, 2 * H:]).tanh_()
        return torch.lerp(n, h, rz[:, H:])  # z * h + (1 - z) * n

    def _scratch(self, name: str, *shape: int) -> torch.Tensor:
        """A float32 buffer reused between batches: on the CPU a fresh multi-MB tensor is a fresh
        mmap whose page faults cost as much as a good part of the product that fills it."""
        numel = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[name] = torch.empty(numel, device=self.device)
        return buf[:numel].view(shape)

    def _decode_cpu(self, tgt: torch.Tensor, gi_c: torch.Tensor, h: torch.Tensor, c_out: torch.Tensor
                    ) -> torch.Tensor:
        """``_decode`` on the CPU: the same arithmetic written into reused buffers (``out=``), the
        biases folded into the products or into the gates' in-place updates."""
        m = self.model
        cfg = m.config
        B, T = tgt.shape
        H, E, V = cfg.hidden, cfg.embedding, cfg.tgt_vocab_size
        KM = cfg.maxout * cfg.maxout_pieces
        gi_c = gi_c + self.b_hh_rz  # W_c c + b_ih + [b_hr; b_hz; 0]
        x = self._scratch("x", B, T, H + E)  # [h'_t; e(y_{t-1})] per position
        x[:, 0, H:] = 0.0  # e(y_0) = 0
        gi = self._scratch("gi", B, 3 * H)
        if T > 1:
            prev = m.tgt_embed(tgt[:, :-1])
            x[:, 1:, H:] = prev
            gi_emb = torch.mm(prev.view(-1, E), self.w_emb_t, out=self._scratch("gi_emb", B * (T - 1), 3 * H))
            gi_emb = gi_emb.view(B, T - 1, 3 * H)
        gh = self._scratch("gh", B, 3 * H)
        for t in range(T):
            torch.mm(h, self.w_hh_t, out=gh)
            gi_t = gi_c if t == 0 else torch.add(gi_c, gi_emb[:, t - 1], out=gi)
            rz = gh[:, :2 * H].add_(gi_t[:, :2 * H]).sigmoid_()
            n = gh[:, 2 * H:].add_(self.b_hn).mul_(rz[:, :H]).add_(gi_t[:, 2 * H:]).tanh_()
            h = torch.lerp(n, h, rz[:, H:], out=x[:, t, :H])  # z * h + (1 - z) * n
        s = torch.addmm(m.out_h.bias, x.view(B * T, H + E), self.w_out_t, out=self._scratch("s", B * T, KM))
        s.view(B, T, KM).add_(c_out.unsqueeze(1))
        maxout = torch.amax(s.view(B * T, cfg.maxout, cfg.maxout_pieces), -1,
                            out=self._scratch("maxout", B * T, cfg.maxout))
        q = torch.addmm(self.b_rank, maxout, self.w_rank_t, out=self._scratch("q", B * T, cfg.output_rank + 1))
        y = tgt.reshape(B * T, 1)
        logp = torch.empty(B * T)
        rows_per_chunk = self.readout_rows
        for start in range(0, B * T, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            n = min(rows_per_chunk, B * T - start)  # a multiple of 16 when B is
            logits = torch.mm(q[rows], self.w_vocab_t, out=self._scratch("logits", rows_per_chunk, V)[:n])
            logsm = torch._log_softmax(logits, 1, False, out=self._scratch("logsm", rows_per_chunk, V)[:n])
            logp[rows] = logsm.gather(1, y[rows]).squeeze(1)
        return logp.view(B, T).double().sum(1)

    def _decode(self, tgt: torch.Tensor, gi_c: torch.Tensor, h: torch.Tensor, c_out: torch.Tensor) -> torch.Tensor:
        """Sum over t of log p(y_t | y_<t, c) for a (B, T) batch of exact-length targets (float64).

        The recurrence runs step by step (one B x H x 3H product each); everything after it
        runs once over the B*T positions: the deep output as one product with [O_h O_y] on
        [h'_t; e(y_{t-1})], then the rank-R x V logits and their log-softmax in chunks of
        ``readout_rows`` rows, so that one chunk of vocabulary-wide logits stays in cache.
        """
        if self.device.type == "cpu":
            return self._decode_cpu(tgt, gi_c, h, c_out)
        m = self.model
        cfg = m.config
        B, T = tgt.shape
        H = cfg.hidden
        w_hh, b_hh = m.decoder.weight_hh_l0, m.decoder.bias_hh_l0
        x = torch.empty(B, T, H + cfg.embedding, device=self.device)  # [h'_t; e(y_{t-1})] per position
        x[:, 0, H:] = 0.0  # e(y_0) = 0
        if T > 1:
            prev = m.tgt_embed(tgt[:, :-1])
            x[:, 1:, H:] = prev
            gi_emb = F.linear(prev, self.w_emb).float()  # W_e e(y_{t-1}) for every step: one product
        for t in range(T):
            h = self._gru_step(gi_c if t == 0 else gi_c + gi_emb[:, t - 1], h, w_hh, b_hh)
            x[:, t, :H] = h
        s = F.linear(x.view(B * T, -1), self.w_out, m.out_h.bias).float().view(B, T, -1)
        s += c_out.unsqueeze(1)
        q = m.out_rank(s.view(B * T, cfg.maxout, cfg.maxout_pieces).amax(-1))
        y = tgt.reshape(B * T, 1)
        logp = torch.empty(B * T, device=self.device)
        rows_per_chunk = self.readout_rows
        for start in range(0, B * T, rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            logp[rows] = -F.cross_entropy(m.out_vocab(q[rows]).float(), y[rows, 0], reduction="none")
        return logp.view(B, T).double().sum(1)


# ---------------------------------------------------------------------------------------------
# Per-worker model cache


@functools.lru_cache(maxsize=2)
def _cached_scorer(model_path: str, stamp: tuple[int, int], device: str, encoder_batch: int,
                   decoder_batch: int, readout_rows: int, group_rows: int, bf16: bool) -> PhraseScorer:
    model, src_vocab, tgt_vocab = load_model(model_path, device)
    return PhraseScorer(model, src_vocab, tgt_vocab, encoder_batch=encoder_batch, decoder_batch=decoder_batch,
                        readout_rows=readout_rows, group_rows=group_rows, bf16=bf16)


def scorer_for(config: RescoreConfig) -> PhraseScorer:
    """The scorer of ``config`` in this process, loaded once (keyed by path, size and mtime)."""
    path = Path(config.model)
    if not path.is_file():
        raise UserError(f"{path}: model file not found")
    info = path.stat()
    device = resolve_device(config.device)
    encoder, decoder, readout = batch_sizes(config, device)
    return _cached_scorer(str(path.resolve()), (info.st_size, info.st_mtime_ns), str(device), encoder, decoder,
                          readout, config.group_rows, config.bf16)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# The table: metadata, validation, work units


def output_schema(schema: pa.Schema, config: RescoreConfig, where: object) -> pa.Schema:
    """The input schema with the two new float32 columns appended and declared in ``rnnenc.scores``.

    Raises UserError when the table's score metadata is broken or a new name is taken.
    """
    try:
        scores = read_score_columns(schema)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    for name in (config.logp_column, config.unk_column):
        if name in schema.names or name in RESERVED_COLUMNS:
            raise UserError(f"{where}: the table already has a column '{name}' (choose other names with "
                            "--logp-column / --unk-column)")
    schema = pa.schema(list(schema) + [pa.field(config.logp_column, pa.float32()),
                                       pa.field(config.unk_column, pa.float32())], metadata=schema.metadata)
    return with_scores_metadata(schema, scores + [{"name": config.logp_column, "domain": "log"},
                                                  {"name": config.unk_column, "domain": "log"}])


def check_schema(schema: pa.Schema, where: object) -> None:
    for name in REQUIRED_COLUMNS:
        if name not in schema.names:
            raise UserError(f"{where}: missing column '{name}' (columns: {', '.join(schema.names)})")
        if not (pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(schema.field(name).type)):
            raise UserError(f"{where}: column '{name}' is {schema.field(name).type}, expected strings")


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of one row group of one input part."""

    path: str
    row_group: int
    start: int
    stop: int


@dataclass(frozen=True)
class WorkUnit:
    """Global rows [first_row, first_row + rows) of the table, whole groups; its output is ``name``."""

    index: int
    first_row: int
    rows: int
    ranges: tuple[RowRange, ...]
    files: tuple[tuple[str, int, int], ...]  # (path, size, mtime_ns): a changed file redoes its units

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}.parquet"

    @property
    def where(self) -> str:
        """The first input part it reads, for messages."""
        return self.ranges[0].path

    def spec(self) -> dict[str, Any]:
        return {"first_row": self.first_row, "rows": self.rows,
                "ranges": [dataclasses.asdict(r) for r in self.ranges],
                "files": [list(f) for f in self.files]}


def unit_rows(rows_per_unit: int, group_rows: int) -> int:
    """``rows_per_unit`` rounded up to whole groups: a unit never cuts a group."""
    return max(1, -(-rows_per_unit // group_rows)) * group_rows


def plan_units(table: str | os.PathLike, rows_per_unit: int, group_rows: int) -> tuple[list[WorkUnit], pa.Schema]:
    """Cut the table's global row order into work units of whole groups, from the Parquet footers
    only; return them and the common schema. The cut does not depend on how the rows are split
    into files or row groups."""
    if rows_per_unit < 1:
        raise UserError("rescore: --rows-per-unit must be at least 1")
    if group_rows < 1:
        raise UserError("rescore: --group-rows must be at least 1")
    size = unit_rows(rows_per_unit, group_rows)
    schema: pa.Schema | None = None
    row_groups: list[tuple[str, int, int]] = []  # (path, row group, rows) in global order
    stamps: dict[str, tuple[int, int]] = {}
    for path in list_parts(table):
        try:
            meta = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as exc:
            raise UserError(f"{path}: not a readable Parquet file ({exc})") from exc
        part_schema = meta.schema_arrow
        check_schema(part_schema, path)
        if schema is None:
            schema = part_schema
        elif not part_schema.equals(schema, check_metadata=True):
            raise UserError(f"{path}: schema or 'rnnenc.scores' metadata differs from the table's first part")
        resolved = str(path.resolve())
        info = path.stat()
        stamps[resolved] = (info.st_size, info.st_mtime_ns)
        row_groups += [(resolved, g, meta.metadata.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    assert schema is not None
    units: list[WorkUnit] = []
    ranges: list[RowRange] = []
    taken = 0  # rows of the current unit
    for path, g, n in row_groups:
        offset = 0
        while offset < n:
            stop = min(n, offset + size - taken)
            ranges.append(RowRange(path, g, offset, stop))
            taken += stop - offset
            offset = stop
            if taken == size:
                units.append(_unit(len(units), size, ranges, stamps))
                ranges, taken = [], 0
    if ranges:
        units.append(_unit(len(units), size, ranges, stamps))
    return units, schema


def _unit(index: int, size: int, ranges: list[RowRange], stamps: dict[str, tuple[int, int]]) -> WorkUnit:
    paths = sorted({r.path for r in ranges})
    return WorkUnit(index, index * size, sum(r.stop - r.start for r in ranges), tuple(ranges),
                    tuple((p, *stamps[p]) for p in paths))


def read_unit(unit: WorkUnit, columns: Sequence[str] | None = None) -> pa.Table:
    """The unit's rows, as one contiguous table (its bytes once written do not depend on how the
    rows were split into files)."""
    pieces = []
    files: dict[str, pq.ParquetFile] = {}
    for r in unit.ranges:
        if r.path not in files:
            files[r.path] = pq.ParquetFile(r.path)
        group = files[r.path].read_row_group(r.row_group, columns=list(columns) if columns else None)
        if group.num_rows < r.stop:
            raise UserError(f"{r.path}: changed while rescoring (row group {r.row_group} has {group.num_rows} "
                            f"rows, {r.stop} expected)")
        pieces.append(group.slice(r.start, r.stop - r.start))
    return pa.concat_tables(pieces).combine_chunks()


def unit_record_path(staging: Path, unit: WorkUnit) -> Path:
    return staging / UNITS_DIR / f"{unit.name[:-len('.parquet')]}.json"


def completed_record(staging: Path, unit: WorkUnit) -> dict[str, Any] | None:
    """The record of a unit already committed in ``staging`` with this very spec, else None."""
    record_path = unit_record_path(staging, unit)
    if not (staging / unit.name).is_file() or not record_path.is_file():
        return None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("unit") == unit.spec() else None


def _row_range(unit: WorkUnit, row: int) -> tuple[RowRange, int]:
    """The range holding the unit's ``row``, and the row's index in its row group."""
    for r in unit.ranges:
        if row < r.stop - r.start:
            return r, r.start + row
        row -= r.stop - r.start
    raise IndexError(row)


def _check_pairs(table: pa.Table, unit: WorkUnit) -> tuple[list[str], list[str]]:
    lines = table.column("line").to_pylist() if "line" in table.column_names else None
    for side in REQUIRED_COLUMNS:
        empty = pc.or_(pc.is_null(table.column(side)),
                       pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(table.column(side))), 0))
        if pc.any(empty).as_py():
            row = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
            line = lines[row] if lines else None
            r, index = _row_range(unit, row)
            where = f"{r.path}:{line}" if line is not None else f"{r.path} (row group {r.row_group}, row {index})"
            raise UserError(f"{where}: empty or null {side} phrase")
    return table.column("source").to_pylist(), table.column("target").to_pylist()


def rescore_unit(unit: WorkUnit, staging: str | os.PathLike, config: RescoreConfig) -> dict[str, Any]:
    """Score one unit and commit ``staging/<unit.name>`` and its record; return the record.

    Runs on a worker: loads the model once per process, reads only the unit's row groups. The
    unit is whole groups of the global row order, so ``scorer.score``'s groups are the table's.
    """
    started = time.perf_counter()
    staging = Path(staging)
    table = read_unit(unit)
    output_schema(table.schema, config, unit.where)  # fails before scoring, not after
    sources, targets = _check_pairs(table, unit)
    scorer = scorer_for(config)
    with torch_threads(config.threads):
        logp, unk, stats = scorer.score(sources, targets)
    out = with_score_columns(table, {config.logp_column: (logp.astype(np.float32), "log"),
                                     config.unk_column: (unk.astype(np.float32), "log")})
    tmp = staging / f".{unit.name}.tmp-{uuid.uuid4().hex[:8]}"
    pq.write_table(out, tmp, compression="zstd")
    os.replace(tmp, staging / unit.name)
    record = {"unit": unit.spec(), "name": unit.name, "rows": out.num_rows, "stats": stats.to_dict(),
              "device": str(scorer.device), "seconds": round(time.perf_counter() - started, 4),
              "flops": scoring_flops(scorer.model.config, stats)}
    record_path = unit_record_path(staging, unit)
    record_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_record = record_path.with_name(f".{record_path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp_record.write_text(json.dumps(record, sort_keys=True) + "\n")
    os.replace(tmp_record, record_path)
    return record


def vocabulary_mismatch(sources: Sequence[str], targets: Sequence[str], src_vocab: Vocabulary,
                        tgt_vocab: Vocabulary, max_unknown_rate: float) -> str | None:
    """Why the model's vocabularies do not fit these pairs (a sample of the table), or None."""
    def rate(phrases: Sequence[str], vocab: Vocabulary) -> float:
        tokens = [token for phrase in phrases for token in phrase.split()]
        return sum(token not in vocab for token in tokens) / max(1, len(tokens))

    src_rate, tgt_rate = rate(sources, src_vocab), rate(targets, tgt_vocab)
    if max(src_rate, tgt_rate) <= max_unknown_rate:
        return None
    swapped = max(rate(sources, tgt_vocab), rate(targets, src_vocab))
    hint = (" (the model's vocabularies fit the table with source and target swapped: a model of the "
            "other direction?)" if swapped <= max_unknown_rate else "")
    return (f"{src_rate:.0%} of the source tokens and {tgt_rate:.0%} of the target tokens are unknown to the "
            f"model's vocabularies ('{src_vocab.lang}'/'{tgt_vocab.lang}'), more than {max_unknown_rate:.0%}"
            f"{hint}")


__all__ = ["PhraseScorer", "RescoreConfig", "RowRange", "ScoreStats", "WorkUnit", "batch_sizes", "check_schema",
           "completed_record", "output_schema", "plan_units", "read_unit", "rescore_unit", "unit_rows", "resolve_device", "scorer_for",
           "scoring_flops", "torch_threads", "vocabulary_mismatch"]
