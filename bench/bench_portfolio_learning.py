"""Measure how much of a planted, exploitable signal the default portfolio agent learns, per window.

Each kind is a synthetic wide universe (a Date column and one close column per symbol, 20 symbols, 8,000
weekday bars, like data/SP500_20_STOCKS_DAILY.csv.gz) whose symbols' log returns carry a planted, causal
signal, independent per symbol, 1 % daily noise:

- momentum: r[t] = 0.15 r[t-2] + e[t], an AR(1) at the horizon the decisions trade (below);
- regime: r[t] = s[t] m + e[t], the drift sign s a hidden two-state Markov chain kept with probability
  0.99 a bar (m = 0.1 %), its probability from the exact (Hamilton) filter on the returns seen so far.

Close-only data fills at the next close (docs/PORTFOLIO.md, section 1): the decision at bar t's close is
filled at bar t + 1's close and first earns bar t + 2's return, so the figure a decision can use is
F[t] = E[exp(r[t+2]) - 1 | r[..t]], the next simple return after its fill, known exactly per symbol and
bar. (A lag-one AR(1) would leave 0.15^2 r[t] of it, a standard deviation of 0.02 %, below the 0.03 % cost
of a trade; the lag-two AR(1) plants the single-asset bench's 0.15 x 1 % at that horizon.)

The agent is `python run.py --config configs/portfolio.yaml --set data.source.path=FILE --set
env.window=W` with the config's default budget, for every window W on the same series and the same
training seed. Its eval-episode-1.csv gives per row j (bar b[j]; row 0 all cash) the weights w[j] held at
the close, the traded notionals and costs, the equity and equal-weight buy-and-hold's equity. The
bench steps those weights through the env's close-only formula (docs/PORTFOLIO.md, section 4: the old
weights through the gap, then the trade at cost k = commission + slippage) and requires the CSV's equity
and trades back, so that the oracle, stepped by the same formula, trades exactly as the env would.

The oracle at row j holds, from row j + 1, equal weight over the symbols with F[b[j]] > k, else cash.
Both sides get a noise-free decision figure, the expected gain: sum over rows j = 1 .. n - 1 of
sum_i w_i[j] F_i[b[j - 1]] (the weights held at bar b[j]'s close times the expectation of the next bar's
simple return given the bars the decision that set them had seen) less k times the notional traded in
rows 1 .. n; the held gain is the first term alone, also for equal-weight buy-and-hold (its weights
drift with the closes; it pays no costs, as in the session's report). The share is the agent's expected
gain over the oracle's. The oracle is a simple reference, not a ceiling: a policy that concentrates on
the largest F expects more, at more risk.

    .venv/bin/python bench/bench_portfolio_learning.py [--kinds momentum,regime] [--seeds 0-2]
        [--windows 1,4,8] [--bars 8000] [--steps N] [--set KEY=VALUE ...] [--json FILE]
        [--keep DIR [--reuse]] [--label SUFFIX] [--from-json FILE]
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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import parse_seeds  # noqa: E402
from services.config import load_config  # noqa: E402
from services.data.bars import infer_bars_per_year  # noqa: E402
from services.env.metrics import compute_metrics  # noqa: E402

SIGMA = 0.01
PHI = 0.15
REGIME_DRIFT = 0.001
REGIME_STAY = 0.99
N_SYMBOLS = 20
CONFIG = ROOT / "configs" / "portfolio.yaml"

Series = tuple[np.ndarray, np.ndarray]
"""Log returns r [T, M] and F [T, M]: E[exp(r[t+2]) - 1 | r[..t]] per bar and symbol."""


def momentum(n: int, m: int, rng: np.random.Generator) -> Series:
    """Return lag-two AR(1) log returns (+PHI) of m symbols and the expected simple return after a fill."""
    shocks = rng.normal(0.0, SIGMA, (n, m))
    r = shocks.copy()
    for t in range(2, n):
        r[t] += PHI * r[t - 2]
    return r, np.expm1(PHI * r + SIGMA**2 / 2)


def regime(n: int, m: int, rng: np.random.Generator) -> Series:
    """Return regime-switching log returns of m symbols and the filtered expected return after a fill."""
    flips = rng.random((n, m)) > REGIME_STAY
    first = np.where(rng.random(m) < 0.5, 1.0, -1.0)
    state = np.where(np.cumsum(flips, axis=0) % 2 == 0, 1.0, -1.0) * first
    r = state * REGIME_DRIFT + rng.normal(0.0, SIGMA, (n, m))
    return r, regime_forecast(r)


def regime_forecast(r: np.ndarray) -> np.ndarray:
    """Return E[exp(r[t+2]) - 1 | r[..t]] of regime returns [T, M] by the Hamilton filter from P(up) = 1/2."""
    like_up = np.exp(-((r - REGIME_DRIFT) ** 2) / (2 * SIGMA**2))
    like_down = np.exp(-((r + REGIME_DRIFT) ** 2) / (2 * SIGMA**2))
    up = np.full(r.shape[1], 0.5)  # P(s[t] = +1 | r[..t-1])
    posterior = np.empty_like(r)  # P(s[t] = +1 | r[..t])
    for t in range(len(r)):
        posterior[t] = up * like_up[t] / (up * like_up[t] + (1.0 - up) * like_down[t])
        up = posterior[t] * REGIME_STAY + (1.0 - posterior[t]) * (1.0 - REGIME_STAY)
    # Two transitions from s[t] to s[t+2]: P(s[t+2] = +1) - 1/2 = (2 stay - 1)^2 (P(s[t] = +1) - 1/2).
    up2 = 0.5 + (2 * REGIME_STAY - 1) ** 2 * (posterior - 0.5)
    grow = math.exp(SIGMA**2 / 2)
    return up2 * math.exp(REGIME_DRIFT) * grow + (1.0 - up2) * math.exp(-REGIME_DRIFT) * grow - 1.0


KINDS: dict[str, Callable[[int, int, np.random.Generator], Series]] = {"momentum": momentum, "regime": regime}


def universe_frame(returns: np.ndarray) -> pd.DataFrame:
    """Return the wide close-only frame of the log returns [T, M]: Date, then S00, S01, ... closes."""
    close = 100.0 * np.exp(np.cumsum(returns, axis=0))
    frame = pd.DataFrame(close, columns=[f"S{i:02d}" for i in range(returns.shape[1])])
    frame.insert(0, "Date", pd.bdate_range("1990-01-02", periods=len(close)).strftime("%Y-%m-%d"))
    return frame


@dataclass(frozen=True, slots=True, kw_only=True)
class Holdings:
    """One side's eval run over the rows of the eval window (row 0 is the start bar, all cash)."""

    weights: np.ndarray
    """float64 [n + 1, M]: weights held at each row's close."""
    traded: np.ndarray
    """float64 [n + 1, M]: notional traded at each row's fill, over the equity at the fill."""
    costs: np.ndarray
    """float64 [n + 1, M]: costs paid at each row's fill, in units of the start equity."""
    equity: np.ndarray
    """float64 [n + 1]: equity at each row's close, 1.0 at row 0."""


def step_close_only(close: np.ndarray, targets: np.ndarray, cost: float) -> Holdings:
    """Step target weights through the env's close-only arithmetic: targets[j] is filled at row j + 1.

    Close-only bars have open = close, so a step is the gap (the held weights earn close[j+1] / close[j]
    - 1 and drift) and then the fill at that close, cost times the notional traded; the bar's body is 0.
    """
    rows, m = close.shape
    weights, traded, costs = (np.zeros((rows, m)) for _ in range(3))
    equity = np.ones(rows)
    for j in range(rows - 1):
        gap = close[j + 1] / close[j] - 1.0
        g1 = 1.0 + weights[j] @ gap
        through = weights[j] * (1.0 + gap) / g1
        traded[j + 1] = np.abs(targets[j] - through)
        costs[j + 1] = equity[j] * g1 * cost * traded[j + 1]
        equity[j + 1] = equity[j] * g1 * (1.0 - cost * traded[j + 1].sum())
        weights[j + 1] = targets[j]
    return Holdings(weights=weights, traded=traded, costs=costs, equity=equity)


def oracle_targets(forecast: np.ndarray, cost: float) -> np.ndarray:
    """Return equal weight over each row's symbols whose expected return exceeds the cost, else cash."""
    chosen = forecast > cost
    count = chosen.sum(axis=1, keepdims=True)
    return np.where(chosen, 1.0 / np.maximum(count, 1), 0.0)


def expected_gain(holdings: Holdings, forecast: np.ndarray, cost: float) -> float:
    """Return a run's return as the planted model expects it: held weights x F, less k x traded."""
    return held_gain(holdings, forecast) - cost * float(holdings.traded[1:].sum())


def held_gain(holdings: Holdings, forecast: np.ndarray) -> float:
    """Return the expected gain of a run's holdings before costs: sum of w[j] x forecast[j - 1].

    forecast[j] is F at row j's bar, the expectation of the simple return earned by the weights a decision
    at that row sets; those are the weights held from row j + 1, so w[j] pairs with forecast[j - 1]. The
    last row's weights earn after the window and are left out.
    """
    return float(np.sum(holdings.weights[1:-1] * forecast[:-2]))


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentRun:
    """The agent's eval-episode-1.csv: its rows' bars, closes, buy-and-hold equity and its holdings."""

    stamps: np.ndarray
    """int64 [n + 1]: each row's timestamp (ns)."""
    close: np.ndarray
    """float64 [n + 1, M]: each symbol's close at the row."""
    buy_and_hold: np.ndarray
    """float64 [n + 1]: equal-weight buy-and-hold equity."""
    holdings: Holdings
    """The agent's weights, trades, costs and equity."""


def read_eval(csv_path: Path, symbols: list[str]) -> AgentRun:
    """Read a portfolio session's eval CSV (docs/PORTFOLIO.md, section 6)."""
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))

    def column(name: str) -> np.ndarray:
        return np.array([float(row[name]) for row in rows])

    def per_symbol(name: str) -> np.ndarray:
        return np.stack([column(f"{name}:{s}") for s in symbols], axis=1)

    stamps = np.array([np.datetime64(row["timestamp"], "ns").astype(np.int64) for row in rows])
    holdings = Holdings(
        weights=per_symbol("weight"),
        traded=per_symbol("traded"),
        costs=per_symbol("cost"),
        equity=column("equity"),
    )
    return AgentRun(
        stamps=stamps,
        close=per_symbol("close"),
        buy_and_hold=column("equal_weight_equity"),
        holdings=holdings,
    )


def sharpe(holdings: Holdings, bars_per_year: float) -> float:
    """Return a run's annualised Sharpe ratio, as the session's report computes it."""
    gross = np.abs(holdings.weights).sum(axis=1)
    return compute_metrics(holdings.equity, gross, holdings.costs.sum(axis=1), bars_per_year).sharpe


def train(data: Path, folder: Path, name: str, overrides: list[str], timeout: float) -> float:
    """Run the default portfolio session on the file; return its wall time."""
    command = [sys.executable, str(ROOT / "run.py"), "--config", str(CONFIG), "--name", name]
    command += ["--set", f"data.source.path={data}", "--set", f"data.cache_dir={folder / 'cache'}"]
    command += ["--set", f"session.runs_dir={folder / 'runs'}", "--set", "session.console=off"]
    for override in overrides:
        command += ["--set", override]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: run.py exited {result.returncode}: {result.stderr.strip()[-2000:]}")
    return time.monotonic() - started


def measure(run: AgentRun, frame: pd.DataFrame, forecast: np.ndarray, cost: float) -> dict[str, float | int]:
    """Check the agent's rows against the series and the formula; return both sides' figures."""
    dates = pd.to_datetime(frame["Date"]).to_numpy().astype("datetime64[ns]").astype(np.int64)
    index = {int(stamp): bar for bar, stamp in enumerate(dates)}
    bars = np.array([index[int(s)] for s in run.stamps])
    if not np.array_equal(np.diff(bars), np.ones(len(bars) - 1, dtype=bars.dtype)):
        raise RuntimeError("the eval rows are not consecutive bars of the series")
    close = frame.iloc[bars, 1:].to_numpy(dtype=np.float64)
    if not np.allclose(run.close, close, rtol=1e-12):
        raise RuntimeError("the eval CSV's closes are not the series'")
    replay = step_close_only(close, run.holdings.weights[1:], cost)
    if not (
        np.allclose(replay.equity, run.holdings.equity, rtol=1e-9, atol=0.0)
        and np.allclose(replay.traded, run.holdings.traded, rtol=1e-9, atol=1e-12)
    ):
        raise RuntimeError("the close-only formula does not give the agent's equity and trades back")
    per_year = infer_bars_per_year(run.stamps)
    oracle = step_close_only(close, oracle_targets(forecast[bars], cost), cost)
    invested = np.ones(len(bars))
    invested[0] = 0.0
    no_costs = np.zeros(len(bars))
    hold_sharpe = compute_metrics(run.buy_and_hold, invested, no_costs, per_year).sharpe
    agent_gain = expected_gain(run.holdings, forecast[bars], cost)
    grown = close / close[0]
    buy_and_hold = Holdings(
        weights=grown / grown.sum(axis=1, keepdims=True),
        traded=np.zeros_like(close),
        costs=np.zeros_like(close),
        equity=run.buy_and_hold,
    )
    oracle_gain = expected_gain(oracle, forecast[bars], cost)
    return {
        "eval_bars": len(bars) - 1,
        "agent_sharpe": sharpe(run.holdings, per_year),
        "buy_and_hold_sharpe": hold_sharpe,
        "oracle_sharpe": sharpe(oracle, per_year),
        "agent_turnover": float(run.holdings.traded.sum()),
        "oracle_turnover": float(oracle.traded.sum()),
        "agent_costs": float(run.holdings.costs.sum()),
        "oracle_costs": float(oracle.costs.sum()),
        "agent_cash": float(1.0 - run.holdings.weights[1:].sum(axis=1).mean()),
        "agent_expected_gain": agent_gain,
        "agent_held_gain": held_gain(run.holdings, forecast[bars]),
        "buy_and_hold_expected_gain": held_gain(buy_and_hold, forecast[bars]),
        "oracle_held_gain": held_gain(oracle, forecast[bars]),
        "oracle_expected_gain": oracle_gain,
        "expected_share": agent_gain / oracle_gain,
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Row:
    """One training run's figures."""

    kind: str
    seed: int
    window: int
    train_seconds: float
    figures: dict[str, float | int]


HEADER = (
    "| kind | seed | window | agent Sharpe | B&H Sharpe | oracle Sharpe | turnover | costs | cash | "
    "oracle turnover | agent held | B&H held | oracle held | agent E-gain | oracle E-gain | share | run s |"
)


def table_row(row: Row) -> str:
    """Format one run as a markdown table row: costs in % of the start equity, expected gains in %."""
    f = row.figures
    return (
        f"| {row.kind} | {row.seed} | {row.window} | {f['agent_sharpe']:.2f} | "
        f"{f['buy_and_hold_sharpe']:.2f} | {f['oracle_sharpe']:.2f} | {f['agent_turnover']:.0f} | "
        f"{100 * f['agent_costs']:.1f} % | {f['agent_cash']:.2f} | {f['oracle_turnover']:.0f} | "
        f"{100 * f['agent_held_gain']:.1f} % | {100 * f['buy_and_hold_expected_gain']:.1f} % | "
        f"{100 * f['oracle_held_gain']:.1f} % | {100 * f['agent_expected_gain']:.1f} % | "
        f"{100 * f['oracle_expected_gain']:.1f} % | "
        f"{f['expected_share']:.2f} | {row.train_seconds:.0f} |"
    )


def print_tables(rows: list[Row]) -> None:
    """Print every run, then per kind and window the shares and the mean agent Sharpe and turnover.

    The pooled share is the sum of the agent's expected gains over the seeds over the oracle's; the held
    share is what the agent's holdings expect over buy-and-hold's, over the oracle's excess the same way.
    """
    print("\n" + HEADER)
    print("| --- |" + " ---: |" * (HEADER.count("|") - 2))
    for row in rows:
        print(table_row(row))
    print(
        "\n| kind | window | seeds | mean share | pooled share | held share | mean agent Sharpe | "
        "mean turnover |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in dict.fromkeys(r.kind for r in rows):
        for window in dict.fromkeys(r.window for r in rows if r.kind == kind):
            group = [r.figures for r in rows if r.kind == kind and r.window == window]
            totals = {key: float(sum(f[key] for f in group)) for key in group[0]}
            pooled = totals["agent_expected_gain"] / totals["oracle_expected_gain"]
            bh = totals["buy_and_hold_expected_gain"]
            held = (totals["agent_held_gain"] - bh) / (totals["oracle_held_gain"] - bh)
            print(
                f"| {kind} | {window} | {len(group)} | "
                f"{statistics.fmean(f['expected_share'] for f in group):.3f} | {pooled:.3f} | {held:.3f} | "
                f"{statistics.fmean(f['agent_sharpe'] for f in group):.2f} | "
                f"{statistics.fmean(f['agent_turnover'] for f in group):.0f} |"
            )


def main() -> int:
    """Run every kind, seed and window, print one markdown table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument(
        "--seeds", default="0-2", help="series seeds or ranges, comma-separated (default: 0-2)"
    )
    parser.add_argument(
        "--windows", default="1,4,8", help="comma-separated env.window values (default: 1,4,8)"
    )
    parser.add_argument("--bars", type=int, default=8000, help="bars per series (default: 8000)")
    parser.add_argument("--steps", type=int, help="training.steps_per_episode (default: the config's)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for run.py (repeatable)",
    )
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per training run")
    parser.add_argument("--json", type=Path, help="write every result here")
    parser.add_argument(
        "--keep", type=Path, help="write the series and the runs here, not to a temporary folder"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="with --keep: measure the runs already there instead of training"
    )
    parser.add_argument("--label", default="", help="a suffix of the runs' names (to keep variants apart)")
    parser.add_argument("--from-json", type=Path, help="print the tables of a file --json wrote")
    args = parser.parse_args()
    seeds = parse_seeds(args.seeds)
    if args.from_json:
        print_tables([Row(**r) for r in json.loads(args.from_json.read_text())])
        return 0
    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"training.steps_per_episode={args.steps}")
    env = load_config(CONFIG, overrides=overrides).env
    cost = (env.commission_bps + env.slippage_bps) / 1e4
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-portfolio-learning-") as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        for kind in args.kinds.split(","):
            for seed in seeds:
                rng = np.random.default_rng([seed, list(KINDS).index(kind)])
                returns, forecast = KINDS[kind](args.bars, N_SYMBOLS, rng)
                frame = universe_frame(returns)
                data = folder / f"{kind}-{seed}.csv"
                if not (args.reuse and data.is_file()):
                    frame.to_csv(data, index=False)
                for window in (int(w) for w in args.windows.split(",")):
                    name = f"{kind}-{seed}-w{window}{args.label}"
                    seconds = folder / "runs" / name / "bench-seconds.txt"
                    if not (args.reuse and seconds.is_file()):
                        wall = train(data, folder, name, [*overrides, f"env.window={window}"], args.timeout)
                        seconds.write_text(f"{wall}\n")
                    wall = float(seconds.read_text())
                    run = read_eval(folder / "runs" / name / "eval-episode-1.csv", list(frame.columns[1:]))
                    row = Row(
                        kind=kind,
                        seed=seed,
                        window=window,
                        train_seconds=wall,
                        figures=measure(run, frame, forecast, cost),
                    )
                    rows.append(row)
                    print(json.dumps(asdict(row)), flush=True)
    print_tables(rows)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
