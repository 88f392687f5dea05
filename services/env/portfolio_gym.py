"""Trade a portfolio through the gymnasium API, one env on the same accounting as VecPortfolioEnv.

The step is VecPortfolioEnv.step's arithmetic (docs/PORTFOLIO.md section 4) rewritten for one env, where
a numpy call on a few dozen values costs far more than its arithmetic: about ten calls a step on
buffers allocated once. The weights held are kept as ``scale * units`` (a Python float times an array),
so the normalisations of the module docstring of services/env/portfolio.py are scalar products, and the
sums a step needs (the softmax's, the gap's and the body's) come out of one small matrix product with a
per-bar table. A bar at which some asset cannot fill takes the general path (target_weights on arrays).
Tests step it beside VecPortfolioEnv and beside a direct transcription of the formulas.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium
import numpy as np

from services.env.accounting import MIN_GROWTH, Accounting, ScalarOps
from services.env.options import DEFAULT_BARS_PER_YEAR, EnvOptions, PortfolioOptions, build_observation_space
from services.env.portfolio import n_outputs, observation_size, target_weights
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
        m = data.n_assets
        self._m = m
        self._width = self.options.window * m * data.n_features
        self._bar_size = m * data.n_features
        self._size = observation_size(self.portfolio, self.options.window, m, data.n_features)
        self._long_only = self.portfolio.weights == "long_only"
        self._outputs = n_outputs(self.portfolio, m)
        self.observation_space = build_observation_space((self._size,))
        self.action_space = gymnasium.spaces.Box(-1.0, 1.0, shape=(self._outputs,), dtype=np.float32)
        self._all_fill = data.all_fill.tolist()
        self._log_reward = self.options.reward == "log_return"
        self._cap = self.options.max_leverage
        self._ruin = self.options.ruin_equity
        self._length = self.options.episode_length
        self._action_shape = (self._outputs,)
        self._cost = self._acc.cost
        self._borrow = self._acc.borrow
        self._build_tables()
        self._np_random = np.random.default_rng(seed)
        self._start_episode()

    def _build_tables(self) -> None:
        """Lay out the per-bar tables and the step's buffers (see the module docstring)."""
        m, k, n_bars = self._m, self._outputs, self._data.n_bars
        gap = self._data.moves[:, :m]
        body = self._data.moves[:, m : 2 * m]
        # columns[t], the step into bar t, k x 4: per asset (1, body, gap, 1); the cash row (0, 0, 0, 1).
        self._columns = np.zeros((n_bars, k, 4))
        self._columns[:, :m, 0] = 1.0
        self._columns[:, :m, 1] = body
        self._columns[:, :m, 2] = gap
        self._columns[:, :, 3] = 1.0
        # growths[t], 2 x M: 1 + body of the step into bar t, and that times 1 + gap of the next step (1
        # past the last bar): what turns the target's units into the held units and the next step's.
        self._growths = np.empty((n_bars, 2, m))
        self._growths[:, 0] = 1.0 + body
        self._growths[:, 1] = self._growths[:, 0]
        self._growths[:-1, 1] *= 1.0 + gap[1:]
        # Python lists of the per-bar rows: a list index costs a tenth of a numpy one.
        self._column_rows = list(self._columns)
        self._growth_rows = list(self._growths)
        self._mix = np.zeros(3)
        self._held = np.empty(m)
        self._held_scale = np.array(1.0)  # a 0-d operand: a ufunc converts a Python float more slowly
        # The rows of one matrix, so that one matrix product serves several of them: the target's units
        # (the action's exp e over assets and cash, long-only; x, the clipped action, long-short), the
        # held units u (weights = scale * u) and u * (1 + the next gap); long-short adds |x| first. The
        # cash column of the last two rows stays 0.
        if self._long_only:
            self._rows = np.zeros((3, k))
            self._lifted, self._units = self._rows[0], self._rows[1, :m]
            self._lifted_assets = self._rows[0, :m]
            self._summed = self._rows[0:2]
            self._mixed = self._rows
            self._next_units = self._rows[1:3, :m]
            self._ones = self._columns[0, :, 0].copy()  # sums the assets' turnover, not the cash row's
            logit = float(self.portfolio.logit_scale)
            self._logit = np.array(logit)
            self._low, self._high = np.full(k, -logit), np.full(k, logit)
            self._fast_step = self._step_long_only
        else:
            self._rows = np.zeros((4, m))
            self._absolute, self._lifted, self._units, _ = self._rows
            self._summed = self._rows[0:3]
            self._mixed = self._rows[1:4]
            self._next_units = self._rows[2:4]
            self._ones = np.ones(m)
            self._low, self._high = np.full(k, -1.0), np.full(k, 1.0)
            self._fast_step = self._step_long_short

    @property
    def weights(self) -> np.ndarray:
        """Return a copy of the weights held at the current bar's close."""
        return self._units * self._scale

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
        return self._observation(1.0), {"bar": self._t, "equity": 1.0}

    def _start_episode(self) -> None:
        self._t = draw_start(self.np_random, self._data.start_bounds())
        self._steps = 0
        self._next_units[:] = 0.0
        self._scale = 1.0
        self._equity = 1.0
        self._ep_return = 0.0
        self._reward_state = self._acc.initial_reward_state()
        self._over = False

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Trade toward the action's target weights and advance one bar."""
        if self._over:
            raise RuntimeError("PortfolioEnv.step: the episode is over; call reset()")
        if type(action) is not np.ndarray or action.shape != self._action_shape:
            action = np.asarray(action, dtype=np.float64).reshape(-1)
            if action.size != self._outputs:
                raise ValueError(f"PortfolioEnv.step: expected {self._outputs} values, got {action!r}")
        t = self._t + 1
        if self._all_fill[t]:
            growth, cash = self._fast_step(action, t)
        else:
            growth, cash = self._step_general(action, t)
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
        return self._observation(cash), reward, terminated, truncated, info

    def _step_long_only(self, action: np.ndarray, t: int) -> tuple[float, float]:
        """Step a long-only portfolio at a bar where every asset fills; return growth and cash weight.

        With e = exp(clip(a) * logit_scale) and S = sum(e), the target is e / S over the assets; with u the
        held units and s their scale, the weights at the fill are s * u * (1 + gap) / g1.
        """
        lifted = self._lifted
        np.multiply(action, self._logit, lifted)
        np.maximum(lifted, self._low, out=lifted)  # np.clip's Python wrapper costs more than these two
        np.minimum(lifted, self._high, out=lifted)
        np.exp(lifted, lifted)
        # ndarray.dot allocating its result is cheaper than np.dot(..., out=) on arrays this small.
        (assets, grown, _, total), (_, _, held_gap, _) = self._summed.dot(self._column_rows[t]).tolist()
        scale = self._scale
        g1 = 1.0 + scale * held_gap
        inverse = 1.0 / total
        mix = self._mix
        mix[0] = inverse
        mix[2] = -scale / (g1 if g1 > MIN_GROWTH else MIN_GROWTH)
        traded = mix.dot(self._mixed)  # target - weights at the fill
        np.absolute(traded, traded)
        g2 = 1.0 - self._cost * float(traded.dot(self._ones))
        g3 = 1.0 + grown * inverse
        growth = g1 * g2 * g3
        # Weights are never short, so the borrow factor is exactly 1.
        if not math.isfinite(growth):
            raise ValueError(f"PortfolioEnv.step: actions must be finite, got {action!r}")
        if growth < MIN_GROWTH:
            return self._wipe_out(), 1.0
        scale = inverse / (g3 if g3 > MIN_GROWTH else MIN_GROWTH)
        self._scale = scale
        np.multiply(self._lifted_assets, self._growth_rows[t], self._next_units)
        return growth, 1.0 - scale * (assets + grown)

    def _step_long_short(self, action: np.ndarray, t: int) -> tuple[float, float]:
        """Step a long-short portfolio at a bar where every asset fills; return growth and 0 (no cash slot).

        With x = clip(a), the target is q * x (q scales sum |x| down to max_leverage); u and s as in
        _step_long_only; sum(max(-u, 0)) = (sum |u| - sum u) / 2 gives the borrow without an array.
        """
        lifted = self._lifted
        np.maximum(action, self._low, out=lifted)  # also the cast to float64
        np.minimum(lifted, self._high, out=lifted)
        np.absolute(lifted, self._absolute)
        sums = self._summed.dot(self._column_rows[t]).tolist()
        (gross, gross_grown, _, _), (net, grown, _, _), (_, _, held_gap, _) = sums
        scale = self._scale
        g1 = 1.0 + scale * held_gap
        cap = self._cap
        q = cap / gross if gross > cap else 1.0
        mix = self._mix
        mix[0] = q
        mix[2] = -scale / (g1 if g1 > MIN_GROWTH else MIN_GROWTH)
        traded = mix.dot(self._mixed)
        np.absolute(traded, traded)
        g2 = 1.0 - self._cost * float(traded.dot(self._ones))
        g3 = 1.0 + q * grown
        growth = g1 * g2 * g3
        scale = q / (g3 if g3 > MIN_GROWTH else MIN_GROWTH)
        if self._borrow:
            short = 0.5 * scale * ((gross + gross_grown) - (net + grown))
            g4 = 1.0 - self._borrow * (short if short > 0.0 else 0.0)
            growth *= g4
            scale /= g4
        if not math.isfinite(growth):
            raise ValueError(f"PortfolioEnv.step: actions must be finite, got {action!r}")
        if growth < MIN_GROWTH:
            return self._wipe_out(), 0.0
        self._scale = scale
        np.multiply(lifted, self._growth_rows[t], self._next_units)
        return growth, 0.0

    def _step_general(self, action: np.ndarray, t: int) -> tuple[float, float]:
        """Step at a bar where some asset cannot fill: VecPortfolioEnv.step's arithmetic on arrays."""
        m = self._m
        row = self._data.moves[t]
        gap, body, fill = row[:m], row[m : 2 * m], row[2 * m :]
        held = self._units * self._scale
        g1 = 1.0 + float(np.dot(held, gap))
        at_fill = held * (1.0 + gap) / max(g1, MIN_GROWTH)
        raw = np.asarray(action, dtype=np.float64)
        target = target_weights(self.portfolio, self._cap, raw[None], at_fill[None], fill[None])[0]
        g2 = 1.0 - self._cost * float(np.abs(target - at_fill).sum())
        g3 = 1.0 + float(np.dot(target, body))
        closing = target * (1.0 + body) / max(g3, MIN_GROWTH)
        growth = g1 * g2 * g3
        scale = 1.0
        if self._borrow:
            g4 = 1.0 - self._borrow * float(np.maximum(-closing, 0.0).sum())
            growth *= g4
            scale /= g4
        if not math.isfinite(growth):
            raise ValueError(f"PortfolioEnv.step: actions must be finite, got {action!r}")
        if growth < MIN_GROWTH:
            return self._wipe_out(), 1.0 if self._long_only else 0.0
        self._scale = scale
        # The held units and their drift into the next step, as the fast paths keep them.
        np.multiply(target / max(g3, MIN_GROWTH), self._growths[t], out=self._next_units)
        return growth, 1.0 - float(closing.sum()) * scale

    def _wipe_out(self) -> float:
        """Drop every holding after a step that took the whole equity; return the floored growth."""
        self._next_units[:] = 0.0
        self._scale = 1.0
        return MIN_GROWTH

    def _observation(self, cash: float) -> np.ndarray:
        """Return a new observation: the feature window of the current bar, the weights, the cash."""
        width = self._width
        start = (self._t + 1) * self._bar_size - width
        obs = self._data.flat[start : start + self._size].copy()
        self._held_scale[()] = self._scale
        obs[width : width + self._m] = np.multiply(self._units, self._held_scale, self._held)
        if self._long_only:
            obs[-1] = cash
        return obs
