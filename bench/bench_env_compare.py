"""Compare our trading env's speed and memory with gym-anytrading's stocks-v0 on the same GOOGL bars.

Runs in the benchmark-only venv (create it with `bash bench/setup_compare_env.sh`):

    bench/.venv-compare/bin/python bench/bench_env_compare.py [--quick]

It prints
  1. single-env steps/s with random actions, resetting at episode ends, of our TradingEnv (default
     options: discrete3, next_open fills, 3 bps costs) and of gym-anytrading's StocksEnv, both built
     with `gymnasium.make` (gym-anytrading's documented usage; ours registered for the run) and both
     unwrapped, and of FinRL's StockTradingEnv (its single-stock pandas env, FinRL 0.3.7 installed
     without its dependencies; see finrl_env_class) on the same bars with our 8 features as its
     indicators; the runs are interleaved, in a rotating order, over several repeats;
  2. VecTradingEnv env-steps/s at --n-envs envs, observations written every step, interleaved with 1;
  3. the RSS of a fresh process after 10,000 and after 1,000,000 steps of our TradingEnv, of a
     VecTradingEnv (in step calls), and of gym-anytrading's env for contrast (FinRL's after 10,000 and
     --finrl-memory-steps, since it is slow).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from common import machine  # noqa: E402

from services.data.options import DEFAULT_FEATURES  # noqa: E402
from services.env.gym_env import TradingEnv, frame_to_arrays  # noqa: E402
from services.env.options import EnvOptions  # noqa: E402
from services.env.vec_env import VecTradingEnv  # noqa: E402

DATA = ROOT / "data" / "STOCKS_GOOGL.csv"
# gym-anytrading's observations are views of one array; gymnasium's env checker says so once per env.
warnings.filterwarnings("ignore", message=".*share an object.*")
OURS_ID = "BenchTrading-v0"
N_ACTIONS_SAMPLED = 4096


def make_ours(frame: pd.DataFrame, window: int) -> gymnasium.Env[Any, Any]:
    """Build our TradingEnv through gymnasium.make, so it carries the same wrappers as stocks-v0."""
    if OURS_ID not in gymnasium.registry:
        gymnasium.register(id=OURS_ID, entry_point=TradingEnv.from_frame)
    return gymnasium.make(OURS_ID, frame=frame, window=window)


def make_anytrading(frame: pd.DataFrame, window: int) -> gymnasium.Env[Any, Any]:
    """Build gym-anytrading's stocks env the way its README does, on our frame."""
    import gym_anytrading  # noqa: F401  (registers stocks-v0)

    return gymnasium.make("stocks-v0", df=frame, window_size=window, frame_bound=(window, len(frame)))


def finrl_env_class() -> type[Any] | None:
    """Return FinRL's StockTradingEnv class, or None when FinRL is not installed in this venv.

    `import finrl` runs its package __init__, which imports its train/test/trade scripts and through
    them broker and data-vendor SDKs that are not installed; the env module itself needs only numpy,
    pandas, gymnasium, matplotlib and SB3. So the module file is loaded on its own, unchanged.
    """
    spec = importlib.util.find_spec("finrl")  # finds the package without running its __init__
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "meta" / "env_stock_trading" / "env_stocktrading.py"
    module_spec = importlib.util.spec_from_file_location("finrl_env_stocktrading", path)
    if module_spec is None or module_spec.loader is None:
        return None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.StockTradingEnv  # type: ignore[no-any-return]


def make_finrl(frame: pd.DataFrame) -> gymnasium.Env[Any, Any] | None:
    """Build FinRL's single-stock env as its tutorials do, on our bars, with our features as indicators."""
    env_class = finrl_env_class()
    if env_class is None:
        return None
    features, _, close = frame_to_arrays(frame)
    dates = frame.iloc[len(frame) - len(close) :, 0].to_numpy()
    df = pd.DataFrame({"date": dates, "tic": "GOOGL", "close": close})
    for i, name in enumerate(DEFAULT_FEATURES):
        df[name] = features[:, i]
    df.index = np.arange(len(df))  # FinRL indexes its frame by day number: df.loc[day, :]
    return env_class(  # type: ignore[no-any-return]
        df=df,
        stock_dim=1,
        hmax=100,
        initial_amount=1_000_000,
        num_stock_shares=[0],
        buy_cost_pct=[0.001],
        sell_cost_pct=[0.001],
        reward_scaling=1e-4,
        state_space=1 + 2 + len(DEFAULT_FEATURES),
        action_space=1,
        tech_indicator_list=list(DEFAULT_FEATURES),
        print_verbosity=10**9,  # it prints a summary every print_verbosity episodes
    )


def step_rate(env: gymnasium.Env[Any, Any], actions: np.ndarray, steps: int, seed: int) -> float:
    """Return steps/s of env stepped through `actions` (cycled), resetting at every episode end."""
    env.reset(seed=seed)
    n = len(actions)
    step, reset = env.step, env.reset
    started = time.perf_counter()
    for i in range(steps):
        _, _, terminated, truncated, _ = step(actions[i % n])
        if terminated or truncated:
            reset()
    return steps / (time.perf_counter() - started)


def vector_rate(env: VecTradingEnv, actions: np.ndarray, calls: int, seed: int) -> float:
    """Return env-steps/s of the vectorized env over `calls` step calls (auto-reset included)."""
    env.reset(seed=seed)
    n = len(actions)
    step = env.step
    started = time.perf_counter()
    for i in range(calls):
        step(actions[i % n])
    return calls * env.n_envs / (time.perf_counter() - started)


def summary(rates: list[float]) -> str:
    """Format the median with its spread."""
    return (
        f"median {statistics.median(rates):>12,.0f}  (min {min(rates):,.0f}, max {max(rates):,.0f}, "
        f"n={len(rates)})"
    )


def same_run_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Return the ratio of each repeat's two rates, taken in the same repeat."""
    return [a / b for a, b in zip(numerator, denominator, strict=True)]


def bench_speed(args: argparse.Namespace, frame: pd.DataFrame) -> dict[str, Any]:
    """Run the interleaved single-env and vectorized throughput repeats; print and return the figures."""
    rng = np.random.default_rng(0)
    ours, theirs = make_ours(frame, args.window), make_anytrading(frame, args.window)
    ours_actions = rng.integers(0, ours.action_space.n, size=N_ACTIONS_SAMPLED)  # type: ignore[attr-defined]
    their_actions = rng.integers(0, theirs.action_space.n, size=N_ACTIONS_SAMPLED)  # type: ignore[attr-defined]
    runs: dict[str, Callable[[int], float]] = {
        "ours_make": lambda r: step_rate(ours, ours_actions, args.single_steps, r),
        "anytrading_make": lambda r: step_rate(theirs, their_actions, args.single_steps, r),
        "ours_raw": lambda r: step_rate(ours.unwrapped, ours_actions, args.single_steps, r),
        "anytrading_raw": lambda r: step_rate(theirs.unwrapped, their_actions, args.single_steps, r),
    }
    vec = VecTradingEnv(EnvOptions(window=args.window, n_envs=args.n_envs))
    vec.update_data(*frame_to_arrays(frame))
    vec_actions = rng.integers(0, 3, size=(1000, args.n_envs))
    runs["vec"] = lambda r: vector_rate(vec, vec_actions, args.vector_calls, r)
    one = VecTradingEnv(EnvOptions(window=args.window, n_envs=1))
    one.update_data(*frame_to_arrays(frame))
    runs["vec1"] = lambda r: vector_rate(one, vec_actions[:, :1], args.vector_calls, r)
    finrl = make_finrl(frame)
    if finrl is not None:
        finrl_actions = rng.uniform(-1.0, 1.0, size=(N_ACTIONS_SAMPLED, 1)).astype(np.float32)
        runs["finrl"] = lambda r: step_rate(finrl, finrl_actions, args.finrl_steps, r)
    else:
        print("FinRL is not installed in this venv (bash bench/setup_compare_env.sh installs it): skipped")
    print(
        f"observations: ours {ours.observation_space.shape} float32, gym-anytrading "
        f"{theirs.observation_space.shape} float32; episodes: ours {EnvOptions().episode_length} steps, "
        f"gym-anytrading {len(frame) - args.window - 1} steps (the whole frame)"
    )
    for run in runs.values():
        run(2_000)  # warm-up: first-call checks of the wrappers, caches
    rates: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for repeat in range(args.repeats):
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            rates[name].append(runs[name](repeat))
    make_ratio = same_run_ratios(rates["ours_make"], rates["anytrading_make"])
    raw_ratio = same_run_ratios(rates["ours_raw"], rates["anytrading_raw"])
    labels = {
        "ours_make": "TradingEnv, gymnasium.make",
        "anytrading_make": "stocks-v0, gymnasium.make",
        "ours_raw": "TradingEnv, unwrapped",
        "anytrading_raw": "StocksEnv, unwrapped",
        "vec": f"VecTradingEnv({args.n_envs}) env-steps/s",
        "vec1": "VecTradingEnv(1) env-steps/s",
        "finrl": "FinRL StockTradingEnv",
    }
    print(
        f"single-env steps/s, {args.single_steps:,} steps a run (FinRL {args.finrl_steps:,}); "
        f"vector {args.vector_calls:,} calls a run"
    )
    for name, label in labels.items():
        if name in rates:
            print(f"  {label:36s} {summary(rates[name])}")
    print(
        f"  ours / gym-anytrading, gymnasium.make: median same-run ratio {statistics.median(make_ratio):.2f}x"
    )
    print(
        f"  ours / gym-anytrading, unwrapped:      median same-run ratio {statistics.median(raw_ratio):.2f}x"
    )
    finrl_ratio = None
    if "finrl" in rates:
        finrl_ratio = statistics.median(same_run_ratios(rates["ours_raw"], rates["finrl"]))
        print(f"  ours / FinRL, unwrapped:               median same-run ratio {finrl_ratio:.1f}x")
    vec_median = statistics.median(rates["vec"])
    print(
        f"  target >= 1.5x single step: {'met' if statistics.median(make_ratio) >= 1.5 else 'NOT met'}; "
        f"target >= 2M env-steps/s at {args.n_envs} envs: {'met' if vec_median >= 2e6 else 'NOT met'}"
    )
    return {
        "rates": rates,
        "ratio_make": statistics.median(make_ratio),
        "ratio_raw": statistics.median(raw_ratio),
        "ratio_finrl": finrl_ratio,
    }


def profile_ours(frame: pd.DataFrame, window: int, steps: int) -> None:
    """Print where our unwrapped TradingEnv.step spends its time (cProfile, own time per function)."""
    import cProfile
    import pstats

    env = make_ours(frame, window).unwrapped
    actions = np.random.default_rng(0).integers(0, 3, size=N_ACTIONS_SAMPLED)
    plain = step_rate(env, actions, steps, 0)
    profiler = cProfile.Profile()
    profiler.enable()
    step_rate(env, actions, steps, 0)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    print(f"TradingEnv.step unwrapped, {steps:,} steps: {1e6 / plain:.2f} us a step without the profiler")
    print("  own time per function under cProfile (share of the profiled total):")
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:10]
    for (filename, line, name), entry in rows:
        where = f"{Path(filename).name}:{line}" if line else filename
        print(f"    {entry[2] / total:6.1%}  {name:28s} {where}  ({entry[1]:,} calls)")


def rss_mib() -> float:
    """Return this process's resident memory in MiB."""
    return psutil.Process().memory_info().rss / 2**20


def memory_child(kind: str, checkpoints: list[int], window: int, n_envs: int) -> dict[str, float]:
    """Step one env kind in this (fresh) process; return the RSS at each checkpoint in steps."""
    frame = pd.read_csv(DATA)
    rng = np.random.default_rng(0)
    out: dict[str, float] = {"start": rss_mib()}
    if kind == "vec":
        env = VecTradingEnv(EnvOptions(window=window, n_envs=n_envs))
        env.update_data(*frame_to_arrays(frame))
        actions = rng.integers(0, 3, size=(1000, n_envs))
        env.reset(seed=0)
        done = 0
        for mark in checkpoints:
            for i in range(done, mark):
                env.step(actions[i % 1000])
            done = mark
            out[str(mark)] = rss_mib()
        return out
    actions_1d: np.ndarray
    if kind == "finrl":
        finrl = make_finrl(frame)
        assert finrl is not None, "FinRL is not installed"
        gym_env = finrl
        actions_1d = rng.uniform(-1.0, 1.0, size=(N_ACTIONS_SAMPLED, 1)).astype(np.float32)
    else:
        gym_env = make_ours(frame, window) if kind == "ours" else make_anytrading(frame, window)
        actions_1d = rng.integers(0, gym_env.action_space.n, size=N_ACTIONS_SAMPLED)  # type: ignore[attr-defined]
    gym_env.reset(seed=0)
    done = 0
    for mark in checkpoints:
        for i in range(done, mark):
            _, _, terminated, truncated, _ = gym_env.step(actions_1d[i % N_ACTIONS_SAMPLED])
            if terminated or truncated:
                gym_env.reset()
        done = mark
        out[str(mark)] = rss_mib()
    return out


def bench_memory(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Run each memory measurement in a fresh child process; print and return the RSS figures."""
    results: dict[str, dict[str, float]] = {}
    labels = {
        "ours": "TradingEnv (steps)",
        "vec": f"VecTradingEnv({args.n_envs}) (step calls)",
        "anytrading": "gym-anytrading stocks-v0 (steps)",
    }
    if finrl_env_class() is not None:
        labels["finrl"] = "FinRL StockTradingEnv (steps)"
    print(f"RSS of a fresh process after 10,000 and {args.memory_steps:,} steps (MiB; FinRL: see its row)")
    for kind, label in labels.items():
        steps = args.finrl_memory_steps if kind == "finrl" else args.memory_steps
        command = [
            sys.executable,
            __file__,
            "--memory-child",
            kind,
            "--memory-steps",
            str(steps),
            "--window",
            str(args.window),
            "--n-envs",
            str(args.n_envs),
        ]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        results[kind] = result
        first, last = result["10000"], result[str(steps)]
        print(
            f"  {label:40s} after 10,000: {first:7.1f}  after {steps:,}: {last:7.1f}  "
            f"growth {last - first:+.2f} MiB ({last / first:.4f}x)"
        )
    return results


def main() -> int:
    """Parse the arguments and run the speed and memory comparisons."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke pass (small counts)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--single-steps", type=int, default=100_000)
    parser.add_argument("--vector-calls", type=int, default=20_000)
    parser.add_argument("--n-envs", type=int, default=64)
    parser.add_argument("--window", type=int, default=32, help="window of both envs (stocks-v0's is 30)")
    parser.add_argument("--memory-steps", type=int, default=1_000_000)
    parser.add_argument("--finrl-steps", type=int, default=20_000, help="FinRL steps a run (it is slow)")
    parser.add_argument("--finrl-memory-steps", type=int, default=200_000)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--profile", action="store_true", help="also profile our single env's step")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    parser.add_argument(
        "--memory-child", choices=("ours", "vec", "anytrading", "finrl"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.memory_child:
        checkpoints = [10_000, args.memory_steps]
        print(json.dumps(memory_child(args.memory_child, checkpoints, args.window, args.n_envs)))
        return 0
    if args.quick:
        args.repeats, args.single_steps, args.vector_calls, args.memory_steps = 3, 20_000, 2_000, 50_000
        args.finrl_steps, args.finrl_memory_steps = 5_000, 20_000

    frame = pd.read_csv(DATA)
    print(f"machine: {machine()}; python {sys.version.split()[0]}, numpy {np.__version__}")
    print(f"data: {DATA.name}, {len(frame)} rows; window {args.window}")
    figures: dict[str, Any] = {"speed": bench_speed(args, frame)}
    if args.profile:
        profile_ours(frame, args.window, args.single_steps)
    if not args.skip_memory:
        figures["memory"] = bench_memory(args)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
