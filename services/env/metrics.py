"""Compute the evaluation metrics of an equity curve, for the agent and for buy-and-hold.

Every formula is defined in docs/METRICS.md. Inputs are per-bar arrays of one run whose row 0 is the
start, before the first bar's return: ``equity[0]`` is the starting equity, ``positions[0]`` the
position held before the first decision (0.0, flat, for the trading env) and ``costs[0]`` 0.0. A run of
n bars therefore has n + 1 rows and n returns. Outputs are always finite: a ratio whose denominator is
zero (no volatility, no drawdown, no time) is reported as 0.0.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Denominators at or below this are zero: rounding leaves about 1e-17 of "volatility" on a curve of
# constant returns, which would otherwise give a Sharpe ratio of 1e15.
ZERO_TOLERANCE = 1e-12
# Largest exponent math.expm1 takes without overflowing.
_MAX_EXPONENT = 700.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Metrics:
    """Hold the metrics of one equity curve (formulas in docs/METRICS.md)."""

    bars: int
    """Number of bar returns (rows - 1)."""
    total_return: float
    """equity[-1] / equity[0] - 1."""
    annualised_return: float
    """Compound yearly growth rate over bars / bars_per_year years."""
    annualised_volatility: float
    """Sample std of the bar returns times sqrt(bars_per_year)."""
    sharpe: float
    """Mean bar return over its sample std, times sqrt(bars_per_year); risk-free rate 0."""
    sortino: float
    """Mean bar return over the downside deviation (target 0), times sqrt(bars_per_year)."""
    max_drawdown: float
    """Largest fall from a running peak, as a positive fraction of the peak."""
    max_drawdown_duration: int
    """Longest run of consecutive bars below the running peak."""
    calmar: float
    """annualised_return / max_drawdown."""
    turnover: float
    """Sum of |position change|, including the first change from positions[0]."""
    turnover_per_year: float
    """turnover / years."""
    costs_paid: float
    """Sum of costs, in units of the starting equity."""
    trades: int
    """Number of bars at which the position changed."""
    win_rate: float
    """Share of bars held in the market whose return was positive."""
    exposure: float
    """Share of bars with a non-zero position."""

    def as_dict(self) -> dict[str, float]:
        """Return the metrics as a flat name -> float mapping (for messages and CSV rows)."""
        return {name: float(value) for name, value in asdict(self).items()}


def _ratio(numerator: float, denominator: float) -> float:
    """Return numerator / denominator, or 0.0 when the denominator is zero or the result not finite."""
    if abs(denominator) <= ZERO_TOLERANCE:
        return 0.0
    value = numerator / denominator
    return value if math.isfinite(value) else 0.0


def _check(equity: np.ndarray, positions: np.ndarray, costs: np.ndarray, bars_per_year: float) -> None:
    """Raise ValueError unless the inputs describe one run."""
    if equity.ndim != 1 or equity.size < 1:
        raise ValueError(
            f"compute_metrics: equity must be 1-D with at least one row, got shape {equity.shape}"
        )
    if positions.shape != equity.shape or costs.shape != equity.shape:
        raise ValueError(
            f"compute_metrics: equity, positions and costs must have one shape, got {equity.shape}, "
            f"{positions.shape}, {costs.shape}"
        )
    if not (np.isfinite(equity).all() and (equity > 0).all()):
        raise ValueError("compute_metrics: equity must be finite and positive")
    if not (np.isfinite(positions).all() and np.isfinite(costs).all()):
        raise ValueError("compute_metrics: positions and costs must be finite")
    if not (math.isfinite(bars_per_year) and bars_per_year > 0):
        raise ValueError(f"compute_metrics: bars_per_year must be > 0, got {bars_per_year!r}")


def max_drawdown_duration(equity: np.ndarray) -> int:
    """Return the longest run of consecutive bars whose equity is below the running peak."""
    underwater = equity < np.maximum.accumulate(equity)
    if not underwater.any():
        return 0
    # Run lengths of True: positions of the edges of the padded boolean series.
    edges = np.flatnonzero(np.diff(np.concatenate(([False], underwater, [False])).astype(np.int8)))
    return int((edges[1::2] - edges[::2]).max())


def compute_metrics(
    equity: np.ndarray, positions: np.ndarray, costs: np.ndarray, bars_per_year: float
) -> Metrics:
    """Compute the metrics of one run from its per-bar equity, positions and costs (n + 1 rows each)."""
    equity = np.asarray(equity, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    costs = np.asarray(costs, dtype=np.float64)
    _check(equity, positions, costs, bars_per_year)
    n = equity.size - 1
    returns = equity[1:] / equity[:-1] - 1.0
    growth = float(equity[-1] / equity[0])
    years = n / bars_per_year
    exponent = math.log(growth) / years if n else 0.0
    annualised_return = math.expm1(exponent) if exponent <= _MAX_EXPONENT else 0.0
    scale = math.sqrt(bars_per_year)
    mean = float(returns.mean()) if n else 0.0
    std = float(returns.std(ddof=1)) if n >= 2 else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))) if n else 0.0
    max_drawdown = float((1.0 - equity / np.maximum.accumulate(equity)).max())
    changes = np.abs(np.diff(positions))
    held = positions[1:] != 0.0
    turnover = float(changes.sum())
    return Metrics(
        bars=n,
        total_return=growth - 1.0,
        annualised_return=annualised_return,
        annualised_volatility=std * scale,
        sharpe=_ratio(mean, std) * scale,
        sortino=_ratio(mean, downside) * scale,
        max_drawdown=max_drawdown,
        max_drawdown_duration=max_drawdown_duration(equity),
        calmar=_ratio(annualised_return, max_drawdown),
        turnover=turnover,
        turnover_per_year=_ratio(turnover, years),
        costs_paid=float(costs.sum()),
        trades=int(np.count_nonzero(changes)),
        win_rate=_ratio(float(np.count_nonzero(held & (returns > 0.0))), float(np.count_nonzero(held))),
        exposure=_ratio(float(np.count_nonzero(held)), float(n)),
    )


def buy_and_hold_equity(prices: np.ndarray) -> np.ndarray:
    """Return the equity of holding 1.0 from the first price on, without costs: prices / prices[0]."""
    prices = np.asarray(prices, dtype=np.float64)
    if prices.ndim != 1 or prices.size < 1 or not (np.isfinite(prices).all() and (prices > 0).all()):
        raise ValueError("buy_and_hold_equity: prices must be 1-D, non-empty, finite and positive")
    return prices / prices[0]


def compare_with_buy_and_hold(
    equity: np.ndarray,
    positions: np.ndarray,
    costs: np.ndarray,
    prices: np.ndarray,
    bars_per_year: float,
) -> tuple[Metrics, Metrics]:
    """Return the metrics of the agent and of buy-and-hold on the same bars.

    Buy-and-hold follows ``prices`` (the closes of the agent's bars, row 0 the start bar): it is flat
    in row 0, holds 1.0 from the first bar on, and pays no costs.
    """
    benchmark = buy_and_hold_equity(prices)
    if benchmark.shape != np.shape(equity):
        raise ValueError(
            f"compare_with_buy_and_hold: prices {benchmark.shape} and equity {np.shape(equity)} differ"
        )
    held = np.ones_like(benchmark)
    held[0] = 0.0
    agent = compute_metrics(equity, positions, costs, bars_per_year)
    return agent, compute_metrics(benchmark, held, np.zeros_like(benchmark), bars_per_year)
