"""Measure the trading env's speed: single TradingEnv steps/s and VecTradingEnv env-steps/s.

Run with `.venv/bin/python bench/bench_env.py`. Random actions on data/STOCKS_GOOGL.csv with the
default features (TradingEnv.from_frame); the two measurements are interleaved over several repeats
and the medians printed, so that a slow spell of the machine hits both alike. Imports no torch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.env.gym_env import TradingEnv, frame_to_arrays  # noqa: E402
from services.env.options import EnvOptions  # noqa: E402
from services.env.vec_env import VecTradingEnv  # noqa: E402


def bench_single(env: TradingEnv, steps: int, seed: int) -> float:
    """Return steps/s of one env stepped with random actions, resetting at episode ends."""
    actions = [env.action_space.sample() for _ in range(1000)]
    env.reset(seed=seed)
    start = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = env.step(actions[i % 1000])
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def bench_vector(env: VecTradingEnv, steps: int, seed: int) -> float:
    """Return env-steps/s of the vectorized env stepped with random actions (auto-reset included)."""
    rng = np.random.default_rng(seed)
    n = env.n_envs
    if env.options.action == "continuous":
        actions = rng.uniform(-1.0, 1.0, size=(1000, n, 1)).astype(np.float32)
    else:
        actions = rng.integers(0, 3 if env.options.action == "discrete3" else 2, size=(1000, n))
    env.reset(seed=seed)
    start = time.perf_counter()
    for i in range(steps):
        env.step(actions[i % 1000])
    return steps * n / (time.perf_counter() - start)


def main() -> None:
    """Parse the arguments, run the interleaved repeats and print the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "STOCKS_GOOGL.csv")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--single-steps", type=int, default=200_000)
    parser.add_argument("--vector-steps", type=int, default=20_000)
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--action", default="discrete3")
    parser.add_argument("--reward", default="log_return")
    args = parser.parse_args()

    frame = pd.read_csv(args.data)
    single = TradingEnv.from_frame(frame, window=args.window, action=args.action, reward=args.reward)
    options = EnvOptions(window=args.window, action=args.action, reward=args.reward, n_envs=args.n_envs)
    vector = VecTradingEnv(options)
    features, open_, close = frame_to_arrays(frame)
    vector.update_data(features, open_, close)
    print(
        f"data: {args.data.name}, {features.shape[0]} bars x {features.shape[1]} features, "
        f"window {args.window}, observation {vector.observation_shape}, action {args.action}, "
        f"reward {args.reward}"
    )

    single_rates, vector_rates = [], []
    for repeat in range(args.repeats):
        single_rates.append(bench_single(single, args.single_steps, seed=repeat))
        vector_rates.append(bench_vector(vector, args.vector_steps, seed=repeat))
    print(
        f"TradingEnv single:        median {statistics.median(single_rates):>12,.0f} steps/s "
        f"(min {min(single_rates):,.0f}, max {max(single_rates):,.0f}, {args.repeats} repeats)"
    )
    print(
        f"VecTradingEnv({args.n_envs:>3}):       median "
        f"{statistics.median(vector_rates):>12,.0f} env-steps/s "
        f"(min {min(vector_rates):,.0f}, max {max(vector_rates):,.0f}, {args.repeats} repeats)"
    )
    if "torch" in sys.modules:
        raise RuntimeError("the benchmark imported torch")


if __name__ == "__main__":
    main()
