"""Benchmark the data side: feature rows/s on one core, and streaming a large CSV in bounded memory.

Run from the repository root: `python bench/bench_data.py --rows 2000000`. It prints
  1. FeaturePipeline throughput (default feature set, one core) on synthetic bars already in memory;
  2. for a synthetic CSV of --rows one-minute bars, each in a fresh child process: wall time, rows/s
     and peak RSS of (a) read_bars + FeaturePipeline, features discarded chunk by chunk,
     (b) process_source, which keeps every bar and feature (what the feature cache stores),
     (c) a plain pandas.read_csv of the whole file, (d) the same with parse_dates;
  3. the content-hash rate of the cache key (blake2b) and the time of a cache hit.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import pandas as pd  # noqa: E402

from services.config import DataOptions  # noqa: E402
from services.data.bars import Bars  # noqa: E402
from services.data.dataset import DatasetService  # noqa: E402
from services.data.features import FeaturePipeline  # noqa: E402
from services.data.fingerprint import cache_key, file_digest  # noqa: E402
from services.data.options import FeatureOptions, SourceOptions  # noqa: E402
from services.data.reader import read_bars  # noqa: E402
from services.data.store import FeatureStore, process_source  # noqa: E402
from services.data.synthetic import generate_bars, write_csv  # noqa: E402


def pin_to_one_core() -> None:
    """Keep this process on one CPU so rows/s are per core."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def peak_rss_mib() -> float:
    """Return this process's peak resident memory in MiB.

    Linux's VmHWM belongs to the current program image; ru_maxrss would also count the parent's peak,
    which survives fork and exec.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_features(rows: int, repeats: int) -> dict[str, float]:
    """Time the default pipeline over `rows` in-memory bars, best of `repeats`."""
    bars = Bars.from_frame(generate_bars(rows, seed=1, freq="1min"))
    best = float("inf")
    for _ in range(repeats):
        pipeline = FeaturePipeline(FeatureOptions())
        started = time.perf_counter()
        pipeline.update(bars)
        best = min(best, time.perf_counter() - started)
    return {"rows": rows, "seconds": best, "rows_per_s": rows / best}


def child(mode: str, path: str, chunk_rows: int) -> dict[str, float]:
    """Run one streaming measurement in this (fresh) process."""
    baseline = peak_rss_mib()
    started = time.perf_counter()
    rows = 0
    if mode in ("pandas", "pandas_dates"):
        frame = pd.read_csv(path, parse_dates=["timestamp"] if mode == "pandas_dates" else None)
        rows = len(frame)
    elif mode == "keep":
        rows = len(process_source(SourceOptions(path=path, chunk_rows=chunk_rows), FeatureOptions()))
    elif mode == "actor":
        rows = data_actor_path(path, chunk_rows)
    else:
        pipeline = FeaturePipeline(FeatureOptions())
        for bars in read_bars(SourceOptions(path=path, chunk_rows=chunk_rows)):
            pipeline.update(bars)
            rows += len(bars)
    elapsed = time.perf_counter() - started
    return {
        "rows": rows,
        "seconds": elapsed,
        "rows_per_s": rows / elapsed,
        "peak_rss_mib": peak_rss_mib(),
        "import_rss_mib": baseline,
    }


def data_actor_path(path: str, chunk_rows: int) -> int:
    """Do what the data actor does: build the feature store, then read every block of episode 1."""
    options = DataOptions(
        source=SourceOptions(path=path, chunk_rows=chunk_rows),
        cache=True,
        cache_dir=str(Path(path).parent / "store"),
    )
    key = cache_key(options.source, options.features)
    service = DatasetService(options, data_hash=key, window=32, episode_length=256, cache_root=ROOT)
    service.load()
    split = service.episode(1)
    rows = 0
    for part in (split.train, split.eval):
        for start in range(0, len(part), options.block_rows):
            rows += len(part.block(start, start + options.block_rows))
    return rows


def run_child(mode: str, path: Path, chunk_rows: int) -> dict[str, float]:
    """Run `child` in a new interpreter and return its figures."""
    command = [
        sys.executable,
        __file__,
        "--child",
        mode,
        "--file",
        str(path),
        "--chunk-rows",
        str(chunk_rows),
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    """Run every measurement and print the figures."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="bars in the synthetic CSV (default 1e6)")
    parser.add_argument("--feature-rows", type=int, default=1_000_000, help="bars for the feature timing")
    parser.add_argument("--chunk-rows", type=int, default=100_000, help="read_bars chunk size")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the feature timing (best kept)")
    parser.add_argument("--dir", default="", help="folder for the CSV (default: a temporary folder)")
    parser.add_argument(
        "--child", choices=("stream", "actor", "keep", "pandas", "pandas_dates"), help=argparse.SUPPRESS
    )
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pin_to_one_core()

    if args.child:
        print(json.dumps(child(args.child, args.file, args.chunk_rows)))
        return 0

    figures = bench_features(args.feature_rows, args.repeats)
    print(
        f"features (default set, 1 core): {figures['rows']:,} rows in {figures['seconds']:.3f} s"
        f" = {figures['rows_per_s'] / 1e6:.2f} M rows/s"
    )

    with tempfile.TemporaryDirectory(dir=args.dir or None) as folder:
        path = Path(folder) / "bench.csv"
        started = time.perf_counter()
        write_csv(path, args.rows, seed=1, freq="1min")
        size_mib = path.stat().st_size / 2**20
        written = time.perf_counter() - started
        print(f"synthetic CSV: {args.rows:,} rows, {size_mib:.1f} MiB, written in {written:.1f} s")

        labels = {
            "stream": "read_bars + FeaturePipeline, streamed",
            "actor": "data actor path: store build + episode blocks",
            "keep": "process_source (all kept in memory)",
            "pandas": "pandas.read_csv, whole file",
            "pandas_dates": "pandas.read_csv + parse_dates, whole file",
        }
        for mode, label in labels.items():
            result = run_child(mode, path, args.chunk_rows)
            print(
                f"{label:42s} {result['seconds']:7.2f} s  {result['rows_per_s'] / 1e6:6.2f} M rows/s"
                f"  {size_mib / result['seconds']:7.1f} MiB/s  peak RSS {result['peak_rss_mib']:7.1f} MiB"
                f" (after imports {result['import_rss_mib']:.1f} MiB)"
            )

        started = time.perf_counter()
        file_digest(path)
        hashed = time.perf_counter() - started
        print(f"cache key content hash (blake2b): {size_mib / hashed:.0f} MiB/s")
        source = SourceOptions(path=str(path), chunk_rows=args.chunk_rows)
        store = Path(folder) / "store" / cache_key(source, FeatureOptions())
        started = time.perf_counter()
        FeatureStore.build(store, source, FeatureOptions(), key=store.name)
        built = time.perf_counter() - started
        started = time.perf_counter()
        cache_key(source, FeatureOptions())
        FeatureStore.open(store)
        loaded = time.perf_counter() - started
        print(f"feature store: miss (process + store) {built:.2f} s, hit (hash + open) {loaded:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
