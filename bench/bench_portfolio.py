"""Measure the portfolio env: one env of 30 assets against FinRL's StockTradingEnv, 64 envs x 20 assets, RSS.

Runs in the benchmark-only venv (create it with `bash bench/setup_compare_env.sh`):

    bench/.venv-compare/bin/python bench/bench_portfolio.py [--quick]

It prints
  1. single-env steps/s with random actions, resetting at episode ends, of our PortfolioEnv (long-only
     and long-short, default costs, window 32, the 8 default features) and of FinRL's StockTradingEnv
     (its module loaded alone, as bench/bench_env_compare.py does) with the same 30 synthetic symbols
     and the same features as its indicators; the runs are interleaved over several repeats, and the
     median of the same-repeat ratios is quoted;
  2. the cost of one single-env step: the fastest of --cost-runs runs of 2,000 steps, the long-only and
     long-short envs interleaved (a quiet machine's figure even on a loaded one);
  3. VecPortfolioEnv env-steps/s at 64 envs x 20 assets, all observations written every call;
  4. the RSS of a fresh process stepping VecPortfolioEnv(64 x 20) after two episodes of every env
     (32,768 env-steps) and after --memory-steps env-steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from bench_env_compare import finrl_env_class  # noqa: E402
from common import machine  # noqa: E402

from services.data.features import compute_features  # noqa: E402
from services.data.options import DEFAULT_FEATURES  # noqa: E402
from services.data.synthetic import generate_bars  # noqa: E402
from services.env.options import EnvOptions  # noqa: E402
from services.env.portfolio import PortfolioOptions, VecPortfolioEnv  # noqa: E402
from services.env.portfolio_gym import PortfolioEnv  # noqa: E402

N_ACTIONS = 1024


def synthetic_universe(n_assets: int, n_bars: int) -> tuple[pd.DatetimeIndex, np.ndarray, ...]:
    """Return bar times, normalised features [T, M, F], opens, closes and the tradable mask of M symbols."""
    frames = [generate_bars(n_bars + 40, seed=100 + m) for m in range(n_assets)]
    features = np.stack([compute_features(frame) for frame in frames], axis=1)[40:]
    flat = features.reshape(-1, features.shape[2])
    features = ((features - flat.mean(axis=0)) / flat.std(axis=0)).astype(np.float32)
    open_ = np.stack([frame["open"].to_numpy() for frame in frames], axis=1)[40:]
    close = np.stack([frame["close"].to_numpy() for frame in frames], axis=1)[40:]
    times = pd.DatetimeIndex(frames[0]["timestamp"].iloc[40:])
    return times, features, open_, close, np.ones(close.shape, dtype=bool)


def make_finrl(times: pd.DatetimeIndex, features: np.ndarray, close: np.ndarray) -> Any:
    """Build FinRL's StockTradingEnv on the same symbols and features, as its multi-stock tutorials do."""
    env_class = finrl_env_class()
    if env_class is None:
        return None
    n_bars, n_assets, n_features = features.shape
    names = list(DEFAULT_FEATURES)
    dates = np.repeat(times.strftime("%Y-%m-%d").to_numpy(), n_assets)
    frame = pd.DataFrame({"date": dates, "tic": np.tile([f"S{m:02d}" for m in range(n_assets)], n_bars)})
    frame["close"] = close.reshape(-1)
    for i, name in enumerate(names):
        frame[name] = features[:, :, i].reshape(-1)
    frame.index = np.repeat(np.arange(n_bars), n_assets)  # FinRL indexes its frame by day: df.loc[day, :]
    return env_class(
        df=frame,
        stock_dim=n_assets,
        hmax=100,
        initial_amount=1_000_000,
        num_stock_shares=[0] * n_assets,
        buy_cost_pct=[0.001] * n_assets,
        sell_cost_pct=[0.001] * n_assets,
        reward_scaling=1e-4,
        state_space=1 + 2 * n_assets + n_features * n_assets,
        action_space=n_assets,
        tech_indicator_list=names,
        print_verbosity=10**9,
    )


def step_rate(env: Any, actions: np.ndarray, steps: int, seed: int) -> float:
    """Return steps/s of a gymnasium env stepped through `actions` (cycled), resetting at episode ends."""
    env.reset(seed=seed)
    step, reset = env.step, env.reset
    n = len(actions)
    started = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = step(actions[i % n])
        if terminated or truncated:
            reset()
    return steps / (time.perf_counter() - started)


def vector_rate(env: VecPortfolioEnv, actions: np.ndarray, calls: int) -> float:
    """Return env-steps/s of the vectorized env over `calls` step calls (auto-reset included)."""
    env.reset(seed=0)
    step = env.step
    n = len(actions)
    started = time.perf_counter()
    for i in range(calls):
        step(actions[i % n])
    return calls * env.n_envs / (time.perf_counter() - started)


def bench_speed(args: argparse.Namespace) -> dict[str, Any]:
    """Run the interleaved single-env repeats and the vectorized rate; print and return the figures."""
    times, features, open_, close, tradable = synthetic_universe(30, args.bars)
    rng = np.random.default_rng(0)
    options = EnvOptions()
    runs: dict[str, Callable[[int], float]] = {}
    singles: dict[str, tuple[PortfolioEnv, np.ndarray]] = {}
    for mode in ("long_only", "long_short"):
        env = PortfolioEnv(features, open_, close, tradable, options, PortfolioOptions(weights=mode))
        actions = rng.uniform(-1, 1, (N_ACTIONS, env.action_space.shape[0])).astype(np.float32)
        singles[mode] = (env, actions)
        runs[mode] = lambda r, env=env, actions=actions: step_rate(env, actions, args.single_steps, r)
    finrl = make_finrl(times, features, close)
    if finrl is not None:
        finrl_actions = rng.uniform(-1, 1, (N_ACTIONS, 30)).astype(np.float32)
        runs["finrl"] = lambda r: step_rate(finrl, finrl_actions, args.finrl_steps, r)
    else:
        print("FinRL is not installed in this venv (bash bench/setup_compare_env.sh installs it): skipped")
    vec = VecPortfolioEnv(EnvOptions(n_envs=64), PortfolioOptions())
    vec.update_data(
        features[:, :20].copy(), open_[:, :20].copy(), close[:, :20].copy(), tradable[:, :20].copy()
    )
    vec_actions = rng.uniform(-1, 1, (64, 64, 21))
    runs["vec"] = lambda r: vector_rate(vec, vec_actions, args.vector_calls)
    for run in runs.values():
        run(0)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(runs[name](repeat))
    labels = {
        "long_only": "PortfolioEnv(30), long_only",
        "long_short": "PortfolioEnv(30), long_short",
        "finrl": "FinRL StockTradingEnv(30)",
        "vec": "VecPortfolioEnv(64 x 20), env-steps/s",
    }
    print(f"machine: {machine()}; {len(close):,} bars, window {options.window}, {features.shape[2]} features")
    for name, values in rates.items():
        print(
            f"  {labels[name]:40s} median {statistics.median(values):>12,.0f}  (min {min(values):,.0f}, "
            f"max {max(values):,.0f}, n={len(values)})"
        )
    ratios = {}
    if "finrl" in rates:
        for mode in ("long_only", "long_short"):
            same_run = [a / b for a, b in zip(rates[mode], rates["finrl"], strict=True)]
            ratios[mode] = statistics.median(same_run)
            print(f"  ours ({mode}) / FinRL: median same-run ratio {ratios[mode]:.0f}x")
    costs: dict[str, list[float]] = {mode: [] for mode in singles}
    for _ in range(args.cost_runs):
        for mode, (env, actions) in singles.items():
            costs[mode].append(1e6 / step_rate(env, actions, 2_000, 0))
    step_us = {mode: min(values) for mode, values in costs.items()}
    for mode, us in step_us.items():
        print(f"  PortfolioEnv(30), {mode}: fastest of {args.cost_runs} runs {us:.2f} us a step")
    if "finrl" in rates:
        step_us["finrl"] = finrl_us = 1e6 / max(rates["finrl"])
        print(f"  FinRL StockTradingEnv(30): fastest of {args.repeats} runs {finrl_us:,.0f} us a step")
        for mode in ("long_only", "long_short"):
            print(f"  FinRL / ours ({mode}), fastest runs: {finrl_us / step_us[mode]:.0f}x")
    return {"rates": rates, "ratios": ratios, "step_us": step_us}


def rss_mib() -> float:
    """Return this process's resident memory in MiB."""
    return float(psutil.Process().memory_info().rss) / 2**20


def first_memory_mark(options: EnvOptions) -> int:
    """Return the env-steps after which the RSS baseline is read: two whole episodes of every env, so that
    the buffers first used when episodes end (the terminal observations) are already in it."""
    return 2 * options.episode_length * options.n_envs


def memory_child(env_steps: int, bars: int) -> dict[str, float]:
    """Step VecPortfolioEnv(64 x 20) in a fresh process; return the RSS after two episodes and all steps."""
    _, features, open_, close, tradable = synthetic_universe(20, bars)
    options = EnvOptions(n_envs=64)
    env = VecPortfolioEnv(options, PortfolioOptions())
    env.update_data(features, open_, close, tradable)
    actions = np.random.default_rng(0).uniform(-1, 1, (64, 64, 21))
    env.reset(seed=0)
    out = {}
    done = 0
    for mark in (first_memory_mark(options), env_steps):
        while done < mark:
            env.step(actions[(done // 64) % 64])
            done += 64
        out[str(mark)] = rss_mib()
    return out


def main() -> int:
    """Parse the arguments and run the benchmarks."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bars", type=int, default=2_000, help="synthetic bars per symbol")
    parser.add_argument("--single-steps", type=int, default=20_000)
    parser.add_argument("--finrl-steps", type=int, default=1_000)
    parser.add_argument("--vector-calls", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cost-runs", type=int, default=40, help="short runs for the cost of one step")
    parser.add_argument("--memory-steps", type=int, default=1_000_000, help="env-steps of the RSS run")
    parser.add_argument("--quick", action="store_true", help="a smoke pass; its figures mean nothing")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.single_steps, args.finrl_steps, args.vector_calls, args.repeats = 2_000, 100, 200, 1
        args.cost_runs = 2
        args.memory_steps = 50_000
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_steps, args.bars)))
        return 0
    figures = bench_speed(args)
    command = [sys.executable, __file__, "--memory-child", "--memory-steps", str(args.memory_steps)]
    output = subprocess.run([*command, "--bars", str(args.bars)], check=True, capture_output=True, text=True)
    memory = json.loads(output.stdout.strip().splitlines()[-1])
    mark = first_memory_mark(EnvOptions(n_envs=64))
    first, last = memory[str(mark)], memory[str(args.memory_steps)]
    print(
        f"  RSS of VecPortfolioEnv(64 x 20): after {mark:,} env-steps (two episodes) {first:.1f} MiB, after "
        f"{args.memory_steps:,} {last:.1f} MiB (growth {last - first:+.2f} MiB)"
    )
    figures["rss_mib"] = memory
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
