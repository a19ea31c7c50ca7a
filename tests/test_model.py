"""The encoder-decoder against the paper's equations, its initialisation and its model file."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rnnenc.pipeline.cpu_kernels import LogSoftmaxPick, PackedGRU
from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.model import (
    EncoderDecoder,
    EncoderDecoderConfig,
    gru_step,
    load_model,
    make_batch,
    model_flops,
    save_model,
    score_pairs,
)
from rnnenc.pipeline.scorer import PhraseScorer
from rnnenc.pipeline.vocab import EOS_ID, Vocabulary

SRC = Vocabulary("the a cat dog sat on mat red".split(), lang="en")
TGT = Vocabulary("le la chat chien assis sur tapis rouge".split(), lang="fr")
PAIRS = [("the cat", "le chat"), ("a red dog sat", "un chien rouge assis"), ("mat", "tapis"),
         ("the cat sat on the mat", "le chat assis sur le tapis </s>"), ("zebra", "zèbre")]


def tiny_model(seed: int = 0) -> EncoderDecoder:
    torch.manual_seed(seed)
    config = EncoderDecoderConfig(src_vocab_size=len(SRC), tgt_vocab_size=len(TGT), embedding=4,
                                  hidden=6, maxout=5, output_rank=3)
    model = EncoderDecoder(config)
    with torch.no_grad():  # non-zero biases and larger weights, so every term shows
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def batch_of(pairs):
    return make_batch([s.split() for s, _ in pairs], [t.split() for _, t in pairs], SRC, TGT)


def reference_logprob(model: EncoderDecoder, src: list[int], tgt: list[int]) -> float:
    """log p(tgt | src) straight from the equations, one step at a time, in float64."""
    P = {k: v.detach().double() for k, v in model.state_dict().items()}
    sig = torch.sigmoid

    def gru(prefix, x, h):
        W_r, W_z, W_n = P[f"{prefix}.weight_ih_l0"].chunk(3)
        U_r, U_z, U_n = P[f"{prefix}.weight_hh_l0"].chunk(3)
        b_r, b_z, b_n = P[f"{prefix}.bias_ih_l0"].chunk(3)
        c_r, c_z, c_n = P[f"{prefix}.bias_hh_l0"].chunk(3)
        r = sig(W_r @ x + b_r + U_r @ h + c_r)
        z = sig(W_z @ x + b_z + U_z @ h + c_z)
        h_tilde = torch.tanh(W_n @ x + b_n + r * (U_n @ h + c_n))
        return z * h + (1 - z) * h_tilde

    H = model.config.hidden
    h = torch.zeros(H, dtype=torch.float64)
    for word in src:
        h = gru("encoder", P["src_embed.weight"][word], h)
    c = h
    h = torch.tanh(P["init_state.weight"] @ c + P["init_state.bias"])
    y_prev = torch.zeros(model.config.embedding, dtype=torch.float64)
    total = 0.0
    for word in tgt:
        h = gru("decoder", torch.cat([y_prev, c]), h)
        s = P["out_h.weight"] @ h + P["out_h.bias"] + P["out_y.weight"] @ y_prev + P["out_c.weight"] @ c
        m = torch.stack([s[2 * i: 2 * i + 2].max() for i in range(model.config.maxout)])
        logits = P["out_vocab.weight"] @ (P["out_rank.weight"] @ m) + P["out_vocab.bias"]
        total += float(logits[word] - torch.logsumexp(logits, 0))
        y_prev = P["tgt_embed.weight"][word]
    return total


def test_matches_the_equations():
    model = tiny_model()
    batch = batch_of(PAIRS)
    got = model(batch)
    for i, (s, t) in enumerate(PAIRS):
        src = SRC.encode(s.split(), add_eos=True)
        tgt = TGT.encode(t.split(), add_eos=True)
        assert tgt[-1] == EOS_ID
        assert got[i].item() == pytest.approx(reference_logprob(model, src, tgt), abs=1e-5)
    assert model.loss(batch).item() == pytest.approx(-got.sum().item(), rel=1e-6)


def test_scores_do_not_depend_on_the_batch():
    model = tiny_model()
    together = model(batch_of(PAIRS))
    alone = torch.cat([model(batch_of([pair])) for pair in PAIRS])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_initialisation_is_the_papers():
    torch.manual_seed(0)
    config = EncoderDecoderConfig(src_vocab_size=300, tgt_vocab_size=400, embedding=20, hidden=50,
                                  maxout=30, output_rank=20)
    model = EncoderDecoder(config)
    for name, p in model.named_parameters():
        if name.endswith("weight_hh_l0"):
            for block in p.detach().chunk(3):
                torch.testing.assert_close(block @ block.T, torch.eye(50), atol=1e-5, rtol=0)
        elif p.dim() == 1:
            assert torch.count_nonzero(p) == 0, name
        else:
            assert 0.008 < p.detach().std().item() < 0.012, name
    assert torch.count_nonzero(model.src_embed.weight[0]) == 0
    # an untrained model spreads probability almost uniformly over the target vocabulary
    logp = model(make_batch([["a"]], [["b", "c"]], Vocabulary(["a"]), Vocabulary(["b", "c"])))
    assert logp.item() == pytest.approx(3 * -math.log(400), rel=0.01)


def test_model_file_round_trip(tmp_path):
    model = tiny_model()
    save_model(tmp_path / "model.pt", model, SRC, TGT)
    loaded, src_vocab, tgt_vocab = load_model(tmp_path / "model.pt", "cpu")
    assert src_vocab.itos == SRC.itos and tgt_vocab.itos == TGT.itos and tgt_vocab.lang == "fr"
    assert loaded.config == model.config
    sources = [s.split() for s, _ in PAIRS]
    targets = [t.split() for _, t in PAIRS]
    # same weights, same batching: bit-identical scores
    torch.testing.assert_close(score_pairs(loaded, sources, targets, src_vocab, tgt_vocab),
                               model(batch_of(PAIRS)).detach(), atol=0, rtol=0)
    torch.testing.assert_close(score_pairs(loaded, sources, targets, src_vocab, tgt_vocab, batch_size=2),
                               model(batch_of(PAIRS)).detach(), atol=1e-5, rtol=0)


def test_bad_model_files_are_user_errors(tmp_path):
    model = tiny_model()
    save_model(tmp_path / "model.pt", model, SRC, TGT)
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.pt: not a readable rnnenc model"):
        load_model(tmp_path / "cut.pt")
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="other.pt: not an rnnenc model file"):
        load_model(tmp_path / "other.pt")
    with pytest.raises(UserError, match="missing.pt: model file not found"):
        load_model(tmp_path / "missing.pt")


def test_flop_count_at_the_papers_size():
    config = EncoderDecoderConfig()
    E, H, KM, M, R, V = 100, 1000, 1000, 500, 100, 15_003
    # one pair, 1 source token, 1 target token: W e(x_1) (U h_0 = 0); tanh(W c + b), W_c c, O_c c;
    # U h'_0, O_h h'_1, G_r, G_o (e(y_0) = 0: no W_e or O_y product)
    one = 2 * (3 * H * E + H * H + 3 * H * H + KM * H + 3 * H * H + KM * H + R * M + V * R)
    assert model_flops(config, 1, 1, 1) == one
    # each further source token: W e(x_t), U h_{t-1}; each further target token: also W_e e(y), O_y e(y)
    per_source = 2 * (3 * H * E + 3 * H * H)
    per_target = 2 * (3 * H * H + 3 * H * E + KM * H + KM * E + R * M + V * R)
    assert model_flops(config, 4, 6, 1) == one + 3 * per_source + 5 * per_target
    assert model_flops(config, 8, 12, 2) == 2 * model_flops(config, 4, 6, 1)


def test_cpu_packed_path_matches_nn_gru():
    """The CPU path (length-packed steps, hand-written backward) = the nn.GRU path, values and gradients."""
    model = tiny_model()
    batch = batch_of(PAIRS)
    results = []
    for packed in (True, False):
        model.packed_cpu_gru = packed
        model.zero_grad()
        logp, pair = model.token_logprobs(batch)
        (logp * torch.linspace(0.5, 1.5, len(logp))).sum().backward()
        results.append((logp.detach(), pair, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (logp, pair, grads), (ref_logp, ref_pair, ref_grads) = results
    assert torch.equal(pair, ref_pair)
    torch.testing.assert_close(logp, ref_logp, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("zero_h0", [True, False])
def test_packed_gru_gradients(zero_h0):
    torch.manual_seed(0)
    H, sizes = 3, [4, 3, 3, 1]
    gi = torch.randn(sum(sizes), 3 * H, dtype=torch.float64, requires_grad=True)
    h0 = (torch.zeros if zero_h0 else torch.randn)(4, H, dtype=torch.float64).requires_grad_(not zero_h0)
    w_hh = torch.randn(3 * H, H, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(3 * H, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: PackedGRU.apply(*a, sizes, zero_h0), (gi, h0, w_hh, b_hh))
    # against the equations on the same packed steps
    out, h, start = [], h0, 0
    for size in sizes:
        g = gi[start: start + size]
        gh = h[:size] @ w_hh.t() + b_hh
        r, z = torch.sigmoid(g[:, :H] + gh[:, :H]), torch.sigmoid(g[:, H: 2 * H] + gh[:, H: 2 * H])
        h = (1 - z) * torch.tanh(g[:, 2 * H:] + r * gh[:, 2 * H:]) + z * h[:size]
        out.append(h)
        start += size
    torch.testing.assert_close(PackedGRU.apply(gi, h0, w_hh, b_hh, sizes, zero_h0), torch.cat(out),
                               atol=1e-12, rtol=0)


def test_log_softmax_pick_is_cross_entropy():
    torch.manual_seed(0)
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(9, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 3, 3, 8, 1, 3])
    g = torch.randn(6, dtype=torch.float64)
    got = LogSoftmaxPick.apply(x, weight, bias, target)
    grads = torch.autograd.grad(got, (x, weight, bias), g)
    ref = -torch.nn.functional.cross_entropy(x @ weight.t() + bias, target, reduction="none")
    ref_grads = torch.autograd.grad(ref, (x, weight, bias), g)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("zero_h0", [False, True])
def test_gru_step_is_nn_grus_step(fused, zero_h0):
    """The one step the kernels and the scorer share = nn.GRU's, in every form they call it:
    both roundings, h_0 = 0 without a product, the caller's buffers, b_hr/b_hz folded into gi."""
    torch.manual_seed(0)
    B, S, E, H = 5, 4, 3, 7
    gru = torch.nn.GRU(E, H, batch_first=True).double()
    with torch.no_grad():
        for p in gru.parameters():
            p.normal_(0.0, 0.7)
    x = torch.randn(B, S, E, dtype=torch.float64)
    h0 = torch.zeros(1, B, H, dtype=torch.float64) if zero_h0 else torch.randn(1, B, H, dtype=torch.float64)
    with torch.no_grad():
        ref, _ = gru(x, h0)
        w_hh, b_hh = gru.weight_hh_l0, gru.bias_hh_l0
        gi = F.linear(x, gru.weight_ih_l0, gru.bias_ih_l0)  # (B, S, 3H)
        folded = gi + torch.cat([b_hh[:2 * H], torch.zeros(H, dtype=torch.float64)])
        gh, rz, n, out = (torch.empty(B, k * H, dtype=torch.float64) for k in (3, 2, 1, 1))
        h_plain = h_buffers = h_folded = None if zero_h0 else h0[0]
        for t in range(S):
            h_plain = gru_step(gi[:, t], h_plain, w_hh, b_hh, fused=fused)
            h_buffers = gru_step(gi[:, t], h_buffers, w_hh, b_hh, fused=fused, gh=gh, rz=rz, n=n, out=out)
            torch.testing.assert_close(h_plain, ref[:, t], atol=1e-12, rtol=0)
            torch.testing.assert_close(h_buffers, ref[:, t], atol=1e-12, rtol=0)
            if t == 0 and zero_h0:  # the b_hn-only form needs h: the first step as above
                h_folded = h_plain
                continue
            h_folded = gru_step(folded[:, t], h_folded, w_hh, b_hh[2 * H:].clone(), fused=fused,
                                gh=torch.empty(B, 3 * H, dtype=torch.float64))
            torch.testing.assert_close(h_folded, ref[:, t], atol=1e-12, rtol=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_scorer_matches_score_pairs_and_the_equations(threads):
    """The rescoring scorer (its own CPU recurrences, biases folded, buffers reused) = the model's
    forward pass and the float64 equations, over groups, buckets and padded batches."""
    model = tiny_model()
    pairs = PAIRS * 3 + [("the cat", "chat"), ("the cat", "le tapis rouge")]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        scorer = PhraseScorer(model, SRC, TGT, encoder_batch=2, decoder_batch=4, readout_rows=2, group_rows=5)
        got, _, stats = scorer.score([s for s, _ in pairs], [t for _, t in pairs])
    finally:
        torch.set_num_threads(before)
    assert stats.groups == 4 and stats.padded_rows > 0
    direct = score_pairs(model, [s.split() for s, _ in pairs], [t.split() for _, t in pairs], SRC, TGT)
    torch.testing.assert_close(torch.from_numpy(got).float(), direct, atol=1e-5, rtol=0)
    for score, (s, t) in zip(got, pairs, strict=True):
        src = SRC.encode(s.split(), add_eos=True)
        tgt = TGT.encode(t.split(), add_eos=True)
        assert score == pytest.approx(reference_logprob(model, src, tgt), abs=1e-5)
