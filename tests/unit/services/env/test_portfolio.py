"""Tests of the portfolio env: weight mapping, accounting by hand, missing bars, vectorisation, look-ahead."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

from services.env.accounting import MIN_GROWTH
from services.env.options import EnvOptions
from services.env.portfolio import (
    PortfolioOptions,
    VecPortfolioEnv,
    observation_size,
    target_weights,
)
from services.env.portfolio_gym import PortfolioEnv

LONG_ONLY = PortfolioOptions(weights="long_only")
LONG_SHORT = PortfolioOptions(weights="long_short")
# Two assets, three bars: every figure of the hand computation below comes from these.
OPEN = np.array([[100.0, 50.0], [102.0, 49.0], [104.0, 50.0]])
CLOSE = np.array([[100.0, 50.0], [105.0, 48.0], [110.0, 51.0]])


def market(n_bars: int, n_assets: int, seed: int = 0, holes: bool = False) -> tuple[np.ndarray, ...]:
    """Return random features, opens, closes and a tradable mask; with holes, missing and late bars."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, (n_bars, n_assets)), axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.01, (n_bars, n_assets)))
    features = rng.normal(size=(n_bars, n_assets, 3)).astype(np.float32)
    if holes:
        close[: n_bars // 3, 0] = np.nan  # listed later
        close[40:45, 1] = np.nan  # halted
        close[-20:, -1] = np.nan  # ended earlier
        open_[np.isnan(close)] = np.nan
        features[np.isnan(close)] = np.nan
    tradable = np.isfinite(close)
    return features, open_, close, tradable


def paper_options(**overrides: object) -> EnvOptions:
    values: dict[str, object] = {
        "window": 1,
        "episode_length": 2,
        "commission_bps": 10.0,
        "slippage_bps": 10.0,
        "ruin_equity": 0.0,
    }
    values.update(overrides)
    return EnvOptions(**values)  # type: ignore[arg-type]


def test_long_only_weights_are_a_softmax_over_the_assets_and_cash() -> None:
    actions = np.array([[1.0, 0.0, -1.0]])
    held = np.zeros((1, 2))

    weights = target_weights(LONG_ONLY, 1.0, actions, held, np.ones((1, 2)))

    e = np.exp(np.array([5.0, 0.0, -5.0]))
    np.testing.assert_allclose(weights[0], e[:2] / e.sum())
    assert weights.min() >= 0.0 and weights.sum() <= 1.0


def test_an_asset_that_cannot_fill_keeps_its_weight_and_the_rest_share_the_remainder() -> None:
    actions = np.array([[0.0, 0.0, 0.0]])
    held = np.array([[0.4, 0.1]])

    weights = target_weights(LONG_ONLY, 1.0, actions, held, np.array([[0.0, 1.0]]))

    # Asset 0 is frozen at 0.4; asset 1 and cash split the other 0.6 equally.
    np.testing.assert_allclose(weights[0], [0.4, 0.3])


def test_long_short_weights_are_scaled_down_to_the_gross_cap_only_above_it() -> None:
    actions = np.array([[0.8, -0.8, 0.4], [0.2, -0.1, 0.0], [3.0, -3.0, 0.0]])
    fill = np.ones((3, 3))

    weights = target_weights(LONG_SHORT, 1.5, actions, np.zeros((3, 3)), fill)

    np.testing.assert_allclose(weights[0], np.array([0.8, -0.8, 0.4]) * 1.5 / 2.0)
    np.testing.assert_allclose(weights[1], [0.2, -0.1, 0.0])
    np.testing.assert_allclose(weights[2], [0.75, -0.75, 0.0])  # clipped to [-1, 1] first


def test_long_short_frozen_exposure_uses_up_the_cap() -> None:
    actions = np.array([[1.0, 1.0]])
    held = np.array([[-0.5, 0.0]])

    weights = target_weights(LONG_SHORT, 1.0, actions, held, np.array([[0.0, 1.0]]))

    np.testing.assert_allclose(weights[0], [-0.5, 0.5])


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_two_assets_over_three_bars_match_the_hand_computation(fill: str) -> None:
    env = VecPortfolioEnv(paper_options(fill=fill), LONG_SHORT, sequential=True)
    env.update_data(np.zeros((3, 2, 1), np.float32), OPEN.copy(), CLOSE.copy(), np.ones((3, 2), bool))
    env.reset()

    first = env.step(np.array([[0.5, -0.5]])).reward.copy()
    second = env.step(np.array([[1.0, 0.0]])).reward.copy()
    records = env.records()

    k = 0.002
    if fill == "next_open":
        body1 = [105 / 102 - 1, 48 / 49 - 1]  # from cash: no gap is held into bar 1
        gap2, body2 = [104 / 105 - 1, 50 / 48 - 1], [110 / 104 - 1, 51 / 50 - 1]
    else:
        body1 = [105 / 100 - 1, 48 / 50 - 1]
        gap2, body2 = [0.0, 0.0], [110 / 105 - 1, 51 / 48 - 1]
    # Bar 1: from cash into +0.5 / -0.5.
    cost1 = [0.5 * k, 0.5 * k]
    e1 = (1 - k * 1.0) * (1 + 0.5 * body1[0] - 0.5 * body1[1])
    w1 = [0.5 * (1 + body1[0]) / (1 + 0.5 * body1[0] - 0.5 * body1[1]), -0.5 * (1 + body1[1])]
    w1[1] /= 1 + 0.5 * body1[0] - 0.5 * body1[1]
    # Bar 2: the drifted weights gap, then trade to +1.0 / 0.
    g1 = 1 + w1[0] * gap2[0] + w1[1] * gap2[1]
    at_fill = [w1[0] * (1 + gap2[0]) / g1, w1[1] * (1 + gap2[1]) / g1]
    traded2 = [abs(1.0 - at_fill[0]), abs(0.0 - at_fill[1])]
    e2 = e1 * g1 * (1 - k * sum(traded2)) * (1 + body2[0])
    cost2 = [e1 * g1 * k * traded2[0], e1 * g1 * k * traded2[1]]
    np.testing.assert_allclose(records.equity, [1.0, e1, e2], rtol=1e-12)
    np.testing.assert_allclose(records.costs, [[0.0, 0.0], cost1, cost2], rtol=1e-12)
    np.testing.assert_allclose(records.traded[1:], [[0.5, 0.5], traded2], rtol=1e-12)
    np.testing.assert_allclose(records.weights[1], w1, rtol=1e-12)
    np.testing.assert_allclose(records.weights[2], [1.0, 0.0], atol=1e-15)
    assert first[0] == pytest.approx(math.log(e1), rel=1e-6)
    assert second[0] == pytest.approx(math.log(e2 / e1), rel=1e-6)


def test_borrow_is_charged_on_the_short_weight_at_the_close() -> None:
    options = paper_options(commission_bps=0.0, slippage_bps=0.0, borrow_bps_per_year=252.0)
    env = VecPortfolioEnv(options, LONG_SHORT, sequential=True, bars_per_year=252.0)
    env.update_data(np.zeros((3, 2, 1), np.float32), OPEN.copy(), CLOSE.copy(), np.ones((3, 2), bool))
    env.reset()

    env.step(np.array([[0.0, -1.0]]))
    records = env.records()

    body = 48 / 49 - 1
    g3 = 1 - body
    short = (1 + body) / g3
    assert records.equity[1] == pytest.approx(g3 * (1 - 1e-4 * short), rel=1e-12)
    assert records.costs[1, 1] == pytest.approx(g3 * 1e-4 * short, rel=1e-12)


def test_equity_changes_are_the_sum_of_asset_profits_less_costs() -> None:
    features, open_, close, tradable = market(200, 4, holes=True)
    options = EnvOptions(window=4, borrow_bps_per_year=100.0, ruin_equity=0.0)
    env = VecPortfolioEnv(options, LONG_SHORT, sequential=True)
    env.update_data(features, open_, close, tradable)
    env.reset()
    rng = np.random.default_rng(1)

    while not env.done:
        env.step(rng.uniform(-1, 1, (1, 4)))
    records = env.records()

    np.testing.assert_allclose(
        np.diff(records.equity), (records.pnl - records.costs).sum(axis=1)[1:], rtol=1e-10, atol=1e-14
    )


def test_a_missing_bar_freezes_the_holding_at_its_last_close_until_the_asset_returns() -> None:
    close = np.array([[10.0, 10.0], [11.0, np.nan], [12.0, np.nan], [13.0, 15.0]])
    tradable = np.isfinite(close)
    env = VecPortfolioEnv(paper_options(commission_bps=0, slippage_bps=0), LONG_SHORT, sequential=True)
    env.update_data(np.zeros((4, 2, 1), np.float32), close.copy(), close.copy(), tradable)
    env.reset()

    env.step(np.array([[0.0, 1.0]]))  # decided at bar 0, asset 1 has no bar 1: nothing fills
    env.step(np.array([[0.0, 1.0]]))  # not tradable at bar 1
    env.step(np.array([[0.0, 1.0]]))  # not tradable at bar 2
    records = env.records()

    np.testing.assert_array_equal(records.weights[:, 1], [0.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(records.equity, [1.0, 1.0, 1.0, 1.0])


def test_a_held_asset_that_halts_keeps_its_value_and_gaps_from_its_last_close() -> None:
    close = np.array([[10.0, 10.0], [10.0, 11.0], [10.0, np.nan], [10.0, 13.2]])
    tradable = np.isfinite(close)
    env = VecPortfolioEnv(paper_options(commission_bps=0, slippage_bps=0), LONG_SHORT, sequential=True)
    env.update_data(np.zeros((4, 2, 1), np.float32), close.copy(), close.copy(), tradable)
    env.reset()

    for _ in range(3):
        env.step(np.array([[0.0, 1.0]]))
    records = env.records()

    np.testing.assert_allclose(records.equity, [1.0, 1.0, 1.0, 1.2], rtol=1e-12)
    np.testing.assert_allclose(records.close[:, 1], [10.0, 11.0, 11.0, 13.2])


def test_an_asset_that_has_not_started_gets_no_weight() -> None:
    features, open_, close, tradable = market(120, 3, holes=True)
    env = VecPortfolioEnv(EnvOptions(window=4), LONG_ONLY, sequential=True)
    env.update_data(features, open_, close, tradable)
    env.reset()

    for _ in range(30):
        env.step(np.ones((1, 4)))
    records = env.records()

    assert (records.weights[: 120 // 3 - 3, 0] == 0.0).all()
    assert (records.weights[1:, 1:] > 0.0).all()


def test_observations_hold_the_feature_window_then_the_weights_then_cash() -> None:
    features, open_, close, tradable = market(80, 3)
    options = EnvOptions(window=5, n_envs=2, episode_length=20)
    env = VecPortfolioEnv(options, LONG_ONLY, seed=3)
    env.update_data(features, open_, close, tradable)
    env.reset()

    obs = env.step(np.zeros((2, 4))).obs
    t = env._t

    assert obs.shape == (2, observation_size(LONG_ONLY, 5, 3, 3)) == (2, 5 * 3 * 3 + 4)
    assert obs.dtype == np.float32
    for i in range(2):
        np.testing.assert_array_equal(obs[i, :45], features[t[i] - 4 : t[i] + 1].ravel())
        np.testing.assert_allclose(obs[i, 45:48], env._weights[i], rtol=1e-6)
        assert obs[i, 48] == pytest.approx(1.0 - env._weights[i].sum(), abs=1e-6)


def test_nothing_before_a_bar_depends_on_a_later_bar() -> None:
    features, open_, close, tradable = market(120, 3, holes=True)
    cut = 70
    later = (features.copy(), open_.copy(), close.copy(), tradable.copy())
    later[0][cut + 1 :] *= 3.0
    later[1][cut + 1 :] *= 1.5
    later[2][cut + 1 :] *= 0.5
    rng = np.random.default_rng(2)
    actions = rng.uniform(-1, 1, (200, 4))

    def run(data: tuple[np.ndarray, ...]) -> tuple[list[np.ndarray], np.ndarray]:
        env = VecPortfolioEnv(EnvOptions(window=4), LONG_SHORT, sequential=True)
        env.update_data(*data)
        seen = [env.reset()[0].copy()]
        while not env.done:
            seen.append(env.step(actions[len(seen) : len(seen) + 1, :3]).obs[0].copy())
        return seen, env.records().equity

    obs_a, equity_a = run((features, open_, close, tradable))
    obs_b, equity_b = run(later)

    # Row r is bar r + 3; bars up to the cut see the same observations and equity.
    rows = cut - 3 + 1
    for a, b in zip(obs_a[:rows], obs_b[:rows], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(equity_a[:rows], equity_b[:rows])
    assert equity_a[rows + 1] != equity_b[rows + 1]


COMBINATIONS = list(
    itertools.product(
        ["long_only", "long_short"], ["next_open", "close"], ["log_return", "dsr", "drawdown_penalty"]
    )
)


@pytest.mark.parametrize(("weights", "fill", "reward"), COMBINATIONS)
def test_the_vectorized_env_equals_n_single_envs(weights: str, fill: str, reward: str) -> None:
    features, open_, close, tradable = market(150, 3, seed=4, holes=True)
    options = EnvOptions(
        window=4,
        episode_length=30,
        n_envs=3,
        fill=fill,
        reward=reward,
        borrow_bps_per_year=200.0,
        max_leverage=1.5,
        ruin_equity=0.8,
    )
    portfolio = PortfolioOptions(weights=weights)
    vec = VecPortfolioEnv(options, portfolio, seed=10)
    vec.update_data(features, open_, close, tradable)
    singles = [
        PortfolioEnv(features, open_, close, tradable, options, portfolio, seed=10 + i) for i in range(3)
    ]
    width = 4 if weights == "long_only" else 3
    rng = np.random.default_rng(6)

    obs = vec.reset()
    single_obs = [env.reset()[0] for env in singles]
    for _ in range(100):
        np.testing.assert_allclose(obs, np.stack(single_obs), rtol=1e-5, atol=1e-6)
        actions = rng.uniform(-1.2, 1.2, (3, width))
        result = vec.step(actions)
        for i, env in enumerate(singles):
            step_obs, reward_i, terminated, truncated, _ = env.step(actions[i])
            assert float(result.reward[i]) == pytest.approx(float(reward_i), rel=1e-5, abs=1e-6)
            assert (bool(result.terminated[i]), bool(result.truncated[i])) == (terminated, truncated)
            if terminated or truncated:
                np.testing.assert_allclose(result.terminal_obs[i], step_obs, rtol=1e-5, atol=1e-6)
                step_obs, _ = env.reset()
            single_obs[i] = step_obs
        obs = result.obs


class ReferenceStep:
    """Step one portfolio by the formulas of docs/PORTFOLIO.md section 4 written out on whole arrays."""

    def __init__(self, env: PortfolioEnv, features: np.ndarray, options: EnvOptions, bars_per_year: float):
        self.env, self.features, self.options = env, features, options
        self.data = env._data  # the gap, body and fill tables (tested by the hand computations above)
        self.cost = (options.commission_bps + options.slippage_bps) / 1e4
        self.borrow = options.borrow_bps_per_year / 1e4 / bars_per_year

    def start(self, bar: int) -> None:
        self.t, self.weights, self.equity = bar, np.zeros(self.data.n_assets), 1.0

    def step(self, action: np.ndarray) -> float:
        m, t = self.data.n_assets, self.t + 1
        gap, body, fill = np.split(self.data.moves[t], 3)
        g1 = 1.0 + np.sum(self.weights * gap)
        at_fill = self.weights * (1.0 + gap) / max(g1, MIN_GROWTH)
        cap = self.options.max_leverage
        target = target_weights(self.env.portfolio, cap, action[None], at_fill[None], fill[None])[0]
        g2 = 1.0 - self.cost * np.sum(np.abs(target - at_fill))
        g3 = 1.0 + np.sum(target * body)
        closing = target * (1.0 + body) / max(g3, MIN_GROWTH)
        g4 = 1.0 - self.borrow * np.sum(np.maximum(-closing, 0.0))
        growth = g1 * g2 * g3 * g4
        self.weights = closing / g4 if growth >= MIN_GROWTH else np.zeros(m)
        growth = max(growth, MIN_GROWTH)
        self.t, self.equity = t, self.equity * growth
        return math.log(growth)

    def observation(self) -> np.ndarray:
        window = self.features[self.t - self.options.window + 1 : self.t + 1]
        cash = [1.0 - self.weights.sum()] if self.env.portfolio.weights == "long_only" else []
        return np.concatenate([np.nan_to_num(window, nan=0.0).ravel(), self.weights, cash]).astype(np.float32)


@pytest.mark.parametrize(
    ("weights", "fill", "holes"),
    list(itertools.product(["long_only", "long_short"], ["next_open", "close"], [False, True])),
)
def test_the_single_env_steps_as_the_formulas_say(weights: str, fill: str, holes: bool) -> None:
    features, open_, close, tradable = market(400, 6, seed=7, holes=holes)
    options = EnvOptions(
        window=3,
        episode_length=60,
        fill=fill,
        commission_bps=15.0,
        slippage_bps=10.0,
        borrow_bps_per_year=2_000.0,
        max_leverage=1.5,
        ruin_equity=0.0,
    )
    portfolio = PortfolioOptions(weights=weights)
    env = PortfolioEnv(features, open_, close, tradable, options, portfolio, seed=2, bars_per_year=52.0)
    reference = ReferenceStep(env, features, options, 52.0)
    rng = np.random.default_rng(8)
    paths = {True: 0, False: 0}  # steps on the fast path (every asset fills) and on the general one

    for _ in range(6):
        obs, info = env.reset()
        reference.start(info["bar"])
        np.testing.assert_array_equal(obs, reference.observation())
        over = False
        while not over:
            # Beyond [-1, 1] too (clipped), float32 and float64, as SB3 and a person pass them.
            dtype = np.float32 if rng.random() < 0.5 else np.float64
            action = rng.uniform(-1.3, 1.3, env.action_space.shape).astype(dtype)
            paths[bool(env._data.all_fill[reference.t + 1])] += 1
            obs, reward, terminated, truncated, info = env.step(action)
            expected = reference.step(action.astype(np.float64))
            over = terminated or truncated
            assert reward == pytest.approx(expected, rel=1e-9, abs=1e-13)
            assert info["equity"] == pytest.approx(reference.equity, rel=1e-12)
            np.testing.assert_allclose(env.weights, reference.weights, rtol=1e-9, atol=1e-13)
            np.testing.assert_allclose(obs, reference.observation(), rtol=1e-6, atol=1e-7)
    assert paths[True] > 0 and (paths[False] > 0) == holes


def test_a_ruined_training_env_terminates_and_a_ruined_eval_run_goes_to_cash() -> None:
    falling = np.array([[10.0], [10.0], [4.0], [1.6], [0.64]])
    rising = np.array([[10.0], [10.0], [4.0], [8.0], [16.0]])
    tradable = np.ones((5, 1), bool)
    features = np.zeros((5, 1, 1), np.float32)
    options = paper_options(commission_bps=0, slippage_bps=0, ruin_equity=0.5, episode_length=3)
    train = VecPortfolioEnv(options, LONG_SHORT, n_envs=1)
    train.update_data(features, falling.copy(), falling.copy(), tradable)
    evaluation = VecPortfolioEnv(options, LONG_SHORT, sequential=True)
    evaluation.update_data(features, rising.copy(), rising.copy(), tradable)
    train.reset(seed=0)
    evaluation.reset()

    # Fills at the next open, which is the close here: the second step holds the 60 % fall.
    train.step(np.ones((1, 1)))
    result = train.step(np.ones((1, 1)))
    while not evaluation.done:
        evaluation.step(np.ones((1, 1)))
    records = evaluation.records()

    assert result.terminated[0] and not result.truncated[0]
    # Ruined at bar 2; the sale fills at bar 3's open (= its close here), so the gap to it is still held.
    assert records.ruined_at == 2
    np.testing.assert_allclose(records.equity, [1.0, 1.0, 0.4, 0.8, 0.8])
    np.testing.assert_array_equal(records.weights[3:, 0], [0.0, 0.0])


def test_the_single_env_passes_the_gymnasium_and_sb3_env_checkers() -> None:
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    features, open_, close, tradable = market(200, 3, holes=True)
    options = EnvOptions(window=8, episode_length=50)

    for portfolio in (LONG_ONLY, LONG_SHORT):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            # Normalised features have no bounds, so the observation Box is infinite on purpose.
            warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value.*")
            warnings.filterwarnings("ignore", message=".*alternative render modes.*")
            check_env(PortfolioEnv(features, open_, close, tradable, options, portfolio))
            sb3_check_env(PortfolioEnv(features, open_, close, tradable, options, portfolio))


def test_update_data_refuses_a_tradable_asset_without_a_price() -> None:
    features, open_, close, tradable = market(60, 2)
    close[10, 0] = np.nan
    open_[10, 0] = np.nan
    env = VecPortfolioEnv(EnvOptions(window=4, episode_length=10), LONG_ONLY)

    with pytest.raises(ValueError, match="tradable at a bar where it has no price"):
        env.update_data(features, open_, close, tradable)
