"""rnnenc: the Cho et al. (2014) RNN Encoder-Decoder pipeline for phrase-based SMT, on Dask.

The installed import path is ``rnnenc``: the library is ``rnnenc.pipeline`` (the source folder
``pipeline/``: pure, partition-level stages; no Dask client), the orchestration and the command
line ``rnnenc.workflows`` (``workflows/``). Nothing is installed as a top-level ``pipeline`` or
``workflows`` package, so a project's own packages of those names don't clash with rnnenc's.

The names most scripts need (see README, "Using rnnenc from Python")::

    import rnnenc
    model, src_vocab, tgt_vocab = rnnenc.load_model("artifacts/run/train/model.pt")
    logp = rnnenc.score_pairs(model, [["the", "cat"]], [["le", "chat"]], src_vocab, tgt_vocab)
    table = rnnenc.read_table("artifacts/run/rescore")          # a pyarrow.Table
    rnnenc.run_stage("filter", ["--table", "...", "--input", "...", "--out", "..."])

They are loaded on first use, so ``import rnnenc`` itself imports neither torch nor Dask.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute)
_API = {
    "load_model": ("rnnenc.pipeline.model", "load_model"),
    "score_pairs": ("rnnenc.pipeline.model", "score_pairs"),
    "read_artifact": ("rnnenc.pipeline.artifacts", "read_artifact"),
    "UserError": ("rnnenc.pipeline.errors", "UserError"),
    "SERIAL": ("rnnenc.pipeline.executor", "SERIAL"),
}


def read_table(path: str, columns: list[str] | None = None) -> Any:
    """A stage's Parquet output (a corpus, a phrase table, a select output's ``selected/``) as one
    ``pyarrow.Table``; a phrases output stands for its ``table/``, a select output for ``selected/``.

    Parameters:
        path: the output directory.
        columns: the columns to read (default: all).
    """
    import pyarrow.dataset as ds

    from rnnenc.pipeline.artifacts import corpus_path, read_artifact

    artifact = read_artifact(path)
    directory = artifact.main if artifact.kind == "phrase-table" else corpus_path(path)
    return ds.dataset(str(directory), format="parquet").to_table(columns=columns)


def run_stage(command: str, argv: list[str]) -> int:
    """Run ``rnnenc COMMAND ARGV...`` in this process, as the command line does (its exit status;
    a user error is printed as one line and gives 1).

    Parameters:
        command: the stage, e.g. ``"ingest"``, ``"filter"``, ``"rescore"``.
        argv: its options, e.g. ``["--table", "t", "--input", "test.en", "--out", "f"]``.
    """
    from rnnenc.workflows.cli import main

    return main([command, *argv])


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        module, attribute = _API[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'rnnenc' has no attribute {name!r}")


__all__ = ["SERIAL", "UserError", "__version__", "load_model", "read_artifact", "read_table", "run_stage",
           "score_pairs"]
