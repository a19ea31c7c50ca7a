"""Phrase-table import and export throughput, and the workers' peak memory (bounded by design).

Builds a Moses table of --lines lines (copies of the demo table with numbered sources, so the
lines are distinct and the export really sorts), then on a local Dask cluster of --workers
processes: `import_moses` of the plain text (byte ranges), of the gzip (one task), and
`export_moses` (sorted runs + merge). Prints a table: seconds, lines/s, workers' peak RSS.

  .venv/bin/python benchmarks/phrase_table.py --lines 2000000 --workers 2
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import tempfile
import time
from pathlib import Path

from distributed import Client, LocalCluster

from rnnenc.pipeline.phrase_table import ExportConfig, export_moses, import_moses
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows.cluster import DaskExecutor


def peak_rss_mb() -> float:
    """This process image's high-water RSS (VmHWM). Not ru_maxrss: Linux carries a parent's RSS at
    fork into the child's ru_maxrss, even across exec, so a spawned worker would report the client's."""
    return int(Path("/proc/self/status").read_text().split("VmHWM:")[1].split()[0]) / 1024


def build_table(root: Path, lines: int) -> tuple[Path, Path]:
    files = generate_demo(root / "demo", DemoConfig(pool_size=100, in_domain_size=10, dev_size=10,
                                                     phrase_table_pairs=20_000))
    base = gzip.decompress(files.phrase_table.read_bytes()).split(b"\n")[:-1]
    plain, packed = root / "table.txt", root / "table.txt.gz"
    with open(plain, "wb") as out, gzip.open(packed, "wb", compresslevel=1) as gz:
        written, copy = 0, 0
        while written < lines:
            chunk = [b"w%d " % copy + line for line in base[: lines - written]]
            data = b"\n".join(chunk) + b"\n"
            out.write(data)
            gz.write(data)
            written += len(chunk)
            copy += 1
    return plain, packed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--split-mb", type=int, default=32)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rnnenc-bench-pt-"))
    try:
        plain, packed = build_table(root, args.lines)
        size_mb = plain.stat().st_size / 2**20
        rows = []
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          memory_limit="4GiB") as cluster, Client(cluster) as client:
            executor = DaskExecutor(client, quiet=True)

            for name, source, split in (("import text", plain, args.split_mb << 20), ("import gz", packed, 1 << 40)):
                start = time.perf_counter()
                report = import_moses([source], root / name.replace(" ", "-"), split_bytes=split, executor=executor)
                rows.append((name, time.perf_counter() - start, report["rows_written"], report["ranges"]))
            for sorter in ("python", "sort"):
                start = time.perf_counter()
                counts = export_moses(root / "import-text", root / f"out-{sorter}.gz",
                                      ExportConfig(sorter=sorter, run_bytes=64 << 20), executor=executor)
                rows.append((f"export ({sorter} merge)", time.perf_counter() - start, counts["rows"], counts["runs"]))
            peaks = client.run(peak_rss_mb)
        print(f"table: {args.lines:,} lines, {size_mb:,.0f} MB of text; {args.workers} worker process(es)")
        print(f"{'step':<22}{'seconds':>9}{'lines/s':>12}{'tasks/runs':>12}")
        for name, seconds, n, tasks in rows:
            print(f"{name:<22}{seconds:>9.1f}{n / seconds:>12,.0f}{tasks:>12}")
        print("workers' peak RSS (MB): " + ", ".join(f"{v:,.0f}" for v in peaks.values())
              + f"; client (merge) peak RSS {peak_rss_mb():,.0f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
