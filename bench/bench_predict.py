"""Time one `run.py predict` decision, cold (a fresh process) and warm (a second decision in one process).

- cold: the wall time of `python run.py predict --run RUN` in a new process, measured around the child
  (interpreter start, imports, loading the policy, reading the data, the pass, printing). The OS page
  cache is warm: every child after the first finds the files and libraries in memory.
- warm: in one process, `Predictor(RUN).predict_source()` once, then the time of a second
  `predict_source()` on the same Predictor (it re-reads the data, computes its features and runs the
  pass; imports and the policy are already loaded).

With --compare DIR (another checkout, e.g. an older commit made with `git worktree add`), both trees are
measured, interleaved in a rotating order, and the medians of both are printed.

    .venv/bin/python bench/bench_predict.py --run runs/NAME [--repeats 7] [--compare DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import machine  # noqa: E402

WARM = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, ".")
from launcher.predict import Predictor
started = time.perf_counter()
predictor = Predictor(Path(sys.argv[1]))
first = predictor.predict_source()
after_first = time.perf_counter()
second = predictor.predict_source()
done = time.perf_counter()
assert first.as_dict() == second.as_dict()
print(json.dumps({"first": after_first - started, "warm": done - after_first, "position": second.position}))
"""


def cold(tree: Path, run: Path) -> tuple[float, str]:
    """Return the wall time of one `run.py predict` in a fresh process and its output line."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "run.py", "predict", "--run", str(run)],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - started, done.stdout.strip()


def warm(tree: Path, run: Path) -> dict[str, float]:
    """Return the first and the second decision's time inside one fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", WARM, str(run)], cwd=tree, capture_output=True, text=True, check=True
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    """Measure the trees interleaved and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a trained run folder")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compare", type=Path, help="another checkout to measure the same way")
    parser.add_argument("--json", type=Path, help="write every measurement here")
    args = parser.parse_args()
    run = args.run.resolve()
    trees = {"this tree": ROOT} | ({"compare": args.compare.resolve()} if args.compare else {})
    samples: dict[str, dict[str, list[float]]] = {name: {"cold": [], "warm": []} for name in trees}
    lines: dict[str, str] = {}
    names = list(trees)
    cold(ROOT, run)  # fills the page cache; not counted
    for repeat in range(args.repeats):
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            seconds, lines[name] = cold(trees[name], run)
            samples[name]["cold"].append(seconds)
            samples[name]["warm"].append(warm(trees[name], run)["warm"])
    print(machine())
    print(f"run {run}, {args.repeats} interleaved repeats")
    for name, series in samples.items():
        print(
            f"{name:<10} cold median {statistics.median(series['cold']):.2f} s "
            f"({min(series['cold']):.2f} .. {max(series['cold']):.2f}), "
            f"warm median {statistics.median(series['warm']):.3f} s "
            f"({min(series['warm']):.3f} .. {max(series['warm']):.3f}); {lines[name]}"
        )
    if args.json:
        args.json.write_text(json.dumps({"run": str(run), "samples": samples, "lines": lines}, indent=1))


if __name__ == "__main__":
    main()
