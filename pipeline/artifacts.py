"""Stage outputs that are never half-written: temporary directory, rename, manifest last.

A stage writes everything into ``<out>.tmp-<token>/`` and, on success, renames it to
``<out>/``; ``_manifest.json`` (inputs with sizes and content hashes, config, package
versions, counts) is written last, itself atomically. An output directory without a
manifest is an interrupted or foreign run and is never trusted.

Sidecar files (``_manifest.json``, ``_report.json``, ``_rejects.tsv.gz``) start with ``_`` and
rnnenc's bookkeeping (``.rnnenc-output``, temporaries) with ``.``: the Parquet world's rule for
files that are not data, which pandas, pyarrow.dataset, Dask and Spark follow when given a
directory, so a stage directory of ``part-*.parquet`` opens as a dataset by its name (and
DuckDB's ``DIR/*.parquet`` matches the parts alone). Outputs written before that rule hold
``manifest.json`` and ``report.json``; the readers here still accept them (``manifest_path``,
``report_path``), so such a run stays complete and rnnenc's.

Nothing rnnenc did not write is ever removed: an existing ``<out>`` is replaced only when it is
an earlier output of the same stage (its manifest, or the ``.rnnenc-output`` marker every output
carries from its first byte, names that stage) or an empty directory, and never when it holds
or lies inside one of the stage's inputs. A run holds ``.<out>.lock`` (an advisory ``flock``)
from its check to its rename, so two runs never write one output; under the lock, temporaries
``<out>.tmp-*`` of earlier runs that were killed are removed.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import sys
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from rnnenc.pipeline.errors import UserError

MANIFEST_NAME = "_manifest.json"
#: the sidecars' names in outputs written before they started with "_": still read
LEGACY_MANIFEST_NAME = "manifest.json"
REPORT_NAME = "_report.json"  # counts, rejected lines by reason, timings
LEGACY_REPORT_NAME = "report.json"
REJECTS_NAME = "_rejects.tsv.gz"  # ingest's and phrase-table's rejected lines (--on-error skip)
LOG_NAME = "_rnnenc.log"  # the stage's log records (INFO and up, whatever --quiet said), added once published
OWNER_NAME = ".rnnenc-output"  # {"stage": ...}: written first into every output directory
_HASH_BLOCK = 1 << 22
_TMP_SUFFIX = re.compile(r"\.tmp-[0-9a-f]{8}$")


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
        # the data, not the log of the run that wrote it (LOG_NAME: timestamps)
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name != LOG_NAME)
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


def _sidecar(out_dir: str | os.PathLike, name: str, legacy: str) -> Path:
    """``out_dir/name``, or ``out_dir/legacy`` when only that exists (an output from before the rename)."""
    out_dir = Path(out_dir)
    if not (out_dir / name).is_file() and (out_dir / legacy).is_file():
        return out_dir / legacy
    return out_dir / name


def manifest_path(out_dir: str | os.PathLike) -> Path:
    """Where ``out_dir``'s manifest is: ``_manifest.json``, or an older output's ``manifest.json``
    (so runs written before the rename stay complete and rnnenc's)."""
    return _sidecar(out_dir, MANIFEST_NAME, LEGACY_MANIFEST_NAME)


def report_path(out_dir: str | os.PathLike) -> Path:
    """Where ``out_dir``'s report is: ``_report.json``, or an older output's ``report.json``."""
    return _sidecar(out_dir, REPORT_NAME, LEGACY_REPORT_NAME)


def remove_manifest(out_dir: str | os.PathLike) -> None:
    """Make ``out_dir`` incomplete: remove its manifest under either name."""
    for name in (MANIFEST_NAME, LEGACY_MANIFEST_NAME):
        (Path(out_dir) / name).unlink(missing_ok=True)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The manifest of a completed output, or None when the output is missing or incomplete."""
    manifest = manifest_path(out_dir)
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
        path = manifest_path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: {missing}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: unreadable manifest ({exc})") from None


def is_complete(out_dir: str | os.PathLike) -> bool:
    return read_manifest(out_dir) is not None


def output_stage(out_dir: str | os.PathLike) -> str | None:
    """The stage that wrote ``out_dir`` (from its manifest, else its marker), or None."""
    out_dir = Path(out_dir)
    for path in (manifest_path(out_dir), out_dir / OWNER_NAME):
        try:
            stage = json.loads(path.read_text()).get("stage")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(stage, str):
            return stage
    return None


def check_output_target(out_dir: str | os.PathLike, stage: str,
                        inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """Refuse (UserError) an ``out_dir`` whose replacement would lose data; return it absolute.

    Allowed: a path that does not exist, an empty directory, or an earlier output of ``stage``.
    Refused: a file, a directory written by someone else or another stage, and any directory
    that holds one of ``inputs`` or lies inside one.
    """
    out_dir = Path(os.path.abspath(out_dir))
    for given in inputs:
        path = Path(os.path.abspath(given))
        if path == out_dir or out_dir in path.parents:
            raise UserError(f"{out_dir}: the output directory holds the input {given}; choose another --out")
        if path in out_dir.parents:
            raise UserError(f"{out_dir}: the output directory lies inside the input {given}; choose another --out")
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise UserError(f"{out_dir}: exists and is not a directory; --out names the directory {stage} writes")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        found = output_stage(out_dir)
        if found is None:
            raise UserError(f"{out_dir}: exists and was not written by rnnenc {stage} (no rnnenc manifest); "
                            "choose another --out or remove it yourself")
        if found != stage:
            raise UserError(f"{out_dir}: holds the output of rnnenc {found}, not {stage}; choose another --out")
    return out_dir


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike) -> Iterator[None]:
    """Hold ``.<out>.lock`` (beside the output) exclusively; a UserError naming the holder if another run has it.

    The lock is an ``flock``: the kernel releases it when its holder dies, so a killed run never
    leaves a stale lock behind (the file stays, harmless).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    path = out_dir.with_name(f".{out_dir.name}.lock")  # hidden: one beside every output
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise UserError(f"{out_dir}: another rnnenc run is writing this output ({holder}); wait for it to "
                        "end or choose another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        started = _dt.datetime.now().isoformat(timespec="seconds")
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: "
                     f"{' '.join(sys.argv[:2]) or 'python'}\n")
        handle.flush()
        yield
    finally:
        handle.seek(0)
        handle.truncate()
        handle.close()  # releases the flock


def remove_stale_temporaries(out_dir: str | os.PathLike) -> list[Path]:
    """Remove ``<out>.tmp-XXXXXXXX`` directories of killed runs; call it holding the output's lock
    (a live run's temporary is then impossible). Only rnnenc's own (they carry the marker)."""
    out_dir = Path(out_dir)
    removed = []
    if not out_dir.parent.is_dir():
        return removed
    for path in out_dir.parent.glob(f"{glob_escape(out_dir.name)}.tmp-*"):
        if _TMP_SUFFIX.search(path.name) and path.is_dir() and not path.is_symlink() and (path / OWNER_NAME).is_file():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def published_path(path: str | os.PathLike) -> str:
    """``path`` as it will be once its stage's temporary output (``OUT.tmp-xxxxxxxx``, see
    ``atomic_output_dir``) is renamed: what messages name, so a warning never points at a
    directory that is gone by the time it is read."""
    return re.sub(r"\.tmp-[0-9a-f]{8}(?=/|$)", "", str(path))


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, *, stage: str,
                      inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``out_dir`` only if the block succeeds.

    ``out_dir`` is checked first (``check_output_target``: never a file, a foreign directory, or
    one holding an input) and locked until the rename; stale temporaries of killed runs go. On
    failure the temporary directory is removed and any previous output is left as it was. The
    caller writes the manifest (``write_manifest``) after the block.
    """
    out_dir = check_output_target(out_dir, stage, inputs)
    with output_lock(out_dir):
        remove_stale_temporaries(out_dir)
        tmp = out_dir.with_name(f"{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.mkdir()
        try:
            (tmp / OWNER_NAME).write_text(json.dumps({"stage": stage}) + "\n")
            yield tmp
            # checked again: the directory may have appeared while the stage ran
            check_output_target(out_dir, stage, inputs)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        replace_output(tmp, out_dir)


def replace_output(new: Path, out_dir: Path) -> None:
    """Rename ``new`` to ``out_dir``, removing an older output (already checked to be ours)."""
    if out_dir.exists():
        # Untrust the old output before it disappears, so a crash between the two steps
        # leaves nothing that looks complete (its marker still names the stage).
        remove_manifest(out_dir)
        shutil.rmtree(out_dir)
    os.replace(new, out_dir)


# ---------------------------------------------------------------------------------------------
# Typed artifacts: what each stage's output is, and one reader per kind

#: the kind of artifact each stage writes (recorded in its manifest)
STAGE_KINDS = {"ingest": "corpus", "select": "selection", "phrase-table": "phrase-table",
               "phrases": "phrase-table", "rescore": "phrase-table", "vocab": "vocabularies",
               "train": "model", "export": "moses-model", "moses": "moses-run", "lm": "language-model",
               "moses-train": "moses-model", "filter": "phrase-table"}
#: where a stage's main output lies inside its directory, when it is not the directory itself:
#: what a workflow's ``${stage}`` stands for where a file or a table is expected
MAIN_OUTPUT = {"phrases": "table", "train": "model.pt", "export": "moses.ini", "lm": "lm.binary",
               "moses-train": "model/moses.ini"}


@dataclass(frozen=True)
class Artifact:
    """A stage's output as a later stage reads it.

    Parameters:
        path: what was given (a stage directory, or a file or table inside one).
        stage: the stage that wrote it (None for inputs rnnenc did not write).
        kind: ``STAGE_KINDS[stage]``, or None.
        main: the path to read (``MAIN_OUTPUT`` inside a stage directory, else ``path``).
        languages: (source, target) from the manifest, when it records them.
    """

    path: Path
    stage: str | None
    kind: str | None
    main: Path
    languages: tuple[str, str] | None


def read_artifact(path: str | os.PathLike, *, expect: Iterable[str] = ()) -> Artifact:
    """The artifact at ``path``: a stage directory (its manifest read) or a plain file/table.

    ``expect``: kinds that may be given; another kind of rnnenc output is a UserError naming both.
    """
    path = Path(path)
    manifest = read_manifest(path) if path.is_dir() else None
    stage = manifest.get("stage") if manifest else None
    kind = STAGE_KINDS.get(stage) if stage else None
    expect = tuple(expect)
    if kind and expect and kind not in expect:
        raise UserError(f"{path}: the output of rnnenc {stage} ({kind}), where {' or '.join(expect)} is expected")
    main = path / MAIN_OUTPUT[stage] if stage in MAIN_OUTPUT else path
    config = (manifest or {}).get("config") or {}
    langs = manifest.get("languages") if manifest else None
    if not langs and config.get("source_lang") and config.get("target_lang"):
        langs = [config["source_lang"], config["target_lang"]]
    return Artifact(path, stage, kind, main, tuple(langs) if langs else None)


def corpus_path(path: str | os.PathLike) -> Path:
    """A corpus directory of ``part-*.parquet``: the directory given, or a selection's ``selected/``."""
    path = Path(path)
    if path.is_dir() and not any(path.glob("part-*.parquet")) and (path / "selected").is_dir():
        return path / "selected"
    return path


def phrase_table_path(path: str | os.PathLike) -> Path:
    """A Parquet phrase table: the directory given, or the ``table/`` of a phrases output."""
    return read_artifact(path, expect=("phrase-table",)).main


def model_path(path: str | os.PathLike) -> Path:
    """A model file: the file given, or the ``model.pt`` of a train output."""
    return read_artifact(path, expect=("model",)).main


def moses_ini_path(path: str | os.PathLike) -> Path:
    """A moses.ini: the file given, or the one of an export output."""
    return read_artifact(path, expect=("moses-model",)).main


def moses_table_path(path: str | os.PathLike) -> Path:
    """A Moses text phrase table: the file given, or the ``phrase-table.gz`` of a moses-train or
    export output."""
    artifact = read_artifact(path, expect=("moses-model",))
    if artifact.stage == "moses-train":
        return artifact.path / "model" / "phrase-table.gz"
    if artifact.stage == "export":
        return artifact.path / "phrase-table.gz"
    if artifact.path.is_dir():
        raise UserError(f"{artifact.path}: a directory, not a Moses phrase table file (nor a moses-train output)")
    return artifact.path


def vocabulary_path(path: str | os.PathLike, side: str) -> Path:
    """A vocabulary file: the file given, or ``vocab.<lang>.txt`` of a vocab output for ``side``
    ("source" or "target")."""
    artifact = read_artifact(path, expect=("vocabularies",))
    if artifact.kind != "vocabularies":
        return artifact.main
    if artifact.languages is None:
        raise UserError(f"{path}: a vocab output whose manifest records no languages")
    lang = artifact.languages[0 if side == "source" else 1]
    file = artifact.path / f"vocab.{lang}.txt"
    if not file.is_file():
        raise UserError(f"{file}: missing from the vocab output {path}")
    return file


def write_manifest(out_dir: str | os.PathLike, *, stage: str, inputs: Iterable[str | os.PathLike],
                   config: dict[str, Any], counts: dict[str, Any],
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``_manifest.json`` last: inputs (size + hash), outputs, config, versions, counts."""
    out_dir = Path(out_dir)
    own = (MANIFEST_NAME, LEGACY_MANIFEST_NAME, OWNER_NAME)
    outputs = [path_record(p) | {"path": str(p.relative_to(out_dir))}
               for p in sorted(out_dir.rglob("*")) if p.is_file() and p.name not in own]
    manifest = {
        "stage": stage,
        "kind": STAGE_KINDS.get(stage, stage),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": [path_record(p) for p in inputs],
        "outputs": outputs,
        "config": config,
        "versions": package_versions(),
        "counts": counts,
    }
    langs = (config.get("source_lang"), config.get("target_lang"))
    if all(isinstance(lang, str) and lang for lang in langs):
        manifest["languages"] = list(langs)
    if extra:
        manifest.update(extra)
    write_json_atomic(out_dir / MANIFEST_NAME, manifest)
    # an output resumed in place from before the rename: one manifest, the new one
    (out_dir / LEGACY_MANIFEST_NAME).unlink(missing_ok=True)
    return manifest


def changed_inputs(manifest: dict[str, Any]) -> list[str]:
    """Paths among a manifest's inputs that are missing or whose content hash differs now."""
    changed = []
    for record in manifest.get("inputs", []):
        path = Path(record["path"])
        if not path.exists() or path_record(path)["hash"] != record["hash"]:
            changed.append(str(path))
    return changed
