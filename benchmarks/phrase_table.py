"""Phrase-table import and export throughput against `gzip -dc` of the same table, and the
workers' peak memory from the smaller table to the larger (issue 17's targets).

For each size in --sizes (default 1M and 10M lines: 102 MB and 1.0 GB of text; the whole run
took 3 to 4 minutes on 2 cores at load 2 to 9, most of it for the 10M size, which needs about
4 GB of disk under --tmp), builds a Moses table (copies of the demo table with numbered sources, so the lines
are distinct and the export really sorts), as text and as .gz (level 1), and measures:

* `gzip -dc TABLE.gz > /dev/null`: seconds, median of 3 rounds;
* on a fresh embedded cluster for each step (rnnenc's, as a command starts it: --workers
  single-threaded processes), so every step meets cold workers and its peak is its own:
  `import_moses` of the text, of the .gz, and `export_moses` of the imported table with the
  defaults (sorted runs on the workers, merge and gzip here); seconds with the cluster's start
  included and excluded, MB/s of table text, the ratio to `gzip -dc` measured in the same run,
  the CPU seconds the step took (workers' and this process's, its threads and `sort` included:
  what the step costs, whatever the load), and the workers' peak RSS (VmHWM).

The verdicts: import >= 0.3x and export >= 0.15x of gzip -dc (cluster start included: "incl";
excluded: "excl"), workers' peak RSS at the largest size over the smallest <= 1.2 (each
step's largest worker). The load average is printed before and after: on a loaded machine the
figures are indicative only.

  nice -n 19 .venv/bin/python benchmarks/phrase_table.py                       # 1M and 10M
  nice -n 19 .venv/bin/python benchmarks/phrase_table.py --sizes 200000 2000000
"""

from __future__ import annotations

import argparse
import gzip
import os
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

from rnnenc.pipeline.phrase_table import ExportConfig, export_moses, import_moses
from rnnenc.pipeline.synthetic import DemoConfig, generate_demo
from rnnenc.workflows.cluster import DaskExecutor, dask_client

IMPORT_TARGET, EXPORT_TARGET, MEMORY_TARGET = 0.3, 0.15, 1.2


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
    shutil.rmtree(root / "demo")
    return plain, packed


def gzip_seconds(path: Path, rounds: int = 3) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(["gzip", "-dc", str(path)], stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_seconds() -> float:
    """CPU seconds of this process (all its threads) and of its children waited for (sort -m)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def on_fresh_cluster(workers: int, step):
    """(cluster start seconds, step seconds, step's result, workers' peak RSS in MB, CPU seconds
    the step took, workers' and this process's) on a new cluster."""
    start = time.perf_counter()
    with dask_client(None, workers, memory_limit="8GiB") as client:
        client.wait_for_workers(workers)
        cpu = sum(client.run(cpu_seconds).values()) + cpu_seconds()
        started = time.perf_counter()
        result = step(executor=DaskExecutor(client, quiet=True))
        seconds = time.perf_counter() - started
        cpu = sum(client.run(cpu_seconds).values()) + cpu_seconds() - cpu
        peaks = client.run(peak_rss_mb)
    return started - start, seconds, result, max(peaks.values()), cpu


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000], metavar="LINES",
                        help="table sizes in lines (default: %(default)s)")
    parser.add_argument("--lines", type=int, help="shorthand for --sizes LINES 10*LINES")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tmp", type=Path, help="where the tables go (default: the system's temporary directory)")
    parser.add_argument("--compress-level", type=int, default=ExportConfig.compresslevel,
                        help="the export's gzip level (default: the export's, %(default)s)")
    args = parser.parse_args()
    sizes = [args.lines, 10 * args.lines] if args.lines else args.sizes
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {os.cpu_count()} CPUs; "
          f"{args.workers} worker process(es), 1 thread each; export at gzip level {args.compress_level}", flush=True)
    rows, peaks = [], {}
    for lines in sizes:
        root = Path(tempfile.mkdtemp(prefix="rnnenc-bench-pt-", dir=args.tmp))
        try:
            plain, packed = build_table(root, lines)
            mb = plain.stat().st_size / 1e6
            print(f"table of {lines:,} lines: {mb:,.0f} MB of text", flush=True)
            rows.append((lines, "gzip -dc", None, gzip_seconds(packed), "", None, mb, ""))
            steps = (("import text", partial(import_moses, [plain], root / "text")),
                     ("import gz", partial(import_moses, [packed], root / "gz")),
                     ("export", partial(export_moses, root / "text", root / "out.gz",
                                        ExportConfig(compresslevel=args.compress_level))))
            for name, step in steps:
                start_s, seconds, result, peak, cpu = on_fresh_cluster(args.workers, step)
                peaks[(name, lines)] = peak
                if name.startswith("import"):
                    tasks = f"{result['ranges']} tasks"
                else:
                    tasks = f"{result['parts']} parts, {result['runs']} runs"
                    if "seconds" in result:          # (an older export_moses does not say)
                        tasks += (f"; sort {result['seconds']['format_and_sort']:.1f} s, "
                                  f"merge {result['seconds']['merge']:.1f} s")
                rows.append((lines, name, start_s, seconds, f"{cpu:.1f}", peak, mb, tasks))
                print(f"  {lines:,} lines: {name} done ({start_s + seconds:.1f} s)", flush=True)
            if lines <= 2_000_000:
                exported = gzip.decompress((root / "out.gz").read_bytes())
                assert exported == b"".join(sorted(plain.read_bytes().splitlines(keepends=True))), \
                    "the export is not the input in C order"
        finally:
            shutil.rmtree(root, ignore_errors=True)

    print()
    header = (f"{'lines':>11} {'step':<12}{'start s':>8}{'s excl':>8}{'cpu s':>7}{'MB/s incl':>10}{'MB/s excl':>10}"
              f"{'x gz incl':>10}{'x gz excl':>10}{'target':>7}  {'incl/excl':<10}{'peak MB':>8}  tasks")
    print(header)
    print("-" * len(header))
    gz_speed = {}
    for lines, name, start_s, seconds, cpu, peak, mb, tasks in rows:
        if name == "gzip -dc":
            gz_speed[lines] = mb / seconds
            print(f"{lines:>11,} {name:<12}{'':>8}{seconds:>8.2f}{'':>7}{'':>10}{mb / seconds:>10.1f}")
            continue
        incl, excl = mb / (start_s + seconds), mb / seconds
        target = EXPORT_TARGET if name == "export" else IMPORT_TARGET
        ratio_incl, ratio_excl = incl / gz_speed[lines], excl / gz_speed[lines]
        verdicts = f"{verdict(ratio_incl >= target)}/{verdict(ratio_excl >= target)}"
        print(f"{lines:>11,} {name:<12}{start_s:>8.1f}{seconds:>8.1f}{cpu:>7}{incl:>10.1f}{excl:>10.1f}"
              f"{ratio_incl:>10.3f}{ratio_excl:>10.3f}{target:>7.2f}  {verdicts:<10}{peak:>8.0f}  {tasks}")
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        print(f"\nworkers' peak RSS, {large:,} lines over {small:,} (target <= {MEMORY_TARGET}):")
        worst_small = max(peaks[(name, small)] for name in ("import text", "import gz", "export"))
        worst_large = max(peaks[(name, large)] for name in ("import text", "import gz", "export"))
        for name in ("import text", "import gz", "export"):
            ratio = peaks[(name, large)] / peaks[(name, small)]
            print(f"  {name:<12}{peaks[(name, small)]:>8.0f} MB -> {peaks[(name, large)]:>6.0f} MB  "
                  f"x{ratio:.2f}  {verdict(ratio <= MEMORY_TARGET)}")
        ratio = worst_large / worst_small
        print(f"  {'all steps':<12}{worst_small:>8.0f} MB -> {worst_large:>6.0f} MB  x{ratio:.2f}  "
              f"{verdict(ratio <= MEMORY_TARGET)}")
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
