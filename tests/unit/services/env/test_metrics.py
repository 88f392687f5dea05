"""Tests of the evaluation metrics: hand cases and a direct numpy computation on random curves."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.env.metrics import (
    Metrics,
    buy_and_hold_equity,
    compare_with_buy_and_hold,
    compute_metrics,
    max_drawdown_duration,
)


def _flat_inputs(equity: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return an equity curve with a long position from bar 1 on and no costs."""
    curve = np.array(equity)
    positions = np.ones_like(curve)
    positions[0] = 0.0
    return curve, positions, np.zeros_like(curve)


def test_a_known_drawdown_has_its_depth_and_duration() -> None:
    equity, positions, costs = _flat_inputs([1.0, 1.2, 0.9, 1.0, 1.1, 1.3, 1.25])

    metrics = compute_metrics(equity, positions, costs, bars_per_year=252.0)

    assert metrics.max_drawdown == pytest.approx(0.25)
    assert metrics.max_drawdown_duration == 3
    assert metrics.total_return == pytest.approx(0.25)


def test_a_drawdown_that_never_recovers_lasts_to_the_last_bar() -> None:
    assert max_drawdown_duration(np.array([1.0, 2.0, 1.5, 1.9, 1.8])) == 3


def test_a_rising_curve_has_no_drawdown() -> None:
    assert max_drawdown_duration(np.array([1.0, 1.1, 1.1, 1.2])) == 0


def test_trades_turnover_exposure_and_costs_count_position_changes() -> None:
    equity = np.array([1.0, 1.01, 1.0, 0.99, 1.02, 1.02])
    positions = np.array([0.0, 1.0, 1.0, -1.0, -1.0, 0.0])
    costs = np.array([0.0, 0.001, 0.0, 0.002, 0.0, 0.001])

    metrics = compute_metrics(equity, positions, costs, bars_per_year=5.0)

    assert metrics.trades == 3
    assert metrics.turnover == pytest.approx(4.0)
    assert metrics.turnover_per_year == pytest.approx(4.0)
    assert metrics.costs_paid == pytest.approx(0.004)
    assert metrics.exposure == pytest.approx(4 / 5)
    assert metrics.win_rate == pytest.approx(2 / 4)


def test_annualised_return_compounds_over_the_years_the_bars_cover() -> None:
    equity, positions, costs = _flat_inputs([1.0, 1.1, 1.21, 1.331, 1.4641])

    metrics = compute_metrics(equity, positions, costs, bars_per_year=2.0)

    assert metrics.annualised_return == pytest.approx(0.21)
    assert metrics.calmar == 0.0


def test_a_flat_curve_reports_zeros_instead_of_nan_or_inf() -> None:
    equity = np.ones(50)

    metrics = compute_metrics(equity, np.zeros(50), np.zeros(50), bars_per_year=252.0)

    values = metrics.as_dict()
    assert all(math.isfinite(v) for v in values.values())
    assert metrics.sharpe == metrics.sortino == metrics.calmar == metrics.win_rate == 0.0


def test_constant_returns_have_no_volatility_and_a_zero_sharpe() -> None:
    equity = 1.001 ** np.arange(100)

    metrics = compute_metrics(equity, np.ones(100), np.zeros(100), bars_per_year=252.0)

    assert metrics.annualised_volatility < 1e-9
    assert metrics.sharpe == 0.0 and metrics.sortino == 0.0
    assert metrics.annualised_return == pytest.approx(1.001**252 - 1)


def test_a_huge_annualised_return_is_reported_as_zero_not_inf() -> None:
    equity, positions, costs = _flat_inputs([1.0, 2.0])

    metrics = compute_metrics(equity, positions, costs, bars_per_year=252.0 * 390.0)

    assert metrics.annualised_return == 0.0
    assert metrics.total_return == 1.0


def test_a_single_row_run_has_all_zero_metrics() -> None:
    metrics = compute_metrics(np.ones(1), np.zeros(1), np.zeros(1), bars_per_year=252.0)

    assert set(metrics.as_dict().values()) == {0.0}


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_a_direct_numpy_computation_on_random_curves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    returns = rng.normal(0.0005, 0.01, n)
    equity = np.concatenate(([1.0], np.cumprod(1 + returns)))
    positions = np.concatenate(([0.0], rng.choice([-1.0, 0.0, 1.0], n)))
    costs = np.concatenate(([0.0], rng.uniform(0, 1e-4, n)))
    bars_per_year = 252.0

    metrics = compute_metrics(equity, positions, costs, bars_per_year)

    years = n / bars_per_year
    peak = np.maximum.accumulate(equity)
    underwater = equity < peak
    longest, run = 0, 0
    for flag in underwater:
        run = run + 1 if flag else 0
        longest = max(longest, run)
    in_market = positions[1:] != 0
    expected = {
        "bars": n,
        "total_return": equity[-1] - 1,
        "annualised_return": equity[-1] ** (1 / years) - 1,
        "annualised_volatility": returns.std(ddof=1) * np.sqrt(bars_per_year),
        "sharpe": returns.mean() / returns.std(ddof=1) * np.sqrt(bars_per_year),
        "sortino": returns.mean() / np.sqrt(np.mean(np.minimum(returns, 0) ** 2)) * np.sqrt(bars_per_year),
        "max_drawdown": np.max((peak - equity) / peak),
        "max_drawdown_duration": longest,
        "calmar": (equity[-1] ** (1 / years) - 1) / np.max((peak - equity) / peak),
        "turnover": np.abs(np.diff(positions)).sum(),
        "turnover_per_year": np.abs(np.diff(positions)).sum() / years,
        "costs_paid": costs.sum(),
        "trades": np.count_nonzero(np.diff(positions)),
        "win_rate": np.mean(returns[in_market] > 0),
        "exposure": np.mean(in_market),
    }
    assert metrics.as_dict() == pytest.approx(expected, rel=1e-9)


def test_buy_and_hold_equity_is_the_price_relative_to_the_first_price() -> None:
    assert buy_and_hold_equity(np.array([50.0, 55.0, 45.0])).tolist() == pytest.approx([1.0, 1.1, 0.9])


def test_agent_and_buy_and_hold_are_measured_on_the_same_bars() -> None:
    prices = np.array([100.0, 110.0, 99.0, 120.0])
    equity = np.array([1.0, 1.0, 1.0, 1.0])

    agent, benchmark = compare_with_buy_and_hold(equity, np.zeros(4), np.zeros(4), prices, 252.0)

    assert isinstance(agent, Metrics) and isinstance(benchmark, Metrics)
    assert agent.total_return == 0.0 and agent.trades == 0
    assert benchmark.total_return == pytest.approx(0.2)
    assert benchmark.trades == 1 and benchmark.exposure == 1.0 and benchmark.costs_paid == 0.0


def test_mismatched_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="one shape"):
        compute_metrics(np.ones(5), np.zeros(4), np.zeros(5), 252.0)
    with pytest.raises(ValueError, match="positive"):
        compute_metrics(np.array([1.0, -0.1]), np.zeros(2), np.zeros(2), 252.0)
    with pytest.raises(ValueError, match="bars_per_year"):
        compute_metrics(np.ones(2), np.zeros(2), np.zeros(2), 0.0)
