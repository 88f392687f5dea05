"""Time the default portfolio session against the single-asset default session, alternated pair by pair.

Run from the repository root:
    python bench/bench_portfolio_session.py [--pairs 3] [--portfolio-set KEY=VALUE ...] [--json FILE]

Each pair runs both sessions one after the other, `python run.py` (configs/default.yaml, GOOGL) and
`python run.py --config configs/portfolio.yaml` (the 20 stocks), with plain console output and their run
folders in a temporary runs folder; the order alternates from pair to pair (single first, then portfolio
first, ...), so a slow spell of the machine falls on both sides alike over the pairs. Per session:
- wall: from starting `run.py` to its exit (start-up, data, training, evaluation, report: what a user
  waits for), timed here;
- trained: the steps and steps/s its "episode 1 trained" line reports.
Per pair the ratio portfolio wall / single-asset wall; at the end the median of each side and of the
same-pair ratios (issue 15's target: the portfolio session under twice the single-asset session).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRAINED = re.compile(r"episode 1 trained: ([\d,]+) steps in \S+ \(([\d,]+) steps/s\)")


def run_session(label: str, extra: list[str], runs_dir: Path, index: int) -> dict[str, Any]:
    """Run one session to its end; return its wall time and what its trained line says."""
    command = [
        sys.executable,
        "run.py",
        *extra,
        "--set",
        "session.console=plain",
        "--set",
        f"session.runs_dir={runs_dir}",
        "--name",
        f"{label}-{index}",
    ]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"{label} session exited {done.returncode}: " + " | ".join(tail))
    match = TRAINED.search(done.stdout + done.stderr)
    if match is None:
        raise RuntimeError(f"{label} session printed no 'episode 1 trained' line")
    steps, rate = (int(group.replace(",", "")) for group in match.groups())
    return {"wall_s": wall, "steps": steps, "steps_per_s": rate}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--portfolio-set", action="append", default=[], metavar="KEY=VALUE", help="a portfolio-side override"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args()
    if args.pairs < 1:
        parser.error("--pairs must be at least 1")
    portfolio = ["--config", "configs/portfolio.yaml"]
    for item in args.portfolio_set:
        portfolio += ["--set", item]
    print(f"machine: {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    pairs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-portfolio-session-") as tmp:
        runs_dir = Path(tmp)
        for index in range(args.pairs):
            order = [("single", []), ("portfolio", portfolio)]
            if index % 2:
                order.reverse()
            pair = {label: run_session(label, extra, runs_dir, index) for label, extra in order}
            pair["ratio"] = pair["portfolio"]["wall_s"] / pair["single"]["wall_s"]
            pair["first"] = order[0][0]
            pairs.append(pair)
            print(
                f"  pair {index + 1} ({pair['first']} first): single {pair['single']['wall_s']:.1f} s "
                f"({pair['single']['steps_per_s']:,} steps/s), portfolio {pair['portfolio']['wall_s']:.1f} s "
                f"({pair['portfolio']['steps_per_s']:,} steps/s), ratio {pair['ratio']:.2f}",
                flush=True,
            )
    single = statistics.median(p["single"]["wall_s"] for p in pairs)
    port = statistics.median(p["portfolio"]["wall_s"] for p in pairs)
    ratio = statistics.median(p["ratio"] for p in pairs)
    print(f"median wall: single {single:.1f} s, portfolio {port:.1f} s; median same-pair ratio {ratio:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    if args.json:
        args.json.write_text(json.dumps({"pairs": pairs, "portfolio_set": args.portfolio_set}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
