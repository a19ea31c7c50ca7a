"""Run a whole YAML workflow, skipping stages whose inputs and config are unchanged.

Each stage writes ARTIFACTS/RUN/STAGE/ with its manifest. A stage is up to date when its
output is complete (has a manifest) and its key matches the one recorded when it last ran:
the key hashes the stage's command and options, the content hashes of its input files, and the
keys of the stages it reads from. So changing a selection budget reruns selection and every
stage downstream of it, and nothing upstream. One Dask cluster serves all stages: the embedded
local cluster, or --scheduler / the workflow's cluster.scheduler.

example:
  rnnenc run workflows/workflows/demo.yaml
  rnnenc run my.yaml --scheduler tcp://head:8786 --force select
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import xxhash

from rnnenc.pipeline.artifacts import is_complete, output_stage, path_record, write_json_atomic
from rnnenc.pipeline.errors import UserError
from rnnenc.workflows.cli import add_cluster_arguments, stage_log
from rnnenc.workflows.config import Stage, Workflow, load_workflow
from rnnenc.workflows.stages import STAGES, input_path

log = logging.getLogger("rnnenc")


def stage_key(stage: Stage, upstream: dict[str, str], base: Path | None = None) -> str:
    """The stage's identity: command, options, input contents, upstream keys. Paths under ``base``
    (the workflow's directory) count relative to it, so a project moved or copied elsewhere
    (``cp -r``) keeps its keys and nothing reruns."""
    argv = stage.argv
    if base is not None:
        prefix = str(Path(os.path.abspath(base))) + os.sep
        argv = [arg.replace(prefix, "") for arg in argv]
    payload = {
        "command": stage.command,
        "argv": argv,
        "inputs": [path_record(p)["hash"] for p in stage.input_paths],
        "upstream": {name: upstream[name] for name in stage.depends_on},
    }
    return xxhash.xxh3_128(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _state_path(workflow: Workflow, stage: Stage) -> Path:
    return workflow.root / ".state" / f"{stage.name}.json"


def is_up_to_date(workflow: Workflow, stage: Stage, key: str) -> bool:
    state = _state_path(workflow, stage)
    if not is_complete(stage.out) or not state.is_file():
        return False
    try:
        return json.loads(state.read_text()).get("key") == key
    except json.JSONDecodeError:
        return False


def _prepare_resumable(workflow: Workflow, stage: Stage, key: str) -> bool:
    """For stages that resume in place (a ``resume_marker`` in their spec: train): resume an
    interrupted run of the same stage key, otherwise clear what an older run with other inputs or
    options left behind."""
    if not stage.out.exists():
        return False
    state = _state_path(workflow, stage)
    previous = json.loads(state.read_text()) if state.is_file() else {}
    if not is_complete(stage.out) and previous.get("key") == key and previous.get("status") == "running":
        log.info("stage %s: resuming the interrupted run in %s", stage.name, stage.out)
        return (stage.out / STAGES[stage.command].resume_marker).is_file()
    if not previous and output_stage(stage.out) != stage.command:
        raise UserError(f"{stage.out}: exists and was not written by this workflow's {stage.name} stage; "
                        "move it away or choose another 'out'")
    log.info("stage %s: removing the stale output of an earlier run in %s", stage.name, stage.out)
    shutil.rmtree(stage.out)
    return False


def plan_workflow(workflow: Workflow, force: set[str] | None = None) -> list[dict[str, Any]]:
    """What ``run_workflow`` would do, and why: one ``{"stage", "action", "reason"}`` per stage."""
    force = force or set()
    keys: dict[str, str] = {}
    reruns: set[str] = set()
    plan = []
    for stage in workflow.stages:
        key = keys[stage.name] = stage_key(stage, keys, workflow.base)
        state = _state_path(workflow, stage)
        upstream = sorted(reruns & set(stage.depends_on))
        if "all" in force or stage.name in force:
            reason = "forced (--force)"
        elif upstream:
            reason = f"upstream {', '.join(upstream)} reruns"
        elif not is_complete(stage.out):
            reason = "no complete output yet"
        elif not state.is_file():
            reason = "its output was not written by this workflow"
        elif not is_up_to_date(workflow, stage, key):
            reason = "its options, input contents or upstream outputs changed"
        else:
            plan.append({"stage": stage.name, "action": "skip", "reason": "up to date"})
            continue
        reruns.add(stage.name)
        plan.append({"stage": stage.name, "action": "run", "reason": reason})
    return plan


def run_workflow(workflow: Workflow, *, scheduler: str | None = None, workers: int | None = None,
                 quiet: bool = False, debug: bool = False, force: set[str] | None = None,
                 until: str | None = None) -> list[dict[str, Any]]:
    """Run (or skip) every stage in order; return one record per stage."""
    from rnnenc.workflows.cluster import dask_client  # distributed: not for `rnnenc run --help`

    force = force or set()
    names = [stage.name for stage in workflow.stages]
    for name in force | ({until} if until else set()):
        if name not in names and name != "all":
            raise UserError(f"no stage '{name}' in the workflow (stages: {', '.join(names)})")
    keys: dict[str, str] = {}
    records: list[dict[str, Any]] = []
    dirty: set[str] = set()
    # --scheduler, then DASK_SCHEDULER_ADDRESS (a launcher's), then the file's cluster.scheduler
    scheduler = scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS") or workflow.spec.cluster.scheduler
    workers = workers or workflow.spec.cluster.workers
    workflow.root.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as cluster:
        address = None  # the cluster starts (or is joined) for the first stage that runs on it
        for stage in workflow.stages:
            key = stage_key(stage, keys, workflow.base)
            keys[stage.name] = key
            forced = "all" in force or stage.name in force or bool(dirty & set(stage.depends_on))
            if not forced and is_up_to_date(workflow, stage, key):
                log.info("stage %s: up to date, skipped", stage.name)
                records.append({"stage": stage.name, "command": stage.command, "status": "skipped",
                                "out": str(stage.out)})
            else:
                log.info("stage %s: running 'rnnenc %s'", stage.name, stage.command)
                args = stage.args
                # a stage training in this process only asks a joined cluster for GPU workers
                if (address is None and "scheduler" in vars(args)
                        and not STAGES[stage.command].trains_in_process):
                    address = cluster.enter_context(dask_client(scheduler, workers)).scheduler.address
                args.scheduler, args.workers, args.quiet, args.debug = address or scheduler, None, quiet, debug
                if STAGES[stage.command].resume_marker:
                    args.resume = _prepare_resumable(workflow, stage, key)
                write_json_atomic(_state_path(workflow, stage), {"key": key, "argv": stage.argv,
                                                                 "status": "running"})
                module = STAGES[stage.command].load()
                started = time.perf_counter()
                with stage_log(stage.out):
                    status = module.main(args)
                if status:
                    raise UserError(f"stage {stage.name} ('rnnenc {stage.command}') failed with status {status}")
                seconds = round(time.perf_counter() - started, 2)
                if not is_complete(stage.out):
                    # An optional stage that had nothing to do (e.g. moses without MOSES_HOME):
                    # no output, so it is tried again next time.
                    records.append({"stage": stage.name, "command": stage.command, "status": "no-op",
                                    "seconds": seconds, "out": str(stage.out)})
                    continue
                write_json_atomic(_state_path(workflow, stage), {"key": key, "argv": stage.argv,
                                                                 "seconds": seconds})
                dirty.add(stage.name)
                records.append({"stage": stage.name, "command": stage.command, "status": "ran",
                                "seconds": seconds, "out": str(stage.out)})
            if stage.name == until:
                break
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "workflow", help="the workflow file (YAML)")
    parser.add_argument("--force", action="append", default=[], metavar="STAGE",
                        help="rerun this stage (and what depends on it) even if up to date; 'all' for all")
    parser.add_argument("--until", metavar="STAGE", help="stop after this stage")
    parser.add_argument("--check", action="store_true",
                        help="validate the workflow file and print which stages would run and why (runs nothing)")
    add_cluster_arguments(parser)


def print_records(records: list[dict[str, Any]]) -> None:
    for record in records:
        took = f" in {record['seconds']:.1f}s" if "seconds" in record else ""
        print(f"{record['stage']:<16} {record['status']:<8}{took:<12} {record['out']}")


def main(args: argparse.Namespace) -> int:
    workflow = load_workflow(args.workflow)
    if args.check:
        plan = {p["stage"]: p for p in plan_workflow(workflow, set(args.force))}
        for stage in workflow.stages:
            step = plan[stage.name]
            status = f"would run ({step['reason']})" if step["action"] == "run" else "up to date"
            print(f"{stage.name}: {status}: rnnenc {stage.command} {' '.join(stage.argv)}")
        return 0
    records = run_workflow(workflow, scheduler=args.scheduler, workers=args.workers, quiet=args.quiet,
                           debug=args.debug, force=set(args.force), until=args.until)
    print_records(records)
    return 0
