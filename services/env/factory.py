"""Build the env actor's envs and turn a finished evaluation run into its report."""

from __future__ import annotations

from typing import Any

import numpy as np

from services.env.metrics import compare_with_buy_and_hold
from services.env.options import EnvOptions, n_actions
from services.env.vec_env import VecTradingEnv


class VecEnvFactory:
    """The one way to build the session's envs: N training envs and one sequential eval env."""

    def __init__(self, options: EnvOptions, *, seed: int) -> None:
        self.options = options
        self.seed = seed
        self.action = options.action
        self.n_actions = n_actions(options.action)
        self.max_leverage = options.max_leverage

    def create(self, role: str, bars_per_year: float) -> VecTradingEnv:
        """Build the train envs (random offsets) or the sequential eval env on data of bars_per_year."""
        return VecTradingEnv(
            self.options, bars_per_year=bars_per_year, seed=self.seed, sequential=role == "eval"
        )

    def evaluation(self, env: Any, timestamps: np.ndarray, bars_per_year: float) -> dict[str, Any]:
        """Return agent and buy-and-hold metrics, per-bar records and ruin row of the finished eval run.

        The run covers the whole eval window even when the agent was ruined on the way (it is flat from
        then on), so buy-and-hold is always measured over the whole window.
        """
        if not env.done:
            raise RuntimeError("the evaluation run has not reached the last bar")
        rec = env.records()
        agent, benchmark = compare_with_buy_and_hold(
            rec.equity, rec.position, rec.cost, rec.close, bars_per_year
        )
        return {
            "agent": agent.as_dict(),
            "buy_and_hold": benchmark.as_dict(),
            "timestamp": np.ascontiguousarray(timestamps[rec.bar]),
            "close": rec.close,
            "position": rec.position,
            "equity": rec.equity,
            "bh_equity": rec.buy_and_hold,
            "ruined_at": rec.ruined_at,
        }
