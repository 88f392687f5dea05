"""The portfolio learning bench's series, its close-only step and its expected gain (bench/)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench.bench_portfolio_learning import (
    PHI,
    REGIME_DRIFT,
    SIGMA,
    expected_gain,
    held_gain,
    momentum,
    oracle_targets,
    regime,
    regime_forecast,
    step_close_only,
    universe_frame,
)


def test_momentum_returns_follow_a_lag_two_ar1_and_the_forecast_is_its_expected_simple_return() -> None:
    r, forecast = momentum(40_000, 3, np.random.default_rng(0))

    shocks = r[2:] - PHI * r[:-2]
    lag1 = np.corrcoef(r[1:, 0], r[:-1, 0])[0, 1]
    lag2 = np.corrcoef(r[2:, 0], r[:-2, 0])[0, 1]
    assert r.shape == forecast.shape == (40_000, 3)
    assert shocks.std() == pytest.approx(SIGMA, rel=0.02)
    assert abs(lag1) < 0.02
    assert lag2 == pytest.approx(PHI, abs=0.02)
    np.testing.assert_allclose(forecast, np.exp(PHI * r + SIGMA**2 / 2) - 1.0)
    # The forecast of bar t predicts the simple return of bar t + 2: the slope of that regression is ~PHI.
    slope = np.polyfit(forecast[:-2].ravel(), np.expm1(r[2:]).ravel(), 1)[0]
    assert slope == pytest.approx(1.0, abs=0.1)


def test_a_seed_gives_the_same_series_and_another_seed_another() -> None:
    first, _ = momentum(100, 2, np.random.default_rng([1, 0]))
    again, _ = momentum(100, 2, np.random.default_rng([1, 0]))
    other, _ = momentum(100, 2, np.random.default_rng([2, 0]))

    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_the_regime_forecast_is_causal_bounded_and_tracks_the_drift() -> None:
    r, forecast = regime(20_000, 2, np.random.default_rng(3))
    changed = r.copy()
    changed[500:] = np.random.default_rng(4).normal(0.0, 0.05, changed[500:].shape)

    bound = math.exp(REGIME_DRIFT + SIGMA**2 / 2) - 1.0
    assert np.all(np.abs(forecast) <= bound)
    np.testing.assert_array_equal(regime_forecast(changed)[:500], forecast[:500])
    # Bars the filter rates as up are followed two bars later by positive drift on average.
    up = forecast[:-2] > 0
    assert np.expm1(r[2:])[up].mean() > np.expm1(r[2:])[~up].mean() + REGIME_DRIFT / 2


def test_one_regime_step_by_hand() -> None:
    # From P(up) = 1/2 a return of +drift: likelihood ratio exp(2 drift^2 / sigma^2); two transitions follow.
    ratio = math.exp(2 * REGIME_DRIFT**2 / SIGMA**2)
    posterior = ratio / (1 + ratio)
    up2 = 0.5 + 0.98**2 * (posterior - 0.5)
    expected = (up2 * math.exp(REGIME_DRIFT) + (1 - up2) * math.exp(-REGIME_DRIFT)) * math.exp(SIGMA**2 / 2)

    forecast = regime_forecast(np.array([[REGIME_DRIFT]]))

    assert forecast[0, 0] == pytest.approx(expected - 1.0, rel=1e-12)


def test_the_frame_is_wide_and_close_only() -> None:
    r = np.array([[0.0, 0.1], [math.log(1.1), -0.1]])

    frame = universe_frame(r)

    assert list(frame.columns) == ["Date", "S00", "S01"]
    assert list(frame["Date"]) == ["1990-01-02", "1990-01-03"]
    np.testing.assert_allclose(
        frame[["S00", "S01"]].to_numpy(), [[100.0, 100 * math.exp(0.1)], [110.0, 100.0]]
    )


CLOSE = np.array([[100.0, 100.0], [110.0, 100.0], [121.0, 90.0], [121.0, 90.0]])
TARGETS = np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
COST = 0.01


def test_the_close_only_step_by_hand() -> None:
    run = step_close_only(CLOSE, TARGETS, COST)

    # Row 1: buy asset 0 at 110 from cash: traded 1, cost 0.01, equity 0.99.
    # Row 2: asset 0 gains 10 % (g1 = 1.1) and is half sold, asset 1 half bought at 90: traded 0.5 + 0.5,
    # cost 0.99 * 1.1 * 0.01 * 0.5 each, equity 0.99 * 1.1 * 0.99. Row 3: no move, all sold: traded 1.
    np.testing.assert_allclose(run.weights, [[0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    np.testing.assert_allclose(run.traded, [[0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])
    np.testing.assert_allclose(run.costs[2], [0.99 * 1.1 * 0.005, 0.99 * 1.1 * 0.005])
    np.testing.assert_allclose(run.equity, [1.0, 0.99, 0.99 * 1.1 * 0.99, 0.99 * 1.1 * 0.99 * 0.99])


def test_the_expected_gain_by_hand() -> None:
    run = step_close_only(CLOSE, TARGETS, COST)
    forecast = np.array([[0.02, -0.01], [0.03, 0.01], [9.0, 9.0], [9.0, 9.0]])

    gain = expected_gain(run, forecast, COST)

    # Row 1's weights [1, 0] were set at row 0: 0.02; row 2's [0.5, 0.5] at row 1: 0.015 + 0.005.
    # Row 3's weights earn after the window. Traded 1 + 1 + 1 at 0.01.
    assert held_gain(run, forecast) == pytest.approx(0.02 + 0.02, abs=1e-15)
    assert gain == pytest.approx(0.02 + 0.02 - 0.03, abs=1e-15)


def test_the_oracle_holds_equal_weight_over_the_symbols_worth_their_cost() -> None:
    forecast = np.array([[0.02, -0.01], [0.03, 0.016], [0.0, 0.01]])

    targets = oracle_targets(forecast, 0.015)

    np.testing.assert_array_equal(targets, [[1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
