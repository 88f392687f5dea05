"""Measure the in-process cost of one VecTradingEnv.step, against the same env of an earlier commit.

Run from the repository root with the project venv:

    .venv/bin/python bench/bench_vec_step.py [--against 263628d] [--n-envs 16 64] [--repeats 7]

Builds the default config's train env (configs/default.yaml; --set key.path=value as for run.py) on the
default session's train split of data/STOCKS_GOOGL.csv, once from this tree and once from
services/env/vec_env.py as it was at --against (loaded from git beside this tree's other modules), and
steps each with the same random actions (int64, or float32 for continuous, as the shared step buffer
holds them), the two alternating in every repeat. Prints the fastest and the median time per step.
Imports no torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import train_data  # noqa: E402

from services.config import load_config  # noqa: E402
from services.env.vec_env import VecTradingEnv  # noqa: E402


def module_at(revision: str) -> types.ModuleType:
    """Return services/env/vec_env.py of a git revision as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{revision}:services/env/vec_env.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    module = types.ModuleType(f"vec_env_{revision}")
    sys.modules[module.__name__] = module
    exec(compile(source, f"{revision}:services/env/vec_env.py", "exec"), module.__dict__)
    return module


def time_steps(env: Any, actions: np.ndarray, steps: int) -> float:
    """Return the mean seconds of one step over `steps` steps with the given actions in turn."""
    start = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % len(actions)])
    return (time.perf_counter() - start) / steps


def main() -> None:
    """Parse the arguments, run the interleaved repeats and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default="263628d", help="git revision of the env to compare with")
    parser.add_argument("--n-envs", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=20_000, help="steps per env and repeat")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    config = load_config(None, args.overrides)
    summary, train = train_data(config)
    old = module_at(args.against)
    options = config.env
    print(
        f"train split: {len(train)} bars x {train.features.shape[1]} features, window {options.window}, "
        f"action {options.action}, reward {options.reward}, fill {options.fill}; "
        f"{args.steps} steps x {args.repeats} repeats, alternating"
    )
    for n_envs in args.n_envs:
        envs = {
            "new": VecTradingEnv(options, bars_per_year=summary.bars_per_year, n_envs=n_envs, seed=1),
            args.against: old.VecTradingEnv(
                options, bars_per_year=summary.bars_per_year, n_envs=n_envs, seed=1
            ),
        }
        rng = np.random.default_rng(0)
        if options.positions:
            actions = rng.integers(0, len(options.positions), size=(1000, n_envs))
        else:
            actions = rng.uniform(-1.0, 1.0, size=(1000, n_envs)).astype(np.float32)
        times: dict[str, list[float]] = {name: [] for name in envs}
        for env in envs.values():
            env.update_data(train.features, train.open, train.close)
            env.reset()
            time_steps(env, actions, 1000)
        for repeat in range(args.repeats):
            order = list(envs) if repeat % 2 == 0 else list(reversed(envs))
            for name in order:
                times[name].append(time_steps(envs[name], actions, args.steps))
        for name, seconds in times.items():
            print(
                f"n_envs {n_envs:>3} {name:>8}: fastest {min(seconds) * 1e6:6.2f} us/step, "
                f"median {statistics.median(seconds) * 1e6:6.2f} us/step"
            )
        ratio = statistics.median(o / n for o, n in zip(times[args.against], times["new"], strict=True))
        print(f"n_envs {n_envs:>3} median same-repeat ratio {args.against} / new: {ratio:.1f}x")
    if "torch" in sys.modules:
        raise RuntimeError("the benchmark imported torch")


if __name__ == "__main__":
    main()
