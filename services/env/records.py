"""The values an env step and a sequential run hand back: batched step results and per-bar records."""

from __future__ import annotations

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
