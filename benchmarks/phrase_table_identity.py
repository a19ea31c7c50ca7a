"""Phrase-table import/export outputs on odd inputs, as one JSON of digests: run it under two
checkouts and compare, to show a change keeps the outputs byte for byte.

Writes tables with CRLF lines, padded fields, '|' inside tokens, extra and trailing empty
fields, a line longer than the parser's block, every kind of bad line, invalid UTF-8, no final
newline, and compressed copies (gz, bz2, zst, a truncated gz); imports each (fail and skip,
several split sizes, serially) and exports the tables (both sorters, two precisions, small and
large runs). Records per case: the Parquet content and schema (all parts read as one table),
the report's counts, the rejects file's text, the exported text, or the error message; the
number of parts and the compressed output's bytes are recorded apart (``layout``: they may
differ while the content does not).

  PYTHONPATH=OLD python benchmarks/phrase_table_identity.py old.json
  PYTHONPATH=NEW python benchmarks/phrase_table_identity.py new.json
  python benchmarks/phrase_table_identity.py --compare old.json new.json
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import json
import shutil
import sys
import tempfile
from pathlib import Path

GOOD = "a b ||| x y ||| 0.5 0.25 1 0.125 ||| 0-0 1-1 ||| 4 2 1"


def odd_lines() -> list[bytes]:
    lines = [GOOD.encode(),
             b"c  |||  x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1\r",           # padding, CR
             b"a|b ||| y|z ||| .5 +1 1E-3 0 ||| 0-0 ||| 1 1 1",               # '|' inside tokens
             b"a||b ||| y ||| 1e-45 -0 0.1 0.2 ||| ||| 1 1 1",               # subnormal, -0, empty field
             "\u00e9t\u00e9 \u4e2d ||| \u00fc ||| 0.3 0.3 0.3 0.3 ||| 0-0 ||| 3 3 3".encode(),
             b"a b ||| x y ||| 0.5 0.25 1 0.125 ||| 0-0 1-1 ||| 4 2 1",     # a duplicate
             b"a b ||| x y ||| 0.50 0.250 1.0 0.1250 ||| 0-0 1-1 ||| 4 2 1",  # same values, other text
             b"a b ||| x y ||| 0.123456789 0.25 1 0.125 ||| 0-0 ||| 4 2 1",  # > 6 digits
             b"z\tq ||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",           # a tab inside a phrase
             b"long " + b"w " * 40_000 + b"||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",
             b"b ||| x ||| 0.5 0.25 1 ||| 0-0 ||| 1 1 1",                     # score_count
             b"b ||| x ||| 0.5 abc 1 0.125 ||| 0-0 ||| 1 1 1",               # non_numeric
             b"b ||| x ||| 0.5 nan 1 0.125 ||| 0-0 ||| 1 1 1",
             b"b ||| x ||| 0.5 1_0 1 0.125 ||| 0-0 ||| 1 1 1",
             b"b ||| x ||| 0.5 1e39 1 0.125 ||| 0-0 ||| 1 1 1",
             b"b ||| x ||| 0.5 inf 1 0.125 ||| 0-0 ||| 1 1 1",
             b" ||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",               # empty_phrase
             b"b |||  ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",
             b"b ||| x ||| 0.5 -0.25 1 0.125 ||| 0-0 ||| 1 1 1",             # score_range
             b"b ||| x ||| 0.5 1.5 1 0.125 ||| 0-0 ||| 1 1 1",
             b"b ||| x ||| 0.5 0.25 1 0.125 ||| 0-0",                         # field_count
             b"b ||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1 ||| more",
             b"b ||| x ||||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",
             b"",                                                              # an empty line
             b"broken line",
             b"b\xff ||| x ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",          # invalid UTF-8
             b"back\\slash \\x41 ||| x\xfe ||| 0.5 0.25 1 0.125 ||| 0-0 ||| 1 1 1",
             b"\t\r"]
    many = [f"p{i % 997} q{i} ||| t{i % 13} u ||| {(i % 7) / 7:.6g} 0.25 {1 / (1 + i % 11):.6g} 0.125 "
            f"||| 0-0 ||| {i % 5} 2 1".encode() for i in range(30_000)]
    return lines + many[:15_000] + lines[1:] + many[15_000:] + [GOOD.replace("a b", "last").encode()]


def tables(root: Path) -> dict[str, Path]:
    import zstandard

    data = b"\n".join(odd_lines())                                    # no final newline
    out = {"odd.txt": data}
    out["odd.txt.gz"] = gzip.compress(data, mtime=0)
    out["odd.txt.bz2"] = bz2.compress(data)
    out["odd.txt.zst"] = zstandard.ZstdCompressor().compress(data)
    out["truncated.txt.gz"] = gzip.compress(data + b"\n" + data, mtime=0)[:-3000]
    out["three.txt"] = b"a ||| x ||| 0.5 0.25\nb ||| y ||| 1 1e-05\r\nc ||| z ||| 0 0.3\n"
    out["extra.txt"] = (b"a ||| x ||| 0.5 0.25 ||| 0-0 ||| 2 2 1 ||| sparse 1 ||| {{key value}}\n"
                        b"b ||| y ||| 1 1e-05 ||| 0-0 ||| 1 1 1 ||| sparse 2 ||| \n"
                        b"b ||| y ||| 1 1e-05 ||| 0-0 ||| 1 1 1 ||| |||\n")
    paths = {}
    for name, content in out.items():
        paths[name] = root / name
        paths[name].write_bytes(content)
    return paths


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def table_digest(directory: Path) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rnnenc.pipeline.phrase_table import list_parts

    parts = list_parts(directory)
    table = pa.concat_tables([pq.read_table(p) for p in parts]).combine_chunks()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return {"content": digest(sink.getvalue().to_pybytes()), "rows": table.num_rows,
            "schema": str(table.schema), "metadata": {k.decode(): v.decode() for k, v in table.schema.metadata.items()}}


def run(out_json: Path) -> None:
    from rnnenc.pipeline.artifacts import REJECTS_NAME
    from rnnenc.pipeline.errors import UserError
    from rnnenc.pipeline.phrase_table import ExportConfig, export_moses, import_moses

    root = Path(tempfile.mkdtemp(prefix="rnnenc-pt-identity-"))
    results: dict[str, dict] = {}
    layout: dict[str, dict] = {}
    try:
        paths = tables(root)
        cases = []
        for name in ("odd.txt", "odd.txt.gz", "odd.txt.bz2", "odd.txt.zst", "truncated.txt.gz", "three.txt",
                     "extra.txt"):
            for split in (None, 3000, 100_000, 1 << 40):
                for on_error in ("fail", "skip"):
                    cases.append(([paths[name]], name, split, on_error))
        cases.append(([paths["odd.txt"], paths["odd.txt.gz"]], "odd.txt+odd.txt.gz", 50_000, "skip"))
        for inputs, name, split, on_error in cases:
            key = f"import {name} split={split} {on_error}"
            out = root / "out" / key.replace(" ", "_")
            try:
                report = import_moses(inputs, out, split_bytes=split, on_error=on_error, rows_per_group=4000)
            except UserError as exc:
                results[key] = {"error": str(exc).replace(str(root), "ROOT")}
                continue
            rejects = out / REJECTS_NAME
            results[key] = {
                "table": table_digest(out),
                "report": {k: report[k] for k in ("lines_read", "rows_written", "rejected", "rejected_by_reason",
                                                  "num_scores", "num_fields", "score_names")},
                "files": {Path(f).name: c for f, c in report["files"].items()},
                "rejects": (gzip.decompress(rejects.read_bytes()).decode().replace(str(root), "ROOT")
                            if rejects.exists() else None)}
            layout[key] = {"parts": report["parts"]}
            if split != 3000 or on_error != "skip" or name.startswith("truncated"):
                continue
            for sorter in ("python", "sort"):
                for precision in (6, 9):
                    for run_bytes in (20_000, 1 << 30):
                        ekey = f"export {name} sorter={sorter} precision={precision} run_bytes={run_bytes}"
                        target = root / "export" / (ekey.replace(" ", "_") + ".gz")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        counts = export_moses(out, target, ExportConfig(sorter=sorter, precision=precision,
                                                                        run_bytes=run_bytes))
                        text = gzip.decompress(target.read_bytes())
                        results[ekey] = {"text": digest(text), "lines": text.count(b"\n"),
                                         "counts": {k: counts[k] for k in ("rows", "clipped", "clipped_total")}}
                        layout[ekey] = {"gz": digest(target.read_bytes())}
            ekey = f"export {name} scores=p_f_given_e,p_e_given_f"
            if report["num_scores"] == 4:
                target = root / "export" / "subset.gz"
                export_moses(out, target, ExportConfig(scores=("p_f_given_e", "p_e_given_f")))
                results[ekey] = {"text": digest(gzip.decompress(target.read_bytes()))}
        out_json.write_text(json.dumps({"results": results, "layout": layout}, indent=1, sort_keys=True))
        print(f"{len(results)} cases -> {out_json}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def compare(old: Path, new: Path) -> int:
    a, b = json.loads(old.read_text()), json.loads(new.read_text())
    same = [k for k in a["results"] if a["results"][k] == b["results"].get(k)]
    differ = sorted((set(a["results"]) | set(b["results"])) - set(same))
    for key in differ:
        print(f"DIFFERS: {key}\n  old: {json.dumps(a['results'].get(key))[:600]}\n"
              f"  new: {json.dumps(b['results'].get(key))[:600]}")
    layout = [k for k in a["layout"] if a["layout"][k] != b["layout"].get(k)]
    print(f"{len(same)} of {len(a['results'])} cases identical, {len(differ)} differ; "
          f"layout (parts, gz bytes) differs in {len(layout)}: {', '.join(layout[:6])}{' ...' if len(layout) > 6 else ''}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, help="where the digests go (JSON)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        return compare(*args.compare)
    if args.out is None:
        parser.error("give OUT or --compare OLD NEW")
    run(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
