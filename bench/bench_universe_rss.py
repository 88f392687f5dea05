"""Measure the data actor's peak memory on a long file of many symbols' daily bars.

Run from the repository root:
    python bench/bench_universe_rss.py --write /tmp/universe-500x20.csv --symbols 500 --years 20
    python bench/bench_universe_rss.py --measure /tmp/universe-500x20.csv
The first writes a long CSV (Date, Symbol, Open, High, Low, Close, Volume), one symbol at a time, with a
tenth of the symbols listed late and a tenth delisted early. The second, in a fresh child process, does
what the data actor does with it: read and align the universe (data.universe.form long, the default
features), split episode 1, normalise with the train rows and cut both splits into encoded DataBlocks of
data.block_rows bars x symbols, as the data actor does; it prints the wall time and the peak RSS (VmHWM)
of that process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BARS_PER_YEAR = 252


def write_long(path: Path, n_symbols: int, years: int, seed: int) -> None:
    """Write n_symbols x years of weekday bars as one long CSV, one symbol's rows at a time."""
    rng = np.random.default_rng(seed)
    n = years * BARS_PER_YEAR
    start = np.datetime64("2004-01-05")
    days = np.arange(start, start + 2 * n)
    dates = np.datetime_as_string(days[np.is_busday(days)][:n])
    with path.open("w", encoding="utf-8") as fh:
        fh.write("Date,Symbol,Open,High,Low,Close,Volume\n")
        for j in range(n_symbols):
            first = int(rng.integers(0, n // 2)) if j % 10 == 1 else 0
            last = int(rng.integers(n // 2, n)) if j % 10 == 2 else n
            close = 20.0 * np.exp(np.cumsum(rng.normal(0.0002, 0.02, n)))[first:last]
            open_ = close * np.exp(rng.normal(0.0, 0.005, len(close)))
            high = np.maximum(open_, close) * 1.01
            low = np.minimum(open_, close) * 0.99
            volume = rng.integers(10_000, 1_000_000, len(close))
            symbol = f"S{j:04d}"
            fh.writelines(
                f"{d},{symbol},{o:.4f},{h:.4f},{lo:.4f},{c:.4f},{v}\n"
                for d, o, h, lo, c, v in zip(dates[first:last], open_, high, low, close, volume, strict=True)
            )


def peak_rss_mib() -> float:
    """Return this process's peak resident memory (VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(path: Path) -> dict[str, float]:
    """Do the data actor's work on the file in this process; return seconds and peak RSS."""
    from messages import DataBlock, codec
    from services.config import DataOptions
    from services.data.dataset import DatasetService
    from services.data.options import SourceOptions, UniverseOptions

    started = time.perf_counter()
    options = DataOptions(source=SourceOptions(path=str(path)), universe=UniverseOptions(form="long"))
    service = DatasetService(options, data_hash="bench", window=16, episode_length=256, cache_root=ROOT)
    loaded = service.load()
    loaded_s = time.perf_counter() - started
    split = service.episode(1)
    frames = 0
    for name, rows in (("train", split.train), ("eval", split.eval)):
        for block in DataBlock.cut(name, rows, max(1, options.block_rows // rows.assets)):
            frames += sum(len(frame) for frame in codec.encode(block))
    return {
        "rows": float(loaded.rows),
        "symbols": float(len(service.symbols)),
        "load_s": loaded_s,
        "total_s": time.perf_counter() - started,
        "streamed_mib": frames / 2**20,
        "peak_rss_mib": peak_rss_mib(),
    }


def main() -> int:
    """Write the file or measure it in a fresh child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path)
    parser.add_argument("--measure", type=Path)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--years", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.write is not None:
        started = time.perf_counter()
        write_long(args.write, args.symbols, args.years, args.seed)
        size = args.write.stat().st_size / 2**20
        print(f"wrote {args.write}: {size:.0f} MiB in {time.perf_counter() - started:.1f} s")
    if args.measure is not None:
        if args.child:
            print(json.dumps(measure(args.measure)))
            return 0
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        out = subprocess.run(
            [sys.executable, __file__, "--measure", str(args.measure), "--child"],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{figures['symbols']:.0f} symbols x {figures['rows']:.0f} bars: read and aligned in "
            f"{figures['load_s']:.1f} s, split and streamed ({figures['streamed_mib']:.0f} MiB of blocks) "
            f"in {figures['total_s']:.1f} s; peak RSS {figures['peak_rss_mib']:.0f} MiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
