"""Trade one instrument bar by bar: N envs stepped in one numpy call, and a single gymnasium env.

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

Observation at bar t (float32, length ``window * n_features + 2``): the features of bars
``t - window + 1 .. t`` flattened row after row (bar-major: all features of the oldest bar first), then
the position held, then the unrealised log PnL ``sign(position) * log(close[t] / entry)``, where entry
is the fill price of the open position (a same-side increase averages it in log price by size; a
decrease keeps it; a flip or an entry from flat resets it). Nothing in it depends on a bar after t.

Episodes. A training env starts each episode at a decision bar drawn uniformly from
``[window - 1, n_bars - 1 - episode_length]`` and is truncated after ``episode_length`` steps; it
terminates (not truncates) when equity falls to ``ruin_equity`` or below. Env i of a VecTradingEnv
seeded s draws its start bars, one per episode, from ``np.random.default_rng(s + i)``, so it replays
exactly like a TradingEnv seeded s + i. A sequential (evaluation) env starts at bar ``window - 1`` and
runs to the last bar, recording per-bar position, equity, buy-and-hold equity and costs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

ACTIONS = ("discrete3", "discrete2", "continuous")
FILLS = ("next_open", "close")
REWARDS = ("log_return", "dsr", "drawdown_penalty")

# Lowest growth factor of one bar: keeps equity positive and its log finite.
_MIN_GROWTH = 1e-9
# The differential Sharpe ratio is 0 while the moving variance is below this (the first step of an
# episode, and while every return so far was the same), and clipped to +-_DSR_CLIP afterwards,
# because right after a flat stretch the variance estimate is tiny and the ratio explodes.
_DSR_MIN_VARIANCE = 1e-12
_DSR_CLIP = 10.0
# Guards a division by |position| that np.where evaluates even where the position is 0.
_TINY = 1e-12
# Extra per-step columns of the observation after the feature window: position, unrealised PnL.
_N_STATE = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvOptions:
    """Configure the trading envs (the `env:` section of the config)."""

    n_envs: int = 64
    """Number of parallel training envs."""
    window: int = 32
    """Bars of features in one observation."""
    episode_length: int = 256
    """Steps in one training episode; it is then truncated."""
    action: str = "discrete3"
    """"discrete3" (short/flat/long), "discrete2" (flat/long) or "continuous" (target in [-1, 1])."""
    max_leverage: float = 1.0
    """Size of a full position; actions are scaled by it."""
    fill: str = "next_open"
    """"next_open" fills at the next bar's open; "close" fills at the decision bar's close (optimistic)."""
    commission_bps: float = 1.0
    """Commission in basis points of the traded notional (|position change| times equity)."""
    slippage_bps: float = 2.0
    """Slippage in basis points of the traded notional."""
    borrow_bps_per_year: float = 0.0
    """Yearly borrow fee in basis points of short exposure, charged every bar."""
    bars_per_year: float = 252.0
    """Bars in a year of the data; scales the borrow fee (the data actor sets it from the bar frequency)."""
    reward: str = "log_return"
    """"log_return", "dsr" (differential Sharpe ratio) or "drawdown_penalty"."""
    dsr_eta: float = 0.01
    """Adaptation rate of the moving moments of the differential Sharpe ratio, in (0, 1)."""
    drawdown_penalty: float = 0.5
    """Weight of the increase in drawdown subtracted from the log return by "drawdown_penalty"."""
    ruin_equity: float = 0.5
    """Equity (it starts at 1.0) at or below which an episode terminates."""

    def __post_init__(self) -> None:
        """Coerce ints given for floats and reject impossible values."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"EnvOptions.{spec.name} must be an int, got {value!r}")
            if spec.type == "float":
                if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                    raise ValueError(f"EnvOptions.{spec.name} must be a finite number, got {value!r}")
                object.__setattr__(self, spec.name, float(value))
            if spec.type == "str" and not isinstance(value, str):
                raise ValueError(f"EnvOptions.{spec.name} must be a string, got {value!r}")
        choices = {"action": ACTIONS, "fill": FILLS, "reward": REWARDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"EnvOptions.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in ("n_envs", "window", "episode_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"EnvOptions.{name} must be >= 1, got {getattr(self, name)!r}")
        for name in ("max_leverage", "bars_per_year"):
            if getattr(self, name) <= 0:
                raise ValueError(f"EnvOptions.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("commission_bps", "slippage_bps", "borrow_bps_per_year", "drawdown_penalty"):
            if getattr(self, name) < 0:
                raise ValueError(f"EnvOptions.{name} must be >= 0, got {getattr(self, name)!r}")
        if (self.commission_bps + self.slippage_bps) * 2 * self.max_leverage >= 1e4:
            raise ValueError(
                "EnvOptions.commission_bps + slippage_bps must be below 5000 / max_leverage bps, got "
                f"{self.commission_bps + self.slippage_bps!r}"
            )
        if self.borrow_bps_per_year / 1e4 / self.bars_per_year * self.max_leverage >= 1:
            raise ValueError(
                "EnvOptions.borrow_bps_per_year would take a whole bar's equity, got "
                f"{self.borrow_bps_per_year!r}"
            )
        if not 0 < self.dsr_eta < 1:
            raise ValueError(f"EnvOptions.dsr_eta must be in (0, 1), got {self.dsr_eta!r}")
        if not 0 <= self.ruin_equity < 1:
            raise ValueError(f"EnvOptions.ruin_equity must be in [0, 1), got {self.ruin_equity!r}")


class StepResult(NamedTuple):
    """Hold the batched results of one VecTradingEnv step (views of the env's buffers)."""

    obs: np.ndarray
    """[N, D] float32; rows of finished envs hold the first observation of their next episode."""
    reward: np.ndarray
    """[N] float32."""
    terminated: np.ndarray
    """[N] bool: ruined (equity at or below ruin_equity)."""
    truncated: np.ndarray
    """[N] bool: hit episode_length (training) or the last bar (sequential), and not ruined."""
    terminal_obs: np.ndarray
    """[N, D] float32: last observation of the envs that finished; other rows are unspecified."""
    episode_return: np.ndarray
    """[N] float64: sum of the rewards of the finished episode; valid for finished envs."""
    episode_length: np.ndarray
    """[N] int64: steps of the finished episode; valid for finished envs."""

    def finished_only(self) -> StepResult:
        """Return the result with terminal_obs cut to the finished envs' rows, in env order (wire form)."""
        return self._replace(terminal_obs=self.terminal_obs[self.terminated | self.truncated])


class EvaluationRecords(NamedTuple):
    """Hold the per-bar records of a sequential run; row 0 is the start bar, before any trade."""

    bar: np.ndarray
    """int64 index of the bar in the data."""
    close: np.ndarray
    """Close price of the bar."""
    position: np.ndarray
    """Position held at the bar's close (row 0: 0.0, flat)."""
    equity: np.ndarray
    """Equity at the bar's close; 1.0 at the start."""
    buy_and_hold: np.ndarray
    """close / close at the start bar: equity of holding 1.0 from the start, without costs."""
    cost: np.ndarray
    """Commission, slippage and borrow paid during the bar, in units of the starting equity."""


class _ScalarOps:
    """Stand in for the numpy functions of the reward kernel when it runs on Python floats."""

    sqrt = staticmethod(math.sqrt)
    maximum = staticmethod(max)
    minimum = staticmethod(min)

    @staticmethod
    def where(condition: bool, if_true: float, if_false: float) -> float:
        """Return if_true where condition holds, like np.where on scalars."""
        return if_true if condition else if_false


# The vectorized env runs the kernel below on numpy arrays. Its reward is written with operators and the
# few functions of xp only, so that the single env runs it on Python floats too (xp = _ScalarOps) for the
# dsr and drawdown rewards; the single env's growth, entry and unrealised PnL are written out on floats in
# TradingEnv.step, which is twice as fast, and a test checks the two agree for every option combination.
_Num = Any
"""A numpy array or a Python float: the reward kernel takes either."""


class _Accounting:
    """Compute fills, costs, equity growth and rewards (the vectorized kernel; both envs' rewards)."""

    __slots__ = ("_discrete", "_eta", "_penalty", "_reward", "borrow", "cost")

    def __init__(self, options: EnvOptions) -> None:
        self.cost = (options.commission_bps + options.slippage_bps) / 1e4
        self.borrow = options.borrow_bps_per_year / 1e4 / options.bars_per_year
        self._discrete = options.action != "continuous"
        self._reward = options.reward
        self._eta = options.dsr_eta
        self._penalty = options.drawdown_penalty

    def growth(self, old: np.ndarray, new: np.ndarray, gap: np.ndarray, drift: np.ndarray) -> np.ndarray:
        """Return the factor by which equity grows over the bar (see the module docstring)."""
        factor = (1.0 + old * gap) * (1.0 - abs(new - old) * self.cost) * (1.0 + new * drift)
        if self.borrow:
            factor = factor * (1.0 - (abs(new) - new) * (0.5 * self.borrow))
        return np.maximum(factor, _MIN_GROWTH)

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
        share_new = np.where(old * new > 0.0, added / np.maximum(abs(new), _TINY), 1.0)
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
        floored = xp.maximum(variance, _DSR_MIN_VARIANCE)
        dsr = (mean_sq * d_mean - 0.5 * mean * d_sq) / (floored * xp.sqrt(floored))
        dsr = xp.where(variance > _DSR_MIN_VARIANCE, dsr, 0.0)
        dsr = xp.minimum(xp.maximum(dsr, -_DSR_CLIP), _DSR_CLIP)
        return dsr, (mean + self._eta * d_mean, mean_sq + self._eta * d_sq)

    def initial_reward_state(self) -> tuple[float, float]:
        """Return the reward state at the start of an episode."""
        return (1.0, 0.0) if self._reward == "drawdown_penalty" else (0.0, 0.0)


def _build_spaces(options: EnvOptions, n_features: int) -> tuple[spaces.Box, spaces.Space[Any]]:
    """Return the observation and action spaces of one env."""
    observation = spaces.Box(
        low=-np.inf, high=np.inf, shape=(options.window * n_features + _N_STATE,), dtype=np.float32
    )
    action: spaces.Space[Any]
    if options.action == "discrete3":
        action = spaces.Discrete(3)
    elif options.action == "discrete2":
        action = spaces.Discrete(2)
    else:
        action = spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)
    return observation, action


def action_position(options: EnvOptions, action: Any) -> float:
    """Return the target position an action asks for (the mapping the envs trade with)."""
    table = _position_table(options)
    if table.size:
        return float(table[int(np.asarray(action).reshape(-1)[0])])
    value = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    return value * options.max_leverage


def _position_table(options: EnvOptions) -> np.ndarray:
    """Return the position of each discrete action (empty for continuous)."""
    lev = options.max_leverage
    if options.action == "discrete3":
        return np.array([-lev, 0.0, lev])
    if options.action == "discrete2":
        return np.array([0.0, lev])
    return np.empty(0)


class _MarketData:
    """Own the feature and price buffers of an env; new data reuses them when it fits."""

    def __init__(self, options: EnvOptions, *, sequential: bool) -> None:
        self._options = options
        self._sequential = sequential
        self.n_bars = 0
        self.n_features = 0
        self.capacity = 0
        self._features = np.empty(0, dtype=np.float32)
        # Rows: gap return, drift return, log fill price, log close; column t1 serves the step into t1.
        self.bars = np.empty((4, 0))
        self.close = np.empty(0)
        # [n_bars - window + 1, window * n_features] view: row i is the window ending at bar i + window - 1.
        self.windows = np.empty((0, 0), dtype=np.float32)

    def update(self, features: np.ndarray, open_: np.ndarray, close: np.ndarray) -> bool:
        """Validate and copy new data into the buffers; return True when they had to be reallocated."""
        self._validate(features, open_, close)
        n_bars, n_features = features.shape
        reallocated = n_bars > self.capacity
        if reallocated:
            self._features = np.empty(n_bars * n_features, dtype=np.float32)
            self.bars = np.empty((4, n_bars))
            self.close = np.empty(n_bars)
            self.capacity = n_bars
        self.n_bars, self.n_features = n_bars, n_features
        flat = self._features[: n_bars * n_features]
        np.copyto(flat.reshape(n_bars, n_features), features)
        width = self._options.window * n_features
        self.windows = np.lib.stride_tricks.sliding_window_view(flat, width)[::n_features]
        self._fill_bars(open_, close)
        return reallocated

    def _validate(self, features: np.ndarray, open_: np.ndarray, close: np.ndarray) -> None:
        """Raise ValueError unless the arrays are data this env can trade."""
        for name, array in (("features", features), ("open_", open_), ("close", close)):
            if not isinstance(array, np.ndarray):
                raise ValueError(f"update_data: {name} must be a numpy array, got {type(array).__name__}")
        if features.ndim != 2 or features.dtype != np.float32 or features.shape[1] < 1:
            raise ValueError(
                f"update_data: features must be float32 [T, F] with F >= 1, got {features.dtype} "
                f"{features.shape}"
            )
        n_bars = features.shape[0]
        for name, array in (("open_", open_), ("close", close)):
            if array.shape != (n_bars,) or array.dtype != np.float64:
                raise ValueError(
                    f"update_data: {name} must be float64 [{n_bars}], got {array.dtype} {array.shape}"
                )
            if not (np.isfinite(array).all() and (array > 0).all()):
                raise ValueError(f"update_data: {name} must be finite and positive")
        if not np.isfinite(features).all():
            raise ValueError("update_data: features must be finite (drop the warm-up rows first)")
        if self.n_features and features.shape[1] != self.n_features:
            raise ValueError(
                f"update_data: features have {features.shape[1]} columns, but this env's observations "
                f"were built for {self.n_features}"
            )
        window, length = self._options.window, self._options.episode_length
        needed = window + 1 if self._sequential else window + length
        if n_bars < needed:
            rule = "window + 1" if self._sequential else "window + episode_length"
            raise ValueError(f"update_data: need at least {rule} = {needed} bars, got {n_bars}")

    def _fill_bars(self, open_: np.ndarray, close: np.ndarray) -> None:
        """Precompute the per-bar returns and log prices the step reads."""
        n = self.n_bars
        gap, drift, fill, log_close = self.bars[:, :n]
        np.copyto(self.close[:n], close)
        np.log(close, out=log_close)
        if self._options.fill == "next_open":
            gap[0] = 0.0
            np.divide(open_[1:], close[:-1], out=gap[1:])
            gap[1:] -= 1.0
            np.divide(close, open_, out=drift)
            drift -= 1.0
            np.log(open_, out=fill)
        else:
            gap[:] = 0.0
            drift[0] = 0.0
            np.divide(close[1:], close[:-1], out=drift[1:])
            drift[1:] -= 1.0
            fill[0] = log_close[0]
            fill[1:] = log_close[:-1]

    def start_bounds(self) -> tuple[int, int]:
        """Return the lowest and highest start bar of an episode, both inclusive."""
        low = self._options.window - 1
        if self._sequential:
            return low, low
        return low, self.n_bars - 1 - self._options.episode_length


def _draw_start(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """Draw an episode's start bar; the one rule both envs use."""
    low, high = bounds
    return int(rng.integers(low, high + 1))


class VecTradingEnv:
    """Step N trading envs at once with numpy; also the sequential evaluation env (N = 1)."""

    def __init__(
        self, options: EnvOptions, *, n_envs: int | None = None, seed: int = 0, sequential: bool = False
    ) -> None:
        """Create the envs without data; call update_data before reset.

        Args:
            n_envs: overrides options.n_envs; forced to 1 when sequential.
            seed: env i draws its episode starts from np.random.default_rng(seed + i).
            sequential: evaluation mode: one env from the first full window to the last bar, recorded.
        """
        n = 1 if sequential else (options.n_envs if n_envs is None else n_envs)
        if n < 1:
            raise ValueError(f"VecTradingEnv: n_envs must be >= 1, got {n}")
        self.options = options
        self.n_envs = n
        self.sequential = sequential
        self._acc = _Accounting(options)
        self._data = _MarketData(options, sequential=sequential)
        self._table = _position_table(options)
        self._rngs = [np.random.default_rng(seed + i) for i in range(n)]
        self._has_data = False
        self._width = 0
        # Per-env state.
        self._t = np.zeros(n, dtype=np.int64)
        self._start = np.zeros(n, dtype=np.int64)
        # Last bar of each env's episode: truncated on reaching it.
        self._end = np.zeros(n, dtype=np.int64)
        self._position = np.zeros(n)
        self._new = np.zeros(n)
        self._entry = np.zeros(n)
        self._unrealised = np.zeros(n)
        self._equity = np.ones(n)
        self._reward_state = (np.zeros(n), np.zeros(n))
        self._ep_return = np.zeros(n)
        # Outputs, allocated once the observation size is known.
        self._obs = np.zeros((n, 0), dtype=np.float32)
        self._terminal_obs = np.zeros((n, 0), dtype=np.float32)
        self._reward = np.zeros(n, dtype=np.float32)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._done = np.zeros(n, dtype=bool)
        self._out_return = np.zeros(n)
        self._out_length = np.zeros(n, dtype=np.int64)
        # Sequential records.
        self._rec_bar = np.empty(0, dtype=np.int64)
        self._rec_position = np.empty(0)
        self._rec_equity = np.empty(0)
        self._rec_cost = np.empty(0)
        self._recorded = 0
        self._run_done = False

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """Return the shape of one env's observation."""
        self._require_data()
        return (self._width + _N_STATE,)

    @property
    def observation_space(self) -> spaces.Box:
        """Return the observation space of one env."""
        self._require_data()
        return _build_spaces(self.options, self._data.n_features)[0]

    @property
    def action_space(self) -> spaces.Space[Any]:
        """Return the action space of one env."""
        return _build_spaces(self.options, max(self._data.n_features, 1))[1]

    @property
    def n_bars(self) -> int:
        """Return the number of bars of the current data."""
        return self._data.n_bars

    @property
    def done(self) -> bool:
        """Return True once a sequential run has reached its last bar or ruin."""
        return self._run_done

    def update_data(self, features: np.ndarray, open_: np.ndarray, close: np.ndarray) -> None:
        """Swap in new data, reusing the buffers when it fits, and start new episodes on it.

        Training data needs at least window + episode_length bars, sequential data window + 1. The
        number of feature columns is fixed by the first call. The envs are put at new episodes, so a
        step right after this is valid; call reset() for their first observations.
        """
        reallocated = self._data.update(features, open_, close)
        if not self._has_data:
            self._allocate_outputs()
            self._has_data = True
        if self.sequential and self._rec_bar.size < self._data.capacity:
            size = self._data.capacity
            self._rec_bar = np.empty(size, dtype=np.int64)
            self._rec_position = np.empty(size)
            self._rec_equity = np.empty(size)
            self._rec_cost = np.empty(size)
        logger.debug(
            "env data: %d bars x %d features, buffers %s",
            self._data.n_bars,
            self._data.n_features,
            "reallocated" if reallocated else "reused",
        )
        self._start_episodes(np.arange(self.n_envs))
        if self.sequential:
            self._begin_run()

    def _allocate_outputs(self) -> None:
        """Allocate the observation buffers once the number of features is known."""
        self._width = self.options.window * self._data.n_features
        shape = (self.n_envs, self._width + _N_STATE)
        self._obs = np.zeros(shape, dtype=np.float32)
        self._terminal_obs = np.zeros(shape, dtype=np.float32)
        self._result = StepResult(
            obs=self._obs,
            reward=self._reward,
            terminated=self._terminated,
            truncated=self._truncated,
            terminal_obs=self._terminal_obs,
            episode_return=self._out_return,
            episode_length=self._out_length,
        )

    def _require_data(self) -> None:
        """Raise RuntimeError while the env has no data."""
        if not self._has_data:
            raise RuntimeError("VecTradingEnv has no data yet: call update_data() first")

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode in every env and return their first observations [N, D].

        Args:
            seed: reseed env i's generator with seed + i; None keeps the generators going.
        """
        self._require_data()
        if seed is not None:
            self._rngs = [np.random.default_rng(seed + i) for i in range(self.n_envs)]
        self._start_episodes(np.arange(self.n_envs))
        if self.sequential:
            self._begin_run()
        return self._obs

    def _start_episodes(self, envs: np.ndarray) -> None:
        """Put the given envs at the start of a new episode and write their observation rows."""
        bounds = self._data.start_bounds()
        for i in envs.tolist():
            self._start[i] = _draw_start(self._rngs[i], bounds)
        self._t[envs] = self._start[envs]
        if self.sequential:
            self._end[envs] = self._data.n_bars - 1
        else:
            self._end[envs] = self._start[envs] + self.options.episode_length
        self._position[envs] = 0.0
        self._entry[envs] = 0.0
        self._unrealised[envs] = 0.0
        self._equity[envs] = 1.0
        self._ep_return[envs] = 0.0
        for column, value in zip(self._reward_state, self._acc.initial_reward_state(), strict=True):
            column[envs] = value
        self._obs[envs, : self._width] = self._data.windows[self._t[envs] - (self.options.window - 1)]
        self._obs[envs, self._width :] = 0.0

    def _begin_run(self) -> None:
        """Clear the sequential records and record the start bar."""
        self._recorded = 0
        self._run_done = False
        self._record(int(self._start[0]), 0.0, 1.0, 0.0)

    def _targets(self, actions: np.ndarray) -> np.ndarray:
        """Write the target positions of the actions into the preallocated buffer and return it."""
        actions = np.asarray(actions)
        if actions.size != self.n_envs:
            raise ValueError(f"step: expected {self.n_envs} actions, got shape {actions.shape}")
        if actions.ndim != 1:
            actions = actions.reshape(self.n_envs)
        if self._table.size:
            kind = actions.dtype.kind
            if kind not in "iu":
                raise ValueError(f"step: discrete actions must be integers, got {actions.dtype}")
            try:
                if kind == "i" and actions.min() < 0:
                    raise IndexError
                # Fancy indexing raises IndexError above the table and is faster than np.take here.
                np.copyto(self._new, self._table[actions])
            except IndexError:
                raise ValueError(f"step: actions must be in [0, {self._table.size}), got {actions}") from None
        else:
            if actions.dtype.kind != "f" or not np.isfinite(actions).all():
                raise ValueError("step: continuous actions must be finite floats")
            np.clip(actions, -1.0, 1.0, out=self._new)
            self._new *= self.options.max_leverage
        return self._new

    def step(self, actions: np.ndarray) -> StepResult:
        """Advance every env by one bar; finished envs start their next episode at once.

        Returns views of the env's buffers, valid until the next call; copy what must be kept.
        """
        self._require_data()
        if self.sequential and self._run_done:
            self._begin_run()
        acc = self._acc
        old = self._position
        new = self._targets(actions)
        self._t += 1
        gap, drift, fill, log_close = self._data.bars.take(self._t, axis=1)
        growth = acc.growth(old, new, gap, drift)
        log_growth = np.log(growth)
        if self.sequential:
            cost = float(acc.costs(self._equity, old, new, gap, drift)[0])
        np.copyto(self._entry, acc.entry(old, new, self._entry, fill))
        np.copyto(self._unrealised, acc.unrealised(new, self._entry, log_close))
        np.copyto(old, new)
        self._equity *= growth
        reward, state = acc.reward(np, growth, log_growth, self._equity, self._reward_state)
        if state is not self._reward_state:
            for column, value in zip(self._reward_state, state, strict=True):
                np.copyto(column, value)
        np.copyto(self._reward, reward, casting="same_kind")
        self._ep_return += reward
        if self.sequential:
            self._record(int(self._t[0]), float(new[0]), float(self._equity[0]), cost)
        self._write_obs()
        np.less_equal(self._equity, self.options.ruin_equity, out=self._terminated)
        np.greater_equal(self._t, self._end, out=self._truncated)
        np.logical_or(self._terminated, self._truncated, out=self._done)
        if self._done.any():
            # A ruined env is terminated, not truncated, even on its last bar.
            self._truncated &= ~self._terminated
            self._finish(np.flatnonzero(self._done))
        return self._result

    def _write_obs(self) -> None:
        """Write every env's observation at its current bar into the observation buffer."""
        # Fancy indexing, then one copy: np.take on the overlapping window view would first copy the
        # whole view into a contiguous array, which costs far more than the gather.
        self._obs[:, : self._width] = self._data.windows[self._t - (self.options.window - 1)]
        self._obs[:, self._width] = self._position
        self._obs[:, self._width + 1] = self._unrealised

    def _finish(self, envs: np.ndarray) -> None:
        """Report the finished envs' episodes and start their next ones."""
        self._terminal_obs[envs] = self._obs[envs]
        self._out_return[envs] = self._ep_return[envs]
        self._out_length[envs] = self._t[envs] - self._start[envs]
        if self.sequential:
            # The records stay readable until the next step starts a new run.
            self._run_done = True
            logger.debug("sequential run finished after %d steps", self._recorded - 1)
        self._start_episodes(envs)

    def _record(self, bar: int, position: float, equity: float, cost: float) -> None:
        """Append one row to the sequential records."""
        i = self._recorded
        self._rec_bar[i] = bar
        self._rec_position[i] = position
        self._rec_equity[i] = equity
        self._rec_cost[i] = cost
        self._recorded = i + 1

    def records(self) -> EvaluationRecords:
        """Return copies of the sequential run's per-bar records so far (the finished run once done)."""
        if not self.sequential:
            raise RuntimeError("records() is only kept by a sequential VecTradingEnv")
        n = self._recorded
        bar = self._rec_bar[:n].copy()
        close = self._data.close[bar]
        return EvaluationRecords(
            bar=bar,
            close=close,
            position=self._rec_position[:n].copy(),
            equity=self._rec_equity[:n].copy(),
            buy_and_hold=close / close[0] if n else close.copy(),
            cost=self._rec_cost[:n].copy(),
        )

    def _buffers(self) -> dict[str, np.ndarray]:
        """Return every preallocated buffer by name (for tests that check nothing is re-created)."""
        named = {name: value for name, value in vars(self).items() if isinstance(value, np.ndarray)}
        data = self._data
        named.update(features=data._features, bars=data.bars, close=data.close)
        named.update(reward_a=self._reward_state[0], reward_b=self._reward_state[1])
        return named


class TradingEnv(gymnasium.Env[np.ndarray, Any]):
    """Trade one instrument through the gymnasium API, on the same accounting as VecTradingEnv."""

    metadata: dict[str, Any] = {"render_modes": []}
    # Episode state, set by _start_episode.
    _t: int
    _steps: int
    _position: float
    _entry: float
    _unrealised: float
    _equity: float
    _ep_return: float
    _reward_state: tuple[float, float]
    _over: bool
    _episode_bars: list[list[float]]
    """(gap, drift, fill, log close) of each bar of the episode, as Python floats."""
    _windows: np.ndarray
    """The data's window view (new data brings a new view)."""

    def __init__(
        self,
        features: np.ndarray,
        open_: np.ndarray,
        close: np.ndarray,
        options: EnvOptions | None = None,
        *,
        seed: int = 0,
    ) -> None:
        """Create the env on float32 features [T, F] and float64 open/close prices [T].

        Args:
            options: options.n_envs is ignored; the env is always one.
            seed: episode starts come from np.random.default_rng(seed) (gymnasium's np_random), so
                this env replays env i of a VecTradingEnv seeded seed - i.
        """
        self.options = options if options is not None else EnvOptions()
        self._acc = _Accounting(self.options)
        self._data = _MarketData(self.options, sequential=False)
        self._data.update(features, open_, close)
        self.observation_space, self.action_space = _build_spaces(self.options, self._data.n_features)
        self._positions = _position_table(self.options).tolist()
        self._width = self.options.window * self._data.n_features
        self._obs_size = self._width + _N_STATE
        self._window_offset = self.options.window - 1
        # The scalar step's constants, read once (see step).
        self._cost = self._acc.cost
        self._borrow = self._acc.borrow
        self._discrete = bool(self._positions)
        self._log_reward = self.options.reward == "log_return"
        self._ruin = self.options.ruin_equity
        self._length = self.options.episode_length
        self._np_random = np.random.default_rng(seed)
        self._start_episode()

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, *, seed: int = 0, **options: Any) -> TradingEnv:
        """Build an env from an OHLCV DataFrame with the default features, for quick use.

        See frame_to_arrays for how the frame becomes data (and why it is not for honest tests).

        Args:
            options: EnvOptions fields, e.g. window=16, action="continuous".
        """
        return cls(*frame_to_arrays(frame), EnvOptions(**options), seed=seed)

    def update_data(self, features: np.ndarray, open_: np.ndarray, close: np.ndarray) -> None:
        """Swap in new data with the same number of features and start a new episode on it."""
        self._data.update(features, open_, close)
        self._start_episode()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a new episode at a random start bar; return its first observation and info."""
        super().reset(seed=seed)
        self._start_episode()
        return self._observation(), {"bar": self._t, "equity": 1.0, "position": 0.0}

    def _start_episode(self) -> None:
        """Put the env at the start of a new episode, drawing its start bar like VecTradingEnv does."""
        self._t = _draw_start(self.np_random, self._data.start_bounds())
        # One list of the episode's bars costs a few microseconds here and saves a numpy lookup a step.
        self._episode_bars = self._data.bars[:, self._t + 1 : self._t + 1 + self._length].T.tolist()
        self._windows = self._data.windows
        self._steps = 0
        self._position = 0.0
        self._entry = 0.0
        self._unrealised = 0.0
        self._equity = 1.0
        self._ep_return = 0.0
        self._reward_state = self._acc.initial_reward_state()
        self._over = False

    def step(self, action: Any) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Trade to the action's target position and advance one bar."""
        if self._over:
            raise RuntimeError("TradingEnv.step: the episode is over; call reset()")
        new = self._target(action)
        old = self._position
        steps = self._steps
        gap, drift, fill, log_close = self._episode_bars[steps]
        # The accounting of _Accounting on Python floats, written out: this is the hot path of the
        # single env, and test_vectorised_env_equals_single_envs checks it against the numpy kernel
        # for every option combination.
        change = new - old
        growth = (
            (1.0 + old * gap)
            * (1.0 - (change if change >= 0.0 else -change) * self._cost)
            * (1.0 + new * drift)
        )
        if new < 0.0 and self._borrow:
            growth *= 1.0 + new * self._borrow
        if growth < _MIN_GROWTH:
            growth = _MIN_GROWTH
        log_growth = math.log(growth)
        if change:
            if self._discrete or old * new <= 0.0:
                self._entry = fill
            elif abs(new) > abs(old):
                self._entry += (1.0 - abs(old) / abs(new)) * (fill - self._entry)
        if new > 0.0:
            self._unrealised = log_close - self._entry
        elif new < 0.0:
            self._unrealised = self._entry - log_close
        else:
            self._unrealised = 0.0
        self._position = new
        equity = self._equity * growth
        self._equity = equity
        if self._log_reward:
            reward = log_growth
        else:
            reward, self._reward_state = self._acc.reward(
                _ScalarOps, growth, log_growth, equity, self._reward_state
            )
        self._ep_return += reward
        t = self._t + 1
        self._t = t
        steps += 1
        self._steps = steps
        terminated = equity <= self._ruin
        truncated = steps >= self._length and not terminated
        info: dict[str, Any] = {"bar": t, "equity": equity, "position": new}
        if terminated or truncated:
            self._over = True
            # Not "episode": SB3's Monitor and gymnasium's RecordEpisodeStatistics own that key.
            info["episode_return"] = self._ep_return
            info["episode_length"] = steps
        return self._observation(), reward, terminated, truncated, info

    def _target(self, action: Any) -> float:
        """Return the target position of an action."""
        if self._positions:
            index = int(action)
            if not 0 <= index < len(self._positions):
                raise ValueError(
                    f"TradingEnv.step: action must be in [0, {len(self._positions)}), got {action!r}"
                )
            return self._positions[index]
        value = float(action.item() if isinstance(action, np.ndarray) else action)
        if not math.isfinite(value):
            raise ValueError(f"TradingEnv.step: continuous action must be finite, got {action!r}")
        return min(max(value, -1.0), 1.0) * self.options.max_leverage

    def _observation(self) -> np.ndarray:
        """Return a new observation array for the current bar."""
        obs = np.empty(self._obs_size, dtype=np.float32)
        obs[: self._width] = self._windows[self._t - self._window_offset]
        obs[self._width] = self._position
        obs[self._width + 1] = self._unrealised
        return obs


def frame_to_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return normalised float32 features [T, F] and float64 open and close [T] of an OHLCV frame.

    Column names may be in any case. The default features of services.data.features are computed, their
    warm-up rows dropped with the matching prices, and each feature scaled to mean 0 and std 1 over the
    whole frame. That scaling sees the future, which is fine for a quick look but not for an honest
    out-of-sample test: the system itself normalises with the statistics of the train window only.
    """
    # Imported here so that importing this module stays free of pandas.
    from services.data.features import compute_features

    ohlcv = frame.rename(columns=str.lower)
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in ohlcv.columns]
    if missing:
        raise ValueError(f"frame_to_arrays: missing columns {missing}")
    ohlcv = ohlcv[["open", "high", "low", "close", "volume"]]
    features = np.asarray(compute_features(ohlcv), dtype=np.float32)
    finite = np.asarray(np.isfinite(features).all(axis=1))
    if not finite.any():
        raise ValueError("frame_to_arrays: every row of the features has a NaN")
    first = int(np.argmax(finite))
    if not finite[first:].all():
        raise ValueError(
            f"frame_to_arrays: features have NaN rows after the warm-up (which ends at row {first})"
        )
    features = features[first:]
    std = features.std(axis=0)
    features = ((features - features.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)
    open_ = ohlcv["open"].to_numpy(dtype=np.float64)[first:]
    close = ohlcv["close"].to_numpy(dtype=np.float64)[first:]
    return features, open_, close
