"""Trade one instrument through the gymnasium API, on the same accounting as VecTradingEnv.

The rules (time line, equity, observation, episodes) are those of services.env.accounting and
services.env.vec_env; this env runs them on Python floats, one step at a time.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, SupportsFloat

import gymnasium
import numpy as np

from services.env.accounting import MIN_GROWTH, Accounting, ScalarOps
from services.env.episodes import draw_start
from services.env.options import (
    DEFAULT_BARS_PER_YEAR,
    EnvOptions,
    build_action_space,
    build_observation_space,
)
from services.env.vec_env import N_STATE, MarketData

if TYPE_CHECKING:
    import pandas as pd


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
        bars_per_year: float = DEFAULT_BARS_PER_YEAR,
    ) -> None:
        """Create the env on float32 features [T, F] and float64 open/close prices [T].

        Args:
            options: options.n_envs is ignored; the env is always one.
            seed: episode starts come from np.random.default_rng(seed) (gymnasium's np_random), so
                this env replays env i of a VecTradingEnv seeded seed - i.
            bars_per_year: the data's bars in a year; scales the borrow fee.
        """
        self.options = options if options is not None else EnvOptions()
        self._acc = Accounting(self.options, bars_per_year)
        self._data = MarketData(self.options, sequential=False)
        self._data.update(features, open_, close)
        self._positions = list(self.options.positions)
        self._width = self.options.window * self._data.n_features
        self._obs_size = self._width + N_STATE
        self.observation_space = build_observation_space((self._obs_size,))
        self.action_space = build_action_space(self.options.action)
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
        self._t = draw_start(self.np_random, self._data.start_bounds())
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
        # The accounting of Accounting on Python floats, written out: this is the hot path of the
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
        if growth < MIN_GROWTH:
            growth = MIN_GROWTH
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
                ScalarOps, growth, log_growth, equity, self._reward_state
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
