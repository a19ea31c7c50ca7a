"""The stage registry: every ``rnnenc`` command declared once, in one place.

A stage is a module in ``workflows/`` with a docstring (its ``--help`` text), ``add_arguments
(parser)`` and ``main(args) -> int``, plus one ``StageSpec`` line in ``STAGES`` below. The
command line (``workflows.cli``), the workflow files' validation (``workflows.config``), the
stage keys and the runner (``workflows.run``) are all generated from these declarations:

- the spec says what the command is and how the runner treats it (a workflow stage or not,
  trains in this process, resumes an interrupted output);
- the options are the module's argparse options, declared once with their defaults and types;
  those naming files or directories are declared with ``input_path`` (must exist before a
  workflow runs, are content-hashed into the stage key, made absolute for the workers) or
  ``output_path`` (made absolute; the runner sets ``--out``).

Adding a stage: write its module, add its ``StageSpec`` line (or call ``register`` from a
plugin or a test). Nothing else changes.
"""

from __future__ import annotations

import argparse
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any

#: attribute set on an argparse action whose values name files or directories
ROLE = "rnnenc_role"


@dataclass(frozen=True)
class StageSpec:
    """What ``rnnenc COMMAND`` is.

    Parameters:
        command: the subcommand's name (``rnnenc COMMAND``, ``command:`` in a workflow file).
        module: the module holding ``add_arguments`` and ``main``.
        summary: one line for ``rnnenc --help``.
        workflow_stage: whether a workflow file may run it as a stage.
        trains_in_process: trains torch models in the calling process (so its OpenMP waiters may
            spin: see ``workflows.cli``).
        resume_marker: a file inside the output whose presence lets the runner resume an
            interrupted run of the same stage key (``--resume``), else None.
    """

    command: str
    module: str
    summary: str
    workflow_stage: bool = True
    trains_in_process: bool = False
    resume_marker: str | None = None

    def load(self) -> ModuleType | None:
        """The stage's module, or None when it has not landed in this version."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as exc:
            if exc.name == self.module:
                return None
            raise


STAGES: dict[str, StageSpec] = {}


def register(spec: StageSpec) -> StageSpec:
    """Add (or replace) a stage in the registry; returns it."""
    STAGES[spec.command] = spec
    return spec


for _spec in (
    StageSpec("ingest", "rnnenc.workflows.ingest", "tokenise, clean and shard a parallel corpus into Parquet"),
    StageSpec("select", "rnnenc.workflows.select", "Moore-Lewis / Axelrod data selection with KenLM"),
    StageSpec("vocab", "rnnenc.workflows.vocab", "build the source and target vocabularies"),
    StageSpec("phrase-table", "rnnenc.workflows.phrase_table", "import a Moses phrase table into Parquet"),
    StageSpec("phrases", "rnnenc.workflows.phrases", "extract and score a phrase table from an aligned corpus"),
    StageSpec("moses-train", "rnnenc.workflows.moses_train",
              "optional: a Moses baseline (table, reordering model, moses.ini) with train-model.perl"),
    StageSpec("filter", "rnnenc.workflows.filter", "keep the phrase-table rows a tuning or test set can use"),
    StageSpec("lm", "rnnenc.workflows.lm", "train the decoder's target KenLM n-gram model on the selection"),
    StageSpec("train", "rnnenc.workflows.train", "train the RNN encoder-decoder on a phrase table",
              trains_in_process=True, resume_marker="checkpoints/last.pt"),
    StageSpec("rescore", "rnnenc.workflows.rescore", "add the RNN score and unknown-word count to a phrase table"),
    StageSpec("export", "rnnenc.workflows.export", "write a Parquet phrase table as a Moses phrase table + moses.ini"),
    StageSpec("moses", "rnnenc.workflows.moses",
              "optional: tune with mert-moses.pl, decode a test set, score with sacrebleu"),
    StageSpec("generate", "rnnenc.workflows.generate",
              "the model's own target phrases: beam search or sampling, against a phrase table"),
    StageSpec("embed", "rnnenc.workflows.embed", "2-D maps of the model's word and phrase representations"),
    StageSpec("show", "rnnenc.workflows.show", "what a stage output holds: schema, rows, statistics, score histograms",
              workflow_stage=False),
    StageSpec("run", "rnnenc.workflows.run", "run a whole YAML workflow, skipping up-to-date stages",
              workflow_stage=False, trains_in_process=True),
    StageSpec("regenerate", "rnnenc.workflows.regenerate", "rebuild a selected subset byte-identically from its manifest",
              workflow_stage=False),
    StageSpec("demo", "rnnenc.workflows.demo", "generate demo data and run the whole workflow on it",
              workflow_stage=False, trains_in_process=True),
):
    register(_spec)


def input_path(parser: Any, *flags: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)`` for an option naming input files or directories."""
    action = parser.add_argument(*flags, **kwargs)
    setattr(action, ROLE, "input")
    return action


def output_path(parser: Any, *flags: str, **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(*flags, **kwargs)`` for an option naming what the stage writes."""
    action = parser.add_argument(*flags, **kwargs)
    setattr(action, ROLE, "output")
    return action


def path_roles(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{dest: "input" | "output"}`` for the parser's path options."""
    return {action.dest: getattr(action, ROLE) for action in parser._actions if getattr(action, ROLE, None)}


__all__ = ["ROLE", "STAGES", "StageSpec", "input_path", "output_path", "path_roles", "register"]
