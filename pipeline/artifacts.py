"""Stage outputs that are never half-written: temporary directory, rename, manifest last.

A stage writes everything into ``<out>.tmp-<token>/`` and, on success, renames it to
``<out>/``; ``manifest.json`` (inputs with sizes and content hashes, config, package
versions, counts) is written last, itself atomically. An output directory without a
manifest is an interrupted or foreign run and is never trusted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import shutil
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import xxhash

from pipeline.errors import UserError

MANIFEST_NAME = "manifest.json"
_HASH_BLOCK = 1 << 22


def file_hash(path: str | os.PathLike) -> str:
    """Content hash of a file (xxh3-128, hex), streamed in 4 MiB blocks."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def path_record(path: str | os.PathLike) -> dict[str, Any]:
    """``{"path", "size", "hash"}`` for a file, or for every file below a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        digest = xxhash.xxh3_128()
        size = 0
        for file in files:
            digest.update(str(file.relative_to(path)).encode())
            digest.update(file_hash(file).encode())
            size += file.stat().st_size
        return {"path": str(path), "size": size, "hash": digest.hexdigest(), "files": len(files)}
    return {"path": str(path), "size": path.stat().st_size, "hash": file_hash(path)}


def package_versions(names: Iterable[str] = ("rnnenc", "torch", "kenlm", "sacremoses", "pyarrow",
                                              "dask", "distributed", "datasets", "numpy")) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def write_json_atomic(path: str | os.PathLike, payload: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a completed output, or None when the output is missing or incomplete."""
    manifest = Path(out_dir) / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def require_manifest(path: str | os.PathLike, missing: str = "no such manifest") -> dict[str, Any]:
    """The manifest at ``path`` (a manifest file or a stage directory); a UserError if absent or broken."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST_NAME
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})") from None


def is_complete(out_dir: str | os.PathLike) -> bool:
    return read_manifest(out_dir) is not None


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``out_dir`` only if the block succeeds.

    On failure the temporary directory is removed and any previous output is left as it was.
    The caller writes the manifest (``write_manifest``) after the block.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out_dir.exists():
        # Untrust the old output before it disappears, so a crash between the two steps
        # leaves nothing that looks complete.
        (out_dir / MANIFEST_NAME).unlink(missing_ok=True)
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def write_manifest(out_dir: str | os.PathLike, *, stage: str, inputs: Iterable[str | os.PathLike],
                   config: dict[str, Any], counts: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``manifest.json`` last: inputs (size + hash), outputs, config, versions, counts."""
    out_dir = Path(out_dir)
    outputs = [path_record(p) | {"path": str(p.relative_to(out_dir))}
               for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME]
    manifest = {
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [path_record(p) for p in inputs],
        "outputs": outputs,
        "config": config,
        "versions": package_versions(),
        "counts": counts,
    }
    if extra:
        manifest.update(extra)
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    return manifest


def changed_inputs(manifest: dict[str, Any]) -> list[str]:
    """Paths among a manifest's inputs that are missing or whose content hash differs now."""
    changed = []
    for record in manifest.get("inputs", []):
        path = Path(record["path"])
        if not path.exists() or path_record(path)["hash"] != record["hash"]:
            changed.append(str(path))
    return changed
