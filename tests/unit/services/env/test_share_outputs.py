"""An env that steps into arrays it is given (a shared step buffer's) steps exactly as one that does not."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from services.env.options import EnvOptions, PortfolioOptions
from services.env.portfolio import VecPortfolioEnv
from services.env.records import StepOutputs
from services.env.vec_env import VecTradingEnv

N, BARS, ASSETS = 4, 200, 3


def single(options: EnvOptions) -> VecTradingEnv:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, BARS)))
    env = VecTradingEnv(options, n_envs=N, seed=2)
    env.update_data(rng.normal(size=(BARS, 3)).astype(np.float32), close.copy(), close)
    return env


def portfolio(options: EnvOptions) -> VecPortfolioEnv:
    rng = np.random.default_rng(1)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (BARS, ASSETS)), axis=0))
    env = VecPortfolioEnv(options, PortfolioOptions(weights="long_short"), n_envs=N, seed=2)
    tradable = np.ones((BARS, ASSETS), dtype=bool)
    env.update_data(rng.normal(size=(BARS, ASSETS, 2)).astype(np.float32), close.copy(), close, tradable)
    return env


def outputs_for(env: Any) -> StepOutputs:
    """New arrays shaped as the env's outputs (what a shared buffer's views are)."""
    obs = (env.n_envs, *env.observation_shape)
    return StepOutputs(
        obs=np.full(obs, np.nan, dtype=np.float32),
        terminal_obs=np.full(obs, np.nan, dtype=np.float32),
        reward=np.full(env.n_envs, np.nan, dtype=np.float32),
        flags=np.ones((3, env.n_envs), dtype=bool),
        episode_return=np.full(env.n_envs, np.nan),
        episode_length=np.full(env.n_envs, -1, dtype=np.int64),
    )


def actions_for(env: Any, rng: np.random.Generator) -> np.ndarray:
    if isinstance(env, VecPortfolioEnv):
        return rng.uniform(-1, 1, size=(N, env.action_size)).astype(np.float32)
    return rng.integers(0, 3, size=N)


@pytest.mark.parametrize("make", [single, portfolio], ids=["single", "portfolio"])
def test_an_env_stepping_into_given_arrays_steps_as_its_twin_and_writes_only_there(make: Any) -> None:
    options = EnvOptions(window=4, episode_length=9, ruin_equity=0.8, max_leverage=3.0)
    env, twin = make(options), make(options)
    first = env.reset(seed=5).copy()
    np.testing.assert_array_equal(first, twin.reset(seed=5))
    outputs = outputs_for(env)

    env.share_outputs(outputs)

    np.testing.assert_array_equal(outputs.obs, first, err_msg="the current observations are kept")
    rng = np.random.default_rng(3)
    finished = 0
    for _ in range(40):
        actions = actions_for(env, rng)
        got, expected = env.step(actions), twin.step(actions)
        assert got.obs is outputs.obs and got.reward is outputs.reward
        assert all(np.shares_memory(flags, outputs.flags) for flags in (got.terminated, got.truncated))
        done = expected.terminated | expected.truncated
        np.testing.assert_array_equal(outputs.obs, expected.obs)
        np.testing.assert_array_equal(outputs.reward, expected.reward)
        np.testing.assert_array_equal(outputs.flags, [expected.terminated, expected.truncated, done])
        np.testing.assert_array_equal(outputs.terminal_obs[done], expected.terminal_obs[done])
        np.testing.assert_array_equal(outputs.episode_return[done], expected.episode_return[done])
        np.testing.assert_array_equal(outputs.episode_length[done], expected.episode_length[done])
        finished += int(done.sum())
    assert finished >= N, "every env finished at least once"


def test_outputs_that_do_not_fit_are_refused_and_change_nothing() -> None:
    env = single(EnvOptions(window=4, episode_length=9))
    env.reset(seed=1)
    fitting = outputs_for(env)
    narrow = fitting._replace(obs=np.zeros((N, env.observation_shape[0] - 1), dtype=np.float32))
    wrong_type = fitting._replace(reward=np.zeros(N))

    for bad, name in ((narrow, "obs"), (wrong_type, "reward")):
        with pytest.raises(ValueError, match=f"step outputs refused: {name} is"):
            env.share_outputs(bad)

    assert np.isnan(fitting.obs).all(), "nothing was copied into the refused arrays"
    assert not np.shares_memory(env.step(np.zeros(N, dtype=np.int64)).obs, fitting.obs)


def test_an_env_without_data_refuses_to_share_its_outputs() -> None:
    env = VecTradingEnv(EnvOptions(window=4, episode_length=9), n_envs=N)

    with pytest.raises(RuntimeError, match="no data yet"):
        env.share_outputs(outputs_for(env))
