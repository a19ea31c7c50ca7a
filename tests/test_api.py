"""The Python API: one installed package, rnnenc, with the names the README documents."""

from __future__ import annotations

import subprocess
import sys

import rnnenc


def test_import_rnnenc_is_light_and_pipeline_is_not_a_top_level_package(tmp_path):
    # outside the source tree, as a user's script runs
    probe = ("import sys, rnnenc; print('torch' in sys.modules, 'distributed' in sys.modules);"
             "import importlib.util as u; print(u.find_spec('pipeline') is None, u.find_spec('workflows') is None);"
             "import rnnenc.pipeline.phrase_table, rnnenc.workflows.cli; print(rnnenc.__version__)")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False", "True", "True", rnnenc.__version__]


def test_read_table_run_stage_load_model_and_score(tmp_path):
    import torch

    from rnnenc.pipeline.model import EncoderDecoder, EncoderDecoderConfig, save_model
    from rnnenc.pipeline.vocab import Vocabulary

    (tmp_path / "pt.txt").write_text("a ||| x ||| 0.5 0.5 0.5 0.5\nb ||| y ||| 0.25 0.5 0.5 0.5\n")
    assert rnnenc.run_stage("phrase-table", [str(tmp_path / "pt.txt"), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    table = rnnenc.read_table(str(tmp_path / "t"), columns=["source", "p_f_given_e"])
    assert table.to_pylist() == [{"source": "a", "p_f_given_e": 0.5}, {"source": "b", "p_f_given_e": 0.25}]
    assert rnnenc.run_stage("phrase-table", [str(tmp_path / "missing.txt"), "--out", str(tmp_path / "u")]) == 1

    src, tgt = Vocabulary(["a", "b"], lang="en"), Vocabulary(["x", "y"], lang="fr")
    torch.manual_seed(0)
    save_model(tmp_path / "model.pt", EncoderDecoder(EncoderDecoderConfig(
        src_vocab_size=len(src), tgt_vocab_size=len(tgt), embedding=4, hidden=8, maxout=4, output_rank=2)), src, tgt)
    model, sv, tv = rnnenc.load_model(tmp_path / "model.pt")
    logp = rnnenc.score_pairs(model, [["a"], ["b"]], [["x"], ["y"]], sv, tv)
    assert logp.shape == (2,) and bool((logp < 0).all())
