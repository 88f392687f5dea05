"""Trade a portfolio through the gymnasium API, one env on the same accounting as VecPortfolioEnv.

The step is VecPortfolioEnv.step's arithmetic (docs/PORTFOLIO.md section 4) for one env, compiled: one
call of services/env/portfolio_kernel.py's kernel maps the action to target weights (assets that cannot
fill keep theirs), fills, charges the costs and the borrow, grows the weights through the bar and writes
the observation into a new array allocated here; what is left in Python is the reward, the episode's
counters and the info dict. Tests step it beside VecPortfolioEnv, beside a direct transcription of the
formulas and beside the numpy step it replaced.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from services.env.accounting import Accounting, ScalarOps
from services.env.episodes import draw_start
from services.env.options import DEFAULT_BARS_PER_YEAR, EnvOptions, PortfolioOptions, build_observation_space
from services.env.portfolio import n_outputs, observation_size
from services.env.portfolio_data import PortfolioData
from services.env.portfolio_kernel import compile_steps, step_long_only, step_long_short

_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
"""Action dtypes passed to the kernel as they are (compiled when the env is built); others become float64."""


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
        m = data.n_assets
        self._width = self.options.window * m * data.n_features
        self._bar_size = m * data.n_features
        self._size = observation_size(self.portfolio, self.options.window, m, data.n_features)
        self._long_only = self.portfolio.weights == "long_only"
        self._outputs = n_outputs(self.portfolio, m)
        self.observation_space = build_observation_space((self._size,))
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(self._outputs,), dtype=np.float32)
        self._log_reward = self.options.reward == "log_return"
        self._ruin = self.options.ruin_equity
        self._length = self.options.episode_length
        self._action_shape = (self._outputs,)
        state = np.zeros((3, m))  # the weights held, then the kernel's scratch rows
        self._weights = state[0]
        self._kernel = step_long_only if self._long_only else step_long_short
        limit = self.portfolio.logit_scale if self._long_only else self.options.max_leverage
        # The kernel's arguments after the action, the observation and the bar, in its order.
        self._kernel_args = (
            data.moves,
            data.flat,
            state,
            float(limit),
            self._acc.cost,
            self._acc.borrow,
            self._width,
            self._bar_size,
        )
        compile_steps(self.portfolio.weights)
        self._np_random = np.random.default_rng(seed)
        self._start_episode()

    @property
    def weights(self) -> np.ndarray:
        """Return a copy of the weights held at the current bar's close."""
        return self._weights.copy()

    @property
    def equity(self) -> float:
        """Return the equity at the current bar's close, 1.0 at the episode's start."""
        return self._equity

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode at a random start bar; return its first observation and info."""
        super().reset(seed=seed)
        self._start_episode()
        width = self._width
        start = (self._t + 1) * self._bar_size - width
        obs = self._data.flat[start : start + self._size].copy()
        obs[width:] = 0.0
        if self._long_only:
            obs[-1] = 1.0
        return obs, {"bar": self._t, "equity": 1.0}

    def _start_episode(self) -> None:
        """Put the env at a random start bar, in cash, with equity 1."""
        self._t = draw_start(self.np_random, self._data.start_bounds())
        self._steps = 0
        self._weights[:] = 0.0
        self._equity = 1.0
        self._ep_return = 0.0
        self._reward_state = self._acc.initial_reward_state()
        self._over = False

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Trade toward the action's target weights and advance one bar."""
        if self._over:
            raise RuntimeError("PortfolioEnv.step: the episode is over; call reset()")
        if (
            type(action) is not np.ndarray
            or action.shape != self._action_shape
            or action.dtype not in _KERNEL_DTYPES
        ):
            action = np.asarray(action, dtype=np.float64).reshape(-1)
            if action.size != self._outputs:
                raise ValueError(f"PortfolioEnv.step: expected {self._outputs} values, got {action!r}")
        t = self._t + 1
        obs = np.empty(self._size, dtype=np.float32)
        growth = self._kernel(action, obs, t, *self._kernel_args)
        if not math.isfinite(growth):
            raise ValueError(f"PortfolioEnv.step: actions must be finite, got {action!r}")
        equity = self._equity * growth
        self._equity = equity
        if self._log_reward:
            reward = math.log(growth)
        else:
            reward, self._reward_state = self._acc.reward(
                ScalarOps, growth, math.log(growth), equity, self._reward_state
            )
        self._ep_return += reward
        self._t = t
        self._steps += 1
        terminated = equity <= self._ruin
        truncated = self._steps >= self._length and not terminated
        info: dict[str, Any] = {"bar": t, "equity": equity}
        if terminated or truncated:
            self._over = True
            info["episode_return"] = self._ep_return
            info["episode_length"] = self._steps
        return obs, reward, terminated, truncated, info
