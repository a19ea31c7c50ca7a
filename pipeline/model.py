"""The RNN Encoder-Decoder of Cho et al. (2014), read top to bottom next to the paper.

Shapes: B pairs, S source steps, T target steps (incl. the end-of-phrase ``</s>``), E the
embedding size (the paper's rank-100 input factorisation), H the GRU size, M the maxout units.
Equation numbers are the paper's (arXiv 1406.1078 / EMNLP 2014); "App. A" is its appendix.

GRU      r = sigmoid(W_r x + U_r h + b_r)                              (5)
         z = sigmoid(W_z x + U_z h + b_z)                              (6)
         h~ = tanh(W x + b_n + r * (U h + b_hn))                       (8)
         h_t = z * h_{t-1} + (1 - z) * h~                              (7)
         torch's form: the reset applied after U (cuDNN, dl4mt, the paper's first arXiv
         version); the final paper puts it before U (REFERENCE.md §1-2). ``gru_step``.
Encoder  h_t = GRU(e(x_t), h_{t-1}),  h_0 = 0,  c = h_S                (§2.2, App. A.1.1)
         (last hidden state of the source + ``</s>``, as GroundHog; the appendix adds tanh(V h_S))
Decoder  h'_0 = tanh(W c + b)                                          (App. A.1.2)
         h'_t = GRU([e(y_{t-1}); c], h'_{t-1})          e(y_0) = 0
         c enters the input, update and reset signals through the input matrix: this is
         GroundHog's / dl4mt's conditioning (c projected without bias, outside the reset
         gate), and one fused ``nn.GRU`` call runs the whole teacher-forced decoder.
Output   s_t = O_h h'_t + O_y e(y_{t-1}) + O_c c        (2M units)    (App. A.1.2)
         m_t = maxout over adjacent pairs of s_t           (M units)
         p(y_t | y_<t, x) = softmax(G_o (G_r m_t) + b_o)   (rank-E factorised softmax)
log p(y | x) = sum over target tokens, ``</s>`` included, no length normalisation
(GroundHog ``score.py``); training maximises its sum over pairs (4).

Sources and targets both end with ``</s>`` (GroundHog appends it to both sides).

This file is the plain formula: ``EncoderDecoder.encode`` / ``decode`` / ``readout`` over padded
batches, through ``nn.GRU`` (cuDNN on CUDA). Two fast paths compute the same equations with the
same ``gru_step``: ``pipeline.cpu_kernels`` (training and ``token_logprobs`` on the CPU, where
torch's GRU has no fused kernel; dispatched to in ``token_logprobs``, the one marked place) and
``pipeline.scorer`` (rescoring phrase tables). tests/test_model.py holds them to this path.
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

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.vocab import EOS_ID, PAD_ID, Vocabulary

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


def gru_step(gi: Tensor, h: Tensor | None, w_hh: Tensor, b_hh: Tensor, *, fused: bool = False,
             gh: Tensor | None = None, rz: Tensor | None = None, n: Tensor | None = None,
             out: Tensor | None = None) -> Tensor:
    """One GRU step, eqs. (5)-(8) in torch's form (reset after U): h_t (B, H) from h_{t-1}.

        r = sigmoid(gi_r + U_r h_{t-1} + b_hr)                       (5)
        z = sigmoid(gi_z + U_z h_{t-1} + b_hz)                       (6)
        h~ = tanh(gi_n + r * (U_n h_{t-1} + b_hn))                    (8)
        h_t = z * h_{t-1} + (1 - z) * h~                              (7)

    The one definition of the step: the CPU training kernels and the rescoring scorer call it
    for the encoder and the decoder alike (``nn.GRU`` computes the same on the plain path).
    The input side ``gi`` is the caller's, computed for all steps in one product: the step
    holds only what the recurrence forces to run one step at a time.

    Args:
        gi: (B, 3H) the step's input projection W x + b_ih, blocks [r; z; n].
        h: (B, H) h_{t-1}; None for h_{t-1} = 0 (the encoder's first step: U h is no product).
        w_hh: (3H, H) U, torch's layout (``weight_hh_l0``).
        b_hh: (3H,) b_hh; or (H,) b_hn alone when the caller folded b_hr and b_hz into ``gi``
            (they only add to the sum; b_hn cannot be folded: the reset multiplies it). The
            b_hn-only form needs ``h``.
        fused: the training kernel's rounding: r * (U_n h + b_hn) + gi_n rounded once (addcmul)
            and h_t = lerp(h~, 0, z) at h_{t-1} = 0. Otherwise (the scorer's) the product is
            rounded before the add, in place, and h_t = (1 - z) h~ at h_{t-1} = 0. The same
            formula; each path keeps the last bits its outputs have always had.
        gh: (B, 3H) buffer for U h + b_hh; default: a new tensor. Its first blocks become
            [r; z] and its last h~ where ``rz`` / ``n`` are not given, except that ``fused``
            leaves U_n h + b_hn there (the training kernel saves it for its backward).
        rz: (B, 2H) buffer for [r; z]; default: in place in ``gh``.
        n: (B, H) buffer for h~; default: in place in ``gh`` (``fused``: a new tensor).
        out: (B, H) buffer for h_t, may be ``h`` itself; default: a new tensor.

    The buffers are where the callers' speed comes from (no fresh multi-MB tensors per step),
    and their layout is part of the bits: an element-wise op runs a row's tail through scalar
    code when its operands cannot be read as one flat array, and scalar sigmoid rounds
    differently from the vectorised one.
    """
    B, H = gi.shape[0], w_hh.shape[1]
    if h is None:  # U 0 = 0: the hidden side is its bias alone
        gh = (torch.empty_like(gi) if gh is None else gh).copy_(b_hh.expand(B, 3 * H))
    elif b_hh.shape[0] == H:
        gh = torch.mm(h, w_hh.t(), out=gh)
        gh[:, 2 * H:].add_(b_hh)
    elif gh is None:
        gh = F.linear(h, w_hh, b_hh).to(gi.dtype)  # CUDA autocast: the product in bf16, the gates not
    else:
        torch.addmm(b_hh, h, w_hh.t(), out=gh)
    gh_rz, gh_n = gh[:, :2 * H], gh[:, 2 * H:]
    rz = torch.add(gh_rz, gi[:, :2 * H], out=gh_rz if rz is None else rz).sigmoid_()  # (5), (6)
    r, z = rz[:, :H], rz[:, H:]
    if fused:  # (8)
        n = torch.addcmul(gi[:, 2 * H:], r, gh_n, out=n).tanh_()
    else:
        n = torch.mul(gh_n, r, out=gh_n if n is None else n).add_(gi[:, 2 * H:]).tanh_()
    if h is None:  # (7) with h_{t-1} = 0
        return torch.lerp(n, torch.zeros_like(n), z, out=out) if fused else torch.mul(n, 1 - z, out=out)
    return torch.lerp(n, h, z, out=out)  # (7): n + z (h - n)


class EncoderDecoder(nn.Module):
    """The RNN Encoder-Decoder: p(y | x) by the equations at the top of this file.

    Parameters are named after the equations: ``src_embed`` e(x), ``encoder`` (W, U, b of the
    encoder GRU), ``tgt_embed`` e(y), ``init_state`` (W, b of h'_0), ``decoder`` (the decoder
    GRU, input [e(y_{t-1}); c]), ``out_h``/``out_y``/``out_c`` (O_h with the one bias of s_t,
    O_y, O_c), ``out_rank`` G_r and ``out_vocab`` (G_o, b_o).
    """

    #: run ``token_logprobs`` on CPU tensors through the packed kernels (``pipeline.cpu_kernels``);
    #: False: through ``nn.GRU`` as on CUDA (cuDNN), the same equations
    packed_cpu_gru: bool = True

    def __init__(self, config: EncoderDecoderConfig, *, initialise: bool = True):
        """Build the model of ``config``.

        Args:
            config: the sizes.
            initialise: False leaves torch's default initialisation, for weights about to be
                loaded (the paper's orthogonal initialisation costs seconds of SVDs at the
                paper's size).
        """
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
        """c (B, H): the encoder's state after each source's last real token (§2.2, App. A.1.1).

        h_t = GRU(e(x_t), h_{t-1}) from h_0 = 0, each step ``gru_step`` (eqs. 5-8); ``nn.GRU``
        runs every step in one call.

        Args:
            src: (B, S) source ids, each row ``</s>``-terminated, then ``<pad>``s.
            src_lengths: (B,) lengths, ``</s>`` included.
        """
        states, _ = self.encoder(self.src_embed(src))  # (B, S, H); GRU is causal, so pads after
        return states[torch.arange(src.shape[0], device=src.device), src_lengths - 1]  # don't matter

    def decode(self, c: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoder states h'_t (B, T, H) and the previous words' e(y_{t-1}) (B, T, E).

        h'_0 = tanh(W c + b); h'_t = GRU([e(y_{t-1}); c], h'_{t-1}) with e(y_0) = 0 (§2.2,
        App. A.1.2), each step ``gru_step``, one ``nn.GRU`` call over the whole target.

        Args:
            c: (B, H) the sources' summaries (``encode``).
            tgt: (B, T) target ids, each row ``</s>``-terminated, then ``<pad>``s.
        """
        B, T = tgt.shape
        prev = F.pad(self.tgt_embed(tgt[:, :-1]), (0, 0, 1, 0))  # e(y_0) = 0
        inputs = torch.cat([prev, c.unsqueeze(1).expand(B, T, c.shape[-1])], dim=-1)
        h0 = torch.tanh(self.init_state(c)).unsqueeze(0)
        states, _ = self.decoder(inputs, h0)
        return states, prev

    def readout(self, states: Tensor, prev: Tensor, c_out: Tensor) -> Tensor:
        """Logits G_o (G_r m_t) + b_o over the target vocabulary (App. A.1.2).

        Args:
            states: h'_t (..., H).
            prev: e(y_{t-1}) (..., E).
            c_out: O_c c (..., 2M), c's term, the same at every step of a pair.
        """
        return self.out_vocab(self.readout_rank(states, prev, c_out))

    def readout_rank(self, states: Tensor, prev: Tensor, c_out: Tensor) -> Tensor:
        """G_r m_t (..., R): the deep output up to the rank-R factor of the softmax.

        s_t = O_h h'_t + O_y e(y_{t-1}) + O_c c, then m_t = the max of each adjacent pair of s_t
        (maxout). Arguments as ``readout``.
        """
        s = self.out_h(states) + self.out_y(prev) + c_out
        m = s.unflatten(-1, (self.config.maxout, self.config.maxout_pieces)).amax(-1)
        return self.out_rank(m)

    def token_logprobs(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(log p of each real target token (N,), pair index of each (N,)), in row-major order.

        The readout and the softmax run only over real (non-pad) positions: on the CPU the
        rank-100 x 15k softmax, not the recurrence, is the costly part.

        Args:
            batch: padded pairs (``make_batch``).
        """
        # -- fast path beside the plain formula ----------------------------------------------
        # On the CPU torch's GRU has no fused kernel; pipeline/cpu_kernels.py runs these same
        # equations over length-packed steps with a hand-written backward (tests/test_model.py
        # holds both paths equal, values and gradients). Imported here: it builds on gru_step.
        if self.packed_cpu_gru and batch.src.device.type == "cpu":
            from rnnenc.pipeline.cpu_kernels import packed_token_logprobs
            return packed_token_logprobs(self, batch)
        # -- the plain formula ----------------------------------------------------------------
        c = self.encode(batch.src, batch.src_lengths)
        states, prev = self.decode(c, batch.tgt)
        mask = torch.arange(batch.tgt.shape[1], device=c.device) < batch.tgt_lengths.unsqueeze(1)
        pair = torch.arange(c.shape[0], device=c.device).repeat_interleave(batch.tgt_lengths)
        logits = self.readout(states[mask], prev[mask], self.out_c(c)[pair])
        return -F.cross_entropy(logits.float(), batch.tgt[mask], reduction="none"), pair

    def forward(self, batch: Batch) -> Tensor:
        """log p(target | source) per pair (B,), summed over tokens incl. ``</s>``.

        Args:
            batch: padded pairs (``make_batch``).
        """
        logp, pair = self.token_logprobs(batch)
        return torch.zeros(batch.tgt.shape[0], dtype=logp.dtype, device=logp.device).index_add_(0, pair, logp)

    def loss(self, batch: Batch) -> Tensor:
        """Summed token negative log-likelihood of the batch (the paper's training cost, eq. 4).

        Args:
            batch: padded pairs (``make_batch``).
        """
        logp, _ = self.token_logprobs(batch)
        return -logp.sum()


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """The torch device a ``--device`` option names: the one resolver of training, rescoring and
    generation.

    Parameters:
        name: ``auto`` or None (CUDA when there is a device, else the CPU), ``cpu``, ``cuda`` or
            ``cuda:N``.

    Raises:
        UserError: an unknown name, or CUDA asked for where there is none.
    """
    if name is None or str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device available here")
    return device


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

    Args:
        config: the model's sizes.
        src_tokens: real source tokens, ``</s>`` included.
        tgt_tokens: real target tokens, ``</s>`` included.
        pairs: number of pairs.
    """
    E, H, M, K, R, V = (config.embedding, config.hidden, config.maxout, config.maxout_pieces,
                        config.output_rank, config.tgt_vocab_size)
    encoder = src_tokens * 3 * H * E + (src_tokens - pairs) * 3 * H * H
    decoder = pairs * (H * H + 3 * H * H) + tgt_tokens * 3 * H * H + (tgt_tokens - pairs) * 3 * H * E
    output = (pairs * H * K * M + tgt_tokens * (H * K * M + M * R + R * V)
              + (tgt_tokens - pairs) * E * K * M)
    return 2 * (encoder + decoder + output)


# ---------------------------------------------------------------------------------------------
# Batches


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
    """(padded (B, L) long tensor, lengths (B,)) from lists of ids.

    Args:
        sequences: id lists, none empty.
    """
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    if len(sequences) == 0 or int(lengths.min()) == 0:
        raise ValueError("cannot batch an empty sequence")
    padded = torch.full((len(sequences), int(lengths.max())), PAD_ID, dtype=torch.long)
    for i, seq in enumerate(sequences):
        padded[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return padded, lengths


def make_batch(sources: Sequence[Sequence[str]], targets: Sequence[Sequence[str]],
               src_vocab: Vocabulary, tgt_vocab: Vocabulary) -> Batch:
    """Token lists -> Batch: unknown words -> ``<unk>``, ``</s>`` appended to both sides.

    Args:
        sources: source token lists.
        targets: target token lists, one per source.
        src_vocab: source vocabulary.
        tgt_vocab: target vocabulary.
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets")
    src, src_lengths = pad_ids([src_vocab.encode(s, add_eos=True) for s in sources])
    tgt, tgt_lengths = pad_ids([tgt_vocab.encode(t, add_eos=True) for t in targets])
    return Batch(src, src_lengths, tgt, tgt_lengths)


# ---------------------------------------------------------------------------------------------
# Model files and scoring


def save_model(path: str | os.PathLike, model: EncoderDecoder, src_vocab: Vocabulary, tgt_vocab: Vocabulary,
               extra: dict[str, Any] | None = None) -> None:
    """One file with the config, both vocabularies and the weights (on CPU), written atomically.

    Args:
        path: the model file to write.
        model: the model.
        src_vocab: its source vocabulary.
        tgt_vocab: its target vocabulary.
        extra: further JSON-like entries stored beside them.
    """
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
    """(model in eval mode on ``device``, source vocabulary, target vocabulary).

    Args:
        path: a file written by ``save_model``.
        device: where to put the model.

    Raises:
        UserError: the file is missing, unreadable or not an rnnenc model.
    """
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
    """log p(target | source) for each pair (float32 CPU tensor), in input order, by ``forward``.

    Args:
        model: the model (on any device).
        sources: source token lists.
        targets: target token lists, one per source.
        src_vocab: source vocabulary.
        tgt_vocab: target vocabulary.
        batch_size: pairs per forward pass.
    """
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(sources), batch_size):
        batch = make_batch(sources[start:start + batch_size], targets[start:start + batch_size],
                           src_vocab, tgt_vocab).to(device)
        scores.append(model(batch).float().cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


__all__ = ["EOS_ID", "Batch", "EncoderDecoder", "EncoderDecoderConfig", "gru_step", "load_model", "make_batch",
           "model_flops", "pad_ids", "save_model", "score_pairs"]
