"""Measure how much of a planted, exploitable signal the default agent learns, against its oracle.

Each kind is a synthetic daily series whose next log return has a known conditional expectation given
the past bars; the open of every bar equals the previous close, so a decision at bar t filled at the next
open trades exactly the return the model predicts:

- momentum: r[t] = 0.15 r[t-1] + e[t] (returns positively autocorrelated), E = 0.15 r[t];
- mean_reversion: r[t] = -0.15 r[t-1] + e[t] (negatively autocorrelated), E = -0.15 r[t];
- regime: r[t] = s[t] m + e[t], the drift sign s a hidden two-state Markov chain that stays with
  probability 0.99 a bar (a regime lasts 100 bars on average; m = 0.2 %, about 50 % a year); E = m (2
  P(s[t+1] = +1 | r[..t]) - 1), the probability from the exact (Hamilton) filter on the returns seen so
  far, the best any causal policy can know. The regime shows only through the returns.

e is Gaussian with 1 % daily volatility; high and low add small wicks, volume is independent noise.

The regime's drift was 0.1 % until it was found to measure nothing: against 1 % noise the filter hardly
knows the regime before it ends, so the oracle's eval Sharpe was 0.76, 0.29, -0.03, 0.11 and 0.06 on
seeds 0 to 4 (0.42 on average over seeds 0 to 19, as low as -0.90) and a share of it divided by nearly
nothing (pooled 1.35, bootstrap -1.26 to 4.52). At 0.2 % the oracle's eval Sharpe is 1.14 to 2.09 on
seeds 0 to 4, no lower on any of seeds 0 to 19 (mean 1.78; the AR(1) kinds: 0.70 to 1.86 on seeds 0 to
4), the per-bar signal-to-noise ratio (0.2) is near theirs (0.15), and regimes of 100 bars are long
enough for the default features (returns over 1, 5 and 20 bars, the close against its 100-bar average) to
track: on bars 8,020 to 9,999 of seeds 0 to 19 (about the eval window) the sign of ema_ratio_100 alone
reaches 0.91 of the oracle's expected gain and the sign of ret_20 0.86, so a policy must combine them to
pass. The oracle's rule stays: going to the sign of E at any |E|, or only beyond twice or four times the
cost, gains 0.99, 0.98 and 0.91 of what it does.

The oracle decides at every bar with the env's own action set (discrete3: short, flat, long): it goes to
the sign of E when |E| exceeds the cost of trading one unit (commission + slippage), and otherwise keeps
its position. It runs through the same sequential eval env (costs, fills, records) on the same eval
window as the session, so both Sharpe ratios come from the same code on the same bars.

The agent is `python run.py --data FILE` with the default config and its default budget
(`--steps N` sets training.steps_per_episode for a quicker run; `--set KEY=VALUE`, repeatable, goes to
run.py and to the oracle's config, to compare other settings); its out-of-sample Sharpe is read from
its eval-episode-1.csv, whose bars are checked against the oracle's.

On 2,000 eval bars a Sharpe ratio has a standard error of about 0.35, so besides the Sharpe ratios each
row has two figures of the decisions alone: the share of bars where the agent holds the oracle's
position, and the expected-return share, the agent's positions valued at the planted E (less the costs
of its trades) over the oracle's valued the same way, which leaves out the noise of the realised returns.

Each kind's table ends with a pooled row, the figure the per-kind target is judged on: the agent's eval
returns of all the kind's seeds put end to end (seed after seed, each seed's per-bar returns as its
eval-episode-1.csv has them) and the Sharpe ratio of that one series, computed by the same
compute_metrics, over the oracle's pooled the same way; its expected share is the sum of the agent's
expected gains over all seeds over the sum of the oracle's. Each seed counts by its bars (all have the
same number), so no single seed's ratio, large or small, decides it; seeds whose oracle Sharpe is not
positive are pooled too. Beside it, in brackets, the 5th and 95th percentiles of that ratio over 2,000
moving-block bootstrap resamples of the pooled bars (blocks of 20 bars, the agent's and the oracle's
returns of a bar drawn together): how far the realised returns alone move it. The median of the per-seed
shares and the ratio of the mean Sharpe ratios are printed as well.

    .venv/bin/python bench/bench_learning.py [--kinds momentum,mean_reversion,regime] [--seeds 0-19]
        [--bars 10000] [--steps N] [--set KEY=VALUE ...] [--json FILE]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import parse_seeds  # noqa: E402
from services.config import Config, load_config  # noqa: E402
from services.data.bars import infer_bars_per_year  # noqa: E402
from services.data.features import feature_warmup  # noqa: E402
from services.data.splits import split_ranges  # noqa: E402
from services.env.metrics import compute_metrics  # noqa: E402
from services.env.options import min_bars, min_eval_bars  # noqa: E402
from services.env.vec_env import VecTradingEnv  # noqa: E402

SIGMA = 0.01
PHI = 0.15
REGIME_DRIFT = 0.002
REGIME_STAY = 0.99
DEFAULT_SEEDS = "0-19"
"""Twenty series a kind. With the same decisions the realised share of one seed lies 0.12 to 0.21
(standard deviation) from its expected share, the noise of the bars where the agent and the oracle
disagree; four pools of five seeds of one kind gave 0.88 to 1.01 at one expected share. A pool of twenty
halves that spread (docs/BENCHMARKS.md, section 11)."""

HEADER = (
    "| seed | eval bars | agent Sharpe | oracle Sharpe | agent / oracle | same position | expected share "
    "| buy-and-hold Sharpe | run s |"
)

Series = tuple[np.ndarray, np.ndarray]
"""Log returns r[0..n) and E[r[t+1] | r[..t]] for every t."""


def momentum(n: int, rng: np.random.Generator) -> Series:
    """Return AR(1) log returns with coefficient +PHI and their one-step conditional expectation."""
    return _ar1(n, rng, PHI)


def mean_reversion(n: int, rng: np.random.Generator) -> Series:
    """Return AR(1) log returns with coefficient -PHI and their one-step conditional expectation."""
    return _ar1(n, rng, -PHI)


def _ar1(n: int, rng: np.random.Generator, phi: float) -> Series:
    shocks = rng.normal(0.0, SIGMA, n)
    r = np.empty(n)
    r[0] = shocks[0]
    for t in range(1, n):
        r[t] = phi * r[t - 1] + shocks[t]
    return r, phi * r


def regime(n: int, rng: np.random.Generator) -> Series:
    """Return regime-switching log returns and the filtered expectation of the next one."""
    flips = rng.random(n) > REGIME_STAY
    state = np.where(np.cumsum(flips) % 2 == 0, 1.0, -1.0) * (1.0 if rng.random() < 0.5 else -1.0)
    r = state * REGIME_DRIFT + rng.normal(0.0, SIGMA, n)
    expected = np.empty(n)
    up = 0.5  # P(s[t] = +1 | r[..t-1]), before the update with r[t]
    for t in range(n):
        like_up = math.exp(-((r[t] - REGIME_DRIFT) ** 2) / (2 * SIGMA**2))
        like_down = math.exp(-((r[t] + REGIME_DRIFT) ** 2) / (2 * SIGMA**2))
        posterior = up * like_up / (up * like_up + (1.0 - up) * like_down)
        up = posterior * REGIME_STAY + (1.0 - posterior) * (1.0 - REGIME_STAY)
        expected[t] = REGIME_DRIFT * (2.0 * up - 1.0)
    return r, expected


KINDS: dict[str, Callable[[int, np.random.Generator], Series]] = {
    "momentum": momentum,
    "mean_reversion": mean_reversion,
    "regime": regime,
}


def bars_frame(returns: np.ndarray, rng: np.random.Generator) -> pd.DataFrame:
    """Return daily OHLCV bars of the log returns, each open at the previous close."""
    close = 100.0 * np.exp(np.cumsum(returns))
    open_ = np.concatenate(([100.0], close[:-1]))
    wick = np.abs(rng.normal(0.0, 0.002, (2, len(close))))
    return pd.DataFrame(
        {
            "Date": pd.bdate_range("1980-01-01", periods=len(close)).strftime("%Y-%m-%d"),
            "Open": open_,
            "High": np.maximum(open_, close) * np.exp(wick[0]),
            "Low": np.minimum(open_, close) * np.exp(-wick[1]),
            "Close": close,
            "Volume": np.round(rng.lognormal(13.0, 0.3, len(close))),
        }
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class EvalRun:
    """One side's eval run: its Sharpe and its per-bar records (row 0 is the start bar, flat)."""

    sharpe: float
    """Annualised out-of-sample Sharpe ratio."""
    bars: np.ndarray
    """Index of each row's bar in the series."""
    stamps: np.ndarray
    """Timestamp of each row's bar (ns)."""
    position: np.ndarray
    """Position held at each row's close, decided at the previous row's close."""
    returns: np.ndarray
    """Return of the equity over each bar (one fewer than the rows), after costs."""


def expected_gain(run: EvalRun, expected: np.ndarray, cost: float) -> float:
    """Return the run's return as the planted model expects it: sum of position x E, less trading costs.

    The realised returns' noise is left out, so two runs on the same bars compare by their decisions alone.
    """
    held = run.position[1:]
    traded = np.abs(np.diff(run.position))
    return float(np.sum(held * expected[run.bars[:-1]]) - cost * np.sum(traded))


def oracle_run(config: Config, frame: pd.DataFrame, expected: np.ndarray) -> tuple[EvalRun, float]:
    """Run the oracle through the sequential eval env; return its run and buy-and-hold's Sharpe."""
    env_options = config.env
    timestamps = pd.to_datetime(frame["Date"]).to_numpy().astype("datetime64[ns]").astype(np.int64)
    n = len(frame)
    warmup = feature_warmup(config.data.features)
    split = split_ranges(
        n,
        config.data.split,
        timestamps_ns=timestamps,
        warmup=warmup,
        min_train_bars=min_bars(env_options.window, env_options.episode_length),
        min_eval_bars=min_eval_bars(env_options.window),
    )
    context = max(split.eval.start - (env_options.window - 1), warmup)
    stop = split.eval.stop
    bars_per_year = infer_bars_per_year(timestamps)
    env = VecTradingEnv(env_options, bars_per_year=bars_per_year, sequential=True)
    open_ = frame["Open"].to_numpy(dtype=np.float64)
    close = frame["Close"].to_numpy(dtype=np.float64)
    env.update_data(np.zeros((stop - context, 1), dtype=np.float32), open_[context:stop], close[context:stop])
    env.reset()
    positions = env_options.positions
    band = (env_options.commission_bps + env_options.slippage_bps) / 1e4
    held = 0.0
    for t in range(context + env_options.window - 1, stop - 1):
        if abs(expected[t]) > band:
            held = math.copysign(env_options.max_leverage, expected[t])
        env.step(np.array([positions.index(held)], dtype=np.int64))
    rec = env.records()
    oracle = compute_metrics(rec.equity, rec.position, rec.cost, bars_per_year).sharpe
    held_bh = np.ones_like(rec.buy_and_hold)
    held_bh[0] = 0.0
    hold = compute_metrics(rec.buy_and_hold, held_bh, np.zeros_like(held_bh), bars_per_year).sharpe
    bars = rec.bar + context
    returns = rec.equity[1:] / rec.equity[:-1] - 1.0
    run = EvalRun(sharpe=oracle, bars=bars, stamps=timestamps[bars], position=rec.position, returns=returns)
    return run, hold


def agent_run(
    data: Path, runs: Path, name: str, overrides: list[str], timeout: float
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, float]:
    """Train the default agent on the file; return its eval Sharpe, times, positions, equity, wall time."""
    command = [sys.executable, str(ROOT / "run.py"), "--data", str(data), "--name", name]
    command += ["--set", f"session.runs_dir={runs}", "--set", "session.console=off"]
    for override in overrides:
        command += ["--set", override]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"{name}: run.py exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    with (runs / name / "eval-episode-1.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    equity = np.array([float(row["equity"]) for row in rows])
    position = np.array([float(row["position"]) for row in rows])
    stamps = np.array([np.datetime64(row["timestamp"], "ns").astype(np.int64) for row in rows])
    per_year = infer_bars_per_year(stamps)
    sharpe = compute_metrics(equity, position, np.zeros_like(equity), per_year).sharpe
    return sharpe, stamps, position, equity, wall


def measure(
    kind: str, seed: int, args: argparse.Namespace, overrides: list[str], config: Config, folder: Path
) -> dict[str, object]:
    """Write one series, run the oracle and the agent on it; return the row of figures."""
    rng = np.random.default_rng([seed, list(KINDS).index(kind)])
    returns, expected = KINDS[kind](args.bars, rng)
    frame = bars_frame(returns, rng)
    data = folder / f"{kind}-{seed}.csv"
    frame.to_csv(data, index=False)
    oracle, hold = oracle_run(config, frame, expected)
    sharpe, stamps, position, equity, wall = agent_run(
        data, folder / "runs", f"{kind}-{seed}", overrides, args.timeout
    )
    if not np.array_equal(oracle.stamps, stamps):
        raise RuntimeError(f"{kind} seed {seed}: the agent's eval bars are not the oracle's")
    returns = equity[1:] / equity[:-1] - 1.0
    agent = EvalRun(sharpe=sharpe, bars=oracle.bars, stamps=stamps, position=position, returns=returns)
    cost = (config.env.commission_bps + config.env.slippage_bps) / 1e4
    agent_gain, oracle_gain = expected_gain(agent, expected, cost), expected_gain(oracle, expected, cost)
    return {
        "kind": kind,
        "seed": seed,
        "eval_bars": len(stamps) - 1,
        "agent_sharpe": sharpe,
        "oracle_sharpe": oracle.sharpe,
        "buy_and_hold_sharpe": hold,
        "share": sharpe / oracle.sharpe if oracle.sharpe > 0 else None,
        "same_position": float(np.mean(position[1:] == oracle.position[1:])),
        "expected_share": agent_gain / oracle_gain,
        "train_seconds": wall,
        "bars_per_year": infer_bars_per_year(stamps),
        "agent_expected_gain": agent_gain,
        "oracle_expected_gain": oracle_gain,
        "agent_returns": agent.returns.tolist(),
        "oracle_returns": oracle.returns.tolist(),
        "agent_position": position.tolist(),
    }


def pooled_sharpe(rows: list[dict[str, Any]], side: str) -> float:
    """Return the Sharpe ratio of one side's eval returns of all the rows put end to end."""
    returns = np.concatenate([np.asarray(r[f"{side}_returns"], dtype=np.float64) for r in rows])
    equity = np.concatenate(([1.0], np.cumprod(1.0 + returns)))
    # Positions and costs do not enter the Sharpe ratio; compute_metrics only needs their shape.
    flat = np.zeros_like(equity)
    return compute_metrics(equity, flat, flat, statistics.fmean(r["bars_per_year"] for r in rows)).sharpe


def bootstrap_share(
    rows: list[dict[str, Any]], resamples: int = 2000, block: int = 20
) -> tuple[float, float]:
    """Return the 5th and 95th percentiles of the pooled Sharpe ratio share over moving-block resamples."""
    sides = [np.concatenate([np.asarray(r[f"{side}_returns"]) for r in rows]) for side in ("agent", "oracle")]
    n = len(sides[0])
    rng = np.random.default_rng(0)
    starts = rng.integers(0, n - block + 1, (resamples, -(-n // block)))
    index = (starts[:, :, None] + np.arange(block)).reshape(resamples, -1)[:, :n]
    agent, oracle = (side[index] for side in sides)
    ratio = (agent.mean(1) / agent.std(1, ddof=1)) / (oracle.mean(1) / oracle.std(1, ddof=1))
    low, high = np.percentile(ratio, [5.0, 95.0])
    return float(low), float(high)


def pooled(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Return a kind's pooled figures: Sharpe ratios of the end-to-end eval returns, their ratio, shares."""
    agent, oracle = pooled_sharpe(rows, "agent"), pooled_sharpe(rows, "oracle")
    weights = [r["eval_bars"] for r in rows]
    return {
        "agent_sharpe": agent,
        "oracle_sharpe": oracle,
        "share": agent / oracle if oracle > 0 else None,
        "share_interval": bootstrap_share(rows) if oracle > 0 else None,
        "same_position": float(np.average([r["same_position"] for r in rows], weights=weights)),
        "expected_share": sum(r["agent_expected_gain"] for r in rows)
        / sum(r["oracle_expected_gain"] for r in rows),
    }


def print_table(kind: str, rows: list[dict[str, Any]]) -> None:
    """Print one kind's markdown table: a row per seed, the median, the ratio of the means, the pooled row."""
    print(f"\n{kind}\n")
    print(HEADER)
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        share = "n/a" if r["share"] is None else f"{r['share']:.2f}"
        print(
            f"| {r['seed']} | {r['eval_bars']} | {r['agent_sharpe']:.2f} | {r['oracle_sharpe']:.2f} | "
            f"{share} | {r['same_position']:.2f} | {r['expected_share']:.2f} | "
            f"{r['buy_and_hold_sharpe']:.2f} | {r['train_seconds']:.0f} |"
        )
    shares = [r["share"] for r in rows if r["share"] is not None]
    median = f"{statistics.median(shares):.2f}" if shares else "n/a"
    expected = statistics.median(r["expected_share"] for r in rows)
    print(f"| median | | | | {median} | | {expected:.2f} | | |")
    agent, oracle = (statistics.fmean(r[key] for r in rows) for key in ("agent_sharpe", "oracle_sharpe"))
    means = f"{agent / oracle:.2f}" if oracle > 0 else "n/a"
    print(f"| mean | | {agent:.2f} | {oracle:.2f} | {means} | | | | |")
    pool = pooled(rows)
    share = "n/a"
    if pool["share"] is not None:
        low, high = pool["share_interval"]
        share = f"{pool['share']:.2f} ({low:.2f} to {high:.2f})"
    print(
        f"| pooled | {sum(r['eval_bars'] for r in rows)} | {pool['agent_sharpe']:.2f} | "
        f"{pool['oracle_sharpe']:.2f} | {share} | {pool['same_position']:.2f} | "
        f"{pool['expected_share']:.2f} | | |"
    )


def main() -> int:
    """Run every kind and seed, print one markdown table per kind, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument(
        "--seeds", default=DEFAULT_SEEDS, help=f"seeds or ranges, comma-separated (default: {DEFAULT_SEEDS})"
    )
    parser.add_argument("--bars", type=int, default=10_000, help="bars per series (default: 10000)")
    parser.add_argument("--steps", type=int, help="training.steps_per_episode (default: the config's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for run.py and the oracle (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per training run")
    parser.add_argument("--json", type=Path, help="write every result (with per-bar returns) here")
    parser.add_argument(
        "--from-json", type=Path, help="print the tables of a file --json wrote instead of running"
    )
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
        for kind in dict.fromkeys(r["kind"] for r in results):
            print_table(kind, [r for r in results if r["kind"] == kind])
        return 0
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"training.steps_per_episode={args.steps}")
    config = load_config(overrides=overrides)
    kinds = args.kinds.split(",")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-learning-") as scratch:
        for kind in kinds:
            for seed in seeds:
                row = measure(kind, seed, args, overrides, config, Path(scratch))
                results.append(row)
                brief = {k: v for k, v in row.items() if not isinstance(v, list)}
                print(json.dumps(brief), flush=True)
    for kind in kinds:
        print_table(kind, [r for r in results if r["kind"] == kind])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
