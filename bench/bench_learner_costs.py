"""Measure two costs of the learner's own: torch's argument checks of distributions, the tensorboard writer.

Run from the repository root with the project venv:

    .venv/bin/python bench/bench_learner_costs.py [--n-envs 16] [--steps 32768] [--repeats 6] [--dumps 500]

Part 1 trains two models built by the project's one factory (`TradingModel.create`, the default config's PPO
hyperparameters) on a null VecEnv (zeros: the learner's own bound) and on SB3's DummyVecEnv of the
default session's TradingEnvs, each --steps per run, once with torch's checks on and once with them
off, the order of the two alternating from repeat to repeat. `TradingModel.learn` turns the checks off
for its pieces (`unchecked_distributions`); here the learner's step is called without that wrapper, so
the global default decides. Prints the median steps/s of each and the median of the same-repeat ratios.

Part 2 times one dump of a rollout's logger values (14 numbers, as PPO dumps them) by SB3's
TensorBoardOutputFormat (an event per value, the file flushed at every dump) and by the model's own
writer (one event a dump, flushed at the end of each piece: here every 16 dumps, a 16-env piece),
alternated dump by dump; prints the median and mean microseconds of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import torch  # noqa: E402
from common import bench_model, machine, train_data  # noqa: E402
from stable_baselines3.common.logger import TensorBoardOutputFormat  # noqa: E402
from training_setups import dummy_vec_env, null_vec_env  # noqa: E402

from services.config import load_config  # noqa: E402
from services.model.trading_model import _TensorBoardScalars  # noqa: E402


def time_tensorboard(dumps: int, piece_dumps: int = 16) -> tuple[list[float], list[float]]:
    """Return the seconds of each dump by SB3's writer and by the model's (with its flush per piece)."""
    values: dict[str, float] = {f"train/value_{i}": float(i) for i in range(12)}
    values |= {"rollout/ep_rew_mean": 1.0, "time/fps": 100.0}
    excluded: dict[str, None] = dict.fromkeys(values)
    sb3_times: list[float] = []
    own_times: list[float] = []
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second:
        sb3, own = TensorBoardOutputFormat(first), _TensorBoardScalars(Path(second))
        for dump in range(dumps):
            started = time.perf_counter()
            sb3.write(values, excluded, dump)
            sb3_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            own.write(values, excluded, dump)
            if dump % piece_dumps == piece_dumps - 1:
                own.flush()
            own_times.append(time.perf_counter() - started)
        sb3.close()
        own.close()
    return sb3_times, own_times


def main() -> int:
    """Parse the arguments, train both setups with and without the checks, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=32768)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--dumps", type=int, default=500)
    parser.add_argument("--quick", action="store_true", help="a smoke pass; its figures mean nothing")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats, args.dumps = 2048, 2, 32
    config = load_config(None, [f"env.n_envs={args.n_envs}"])
    summary, train = train_data(config)
    obs_size = config.env.window * train.features.shape[1] + 2
    envs = {
        "null": null_vec_env(args.n_envs, obs_size, 3),
        "dummy": dummy_vec_env(config, train, summary.bars_per_year),
    }
    models = {name: bench_model(config, env) for name, env in envs.items()}
    algorithms = {name: model.algorithm for name, model in models.items()}
    for algorithm in algorithms.values():  # warm-up: first rollout, first update
        algorithm.learn(models["null"].rollout_steps, reset_num_timesteps=False)
    checked_by_default = torch.distributions.Distribution._validate_args
    rates: dict[tuple[str, bool], list[float]] = {(name, c): [] for name in algorithms for c in (True, False)}
    try:
        for repeat in range(args.repeats):
            for checked in (True, False) if repeat % 2 == 0 else (False, True):
                torch.distributions.Distribution.set_default_validate_args(checked)
                for name, algorithm in algorithms.items():
                    before = algorithm.num_timesteps
                    started = time.perf_counter()
                    algorithm.learn(args.steps, reset_num_timesteps=False)
                    seconds = time.perf_counter() - started
                    rates[(name, checked)].append((algorithm.num_timesteps - before) / seconds)
    finally:
        torch.distributions.Distribution.set_default_validate_args(checked_by_default)
    print(f"machine: {machine()}")
    print(
        f"PPO steps/s, {args.n_envs} envs, {args.steps:,} steps a run, {args.repeats} repeats, "
        "distribution checks on / off"
    )
    for name in algorithms:
        on, off = rates[(name, True)], rates[(name, False)]
        ratio = statistics.median(b / a for a, b in zip(on, off, strict=True))
        print(
            f"  {name:6s} checks on {statistics.median(on):>9,.0f}  off {statistics.median(off):>9,.0f}  "
            f"off/on median same-repeat ratio {ratio:.3f}"
        )
    sb3_times, own_times = time_tensorboard(args.dumps)
    print(f"tensorboard writer, one dump of 14 values, {args.dumps} dumps alternated")
    for name, times in (("SB3 TensorBoardOutputFormat", sb3_times), ("the model's writer", own_times)):
        print(
            f"  {name:28s} median {statistics.median(times) * 1e6:7.0f} us, "
            f"mean {statistics.mean(times) * 1e6:7.0f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
