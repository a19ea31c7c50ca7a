"""Word alignment: eflomal in both directions, symmetrised with grow-diag-final-and (Moses ``symal``).

``align_part`` aligns one corpus part (columns ``source``, ``target``) and writes an alignment
part line-aligned with it: ``alignment`` (the symmetrised links), ``forward`` and ``reverse``
(eflomal's directional links) and ``line`` (the corpus row's ``line``). Links are Pharaoh
``s-t`` pairs, 0-based source then target index, sorted, space-separated.

Sharding trade-off. Each Dask task aligns one corpus part on its own, so alignment scales
out with the number of parts and a task's memory is bounded by its part. eflomal's sampler
only needs enough data per shard for its lexical and distortion statistics: shards of a few
million pairs (the ``rnnenc ingest --rows-per-part`` you would use for a billion-word corpus
gives parts of 0.1-1 M pairs; merge them with larger parts for alignment if needed) lose
little against aligning the whole corpus at once, as the eflomal paper's learning curves show
flat quality beyond about a million sentences. Rare words that occur in one shard only are
the loss; ``AlignConfig.priors`` passes an eflomal priors file (e.g. made with
``eflomal.calculate_priors`` on a first pass or a sample) to every shard to recover them.

Reproducibility. eflomal seeds its sampler from ``/dev/urandom`` and has no seed option, so
two alignment runs differ slightly. Everything after the alignment is deterministic:
``rnnenc phrases --alignment DIR`` reuses a stored alignment and rebuilds a byte-identical
phrase table.

Symmetrisation follows ``symal -alignment=grow -diagonal=yes -final=yes -both=yes`` (what
``train-model.perl -alignment grow-diag-final-and`` runs): start from the intersection; grow
repeatedly, visiting the current points in (target, source) order (points added ahead of the
visit position are visited in the same sweep, as with symal's ``std::set``), adding a
horizontal, vertical or diagonal neighbour that is in the union and covers a word not yet
covered; then "final-and": add union points whose source and target word are both still
unaligned, first those only in the forward (target-to-one-source) direction, then those only
in the reverse direction, each in (target, source) order.
"""

from __future__ import annotations

import bisect
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rnnenc.pipeline.errors import UserError

Link = tuple[int, int]  # (source index, target index)

ALIGNMENT_SCHEMA = pa.schema([("alignment", pa.string()), ("forward", pa.string()), ("reverse", pa.string()),
                              ("line", pa.int64())])
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))  # symal's order, (t, s)


@dataclass(frozen=True)
class AlignConfig:
    """eflomal settings. ``iterations``: (IBM1, HMM, fertility) sweeps; None lets eflomal pick."""

    model: int = 3
    iterations: tuple[int, int, int] | None = None
    samplers: int = 2
    null_prior: float = 0.2
    priors: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_links(text: str, n_src: int, n_tgt: int, where: str = "") -> list[Link]:
    """Pharaoh ``s-t`` links; UserError for a malformed link or one outside the sentence."""
    links = []
    for item in text.split():
        s, sep, t = item.partition("-")
        if not sep or not s.isdigit() or not t.isdigit():
            raise UserError(f"{where}: malformed alignment link '{item}' (want SRC-TGT)")
        link = (int(s), int(t))
        if link[0] >= n_src or link[1] >= n_tgt:
            raise UserError(f"{where}: alignment link '{item}' outside the sentence pair "
                            f"({n_src} source, {n_tgt} target tokens)")
        links.append(link)
    return links


def format_links(links: Iterable[Link]) -> str:
    return " ".join(f"{s}-{t}" for s, t in sorted(set(links)))


def grow_diag_final_and(forward: Iterable[Link], reverse: Iterable[Link]) -> list[Link]:
    """Symmetrise two directional alignments as Moses's symal does for grow-diag-final-and.

    ``forward``: eflomal's forward links (each target word to at most one source word),
    ``reverse``: the reverse ones (each source word to at most one target word); both as
    (source, target) pairs. Returns the sorted (source, target) links.
    """
    # symal works on (english=target, foreign=source) points; keep its order for the sweeps.
    fwd = {(t, s) for s, t in forward}
    rev = {(t, s) for s, t in reverse}
    union = fwd | rev
    points = sorted(fwd & rev)
    current = set(points)
    covered_t = {t for t, _ in points}
    covered_s = {s for _, s in points}
    added = True
    while added:
        added = False
        index = 0
        while index < len(points):
            t, s = points[index]
            for dt, ds in _NEIGHBOURS:
                point = (t + dt, s + ds)
                if point in union and not (point[0] in covered_t and point[1] in covered_s):
                    position = bisect.bisect_left(points, point)
                    points.insert(position, point)
                    current.add(point)
                    covered_t.add(point[0])
                    covered_s.add(point[1])
                    added = True
                    if position <= index:
                        index += 1
            index += 1
    for candidates in (sorted(fwd - rev), sorted(rev - fwd)):
        for t, s in candidates:
            if t not in covered_t and s not in covered_s:
                current.add((t, s))
                covered_t.add(t)
                covered_s.add(s)
    return sorted((s, t) for t, s in current)


def eflomal_align(source: Sequence[str], target: Sequence[str], config: AlignConfig,
                  workdir: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """eflomal's forward and reverse links for non-empty, tokenised sentence pairs."""
    import eflomal

    if not source:
        return [], []
    aligner = eflomal.Aligner(model=config.model, n_iterations=config.iterations, n_samplers=config.samplers,
                              null_prior=config.null_prior)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="eflomal-") as tmp:
        fwd_path, rev_path = Path(tmp) / "fwd", Path(tmp) / "rev"
        if config.priors:
            if not Path(config.priors).is_file():
                raise UserError(f"{config.priors}: no such priors file")
            with open(config.priors, encoding="utf-8") as priors:
                aligner.align(source, target, links_filename_fwd=str(fwd_path), links_filename_rev=str(rev_path),
                              priors_input=priors)
        else:
            aligner.align(source, target, links_filename_fwd=str(fwd_path), links_filename_rev=str(rev_path))
        fwd = fwd_path.read_text(encoding="utf-8").splitlines()
        rev = rev_path.read_text(encoding="utf-8").splitlines()
    if len(fwd) != len(source) or len(rev) != len(source):
        raise RuntimeError(f"eflomal wrote {len(fwd)}/{len(rev)} alignment lines for {len(source)} pairs")
    return fwd, rev


def align_part(part: str | os.PathLike, out_path: str | os.PathLike, config: AlignConfig) -> dict[str, int]:
    """Align one corpus part into ``out_path`` (written atomically); return counts.

    Pairs with an empty side get empty links (counted as ``empty_pairs``), never dropped, so the
    alignment stays line-aligned with the corpus.
    """
    table = pq.read_table(part, columns=[c for c in ("source", "target", "line")
                                         if c in pq.read_schema(part).names])
    source = [s or "" for s in table.column("source").to_pylist()]
    target = [t or "" for t in table.column("target").to_pylist()]
    lines = table.column("line").to_pylist() if "line" in table.column_names else list(range(1, len(source) + 1))
    keep = [i for i, (s, t) in enumerate(zip(source, target, strict=True)) if s.split() and t.split()]
    # eflomal splits on whitespace too; normalise so token indices agree with ours.
    src = [" ".join(source[i].split()) for i in keep]
    tgt = [" ".join(target[i].split()) for i in keep]
    fwd, rev = eflomal_align(src, tgt, config, workdir=Path(out_path).parent)
    forward = [""] * len(source)
    reverse = [""] * len(source)
    symmetric = [""] * len(source)
    links = 0
    for k, i in enumerate(keep):
        n_src, n_tgt = len(src[k].split()), len(tgt[k].split())
        where = f"{part}: row {i + 1}"
        f_links = parse_links(fwd[k], n_src, n_tgt, where)
        r_links = parse_links(rev[k], n_src, n_tgt, where)
        sym = grow_diag_final_and(f_links, r_links)
        forward[i], reverse[i], symmetric[i] = format_links(f_links), format_links(r_links), format_links(sym)
        links += len(sym)
    out = pa.table({"alignment": symmetric, "forward": forward, "reverse": reverse, "line": lines},
                   schema=ALIGNMENT_SCHEMA)
    out_path = Path(out_path)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    pq.write_table(out, tmp, compression="zstd")
    os.replace(tmp, out_path)
    return {"pairs": len(source), "aligned_pairs": len(keep), "empty_pairs": len(source) - len(keep),
            "links": links}
