"""Tests of the portfolio metrics against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from services.env.metrics import compute_metrics
from services.env.portfolio import PortfolioRecords
from services.env.portfolio_metrics import (
    equal_weight_held,
    equal_weight_rebalanced,
    held_alone,
    portfolio_report,
)

CLOSE = np.array([[10.0, np.nan], [11.0, 20.0], [12.1, 10.0], [13.31, 15.0]])
TRADABLE = np.isfinite(CLOSE)


def records() -> PortfolioRecords:
    weights = np.array([[0.0, 0.0], [0.5, 0.0], [0.6, -0.2], [0.0, 0.0]])
    traded = np.array([[0.0, 0.0], [0.5, 0.0], [0.1, 0.2], [0.6, 0.2]])
    costs = np.array([[0.0, 0.0], [0.001, 0.0], [0.0002, 0.0004], [0.0012, 0.0004]])
    pnl = np.array([[0.0, 0.0], [0.0, 0.0], [0.05, 0.0], [0.06, -0.1]])
    equity = np.concatenate(([1.0], 1.0 + np.cumsum((pnl - costs).sum(axis=1)[1:])))
    return PortfolioRecords(
        bar=np.arange(4),
        close=CLOSE,
        tradable=TRADABLE,
        weights=weights,
        traded=traded,
        costs=costs,
        pnl=pnl,
        equity=equity,
    )


def test_equal_weight_held_buys_the_assets_tradable_at_the_start_and_holds() -> None:
    both = np.array([[10.0, 20.0], [11.0, 10.0], [12.0, 30.0]])

    np.testing.assert_allclose(equal_weight_held(both, np.ones((3, 2), bool)), [1.0, 0.8, 1.35])
    np.testing.assert_allclose(equal_weight_held(CLOSE, TRADABLE), CLOSE[:, 0] / 10.0)


def test_equal_weight_rebalanced_averages_the_returns_of_the_previously_tradable_assets() -> None:
    equity = equal_weight_rebalanced(CLOSE, TRADABLE)

    # Bar 1: only asset 0 was tradable at row 0 (+10 %); bar 2: (+10 % - 50 %) / 2; bar 3: (+10 % + 50 %) / 2.
    np.testing.assert_allclose(equity, np.cumprod([1.0, 1.1, 0.8, 1.3]))


def test_an_asset_held_alone_starts_at_its_first_tradable_row() -> None:
    np.testing.assert_allclose(held_alone(CLOSE[:, 1], TRADABLE[:, 1]), [1.0, 1.0, 0.5, 0.75])


def test_the_report_sums_turnover_costs_and_profits_per_asset() -> None:
    run = records()

    report = portfolio_report(run, ("A", "B"), bars_per_year=252.0)

    a, b = report.assets
    assert (a.symbol, b.symbol) == ("A", "B")
    assert a.turnover == pytest.approx(1.2) and b.turnover == pytest.approx(0.4)
    assert a.costs == pytest.approx(0.0024) and b.costs == pytest.approx(0.0008)
    assert a.contribution == pytest.approx(0.11) and b.contribution == pytest.approx(-0.1)
    assert a.mean_weight == pytest.approx(1.1 / 3) and b.mean_weight == pytest.approx(-0.2 / 3)
    assert report.gross_exposure == pytest.approx(1.3 / 3)
    assert report.net_exposure == pytest.approx(0.9 / 3)
    assert b.alone.total_return == pytest.approx(-0.25)


def test_the_agents_curve_metrics_come_from_compute_metrics_with_per_asset_turnover() -> None:
    run = records()

    report = portfolio_report(run, ("A", "B"), bars_per_year=252.0)

    gross = np.abs(run.weights).sum(axis=1)
    plain = compute_metrics(run.equity, gross, run.costs.sum(axis=1), 252.0)
    assert report.agent.sharpe == plain.sharpe
    assert report.agent.max_drawdown == plain.max_drawdown
    assert report.agent.costs_paid == pytest.approx(0.0032)
    assert report.agent.exposure == pytest.approx(2 / 3)
    assert report.agent.turnover == pytest.approx(1.6)
    assert report.agent.turnover_per_year == pytest.approx(1.6 / (3 / 252))
    assert report.agent.trades == 5
    assert report.equal_weight_held.total_return == pytest.approx(0.331)
    assert report.equal_weight_rebalanced.total_return == pytest.approx(1.1 * 0.8 * 1.3 - 1)
