"""Tests of the trading environment: accounting on paper-sized cases, look-ahead, vectorisation, buffers."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from services.env.gym_env import TradingEnv
from services.env.options import EnvOptions
from services.env.records import StepResult
from services.env.vec_env import VecTradingEnv

ROOT = Path(__file__).resolve().parents[4]

# A four-bar path where every answer fits on paper.
OPEN = np.array([100.0, 105.0, 100.0, 118.0])
CLOSE = np.array([100.0, 110.0, 99.0, 120.0])
FLAT, LONG = 1, 2
SHORT = 0


def _frictionless(**overrides: object) -> EnvOptions:
    """Return options for the paper cases: window 1, no costs."""
    values: dict[str, object] = {
        "window": 1,
        "episode_length": 3,
        "commission_bps": 0.0,
        "slippage_bps": 0.0,
        "ruin_equity": 0.0,
    }
    values.update(overrides)
    return EnvOptions(**values)  # type: ignore[arg-type]


def _paper_env(
    options: EnvOptions, open_: np.ndarray = OPEN, close: np.ndarray = CLOSE, *, bars_per_year: float = 252.0
) -> VecTradingEnv:
    """Return a sequential env on the paper path with one zero feature, reset at bar 0."""
    env = VecTradingEnv(options, bars_per_year=bars_per_year, sequential=True)
    env.update_data(np.zeros((close.size, 1), dtype=np.float32), open_, close)
    env.reset()
    return env


def _run(env: VecTradingEnv, actions: list[int | float]) -> list[StepResult]:
    """Step a one-env vector through the actions and return copies of every result."""
    results = []
    for action in actions:
        batch = np.array([action]) if isinstance(action, int) else np.array([[action]], dtype=np.float32)
        result = env.step(batch)
        results.append(StepResult(*(np.copy(array) for array in result)))
    return results


def _random_data(n_bars: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return random features and a random-walk open/close path."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, n_bars)))
    open_ = close * np.exp(rng.normal(0.0, 0.01, n_bars))
    features = rng.normal(size=(n_bars, n_features)).astype(np.float32)
    return features, open_, close


# Fills.


def test_next_open_fill_enters_at_the_next_open_and_holds_through_the_gap() -> None:
    env = _paper_env(_frictionless(fill="next_open"))

    first, second = _run(env, [LONG, LONG])

    assert first.reward[0] == pytest.approx(math.log(110 / 105))
    assert second.reward[0] == pytest.approx(math.log((100 / 110) * (99 / 100)))
    assert env.records().equity[-1] == pytest.approx(99 / 105)


def test_close_fill_enters_at_the_decision_bars_close() -> None:
    env = _paper_env(_frictionless(fill="close"))

    first, second = _run(env, [LONG, LONG])

    assert first.reward[0] == pytest.approx(math.log(110 / 100))
    assert second.reward[0] == pytest.approx(math.log(99 / 110))
    assert env.records().equity[-1] == pytest.approx(0.99)


def test_a_short_gains_what_a_long_loses_over_the_bar() -> None:
    env = _paper_env(_frictionless(fill="close"))

    (first,) = _run(env, [SHORT])

    assert first.reward[0] == pytest.approx(math.log(1 - 0.1))


# Costs and borrow.


def test_costs_are_charged_on_the_position_change_at_the_fill() -> None:
    env = _paper_env(_frictionless(fill="next_open", commission_bps=10.0, slippage_bps=20.0))

    first, second = _run(env, [LONG, SHORT])

    growth_1 = (1 - 0.003) * (110 / 105)
    growth_2 = (100 / 110) * (1 - 2 * 0.003) * (1 - (99 / 100 - 1))
    assert first.reward[0] == pytest.approx(math.log(growth_1))
    assert second.reward[0] == pytest.approx(math.log(growth_2))
    records = env.records()
    assert records.cost[1] == pytest.approx(0.003)
    assert records.cost[2] == pytest.approx(growth_1 * (100 / 110) * 2 * 0.003)
    assert records.equity[2] == pytest.approx(growth_1 * growth_2)


def test_holding_a_position_costs_nothing() -> None:
    env = _paper_env(_frictionless(fill="close", commission_bps=10.0, slippage_bps=20.0))

    _run(env, [LONG, LONG, LONG])

    assert env.records().cost.tolist() == pytest.approx([0.0, 0.003, 0.0, 0.0])


def test_borrow_is_charged_on_short_exposure_every_bar() -> None:
    options = _frictionless(fill="close", borrow_bps_per_year=2520.0)
    env = _paper_env(options, bars_per_year=252.0)

    (first,) = _run(env, [SHORT])

    assert first.reward[0] == pytest.approx(math.log(0.9 * (1 - 0.001)))
    assert env.records().cost[1] == pytest.approx(0.9 * 0.001)


def test_borrow_is_not_charged_on_a_long() -> None:
    env = _paper_env(_frictionless(fill="close", borrow_bps_per_year=2520.0))

    (first,) = _run(env, [LONG])

    assert first.reward[0] == pytest.approx(math.log(1.1))


def test_continuous_actions_are_clipped_and_scaled_by_the_leverage() -> None:
    env = _paper_env(_frictionless(fill="close", action="continuous", max_leverage=2.0))

    (first,) = _run(env, [3.0])

    assert first.reward[0] == pytest.approx(math.log(1 + 2 * 0.1))
    assert env.records().position[1] == 2.0


# Rewards.


def test_drawdown_penalty_subtracts_only_increases_in_drawdown() -> None:
    env = _paper_env(_frictionless(fill="close", reward="drawdown_penalty", drawdown_penalty=0.5))

    rewards = [result.reward[0] for result in _run(env, [LONG, LONG, LONG])]

    drawdown = 1 - 0.99 / 1.1
    assert rewards == pytest.approx(
        [math.log(1.1), math.log(0.9) - 0.5 * drawdown, math.log(120 / 99)], rel=1e-6
    )


def test_dsr_follows_moody_and_saffell_from_zero_moments() -> None:
    eta = 0.5
    env = _paper_env(_frictionless(fill="close", reward="dsr", dsr_eta=eta, episode_length=3))

    rewards = [result.reward[0] for result in _run(env, [LONG, LONG, LONG])]

    expected, mean, mean_sq = [], 0.0, 0.0
    for ret in (0.1, 99 / 110 - 1, 120 / 99 - 1):
        variance = mean_sq - mean**2
        if variance > 0:
            expected.append((mean_sq * (ret - mean) - 0.5 * mean * (ret**2 - mean_sq)) / variance**1.5)
        else:
            expected.append(0.0)
        mean, mean_sq = mean + eta * (ret - mean), mean_sq + eta * (ret**2 - mean_sq)
    assert expected[0] == 0.0
    assert expected[1] == pytest.approx(-7.0)
    assert rewards == pytest.approx(expected, rel=1e-5)


# Termination and truncation.


def test_ruin_terminates_the_episode_and_does_not_truncate_it() -> None:
    close = np.array([100.0, 100.0, 40.0, 40.0, 40.0])
    env = VecTradingEnv(_frictionless(fill="close", ruin_equity=0.5, episode_length=4), n_envs=1)
    env.update_data(np.zeros((5, 1), dtype=np.float32), close.copy(), close)
    env.reset()

    first, second = _run(env, [LONG, LONG])

    assert not first.terminated[0] and not first.truncated[0]
    assert second.terminated[0] and not second.truncated[0]
    assert second.episode_length[0] == 2
    assert second.episode_return[0] == pytest.approx(math.log(0.4))


def test_ruin_on_the_last_step_is_a_termination() -> None:
    close = np.array([100.0, 100.0, 100.0, 40.0])
    env = VecTradingEnv(_frictionless(fill="close", ruin_equity=0.5, episode_length=3), n_envs=1)
    env.update_data(np.zeros((4, 1), dtype=np.float32), close.copy(), close)
    env.reset()

    *_, last = _run(env, [LONG, LONG, LONG])

    assert last.terminated[0] and not last.truncated[0]


def test_episode_length_truncates_and_the_env_starts_over() -> None:
    features = np.arange(4, dtype=np.float32).reshape(4, 1)
    env = VecTradingEnv(_frictionless(fill="close", episode_length=3), n_envs=1)
    env.update_data(features, OPEN, CLOSE)
    env.reset()

    results = _run(env, [LONG, LONG, LONG])

    assert [bool(r.truncated[0]) for r in results] == [False, False, True]
    assert not results[-1].terminated[0]
    assert results[-1].episode_length[0] == 3
    assert results[-1].episode_return[0] == pytest.approx(math.log(1.2))
    assert results[-1].terminal_obs[0].tolist() == pytest.approx([3.0, 1.0, math.log(120 / 100)])
    assert results[-1].obs[0].tolist() == [0.0, 0.0, 0.0]


# Observations.


def test_observation_is_the_feature_window_then_position_then_unrealised_pnl() -> None:
    features = np.arange(12, dtype=np.float32).reshape(4, 3)
    env = VecTradingEnv(_frictionless(window=2, fill="next_open"), sequential=True)
    env.update_data(features, OPEN, CLOSE)
    first_obs = env.reset().copy()

    (result,) = _run(env, [SHORT])

    assert env.observation_shape == (8,)
    assert first_obs[0].tolist() == [0, 1, 2, 3, 4, 5, 0, 0]
    assert result.obs[0].tolist() == pytest.approx([3, 4, 5, 6, 7, 8, -1, -math.log(99 / 100)])


def test_unrealised_pnl_keeps_the_entry_price_while_the_position_is_held() -> None:
    env = _paper_env(_frictionless(fill="next_open"))

    results = _run(env, [LONG, LONG, LONG])

    last_observations = [results[0].obs, results[1].obs, results[2].terminal_obs]
    assert [obs[0, -1] for obs in last_observations] == pytest.approx(
        [math.log(110 / 105), math.log(99 / 105), math.log(120 / 105)]
    )


def test_a_continuous_increase_averages_the_entry_price_by_size() -> None:
    env = _paper_env(_frictionless(fill="close", action="continuous"))

    _, second = _run(env, [0.5, 1.0])

    entry = 0.5 * math.log(100) + 0.5 * math.log(110)
    assert second.obs[0, -1] == pytest.approx(math.log(99) - entry, rel=1e-6)


@pytest.mark.parametrize("fill", ["next_open", "close"])
def test_no_observation_or_reward_up_to_a_bar_depends_on_a_later_bar(fill: str) -> None:
    features, open_, close = _random_data(60, 3, seed=1)
    options = EnvOptions(window=5, fill=fill, reward="drawdown_penalty")
    actions = np.random.default_rng(2).integers(0, 3, size=55)

    def trace(f: np.ndarray, o: np.ndarray, c: np.ndarray) -> tuple[list[np.ndarray], list[float]]:
        env = VecTradingEnv(options, sequential=True)
        env.update_data(f, o, c)
        observations, rewards = [env.reset()[0].copy()], []
        for action in actions:
            result = env.step(np.array([action]))
            finished = result.terminated[0] or result.truncated[0]
            observations.append((result.terminal_obs if finished else result.obs)[0].copy())
            rewards.append(float(result.reward[0]))
        return observations, rewards

    base_obs, base_rewards = trace(features, open_, close)
    rng = np.random.default_rng(3)
    for bar in (4, 10, 30, 58):
        f, o, c = features.copy(), open_.copy(), close.copy()
        f[bar + 1 :] = rng.normal(size=f[bar + 1 :].shape)
        o[bar + 1 :] *= rng.uniform(0.5, 1.5, size=o[bar + 1 :].size)
        c[bar + 1 :] *= rng.uniform(0.5, 1.5, size=c[bar + 1 :].size)

        observations, rewards = trace(f, o, c)

        steps_up_to_bar = bar - (options.window - 1)
        for k in range(steps_up_to_bar + 1):
            np.testing.assert_array_equal(observations[k], base_obs[k])
        assert rewards[:steps_up_to_bar] == base_rewards[:steps_up_to_bar]
        assert not np.array_equal(observations[steps_up_to_bar + 1], base_obs[steps_up_to_bar + 1])


# Vectorised env against single envs.


# Every combination of action, reward and fill; leverage and borrow vary with them so that ruin and the
# borrow charge are exercised too. The single env's step is the scalar twin of the numpy kernel.
_EVERY_COMBINATION = [
    (action, reward, fill, leverage, borrow)
    for (action, leverage), reward, (fill, borrow) in itertools.product(
        [("discrete3", 3.0), ("discrete2", 1.0), ("continuous", 6.0)],
        ["log_return", "dsr", "drawdown_penalty"],
        [("next_open", 300.0), ("close", 0.0)],
    )
]


@pytest.mark.parametrize(("action", "reward", "fill", "leverage", "borrow"), _EVERY_COMBINATION)
def test_vectorised_env_equals_single_envs_seeded_seed_plus_index(
    action: str, reward: str, fill: str, leverage: float, borrow: float
) -> None:
    features, open_, close = _random_data(120, 2, seed=4)
    options = EnvOptions(
        window=4,
        episode_length=15,
        action=action,
        reward=reward,
        fill=fill,
        max_leverage=leverage,
        borrow_bps_per_year=borrow,
        ruin_equity=0.7,
    )
    n_envs, seed = 5, 11
    vec = VecTradingEnv(options, n_envs=n_envs, seed=seed)
    vec.update_data(features, open_, close)
    singles = [TradingEnv(features, open_, close, options, seed=seed + i) for i in range(n_envs)]
    rng = np.random.default_rng(5)
    vec_obs = vec.reset()
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(env.reset()[0], vec_obs[i])
    finished = {"terminated": 0, "truncated": 0}

    for _ in range(200):
        actions: np.ndarray
        if action == "continuous":
            actions = rng.uniform(-1.2, 1.2, size=(n_envs, 1)).astype(np.float32)
        else:
            actions = rng.integers(0, 3 if action == "discrete3" else 2, size=n_envs)
        result = vec.step(actions)
        for i, env in enumerate(singles):
            obs, rew, terminated, truncated, info = env.step(actions[i])
            assert rew == pytest.approx(float(result.reward[i]), rel=1e-5, abs=1e-7)
            assert (terminated, truncated) == (result.terminated[i], result.truncated[i])
            if terminated or truncated:
                finished["terminated" if terminated else "truncated"] += 1
                np.testing.assert_allclose(result.terminal_obs[i], obs, rtol=1e-6, atol=1e-7)
                assert result.episode_length[i] == info["episode_length"]
                assert result.episode_return[i] == pytest.approx(info["episode_return"], rel=1e-9, abs=1e-12)
                obs, _ = env.reset()
            np.testing.assert_allclose(result.obs[i], obs, rtol=1e-6, atol=1e-7)

    assert finished["truncated"] > 0
    if leverage > 1:
        assert finished["terminated"] > 0


def test_finished_only_keeps_the_terminal_rows_of_the_finished_envs_in_env_order() -> None:
    n = 4
    result = StepResult(
        obs=np.zeros((n, 2), dtype=np.float32),
        reward=np.zeros(n, dtype=np.float32),
        terminated=np.array([False, False, True, False]),
        truncated=np.array([True, False, False, False]),
        terminal_obs=np.arange(n * 2, dtype=np.float32).reshape(n, 2),
        episode_return=np.zeros(n),
        episode_length=np.zeros(n, dtype=np.int64),
    )

    np.testing.assert_array_equal(result.finished_only().terminal_obs, [[0, 1], [4, 5]])
    assert result.finished_only().obs is result.obs


def test_reset_with_a_seed_replays_the_same_start_bars() -> None:
    features, open_, close = _random_data(300, 2, seed=6)
    env = VecTradingEnv(EnvOptions(window=4, episode_length=10), n_envs=8, seed=0)
    env.update_data(features, open_, close)

    first = env.reset(seed=42).copy()
    env.reset()
    again = env.reset(seed=42)

    np.testing.assert_array_equal(first, again)
    assert len({row.tobytes() for row in first}) > 1


# Data swaps and buffers.


def test_update_data_reuses_the_buffers_when_the_new_data_fits() -> None:
    options = EnvOptions(window=4, episode_length=10)
    env = VecTradingEnv(options, n_envs=3)
    env.update_data(*_random_data(100, 2, seed=7))
    env.reset()
    before = {name: (id(array), array.shape) for name, array in env._buffers().items()}
    features, open_, close = _random_data(80, 2, seed=8)

    env.update_data(features, open_, close)
    env.reset()
    result = env.step(np.array([2, 0, 1]))

    after = {name: (id(array), array.shape) for name, array in env._buffers().items()}
    assert after == before
    assert env.n_bars == 80
    bar = env._t
    for row in range(3):
        np.testing.assert_array_equal(result.obs[row, :8], features[bar[row] - 3 : bar[row] + 1].ravel())


def test_update_data_grows_the_buffers_for_longer_data_and_keeps_working() -> None:
    env = VecTradingEnv(EnvOptions(window=4, episode_length=10), n_envs=2)
    env.update_data(*_random_data(50, 2, seed=9))
    features, open_, close = _random_data(500, 2, seed=10)

    env.update_data(features, open_, close)
    env.reset()
    for _ in range(30):
        result = env.step(np.array([2, 0]))

    assert env.n_bars == 500
    assert np.isfinite(result.obs).all()


def test_update_data_rejects_a_different_number_of_features() -> None:
    env = VecTradingEnv(EnvOptions(window=4, episode_length=10), n_envs=2)
    env.update_data(*_random_data(50, 2, seed=11))

    with pytest.raises(ValueError, match="columns"):
        env.update_data(*_random_data(50, 3, seed=12))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f, o, c: (f.astype(np.float64), o, c), "float32"),
        (lambda f, o, c: (f[:, 0], o, c), "float32"),
        (lambda f, o, c: (f, o.astype(np.float32), c), "open_"),
        (lambda f, o, c: (f, o, c[:-1]), "close"),
        (lambda f, o, c: (f, -o, c), "positive"),
        (lambda f, o, c: (np.where(f > 1, np.nan, f).astype(np.float32), o, c), "finite"),
        (lambda f, o, c: (f[:12], o[:12], c[:12]), "window \\+ episode_length = 14"),
    ],
)
def test_update_data_rejects_bad_data_with_a_clear_message(
    change: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    message: str,
) -> None:
    env = VecTradingEnv(EnvOptions(window=4, episode_length=10), n_envs=2)

    with pytest.raises(ValueError, match=message):
        env.update_data(*change(*_random_data(50, 2, seed=13)))


def test_a_sequential_env_needs_only_one_bar_after_the_window() -> None:
    env = VecTradingEnv(EnvOptions(window=4, episode_length=100), sequential=True)

    env.update_data(*_random_data(5, 2, seed=14))

    with pytest.raises(ValueError, match="window \\+ 1"):
        env.update_data(*_random_data(4, 2, seed=14))


def test_stepping_a_hundred_thousand_steps_grows_no_buffer() -> None:
    env = VecTradingEnv(EnvOptions(window=8, episode_length=64, reward="dsr"), n_envs=10)
    env.update_data(*_random_data(400, 4, seed=15))
    env.reset()
    before = {name: (id(array), array.shape) for name, array in env._buffers().items()}
    actions = np.random.default_rng(16).integers(0, 3, size=(1000, 10))

    for step in range(10_000):
        env.step(actions[step % 1000])

    after = {name: (id(array), array.shape) for name, array in env._buffers().items()}
    assert after == before


def test_a_sequential_run_records_every_bar_into_fixed_buffers() -> None:
    features, open_, close = _random_data(200, 3, seed=17)
    env = VecTradingEnv(
        EnvOptions(window=10, fill="close", commission_bps=0.0, slippage_bps=0.0), sequential=True
    )
    env.update_data(features, open_, close)
    env.reset()
    before = {name: (id(array), array.shape) for name, array in env._buffers().items()}

    steps = 0
    while not env.done:
        env.step(np.array([LONG]))
        steps += 1

    records = env.records()
    assert steps == 200 - 10
    assert records.bar.tolist() == list(range(9, 200))
    np.testing.assert_allclose(records.buy_and_hold, close[9:] / close[9])
    np.testing.assert_allclose(records.equity, records.buy_and_hold, rtol=1e-12)
    assert records.position.tolist() == [0.0] + [1.0] * steps
    assert {name: (id(array), array.shape) for name, array in env._buffers().items()} == before


def test_a_ruined_eval_run_covers_the_whole_window_and_stays_flat_after_the_ruin_bar() -> None:
    close = np.array([100.0, 100.0, 40.0, 40.0, 50.0, 80.0])
    options = _frictionless(fill="close", ruin_equity=0.5, commission_bps=10.0)
    env = VecTradingEnv(options, sequential=True)
    env.update_data(np.zeros((close.size, 1), dtype=np.float32), close.copy(), close)
    env.reset()

    results = _run(env, [LONG] * 5)
    records = env.records()

    k = 10.0 / 1e4
    ruined = (1 - k) * 0.4
    assert env.done and not any(r.terminated[0] for r in results) and results[-1].truncated[0]
    assert records.bar.tolist() == [0, 1, 2, 3, 4, 5]
    assert records.ruined_at == 2
    assert records.position.tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(records.equity, [1.0, 1 - k, ruined] + [ruined * (1 - k)] * 3)
    np.testing.assert_allclose(records.cost, [0.0, k, 0.0, ruined * k, 0.0, 0.0])
    np.testing.assert_allclose(records.buy_and_hold, close / 100.0)


def test_an_eval_run_that_is_never_ruined_says_so() -> None:
    env = _paper_env(_frictionless(fill="close", ruin_equity=0.5))

    _run(env, [LONG] * 3)

    assert env.done and env.records().ruined_at == -1


def test_the_step_after_a_finished_sequential_run_starts_a_new_one() -> None:
    env = VecTradingEnv(EnvOptions(window=3), sequential=True)
    env.update_data(*_random_data(10, 2, seed=18))
    env.reset()
    for _ in range(7):
        env.step(np.array([LONG]))
    assert env.done and env.records().bar.size == 8

    env.step(np.array([FLAT]))

    assert not env.done
    assert env.records().bar.tolist() == [2, 3]


def test_step_rejects_out_of_range_discrete_actions() -> None:
    env = VecTradingEnv(EnvOptions(window=3, episode_length=5), n_envs=2)
    env.update_data(*_random_data(20, 2, seed=19))
    env.reset()

    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([0, -1]))
    with pytest.raises(ValueError, match="actions"):
        env.step(np.array([0, 3]))


def test_an_env_without_data_says_what_to_call() -> None:
    env = VecTradingEnv(EnvOptions())

    with pytest.raises(RuntimeError, match="update_data"):
        env.reset()


# The data's bars per year.


def _env_at_rate(single: bool, options: EnvOptions, bars_per_year: float) -> object:
    """Build a single or a vectorized env on data of `bars_per_year` bars a year."""
    if single:
        return TradingEnv(*_random_data(40, 1, seed=0), options, bars_per_year=bars_per_year)
    return VecTradingEnv(options, bars_per_year=bars_per_year)


@pytest.mark.parametrize("single", [False, True])
def test_the_envs_reject_a_data_rate_that_cannot_carry_the_borrow_fee(single: bool) -> None:
    with pytest.raises(ValueError, match=r"bars_per_year must be > 0, got 0\.0"):
        _env_at_rate(single, EnvOptions(), 0.0)
    with pytest.raises(ValueError, match=r"EnvOptions\.borrow_bps_per_year would take a whole bar"):
        _env_at_rate(single, EnvOptions(borrow_bps_per_year=10_000.0), 1.0)


# Gymnasium and SB3 checkers.


@pytest.mark.parametrize(
    ("action", "fill", "reward"),
    list(
        itertools.product(
            ("discrete3", "discrete2", "continuous"),
            ("next_open", "close"),
            ("log_return", "dsr", "drawdown_penalty"),
        )
    ),
)
def test_gymnasium_and_sb3_env_checkers_pass(action: str, fill: str, reward: str) -> None:
    from gymnasium.utils.env_checker import check_env as gymnasium_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    features, open_, close = _random_data(100, 3, seed=20)
    options = EnvOptions(window=6, episode_length=30, action=action, fill=fill, reward=reward)

    with warnings.catch_warnings():
        # Normalised features have no bounds, so the observation Box is infinite on purpose.
        warnings.filterwarnings("ignore", message=".*Box observation space (minimum|maximum) value.*")
        warnings.filterwarnings("ignore", message=".*alternative render modes.*")
        gymnasium_check_env(TradingEnv(features, open_, close, options))
        sb3_check_env(TradingEnv(features, open_, close, options))


def test_a_single_env_must_be_reset_after_its_episode_ends() -> None:
    env = TradingEnv(*_random_data(30, 2, seed=21), EnvOptions(window=3, episode_length=2))
    env.reset(seed=0)
    env.step(1)
    env.step(1)

    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


# from_frame.


def _fake_features(frame: object) -> np.ndarray:
    """Return two causal features with three warm-up NaN rows, like services.data.features does."""
    close = frame["close"].to_numpy()  # type: ignore[index]
    out = np.full((close.size, 2), np.nan, dtype=np.float32)
    out[3:, 0] = np.log(close[3:] / close[:-3])
    out[3:, 1] = frame["volume"].to_numpy()[3:]  # type: ignore[index]
    return out


def test_from_frame_drops_the_warm_up_rows_with_their_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    pandas = pytest.importorskip("pandas")
    fake = types.ModuleType("services.data.features")
    fake.compute_features = _fake_features  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "services.data.features", fake)
    _, open_, close = _random_data(40, 1, seed=22)
    frame = pandas.DataFrame(
        {"Open": open_, "HIGH": close * 1.01, "low": close * 0.99, "Close": close, "Volume": np.arange(40.0)}
    )

    env = TradingEnv.from_frame(frame, window=4, episode_length=5, seed=3)
    obs, _ = env.reset()

    assert env._data.n_bars == 37
    np.testing.assert_array_equal(env._data.close[:37], close[3:])
    assert obs.shape == (4 * 2 + 2,)
    windows = env._data.windows
    assert abs(float(windows[:, ::2].mean())) < 0.5


def test_from_frame_works_with_the_real_features_on_the_shipped_data() -> None:
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("services.data.features")
    frame = pandas.read_csv(ROOT / "data" / "STOCKS_GOOGL.csv")

    env = TradingEnv.from_frame(frame, window=8)
    obs, _ = env.reset(seed=0)
    obs, reward, terminated, truncated, _ = env.step(2)

    assert np.isfinite(obs).all() and math.isfinite(reward)
    assert not terminated and not truncated


@pytest.mark.parametrize(
    ("modules", "forbidden"),
    [
        ("services.env.gym_env, services.env.factory, services.env.metrics", ("torch", "stable_baselines3")),
        # The env actor holds StepResult and the config reads the options: neither may need gymnasium.
        ("services.env.options, services.env.vec_env", ("gymnasium", "torch", "pandas")),
    ],
)
def test_importing_the_services_loads_no_library_they_do_not_need(
    modules: str, forbidden: tuple[str, ...]
) -> None:
    code = (
        f"import sys; import {modules}; "
        f"bad = [m for m in {forbidden!r} if m in sys.modules]; "
        "assert not bad, bad"
    )

    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)

    assert completed.returncode == 0, completed.stderr
