"""Train SB3 PPO on gym-anytrading's stocks-v0 with its documented defaults and time it (the baseline).

Runs in the benchmark-only venv (`bash bench/setup_compare_env.sh`); bench/bench_training.py starts it:

    bench/.venv-compare/bin/python bench/bench_anytrading_ppo.py --steps 500000 [--total 500000]

The setup follows gym-anytrading's README and SB3's quick start: one `stocks-v0` env built by
`gymnasium.make` on data/STOCKS_GOOGL.csv (window 30 and frame bound as the package registers them),
`PPO("MlpPolicy", env)` with every hyperparameter at SB3's default, torch's default thread count (or
--torch-threads), and `learn(steps)`. With --steps below --total, the steps/s measured on --steps is
extrapolated to --total (whole rollouts of 2,048 steps), and the printed JSON says so.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

STARTED = time.perf_counter()

import gymnasium  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "STOCKS_GOOGL.csv"


def main() -> int:
    """Build the env and the default PPO, train, and print one JSON line of timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke pass: one rollout")
    parser.add_argument("--steps", type=int, default=500_000, help="steps actually trained")
    parser.add_argument("--total", type=int, default=0, help="steps to extrapolate to (default: --steps)")
    parser.add_argument("--window", type=int, default=30, help="stocks-v0's registered window")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--torch-threads", type=int, default=0, help="torch threads; 0 keeps torch's default (all cores)"
    )
    args = parser.parse_args()
    if args.quick:
        args.steps = 2048
    total = args.total or args.steps
    # gym-anytrading returns observations that are views of one array; the env checker warns once.
    warnings.filterwarnings("ignore", message=".*share an object.*")

    import gym_anytrading  # noqa: F401  (registers stocks-v0)
    import torch
    from stable_baselines3 import PPO

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    frame = pd.read_csv(DATA)
    env = gymnasium.make(
        "stocks-v0", df=frame, window_size=args.window, frame_bound=(args.window, len(frame))
    )
    model = PPO("MlpPolicy", env, seed=args.seed, verbose=0)
    setup_s = time.perf_counter() - STARTED
    began = time.perf_counter()
    model.learn(total_timesteps=args.steps)
    learn_s = time.perf_counter() - began
    trained = int(model.num_timesteps)
    rate = trained / learn_s
    rollout = model.n_steps * model.n_envs
    total_trained = -(-total // rollout) * rollout
    print(
        json.dumps(
            {
                "steps": trained,
                "learn_s": learn_s,
                "steps_per_s": rate,
                "setup_s": setup_s,
                "wall_s": time.perf_counter() - STARTED,
                "total": total_trained,
                "extrapolated": trained < total_trained,
                "total_wall_s": setup_s + total_trained / rate,
                "torch_threads": torch.get_num_threads(),
                "n_steps": model.n_steps,
                "batch_size": model.batch_size,
                "n_epochs": model.n_epochs,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
