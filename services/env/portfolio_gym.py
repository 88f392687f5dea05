"""Trade a portfolio through the gymnasium API, one env on the same accounting as VecPortfolioEnv."""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from services.env.accounting import MIN_GROWTH, Accounting, ScalarOps
from services.env.options import DEFAULT_BARS_PER_YEAR, EnvOptions, PortfolioOptions, build_observation_space
from services.env.portfolio import (
    clip_actions,
    fast_sum,
    n_outputs,
    observation_size,
    target_weights,
)
from services.env.portfolio_data import PortfolioData
from services.env.vec_env import draw_start


class PortfolioEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Trade a portfolio through the gymnasium API, on the same accounting as VecPortfolioEnv."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        features: np.ndarray,
        open_: np.ndarray,
        close: np.ndarray,
        tradable: np.ndarray,
        options: EnvOptions | None = None,
        portfolio: PortfolioOptions | None = None,
        *,
        seed: int = 0,
        bars_per_year: float = DEFAULT_BARS_PER_YEAR,
    ) -> None:
        """Create the env on float32 features [T, M, F], float64 prices [T, M] and a bool tradable mask.

        Args:
            options: options.n_envs is ignored; the env is always one.
            seed: episode starts come from np.random.default_rng(seed), so this env replays env i of a
                VecPortfolioEnv seeded seed - i.
            bars_per_year: the data's bars in a year; scales the borrow fee.
        """
        self.options = options if options is not None else EnvOptions()
        self.portfolio = portfolio or PortfolioOptions()
        self._acc = Accounting(self.options, bars_per_year)
        self._data = PortfolioData(self.options, sequential=False)
        self._data.update(features, open_, close, tradable)
        data = self._data
        self._m = data.n_assets
        self._width = self.options.window * data.n_assets * data.n_features
        self._size = observation_size(self.portfolio, self.options.window, data.n_assets, data.n_features)
        self._long_only = self.portfolio.weights == "long_only"
        self._outputs = n_outputs(self.portfolio, data.n_assets)
        self.observation_space = build_observation_space((self._size,))
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(self._outputs,), dtype=np.float32)
        self._all_fill = data.all_fill.tolist()
        self._log_reward = self.options.reward == "log_return"
        self._cap = self.options.max_leverage
        self._np_random = np.random.default_rng(seed)
        self._start_episode()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode at a random start bar; return its first observation and info."""
        super().reset(seed=seed)
        self._start_episode()
        return self._observation(), {"bar": self._t, "equity": 1.0}

    def _start_episode(self) -> None:
        self._t = draw_start(self.np_random, self._data.start_bounds())
        self._steps = 0
        self._weights = np.zeros(self._m)
        self._equity = 1.0
        self._ep_return = 0.0
        self._reward_state = self._acc.initial_reward_state()
        self._over = False

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Trade toward the action's target weights and advance one bar."""
        if self._over:
            raise RuntimeError("PortfolioEnv.step: the episode is over; call reset()")
        raw = np.asarray(action, dtype=np.float64).reshape(-1)
        if raw.size != self._outputs:
            raise ValueError(f"PortfolioEnv.step: expected {self._outputs} values, got {action!r}")
        m = self._m
        acc = self._acc
        t = self._t + 1
        row = self._data.moves[t]
        gap, body = row[:m], row[m : 2 * m]
        held = self._weights
        # VecPortfolioEnv.step's arithmetic on one env, with as few numpy calls as it allows (this is the
        # single env's hot path; a test checks that the two agree).
        g1 = 1.0 + float(np.dot(held, gap))
        at_fill = held * gap
        at_fill += held
        at_fill *= 1.0 / max(g1, MIN_GROWTH)
        if self._all_fill[t]:
            clipped = clip_actions(raw)
            if self._long_only:
                e = np.exp(clipped * self.portfolio.logit_scale)
                target = e[:m] * (1.0 / float(fast_sum(e)))
            else:
                target = clipped
                gross = float(fast_sum(np.abs(target)))
                if gross > self._cap:
                    target *= self._cap / gross
        else:
            fill = row[2 * m :]
            target = target_weights(self.portfolio, self._cap, raw[None], at_fill[None], fill[None])[0]
        g2 = 1.0 - acc.cost * float(fast_sum(np.abs(target - at_fill)))
        g3 = 1.0 + float(np.dot(target, body))
        weights = target * body
        weights += target
        weights *= 1.0 / max(g3, MIN_GROWTH)
        growth = g1 * g2 * g3
        if acc.borrow:
            g4 = 1.0 - acc.borrow * float(fast_sum(np.maximum(-weights, 0.0)))
            growth *= g4
            weights *= 1.0 / g4
        if not math.isfinite(growth):
            raise ValueError(f"PortfolioEnv.step: actions must be finite, got {action!r}")
        if growth < MIN_GROWTH:
            growth = MIN_GROWTH
            weights = np.zeros(m)
        self._weights = weights
        equity = self._equity * growth
        self._equity = equity
        if self._log_reward:
            reward = math.log(growth)
        else:
            reward, self._reward_state = acc.reward(
                ScalarOps, growth, math.log(growth), equity, self._reward_state
            )
        self._ep_return += reward
        self._t = t
        self._steps += 1
        terminated = equity <= self.options.ruin_equity
        truncated = self._steps >= self.options.episode_length and not terminated
        info: dict[str, Any] = {"bar": t, "equity": equity}
        if terminated or truncated:
            self._over = True
            info["episode_return"] = self._ep_return
            info["episode_length"] = self._steps
        return self._observation(), reward, terminated, truncated, info

    def _observation(self) -> np.ndarray:
        obs = np.empty(self._size, dtype=np.float32)
        width = self._width
        obs[:width] = self._data.windows[self._t - (self.options.window - 1)]
        obs[width : width + self._m] = self._weights
        if self._long_only:
            obs[-1] = 1.0 - float(fast_sum(self._weights))
        return obs
