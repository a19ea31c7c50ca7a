"""Rebuild a selected subset byte for byte from the manifest of an `rnnenc select` output.

Checks that every input of the selection (the pool, the in-domain set, given language models)
still has the content hash recorded in the manifest, and that the selection's own language
models (OUT/lm/) are unchanged; if anything changed it names it and stops. Otherwise it
rescores the pool with those models and keeps the same number of best pairs, then compares
the new selected/, scores/ and selected.<lang> files with the hashes in the manifest.

examples:
  rnnenc regenerate selected/_manifest.json --out selected-again/
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from rnnenc.pipeline.select import regenerate
from rnnenc.workflows.stages import input_path, output_path

log = logging.getLogger("rnnenc")

def add_arguments(parser: argparse.ArgumentParser) -> None:
    input_path(parser, "manifest", help="_manifest.json of an 'rnnenc select' output (or its directory)")
    output_path(parser, "--out", help="where to rebuild the subset (default: <selection>.regenerated)")
    from rnnenc.workflows.cli import add_cluster_arguments

    add_cluster_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from rnnenc.workflows.cluster import cluster_executor

    manifest = Path(args.manifest)
    selection_dir = manifest if manifest.is_dir() else manifest.parent
    out = args.out or f"{selection_dir.resolve()}.regenerated"
    with cluster_executor(args.scheduler, args.workers, quiet=args.quiet) as executor:
        rebuilt = regenerate(args.manifest, out, executor)
    print(f"regenerated {rebuilt['counts']['selected_pairs']:,} pairs into {out}: byte-identical to {args.manifest}")
    return 0
