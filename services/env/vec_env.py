"""Step N trading envs at once with compiled kernels; also the sequential evaluation env (N = 1).

The accounting (fills, costs, equity growth, rewards) is described in services.env.accounting; a step
runs it for all N envs in the numba kernels of services.env.vec_kernel, which give the numbers of
Accounting's numpy formulas exactly, with the Python side left what is rare (episode starts and ends,
the sequential run's records).

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
always runs to the last bar, recording per-bar position, equity, buy-and-hold equity and costs; ruin does
not end it: from the decision at the ruin bar on, the agent is flattened (closing costs charged) and
kept flat whatever its actions, and the records say at which row that happened.

Imports numpy and the compiled kernels (numba), not gymnasium.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from services.env import vec_kernel
from services.env.accounting import Accounting
from services.env.episodes import EpisodeClock
from services.env.options import (
    DEFAULT_BARS_PER_YEAR,
    EnvOptions,
    build_action_space,
    build_observation_space,
)
from services.env.records import EvaluationRecords, SharesOutputs, StepResult

if TYPE_CHECKING:
    from gymnasium import spaces

logger = logging.getLogger(__name__)

N_STATE = 2
"""Extra per-step columns of the observation after the feature window: position, unrealised PnL."""


def action_position(options: EnvOptions, action: Any) -> float:
    """Return the target position an action asks for (the mapping the envs trade with)."""
    positions = options.positions
    if positions:
        return positions[int(np.asarray(action).reshape(-1)[0])]
    value = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
    return value * options.max_leverage


class MarketData:
    """Own the feature and price buffers of an env; new data reuses them when it fits."""

    def __init__(self, options: EnvOptions, *, sequential: bool) -> None:
        self._options = options
        self._sequential = sequential
        self.n_bars = 0
        self.n_features = 0
        self.capacity = 0
        self._features = np.empty(0, dtype=np.float32)
        self.features = self._features
        """The current data's features flattened row after row: the part of the buffer in use."""
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
        self.features = flat
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
        needed = self._options.window + 1 if self._sequential else self._options.min_bars
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


class VecTradingEnv(SharesOutputs):
    """Step N trading envs at once with compiled kernels; also the sequential evaluation env (N = 1)."""

    def __init__(
        self,
        options: EnvOptions,
        *,
        bars_per_year: float = DEFAULT_BARS_PER_YEAR,
        n_envs: int | None = None,
        seed: int = 0,
        sequential: bool = False,
    ) -> None:
        """Create the envs without data; call update_data before reset.

        Args:
            bars_per_year: the data's bars in a year; scales the borrow fee.
            n_envs: overrides options.n_envs; forced to 1 when sequential.
            seed: env i draws its episode starts from np.random.default_rng(seed + i).
            sequential: evaluation mode: one env from the first full window to the last bar, recorded.
        """
        n = 1 if sequential else (options.n_envs if n_envs is None else n_envs)
        if n < 1:
            raise ValueError(f"VecTradingEnv: n_envs must be >= 1, got {n}")
        self.options = options
        self.n_envs = n
        self.sequential = bool(sequential)
        self._acc = Accounting(options, bars_per_year)
        self._data = MarketData(options, sequential=sequential)
        self._table = np.array(options.positions, dtype=np.float64)
        self._params = np.zeros(vec_kernel.N_PARAMS)
        self._params[vec_kernel.P_COST] = self._acc.cost
        self._params[vec_kernel.P_BORROW] = self._acc.borrow
        self._params[vec_kernel.P_HALF_BORROW] = 0.5 * self._acc.borrow
        self._params[vec_kernel.P_MAX_LEVERAGE] = options.max_leverage
        self._params[vec_kernel.P_PENALTY] = options.drawdown_penalty
        self._params[vec_kernel.P_ETA] = options.dsr_eta
        self._params[vec_kernel.P_RUIN] = options.ruin_equity
        self._reward_kind = vec_kernel.REWARD_KINDS[options.reward]
        # A discrete step takes int64 actions, a continuous one float32 or float64 (the kernels
        # compile_kernels compiles); other dtypes, and read-only or strided arrays, are copied into this
        # buffer first.
        self._discrete = bool(self._table.size)
        self._action_dtypes = (
            (np.dtype(np.int64),) if self._discrete else (np.dtype(np.float32), np.dtype(np.float64))
        )
        self._actions = np.zeros(n, dtype=self._action_dtypes[-1])
        # Compile the kernels (or load them from numba's disk cache) now rather than in the first step.
        vec_kernel.compile_kernels(self._discrete)
        self._clock = EpisodeClock(n, seed, sequential=sequential, episode_length=options.episode_length)
        self._has_data = False
        self._width = 0
        # Per-env state (the clock's arrays, stepped in place; the rows of one array the kernels step).
        self._t, self._start, self._end = self._clock.t, self._clock.start, self._clock.end
        self._state = np.zeros((vec_kernel.N_ROWS, n))
        self._position = self._state[vec_kernel.POSITION]
        self._new = self._state[vec_kernel.TARGET]
        self._entry = self._state[vec_kernel.ENTRY]
        self._unrealised = self._state[vec_kernel.UNREALISED]
        self._equity = self._state[vec_kernel.EQUITY]
        self._equity[:] = 1.0
        self._reward_state = (self._state[vec_kernel.REWARD_A], self._state[vec_kernel.REWARD_B])
        self._ep_return = self._state[vec_kernel.EPISODE_RETURN]
        self._growth = self._state[vec_kernel.GROWTH]
        self._log_growth = self._state[vec_kernel.LOG_GROWTH]
        self._cost = self._state[vec_kernel.COST]
        # Outputs, allocated once the observation size is known.
        self._obs = np.zeros((n, 0), dtype=np.float32)
        self._terminal_obs = np.zeros((n, 0), dtype=np.float32)
        self._reward = np.zeros(n, dtype=np.float32)
        self._flags = np.zeros((3, n), dtype=bool)
        self._terminated, self._truncated, self._done = self._flags
        self._out_return = np.zeros(n)
        self._out_length = np.zeros(n, dtype=np.int64)
        # Sequential records.
        self._rec_bar = np.empty(0, dtype=np.int64)
        self._rec_position = np.empty(0)
        self._rec_equity = np.empty(0)
        self._rec_cost = np.empty(0)
        self._recorded = 0
        self._ruined_at = -1
        self._run_done = False

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """Return the shape of one env's observation."""
        self._require_data()
        return (self._width + N_STATE,)

    @property
    def observation_space(self) -> spaces.Box:
        """Return the observation space of one env."""
        self._require_data()
        return build_observation_space(self.observation_shape)

    @property
    def action_space(self) -> spaces.Space[Any]:
        """Return the action space of one env."""
        return build_action_space(self.options.action)

    @property
    def n_bars(self) -> int:
        """Return the number of bars of the current data."""
        return self._data.n_bars

    @property
    def done(self) -> bool:
        """Return True once a sequential run has reached its last bar."""
        return self._run_done

    @property
    def ruined_at(self) -> int:
        """Return the records row at which the sequential run was ruined, or -1 while it is not."""
        return self._ruined_at

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
        shape = (self.n_envs, self._width + N_STATE)
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
            self._clock.reseed(seed)
        self._start_episodes(np.arange(self.n_envs))
        if self.sequential:
            self._begin_run()
        return self._obs

    def _start_episodes(self, envs: np.ndarray) -> None:
        """Put the given envs at the start of a new episode and write their observation rows."""
        self._clock.begin(envs, self._data.start_bounds(), self._data.n_bars)
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
        self._ruined_at = -1
        self._run_done = False
        self._record(int(self._start[0]), 0.0, 1.0, 0.0)

    def _kernel_actions(self, actions: Any) -> np.ndarray:
        """Return the actions as a flat array a compiled step takes; raise ValueError for wrong ones."""
        actions = np.asarray(actions)
        if actions.size != self.n_envs:
            raise ValueError(f"step: expected {self.n_envs} actions, got shape {actions.shape}")
        if actions.ndim != 1:
            actions = actions.reshape(self.n_envs)
        kind = actions.dtype.kind
        if self._discrete and kind not in "iu":
            raise ValueError(f"step: discrete actions must be integers, got {actions.dtype}")
        if not self._discrete and kind != "f":
            raise ValueError("step: continuous actions must be finite floats")
        flags = actions.flags
        if actions.dtype in self._action_dtypes and flags.c_contiguous and flags.writeable:
            return actions
        # Out-of-range integers wrap to negative ones here, which the kernel refuses all the same.
        np.copyto(self._actions, actions, casting="unsafe")
        return self._actions

    def step(self, actions: np.ndarray) -> StepResult:
        """Advance every env by one bar; finished envs start their next episode at once.

        Returns views of the env's buffers, valid until the next call; copy what must be kept.
        """
        self._require_data()
        if self.sequential and self._run_done:
            self._begin_run()
        given = self._kernel_actions(actions)
        # A ruined eval run is flattened at this decision and stays flat.
        flatten = self._ruined_at >= 0
        if self._discrete:
            refused = vec_kernel.advance_discrete(
                given,
                self._table,
                self._state,
                self._t,
                self._data.bars,
                self._params,
                flatten,
                self.sequential,
            )
        else:
            refused = vec_kernel.advance_continuous(
                given, self._state, self._t, self._data.bars, self._params, flatten, self.sequential
            )
        if refused:
            self._refuse(refused, actions)
        # numpy's log, not the compiled one: see services.env.vec_kernel.
        np.log(self._growth, out=self._log_growth)
        finished = vec_kernel.settle(
            self._state,
            self._t,
            self._end,
            self._data.bars,
            self._data.features,
            self._obs,
            self._reward,
            self._flags,
            self._params,
            self._discrete,
            self._reward_kind,
            self.options.window,
            self.sequential,
        )
        if self.sequential:
            self._record(
                int(self._t[0]), float(self._position[0]), float(self._equity[0]), float(self._cost[0])
            )
            self._note_ruin()
        if finished:
            self._finish(np.flatnonzero(self._done))
        return self._result

    def _refuse(self, code: int, actions: Any) -> NoReturn:
        """Raise the ValueError that says why the kernel refused the actions (it changed nothing)."""
        if code == vec_kernel.ACTION_OUT_OF_RANGE:
            shown = np.asarray(actions).reshape(self.n_envs)
            raise ValueError(f"step: actions must be in [0, {self._table.size}), got {shown}")
        raise ValueError("step: continuous actions must be finite floats")

    def _note_ruin(self) -> None:
        """Record the first ruin of a sequential run, which goes on to the last bar instead of ending."""
        if self._ruined_at < 0 and self._equity[0] <= self.options.ruin_equity:
            self._ruined_at = self._recorded - 1
            logger.debug("sequential run ruined at row %d; flat from here on", self._ruined_at)

    def _finish(self, envs: np.ndarray) -> None:
        """Report the finished envs' episodes and start their next ones."""
        self._terminal_obs[envs] = self._obs[envs]
        self._out_return[envs] = self._ep_return[envs]
        self._out_length[envs] = self._clock.lengths(envs)
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
            ruined_at=self._ruined_at,
        )

    def _buffers(self) -> dict[str, np.ndarray]:
        """Return every preallocated buffer by name (for tests that check nothing is re-created)."""
        named = {name: value for name, value in vars(self).items() if isinstance(value, np.ndarray)}
        data = self._data
        named.update(features=data._features, bars=data.bars, close=data.close)
        named.update(reward_a=self._reward_state[0], reward_b=self._reward_state[1])
        return named
