"""Measure what a neighbour process on the other core costs an in-process PPO learner.

Run from the repository root with the project venv:

    .venv/bin/python bench/bench_neighbour.py [--n-envs 16] [--steps 32768] [--repeats 5]

Trains one model built by the project's factory (`TradingModel.create`, the default config's PPO
hyperparameters) on a null VecEnv (the learner alone), --steps per run, beside each of four neighbours
in turn, the order reversed every other repeat: none; a process that spins yielding the core
(`sched_yield`, as the step buffers' waits do); one that busy-loops; one that sleeps 100 us at a time
(10,000 wake-ups a second). It asks whether the step buffers' waits, which spin while a core is free,
cost the learner on the other core more or less than waits that sleep and wake. Prints each
neighbour's median steps/s and the median of its same-repeat ratios to no neighbour.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from common import bench_model, machine, train_data  # noqa: E402
from training_setups import null_vec_env  # noqa: E402

from services.config import load_config  # noqa: E402

NEIGHBOURS = {
    "none": "",
    "yielding spin": "import os\nwhile True: os.sched_yield()",
    "busy loop": "while True: pass",
    "100 us sleeps": "import time\nwhile True: time.sleep(0.0001)",
}


def main() -> int:
    """Parse the arguments, train beside each neighbour, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="a smoke pass; its figures mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 2048, 1
    config = load_config(None, [f"env.n_envs={args.n_envs}"])
    _, train = train_data(config)
    env = null_vec_env(args.n_envs, config.env.window * train.features.shape[1] + 2, 3)
    model = bench_model(config, env)
    model.learn(model.rollout_steps, lambda steps: True)  # warm-up: first rollout, first update
    rates: dict[str, list[float]] = {name: [] for name in NEIGHBOURS}
    names = list(NEIGHBOURS)
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            code = NEIGHBOURS[name]
            neighbour = subprocess.Popen([sys.executable, "-c", code]) if code else None
            try:
                time.sleep(0.3)  # the neighbour's interpreter is up and looping
                started, done = time.perf_counter(), 0
                while done < args.steps:
                    done += model.learn(min(8192, args.steps - done), lambda steps: True)
                rates[name].append(done / (time.perf_counter() - started))
            finally:
                if neighbour is not None:
                    neighbour.kill()
                    neighbour.wait()
    print(f"machine: {machine()}")
    print(f"PPO steps/s, null env, {args.n_envs} envs, {args.steps:,} steps a run, {args.repeats} repeats")
    for name in names:
        ratio = statistics.median(a / b for a, b in zip(rates[name], rates["none"], strict=True))
        median = statistics.median(rates[name])
        print(f"  beside {name:14s} median {median:>9,.0f}  ratio to none {ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
