"""rnnenc show: a stage output's manifest, a table's schema, rows, statistics and score histograms
(streamed), a model's config and vocabularies."""

from __future__ import annotations

import json

import pytest

from rnnenc.pipeline.errors import UserError
from rnnenc.workflows import cli

LINES = ["a ||| x ||| 0.5 0.25 0.5 0.125 ||| 0-0 ||| 1 1 1", "a b ||| x y ||| 1 0.5 0.01 0.001 ||| 0-0 1-1 ||| 2 2 1",
         "c ||| z ||| 0.1 0.1 0.1 0.1 ||| 0-0 ||| 1 1 1"]


def test_show_a_phrase_table_output(tmp_path, capsys):
    (tmp_path / "pt.txt").write_text("\n".join(LINES) + "\n")
    assert cli.main(["phrase-table", str(tmp_path / "pt.txt"), "--out", str(tmp_path / "t"), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["show", str(tmp_path / "t"), "--plot", str(tmp_path / "h.png")]) == 0
    text = capsys.readouterr().out
    assert "the output of rnnenc phrase-table (phrase-table)" in text
    assert "3 rows in 1 part(s)" in text and "p_f_given_e [prob]: min 0.1 mean 0.533333 max 1" in text
    assert "histogram of lex_e_given_f, log10(score)" in text and '"source": "a b"' in text
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert cli.main(["show", str(tmp_path / "t"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = summary["tables"][0]
    assert table["rows"] == 3 and table["columns"]["source"]["mean_tokens"] == pytest.approx(4 / 3)
    assert sum(table["histograms"]["p_f_given_e"]["counts"]) == 3
    assert summary["manifest"]["stage"] == "phrase-table"


def test_show_a_model(tmp_path, capsys):
    import torch

    from rnnenc.pipeline.model import EncoderDecoder, EncoderDecoderConfig, save_model
    from rnnenc.pipeline.vocab import Vocabulary

    src, tgt = Vocabulary(["a", "b"], lang="en"), Vocabulary(["x", "y", "z"], lang="fr")
    torch.manual_seed(0)
    model = EncoderDecoder(EncoderDecoderConfig(src_vocab_size=len(src), tgt_vocab_size=len(tgt), embedding=4,
                                                hidden=8, maxout=4, output_rank=2))
    save_model(tmp_path / "model.pt", model, src, tgt)
    assert cli.main(["show", str(tmp_path / "model.pt")]) == 0
    text = capsys.readouterr().out
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in text
    assert "vocabularies en 5, fr 6" in text and "hidden=8" in text


def test_show_refuses_what_it_cannot_read(tmp_path, capsys):
    (tmp_path / "x.pt").write_bytes(b"not a model")
    assert cli.main(["show", str(tmp_path / "x.pt")]) == 1
    assert "not a readable rnnenc model" in capsys.readouterr().err
    assert cli.main(["show", str(tmp_path / "missing")]) == 1
    with pytest.raises(UserError):
        from rnnenc.pipeline.summary import table_summary

        table_summary(tmp_path)
