"""Account for one instrument's trades bar by bar: fills, costs, equity growth and rewards.

Time line. A step decides at bar t's close and moves the env to bar t + 1. The action sets the target
position ``new`` (a fraction of equity, in ``[-max_leverage, max_leverage]``); ``old`` is the position
held before. With ``fill="next_open"`` (the default) the change is filled at bar t + 1's open; with
``fill="close"`` it is filled at bar t's close, the price the decision was made on, which is optimistic.

Equity over the bar from close[t] to close[t + 1] (``k = (commission_bps + slippage_bps) / 1e4``,
``b = borrow_bps_per_year / 1e4 / bars_per_year``) grows by the factor

    next_open:  (1 + old * (open[t+1] / close[t] - 1))    gap, old position held overnight
              * (1 - |new - old| * k)                     costs, charged on the equity at the fill
              * (1 + new * (close[t+1] / open[t+1] - 1))  the bar's body, new position
              * (1 - max(-new, 0) * b)                    borrow on short exposure
    close:      (1 - |new - old| * k) * (1 + new * (close[t+1] / close[t] - 1)) * (1 - max(-new, 0) * b)

This is the compounded form of ``old * gap + new * body - |new - old| * k - borrow``: the two agree to
first order, and the compounded one makes a position held at 1.0 track the price exactly. A factor
below 1e-9 (a leveraged position wiped out by a gap) is raised to 1e-9, so equity stays positive.
The log-return reward is ``log(factor)``, that is ``log(equity[t+1] / equity[t])`` net of costs.

``bars_per_year`` is the data's rate (the data actor infers it from the bar spacing), so it is an
argument of the envs, not an option.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from services.env.options import EnvOptions, check_bars_per_year

MIN_GROWTH = 1e-9
"""Lowest growth factor of one bar: keeps equity positive and its log finite."""
# The differential Sharpe ratio is 0 while the moving variance is below this (the first step of an
# episode, and while every return so far was the same), and clipped to +-DSR_CLIP afterwards,
# because right after a flat stretch the variance estimate is tiny and the ratio explodes.
DSR_MIN_VARIANCE = 1e-12
DSR_CLIP = 10.0
TINY = 1e-12
"""Guards a division by |position| that np.where evaluates even where the position is 0."""


class ScalarOps:
    """Stand in for the numpy functions of the reward kernel when it runs on Python floats."""

    sqrt = staticmethod(math.sqrt)
    maximum = staticmethod(max)
    minimum = staticmethod(min)

    @staticmethod
    def where(condition: bool, if_true: float, if_false: float) -> float:
        """Return if_true where condition holds, like np.where on scalars."""
        return if_true if condition else if_false


# The formulas below, on numpy arrays, are the reference of VecTradingEnv's step, which runs them in the
# compiled kernels of services.env.vec_kernel (a test checks the two agree bit for bit); the portfolio env
# uses the reward on arrays. The reward is written with operators and the few functions of xp only, so
# that the single env runs it on Python floats too (xp = ScalarOps) for the dsr and drawdown rewards; the
# single env's growth, entry and unrealised PnL are written out on floats in TradingEnv.step, which is
# twice as fast, and a test checks the two agree for every option combination.
_Num = Any
"""A numpy array or a Python float: the reward kernel takes either."""


class Accounting:
    """Compute fills, costs, equity growth and rewards (the reference of the compiled step; rewards)."""

    __slots__ = ("_discrete", "_eta", "_penalty", "_reward", "borrow", "cost")

    def __init__(self, options: EnvOptions, bars_per_year: float) -> None:
        check_bars_per_year(options, bars_per_year)
        self.cost = (options.commission_bps + options.slippage_bps) / 1e4
        self.borrow = options.borrow_bps_per_year / 1e4 / float(bars_per_year)
        self._discrete = bool(options.positions)
        self._reward = options.reward
        self._eta = options.dsr_eta
        self._penalty = options.drawdown_penalty

    def growth(self, old: np.ndarray, new: np.ndarray, gap: np.ndarray, drift: np.ndarray) -> np.ndarray:
        """Return the factor by which equity grows over the bar (see the module docstring)."""
        factor = (1.0 + old * gap) * (1.0 - abs(new - old) * self.cost) * (1.0 + new * drift)
        if self.borrow:
            factor = factor * (1.0 - (abs(new) - new) * (0.5 * self.borrow))
        return np.maximum(factor, MIN_GROWTH)

    def costs(
        self, equity: np.ndarray, old: np.ndarray, new: np.ndarray, gap: np.ndarray, drift: np.ndarray
    ) -> np.ndarray:
        """Return commission, slippage and borrow paid over the bar, in units of equity."""
        at_fill = equity * (1.0 + old * gap)
        traded = at_fill * abs(new - old) * self.cost
        at_close = (at_fill - traded) * (1.0 + new * drift)
        return traded + at_close * (abs(new) - new) * (0.5 * self.borrow)

    def entry(self, old: np.ndarray, new: np.ndarray, entry: np.ndarray, fill: np.ndarray) -> np.ndarray:
        """Return the log entry price of `new` after it replaced `old` at log price `fill`."""
        if self._discrete:
            # Discrete positions are -lev, 0 or lev: a change is always a flip, an entry or an exit,
            # which the general rule below reduces to.
            return np.where(new != old, fill, entry)
        added = np.maximum(abs(new) - abs(old), 0.0)
        share_new = np.where(old * new > 0.0, added / np.maximum(abs(new), TINY), 1.0)
        return entry + share_new * (fill - entry)

    @staticmethod
    def unrealised(position: np.ndarray, entry: np.ndarray, log_close: np.ndarray) -> np.ndarray:
        """Return the log PnL of the open position since its entry, signed by its side."""
        return np.sign(position) * (log_close - entry)

    def reward(
        self, xp: Any, growth: _Num, log_growth: _Num, equity: _Num, state: tuple[_Num, _Num]
    ) -> tuple[_Num, tuple[_Num, _Num]]:
        """Return the reward of the bar and the new reward state.

        Args:
            equity: equity after the bar.
            state: (peak equity, drawdown) for "drawdown_penalty", (moving mean, moving mean of squares)
                of the simple returns for "dsr"; unused by "log_return".
        """
        if self._reward == "log_return":
            return log_growth, state
        if self._reward == "drawdown_penalty":
            peak = xp.maximum(state[0], equity)
            drawdown = 1.0 - equity / peak
            return log_growth - self._penalty * xp.maximum(drawdown - state[1], 0.0), (peak, drawdown)
        # Moody & Saffell (1998): D_t = (B dA - A dB / 2) / (B - A^2)^(3/2) with the moments before R_t.
        mean, mean_sq = state
        ret = growth - 1.0
        d_mean = ret - mean
        d_sq = ret * ret - mean_sq
        variance = mean_sq - mean * mean
        floored = xp.maximum(variance, DSR_MIN_VARIANCE)
        dsr = (mean_sq * d_mean - 0.5 * mean * d_sq) / (floored * xp.sqrt(floored))
        dsr = xp.where(variance > DSR_MIN_VARIANCE, dsr, 0.0)
        dsr = xp.minimum(xp.maximum(dsr, -DSR_CLIP), DSR_CLIP)
        return dsr, (mean + self._eta * d_mean, mean_sq + self._eta * d_sq)

    def initial_reward_state(self) -> tuple[float, float]:
        """Return the reward state at the start of an episode."""
        return (1.0, 0.0) if self._reward == "drawdown_penalty" else (0.0, 0.0)
