"""The CUDA code paths (skipped without a GPU; `benchmarks/gpu.sh` runs them on a GPU machine)."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_phrase_table
from rnnenc.pipeline.model import load_model, score_pairs
from rnnenc.pipeline.train import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_training_on_the_gpu_learns_and_the_model_loads_on_the_cpu(tmp_path):
    table, src_vocab_path, tgt_vocab_path = tiny_phrase_table(tmp_path)
    config = TrainConfig(updates=300, hidden=64, embedding=32, maxout=32, output_rank=32, valid_pairs=50,
                         valid_every=100, checkpoint_every=100, device="cuda", init_std=0.1)
    report = train(config, table, src_vocab_path, tgt_vocab_path, tmp_path / "model", quiet=True)
    assert report["device"].startswith("cuda")
    # 50 target words + </s>: a model that learned nothing sits near 51.
    assert report["counts"]["final_valid_perplexity"] < 20

    model_gpu, src_vocab, tgt_vocab = load_model(tmp_path / "model" / "model.pt", device="cuda")
    model_cpu, _, _ = load_model(tmp_path / "model" / "model.pt", device="cpu")
    pairs = ([f"w{i} w{(i * 7) % 50}".split() for i in range(64)], [f"m{(i * 7) % 50} m{i % 50}".split() for i in range(64)])
    on_gpu = score_pairs(model_gpu, *pairs, src_vocab, tgt_vocab)
    on_cpu = score_pairs(model_cpu, *pairs, src_vocab, tgt_vocab)
    assert torch.allclose(on_gpu, on_cpu, atol=1e-3, rtol=1e-4)
