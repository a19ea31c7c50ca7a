"""Rebuild a selected subset byte for byte from the manifest of an `rnnenc select` output.

Checks that every input of the selection (the pool, the in-domain set, given language models)
still has the content hash recorded in the manifest, and that the selection's own language
models (OUT/lm/) are unchanged; if anything changed it names it and stops. Otherwise it
rescores the pool with those models and keeps the same number of best pairs, then compares
the new selected/, scores/ and selected.<lang> files with the hashes in the manifest.

examples:
  rnnenc regenerate selected/manifest.json --out selected-again/
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path
from typing import Any

from pipeline.artifacts import MANIFEST_NAME, changed_inputs, file_hash, require_manifest
from pipeline.errors import UserError
from pipeline.executor import Executor
from workflows.select import SelectConfig, run_selection
from workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")

# Outputs that must come out byte-identical (hf/ holds fingerprints, report.json timings).
COMPARED = ("selected/", "scores/", "selected.")


def _load(manifest_path: str | Path) -> tuple[Path, dict[str, Any]]:
    path = Path(manifest_path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    manifest = require_manifest(path)
    if manifest.get("stage") != "select":
        raise UserError(f"{path}: not the manifest of an 'rnnenc select' output (stage: {manifest.get('stage')})")
    return path, manifest


def regenerate(manifest_path: str | Path, out: str | Path, executor: Executor) -> dict[str, Any]:
    """Rebuild the subset described by ``manifest_path`` into ``out``; return the new manifest."""
    path, manifest = _load(manifest_path)
    changed = changed_inputs(manifest)
    if changed:
        raise UserError(f"{path}: inputs changed since the selection, not regenerating: {', '.join(changed)}")
    cfg = SelectConfig(**manifest["config"])
    root = path.parent
    lms = manifest["selection"]["lms"]
    if not lms.get("given"):
        recorded = {o["path"]: o["hash"] for o in manifest["outputs"]}
        for lang, models in lms["models"].items():
            for record in models.values():
                model = root / record["path"]
                if not model.is_file() or file_hash(model) != recorded.get(record["path"]):
                    raise UserError(f"{model}: language model missing or changed since the selection; "
                                    "cannot regenerate")
            cfg.in_lms[lang] = str(root / models["in"]["path"])
            cfg.out_lms[lang] = f"{root / models['out_fold0']['path']},{root / models['out_fold1']['path']}"
    # Any mode keeps a prefix of the score order: the same number of pairs is the same subset.
    cfg = dataclasses.replace(cfg, mode="pairs", amount=str(manifest["counts"]["selected_pairs"]), dev=None)
    rebuilt = run_selection(cfg, out, executor)
    before = {o["path"]: o["hash"] for o in manifest["outputs"] if o["path"].startswith(COMPARED)}
    after = {o["path"]: o["hash"] for o in rebuilt["outputs"] if o["path"].startswith(COMPARED)}
    differ = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
    if differ:
        raise UserError(f"{out}: the rebuilt subset differs from {path} in: {', '.join(differ)}")
    if rebuilt["selection"]["cut"]["first_excluded"] != manifest["selection"]["cut"]["first_excluded"]:
        raise UserError(f"{out}: the rebuilt cut differs from the one recorded in {path}")
    return rebuilt


def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "manifest", help="manifest.json of an 'rnnenc select' output (or its directory)")
    output_path(parser, "--out", help="where to rebuild the subset (default: <selection>.regenerated)")
    from workflows.cli import add_cluster_arguments

    add_cluster_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from workflows.cluster import DaskExecutor, dask_client

    manifest = Path(args.manifest)
    selection_dir = manifest if manifest.is_dir() else manifest.parent
    out = args.out or f"{selection_dir.resolve()}.regenerated"
    with dask_client(args.scheduler, args.workers) as client:
        rebuilt = regenerate(args.manifest, out, DaskExecutor(client, quiet=args.quiet))
    log.info("regenerated %d pairs into %s: byte-identical to %s", rebuilt["counts"]["selected_pairs"], out,
             args.manifest)
    return 0
