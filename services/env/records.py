"""The values an env step and a sequential run hand back: batched step results and per-bar records."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

import numpy as np


class StepResult(NamedTuple):
    """Hold the batched results of one VecTradingEnv step (views of the env's buffers)."""

    obs: np.ndarray
    """[N, D] float32; rows of finished envs hold the first observation of their next episode."""
    reward: np.ndarray
    """[N] float32."""
    terminated: np.ndarray
    """[N] bool: ruined (equity at or below ruin_equity); never set by a sequential env."""
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


class StepOutputs(NamedTuple):
    """Arrays an env steps into instead of its own (a shared step buffer's views, services.transport.shm).

    An env that adopts them (`share_outputs`) writes each step's results straight into them, so its
    server copies nothing.
    """

    obs: np.ndarray
    """[N, D] float32."""
    terminal_obs: np.ndarray
    """[N, D] float32, a row per env."""
    reward: np.ndarray
    """[N] float32."""
    flags: np.ndarray
    """[3, N] bool: the terminated, truncated and done rows."""
    episode_return: np.ndarray
    """[N] float64."""
    episode_length: np.ndarray
    """[N] int64."""

    def adopt(self, current: StepResult) -> StepResult:
        """Copy an env's current outputs into these arrays and return them as its StepResult.

        Raises ValueError when an array's shape or dtype differs from the env's own (nothing is copied).
        """
        n = len(current.reward)
        wanted = {
            "obs": current.obs,
            "terminal_obs": current.terminal_obs,
            "reward": current.reward,
            "flags": np.zeros((3, n), dtype=bool),
            "episode_return": current.episode_return,
            "episode_length": current.episode_length,
        }
        for name, own in wanted.items():
            given = getattr(self, name)
            if given.shape != own.shape or given.dtype != own.dtype or not given.flags.c_contiguous:
                raise ValueError(
                    f"step outputs refused: {name} is {given.dtype}{list(given.shape)}, the env's is "
                    f"{own.dtype}{list(own.shape)} (C-contiguous)"
                )
        for name in ("obs", "terminal_obs", "reward", "episode_return", "episode_length"):
            np.copyto(getattr(self, name), wanted[name])
        terminated, truncated, done = self.flags
        np.copyto(terminated, current.terminated)
        np.copyto(truncated, current.truncated)
        np.logical_or(terminated, truncated, out=done)
        return StepResult(
            obs=self.obs,
            reward=self.reward,
            terminated=terminated,
            truncated=truncated,
            terminal_obs=self.terminal_obs,
            episode_return=self.episode_return,
            episode_length=self.episode_length,
        )


class SharesOutputs(ABC):
    """What lets a vectorized env step into arrays it is given (the envs' outputs have these names)."""

    _result: StepResult
    _obs: np.ndarray
    _terminal_obs: np.ndarray
    _reward: np.ndarray
    _terminated: np.ndarray
    _truncated: np.ndarray
    _done: np.ndarray
    _flags: np.ndarray
    _out_return: np.ndarray
    _out_length: np.ndarray

    @abstractmethod
    def _require_data(self) -> None:
        """Raise RuntimeError while the env has no data."""

    def share_outputs(self, outputs: StepOutputs) -> None:
        """Step into these arrays (a shared step buffer's) from now on, keeping the current outputs.

        Raises ValueError, changing nothing, when they do not fit this env's outputs; RuntimeError
        before the env has data (its outputs' shapes are not known yet).
        """
        self._require_data()
        self._result = outputs.adopt(self._result)
        self._obs, self._terminal_obs, self._reward = outputs.obs, outputs.terminal_obs, outputs.reward
        self._flags = outputs.flags
        self._terminated, self._truncated, self._done = outputs.flags
        self._out_return, self._out_length = outputs.episode_return, outputs.episode_length


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
    ruined_at: int = -1
    """Row at which equity first fell to ruin_equity (flat from the next row on); -1 when it never did."""
