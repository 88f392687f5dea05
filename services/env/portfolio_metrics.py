"""Measure a portfolio run against equal-weight buy-and-hold and each asset held alone.

Inputs are a sequential run's `PortfolioRecords` (row 0 the start bar). The equity-curve metrics are
`services.env.metrics.compute_metrics`; the formulas of what is added are in docs/PORTFOLIO.md, section 5.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from services.env.metrics import Metrics, compute_metrics
from services.env.portfolio import PortfolioRecords


@dataclass(frozen=True, slots=True, kw_only=True)
class AssetFigures:
    """Hold one asset's share of a portfolio run."""

    symbol: str
    """The asset's symbol."""
    turnover: float
    """Sum of |w_new - w_g| over the run's fills (traded notional / equity at the fill)."""
    costs: float
    """Commission, slippage and borrow paid for the asset, in units of the starting equity."""
    contribution: float
    """The asset's profit before costs, in units of the starting equity."""
    mean_weight: float
    """Mean weight held at the bars' closes (rows 1..n)."""
    alone: Metrics
    """Metrics of holding the asset alone from its first tradable row on, without costs."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioReport:
    """Hold the metrics of a portfolio run and of its benchmarks."""

    agent: Metrics
    """The portfolio: positions are the gross exposure sum |w|; turnover and trades are per asset."""
    equal_weight_held: Metrics
    """1/k in each of the k assets tradable at the start, then held (weights drift), no costs."""
    equal_weight_rebalanced: Metrics
    """1/k in each of the k assets tradable at the previous bar, rebalanced every bar, no costs."""
    assets: tuple[AssetFigures, ...]
    """Per asset, in the records' column order."""
    gross_exposure: float
    """Mean of sum |w| over rows 1..n."""
    net_exposure: float
    """Mean of sum w over rows 1..n."""


def gross_exposure(weights: np.ndarray) -> np.ndarray:
    """Return sum |w| of each row."""
    return np.abs(weights).sum(axis=1)


def equal_weight_held(close: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """Return the equity of 1/k in each asset tradable at row 0, held from its row-0 close on."""
    chosen = tradable[0]
    if not chosen.any():
        return np.ones(len(close))
    growth = close[:, chosen] / close[0, chosen]
    return growth.mean(axis=1)


def equal_weight_rebalanced(close: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """Return the equity of 1/k in each asset tradable at the previous row, rebalanced every row."""
    with np.errstate(invalid="ignore", divide="ignore"):
        returns = close[1:] / close[:-1] - 1.0
    chosen = tradable[:-1]
    count = chosen.sum(axis=1)
    total = np.where(chosen, np.nan_to_num(returns, nan=0.0), 0.0).sum(axis=1)
    bar = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    return np.concatenate(([1.0], np.cumprod(1.0 + bar)))


def held_alone(close: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """Return the equity of holding one asset from its first tradable row on (1.0 before it)."""
    rows = np.flatnonzero(tradable)
    equity = np.ones(len(close))
    if rows.size:
        first = int(rows[0])
        equity[first:] = close[first:] / close[first]
    return equity


def portfolio_report(
    records: PortfolioRecords, symbols: tuple[str, ...], bars_per_year: float
) -> PortfolioReport:
    """Compute the metrics of a portfolio run, of its equal-weight benchmarks and per asset."""
    weights = records.weights
    rows = len(records.equity)
    if len(symbols) != weights.shape[1]:
        raise ValueError(f"portfolio_report: {len(symbols)} symbols for {weights.shape[1]} assets")
    gross = gross_exposure(weights)
    agent = compute_metrics(records.equity, gross, records.costs.sum(axis=1), bars_per_year)
    turnover = float(records.traded.sum())
    years = (rows - 1) / bars_per_year
    agent = replace(
        agent,
        turnover=turnover,
        turnover_per_year=turnover / years if years > 0 else 0.0,
        trades=int(np.count_nonzero(records.traded[1:] > 0)),
    )
    no_costs = np.zeros(rows)
    invested = np.ones(rows)
    invested[0] = 0.0
    held = compute_metrics(
        equal_weight_held(records.close, records.tradable), invested, no_costs, bars_per_year
    )
    rebalanced = compute_metrics(
        equal_weight_rebalanced(records.close, records.tradable), invested, no_costs, bars_per_year
    )
    assets = []
    for j, symbol in enumerate(symbols):
        alone = held_alone(records.close[:, j], records.tradable[:, j])
        first = np.flatnonzero(records.tradable[:, j])
        position = np.zeros(rows)
        if first.size:
            position[int(first[0]) + 1 :] = 1.0
        assets.append(
            AssetFigures(
                symbol=symbol,
                turnover=float(records.traded[:, j].sum()),
                costs=float(records.costs[:, j].sum()),
                contribution=float(records.pnl[:, j].sum()),
                mean_weight=float(weights[1:, j].mean()) if rows > 1 else 0.0,
                alone=compute_metrics(alone, position, no_costs, bars_per_year),
            )
        )
    return PortfolioReport(
        agent=agent,
        equal_weight_held=held,
        equal_weight_rebalanced=rebalanced,
        assets=tuple(assets),
        gross_exposure=float(gross[1:].mean()) if rows > 1 else 0.0,
        net_exposure=float(weights[1:].sum(axis=1).mean()) if rows > 1 else 0.0,
    )
