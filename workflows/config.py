"""Workflow files: YAML, validated before anything runs.

A workflow names a run, its languages, its Dask cluster and an ordered mapping of stages. Each
stage runs one ``rnnenc`` subcommand; its other keys are that subcommand's options (``--budget-
words 348M`` is written ``budget_words: 348M``; a list repeats the option; ``true`` is a flag).
``${stage}`` stands for the output of an earlier stage, and makes it a dependency. A stage reads
what it needs from it (``pipeline.artifacts.read_artifact``): a phrases output is its table, a
vocab output its vocabulary of the side asked for, a train output its model.pt, an export
output its moses.ini, so workflow files need not spell inner paths (``${phrases}/table`` and
``${vocab}/vocab.en.txt`` still work)::

    run: wmt14-en-fr
    languages: {source: en, target: fr}
    stages:
      pool:    {command: ingest, src: data/pool.en.gz, tgt: data/pool.fr.gz}
      in_domain: {command: ingest, src: data/newstest.en, tgt: data/newstest.fr}
      select:  {command: select, pool: ${pool}, in_domain: ${in_domain}, budget_words: 348M}

Relative paths are relative to the workflow file. Every stage's options are parsed by the
subcommand's own parser when the file is loaded, so an unknown key, a wrong type or a missing
input file stops the run before any stage starts, with one line naming the key or the path.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rnnenc.pipeline.errors import UserError

REFERENCE = re.compile(r"\$\{([A-Za-z0-9_.-]+)\}")
# Options whose values name files or directories that must exist before the run starts (unless
# they refer to an earlier stage's output) are the ones each stage declares with
# ``workflows.stages.input_path``.
# Options the runner sets itself; a workflow may not set them.
RUNNER_OPTIONS = {"out", "scheduler", "workers", "quiet", "debug", "src_lang", "tgt_lang"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Languages(_Strict):
    source: str = Field(min_length=1)
    target: str = Field(min_length=1)


class ClusterSpec(_Strict):
    scheduler: str | None = None
    workers: int | None = Field(default=None, ge=1)


class WorkflowSpec(_Strict):
    run: str = Field(min_length=1, description="run name: outputs go to <artifacts>/<run>/<stage>/")
    artifacts: str = "artifacts"
    languages: Languages
    cluster: ClusterSpec = ClusterSpec()
    stages: dict[str, dict[str, Any]]

    @field_validator("stages")
    @classmethod
    def _non_empty(cls, stages: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not stages:
            raise ValueError("a workflow needs at least one stage")
        return stages


class _RaisingParser(argparse.ArgumentParser):
    """An argparse parser whose errors raise instead of printing usage and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UserError(message)


@dataclass
class Stage:
    name: str
    command: str
    options: dict[str, Any]
    argv: list[str]
    args: argparse.Namespace
    depends_on: list[str]
    input_paths: list[Path]
    out: Path


@dataclass
class Workflow:
    path: Path | None
    spec: WorkflowSpec
    root: Path  # artifacts/<run>
    stages: list[Stage] = field(default_factory=list)
    base: Path | None = None  # relative paths resolve here (the workflow file's directory)


def _format_validation_error(source: str, exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = len(exc.errors()) - 1
    return f"{source}: {where}: {message}" + (f" (and {more} more problem(s))" if more else "")


def _stage_parser(command: str) -> tuple[Any, argparse.ArgumentParser]:
    from rnnenc.workflows.stages import STAGES

    spec = STAGES.get(command)
    if spec is None or not spec.workflow_stage:
        stages = ", ".join(name for name, s in STAGES.items() if s.workflow_stage)
        raise UserError(f"unknown command '{command}' (the commands a stage can run: {stages})")
    module = spec.load()
    if module is None:
        raise UserError(f"command '{command}' has not landed in this version of rnnenc yet")
    parser = _RaisingParser(prog=f"rnnenc {command}", add_help=False)
    module.add_arguments(parser)
    from rnnenc.workflows.cli import add_common_arguments

    add_common_arguments(parser)
    return module, parser


def _option_strings(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    actions = {}
    for action in parser._actions:
        if action.option_strings:
            long = [s for s in action.option_strings if s.startswith("--")]
            if long:
                actions[long[0][2:].replace("-", "_")] = action
        elif action.dest != "help":
            actions[action.dest] = action
    return actions


def _resolve(value: Any, base: Path, outputs: dict[str, Path], where: str, deps: list[str]) -> str:
    text = str(value)

    def substitute(match: re.Match) -> str:
        name = match.group(1)
        if name not in outputs:
            raise UserError(f"{where}: ${{{name}}} refers to no earlier stage")
        deps.append(name)
        return str(outputs[name])

    text = REFERENCE.sub(substitute, text)
    return text


def _stage_argv(name: str, options: dict[str, Any], actions: dict[str, argparse.Action], base: Path,
                outputs: dict[str, Path], source: str, deps: list[str],
                inputs: list[Path]) -> list[str]:
    from rnnenc.workflows.stages import ROLE

    positional: list[str] = []
    argv: list[str] = []
    for key, value in options.items():
        where = f"{source}: stages.{name}.{key}"
        if key in RUNNER_OPTIONS:
            raise UserError(f"{where}: set by the workflow runner; remove it")
        if key not in actions:
            known = ", ".join(sorted(k for k in actions if k not in RUNNER_OPTIONS | {"help"}))
            raise UserError(f"{where}: unknown key (options of this command: {known})")
        action = actions[key]
        values = value if isinstance(value, list) else [value]
        resolved = []
        for item in values:
            if isinstance(item, dict):
                raise UserError(f"{where}: expected a value or a list of values, not a mapping")
            was_reference = bool(REFERENCE.search(str(item)))
            text = _resolve(item, base, outputs, where, deps)
            if getattr(action, ROLE, None) == "input" and not was_reference \
                    and not re.match(r"^[a-z][a-z0-9+.-]*://", text):
                # LANG=PATH[,PATH] (select's --in-lm/--out-lm): the paths are the inputs
                lang, sep, rest = text.partition("=")
                prefix = f"{lang}=" if sep and re.fullmatch(r"[A-Za-z_-]+", lang) and not (base / text).exists() else ""
                paths = [Path(v) if Path(v).is_absolute() else base / v for v in (rest.split(",") if prefix else [text])]
                for path in paths:
                    if not path.exists():
                        raise UserError(f"{where}: {path}: no such file or directory")
                text = prefix + ",".join(map(str, paths))
                inputs += paths
            resolved.append(text)
        if not action.option_strings:
            positional += resolved
        elif action.nargs == 0:
            if not isinstance(value, bool):
                raise UserError(f"{where}: expected true or false, got {value!r}")
            if value:
                argv.append(action.option_strings[-1] if "--" in action.option_strings[-1]
                            else action.option_strings[0])
        else:
            for text in resolved:
                argv += [action.option_strings[0], text]
    return positional + argv


def load_workflow(path: str | Path | None = None, *, text: str | None = None,
                  base: Path | None = None) -> Workflow:
    """Parse and validate a workflow file (or YAML ``text``); raise UserError on the first problem."""
    source = str(path) if path is not None else "workflow"
    if text is None:
        assert path is not None
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"{path}: cannot read workflow file ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{source}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: a workflow file is a mapping with run, languages and stages")
    try:
        spec = WorkflowSpec.model_validate(raw)
    except ValidationError as exc:
        raise UserError(_format_validation_error(source, exc)) from None
    base = base or (Path(path).resolve().parent if path is not None else Path.cwd())
    artifacts = Path(spec.artifacts) if Path(spec.artifacts).is_absolute() else base / spec.artifacts
    # normalised ("run/../run" is "run"), so the paths the stages print are the plain ones
    root = Path(os.path.normpath(artifacts / spec.run))
    workflow = Workflow(path=Path(path) if path else None, spec=spec, root=root, base=base)
    outputs: dict[str, Path] = {}
    for name, options in spec.stages.items():
        where = f"{source}: stages.{name}"
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise UserError(f"{where}: stage names use letters, digits, '_', '-' and '.'")
        if not isinstance(options, dict) or "command" not in options:
            raise UserError(f"{where}.command: missing (which rnnenc command this stage runs)")
        options = dict(options)
        command = str(options.pop("command"))
        module, parser = _stage_parser(command)
        actions = _option_strings(parser)
        deps: list[str] = []
        inputs: list[Path] = []
        out = workflow.root / name
        argv = _stage_argv(name, options, actions, base, outputs, source, deps, inputs)
        argv += ["--out", str(out)] if "out" in actions else []
        if "src_lang" in actions:
            argv += ["--src-lang", spec.languages.source, "--tgt-lang", spec.languages.target]
        try:
            args = parser.parse_args(argv)
        except UserError as exc:
            raise UserError(f"{where}: {exc}") from None
        args.command = command
        workflow.stages.append(Stage(name, command, options, argv, args, sorted(set(deps)), inputs, out))
        outputs[name] = out
    return workflow
