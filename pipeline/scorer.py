"""Scoring phrase pairs fast with the RNN Encoder-Decoder: ``PhraseScorer``, the rescore stage's engine.

It computes what ``pipeline.model.score_pairs`` computes (log p(target | source), summed over the
target tokens including ``</s>``), plus the pairs' unknown-word counts, for tables of millions
of pairs; ``pipeline.rescore`` cuts the table into work units and calls it.

How it runs fast. Pairs are cut into groups of ``group_rows`` consecutive pairs (a phrase
table sorted by source repeats each source many times): each distinct source is encoded once
per group and its c, its decoder input projection W_c c + b, its initial state tanh(W c + b)
and its readout term O_c c are reused by every target of that source. Sources are batched by
exact length and targets by exact length, so no step runs over padding; the decoder is
unrolled here on the model's own parameters (``model.decoder``'s weights split into the
embedding and c parts) because the c-dependent part of the input is constant over time. Only
the recurrence runs step by step (``pipeline.model.gru_step``, one B x H x 3H product per step,
the embeddings' input projections of all steps being one product); the deep output then runs
once over all B x T positions of a batch ([O_h O_y] on [h'_t; e(y_{t-1})] as one product), and
the rank-R x V logits and their log-softmax in chunks of ``readout_rows`` rows (64 x 15k floats
= 3.8 MB, in L2 beside the factor). On the CPU the products write into buffers reused between
batches (a fresh multi-MB tensor is an mmap whose page faults cost a good part of the product),
with the biases folded into the products or the gates' in-place updates; the encoder is
unrolled the same way (h_0 = 0: no product at its first step), and c's three projections are
one product.

Why a pair's bits follow from its group alone, by construction. A float32 product's bits can
depend on its shape and on which rows share it (how BLAS blocks a GEMM differs between CPUs:
MKL runs other kernels on AMD than on Intel), so no promise may rest on a row's bits being
independent of its company. Instead the company is fixed: a group is scored on its own (its
distinct sources encoded, its targets bucketed by length, every bucket's last batch padded
with copies of its first row to a multiple of ``ROW_MULTIPLE`` rows). Callers that cut the
table's global row order into whole groups from row 0 (``pipeline.rescore`` does) therefore
get bits that follow from the table, the model and the batch configuration alone (on one
machine and one thread count per worker), whatever the files, row groups, units or workers.
Only the group size and the batch sizes change the last bits, and they are part of the run's
identity.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from rnnenc.pipeline.model import EncoderDecoder, EncoderDecoderConfig, gru_step
from rnnenc.pipeline.vocab import EOS_ID, UNK_ID, Vocabulary

#: a bucket's last batch is padded to a multiple of this many rows: the batch shapes are a
#: function of the group's content either way; multiples of 16 keep the element-wise loops free
#: of a scalar remainder (AVX-512 runs 16 floats at a time) at about 1% padding
ROW_MULTIPLE = 16


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
        """Add ``other``'s counts to these."""
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

    Args:
        config: the model's sizes.
        stats: what was scored (``PhraseScorer.score``).
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


class PhraseScorer:
    """log p(target | source) and unknown-word counts for lists of phrase pairs, batched as above.

    Args:
        model: the model, on the device to score on (CUDA or the CPU).
        src_vocab: its source vocabulary.
        tgt_vocab: its target vocabulary.
        encoder_batch: distinct sources per encoder batch.
        decoder_batch: pairs per decoder batch.
        readout_rows: rows per vocabulary-wide softmax chunk; divides ``decoder_batch``.
        group_rows: consecutive pairs scored together (the unit a pair's bits depend on).
        bf16: on CUDA, run the matrix products in bf16 (autocast).
    """

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
            # b_hr, b_hz folded into W_c c + b_ih once per batch; b_hn stays inside the reset
            self.b_hh_rz = torch.cat([b_hh[:2 * H], torch.zeros(H)])
            self.b_hn = b_hh[2 * H:].contiguous()
            self.w_hh = model.decoder.weight_hh_l0.detach()
            # the K = 1000 products take their weights transposed in place (BLAS's 'NT' form)
            self.w_emb_t = self.w_emb.t().contiguous()
            self.w_out_t = self.w_out.t()
            # q' = [G_r m; 1] and G' = [G_o^T; b_o^T]: the logits' bias comes out of the product
            self.w_rank_t = torch.cat([model.out_rank.weight.detach().t(), torch.zeros(model.config.maxout, 1)], 1)
            self.b_rank = torch.cat([torch.zeros(R), torch.ones(1)])
            self.w_vocab_t = torch.cat([model.out_vocab.weight.detach().t(), model.out_vocab.bias.detach()[None]])
            enc = model.encoder
            self.enc_w_ih_t = enc.weight_ih_l0.detach().t().contiguous()
            self.enc_b_ih = enc.bias_ih_l0.detach()
            self.enc_w_hh, self.enc_b_hh = enc.weight_hh_l0.detach(), enc.bias_hh_l0.detach()
            # c's three projections as one product: [W_c; W_init; O_c] c + [b_ih; b_init; 0]
            self.c_proj_t = torch.cat([self.w_c, model.init_state.weight.detach(),
                                       model.out_c.weight.detach()]).t()
            self.c_bias = torch.cat([model.decoder.bias_ih_l0.detach(), model.init_state.bias.detach(),
                                     torch.zeros(model.out_c.weight.shape[0])])

    # -- public ---------------------------------------------------------------------------
    def score(self, sources: Sequence[str], targets: Sequence[str]) -> tuple[np.ndarray, np.ndarray, ScoreStats]:
        """(log p per pair (float64), unknown words per pair (int32), stats), in input order.

        The pairs are scored in groups of ``group_rows`` consecutive pairs from the first: a
        pair's bits follow from its group alone, so callers that promise identical results pass
        whole groups of one global row order (``pipeline.rescore.rescore_unit`` does).

        Args:
            sources: space-separated source token strings, none empty.
            targets: space-separated target token strings, one per source, none empty.
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
                c = m.encoder(m.src_embed(src))[1][0]  # the last state: every source has this length
                gi_c[rows] = F.linear(c, self.w_c, m.decoder.bias_ih_l0)[:real].float()
                h0[rows] = torch.tanh(m.init_state(c))[:real].float()
                c_out[rows] = m.out_c(c)[:real].float()
        return gi_c, h0, c_out

    def _encode_cpu(self, src: torch.Tensor) -> torch.Tensor:
        """[W_c c + b_ih; W c + b; O_c c] (B, 3H + H + K*M) for a (B, L) batch of exact-length
        sources, on the CPU: the encoder unrolled like ``_decode_cpu`` (every step's input
        projection one product; h_0 = 0, so the first step has no U h product), then the three
        c projections as one product."""
        B, L = src.shape
        H = self.model.config.hidden
        gi = torch.addmm(self.enc_b_ih, self.model.src_embed(src).view(B * L, -1), self.enc_w_ih_t,
                         out=self._scratch("enc_gi", B * L, 3 * H)).view(B, L, 3 * H)
        gh = self._scratch("enc_gh", B, 3 * H)
        h = self._scratch("enc_h", B, H)
        for t in range(L):
            gru_step(gi[:, t], None if t == 0 else h, self.enc_w_hh, self.enc_b_hh, gh=gh, out=h)
        return torch.addmm(self.c_bias, h, self.c_proj_t, out=self._scratch("enc_c", B, self.c_proj_t.shape[1]))

    def _scratch(self, name: str, *shape: int) -> torch.Tensor:
        """A float32 buffer reused between batches: on the CPU a fresh multi-MB tensor is a fresh
        mmap whose page faults cost as much as a good part of the product that fills it."""
        numel = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[name] = torch.empty(numel, device=self.device)
        return buf[:numel].view(shape)

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
            h = gru_step(gi_c if t == 0 else gi_c + gi_emb[:, t - 1], h, w_hh, b_hh)
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
            gi_t = gi_c if t == 0 else torch.add(gi_c, gi_emb[:, t - 1], out=gi)
            h = gru_step(gi_t, h, self.w_hh, self.b_hn, gh=gh, out=x[:, t, :H])
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


__all__ = ["ROW_MULTIPLE", "PhraseScorer", "ScoreStats", "scoring_flops"]
