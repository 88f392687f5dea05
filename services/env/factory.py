"""Build the env actor's envs and turn a finished evaluation run into its report."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from services.env.metrics import compare_with_buy_and_hold
from services.env.options import EnvOptions, PortfolioOptions, n_actions
from services.env.vec_env import VecTradingEnv


class VecEnvFactory:
    """The one way to build the session's envs: N training envs and one sequential eval env.

    With portfolio options the envs are `VecPortfolioEnv`s of the universe's symbols (docs/PORTFOLIO.md).
    """

    def __init__(
        self,
        options: EnvOptions,
        *,
        seed: int,
        portfolio: PortfolioOptions | None = None,
        symbols: tuple[str, ...] = (),
    ) -> None:
        self.options = options
        self.seed = seed
        self.portfolio = portfolio
        self.symbols = symbols
        self.action = options.action
        self.n_actions = n_actions(options.action)
        self.max_leverage = options.max_leverage

    def create(self, role: str, bars_per_year: float) -> Any:
        """Build the train envs (random offsets) or the sequential eval env on data of bars_per_year."""
        if self.portfolio is not None:
            from services.env.portfolio import VecPortfolioEnv

            return VecPortfolioEnv(
                self.options,
                self.portfolio,
                bars_per_year=bars_per_year,
                seed=self.seed,
                sequential=role == "eval",
            )
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
        if self.portfolio is not None:
            return self._portfolio_evaluation(env, timestamps, bars_per_year)
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

    def _portfolio_evaluation(self, env: Any, timestamps: np.ndarray, bars_per_year: float) -> dict[str, Any]:
        """Return a portfolio run's report: buy-and-hold is equal weight held; position is sum |w|."""
        from services.env.portfolio_metrics import equal_weight_held, gross_exposure, portfolio_report

        rec = env.records()
        m = rec.weights.shape[1]
        symbols = self.symbols if len(self.symbols) == m else tuple(f"asset{j}" for j in range(m))
        report = portfolio_report(rec, symbols, bars_per_year)
        held = equal_weight_held(rec.close, rec.tradable)
        return {
            "agent": report.agent.as_dict(),
            "buy_and_hold": report.equal_weight_held.as_dict(),
            "timestamp": np.ascontiguousarray(timestamps[rec.bar]),
            "close": held,
            "position": gross_exposure(rec.weights),
            "equity": rec.equity,
            "bh_equity": held,
            "ruined_at": rec.ruined_at,
            "symbols": symbols,
            "asset_close": rec.close,
            "tradable": rec.tradable,
            "weights": rec.weights,
            "traded": rec.traded,
            "costs": rec.costs,
            "pnl": rec.pnl,
            "portfolio": {
                "equal_weight_rebalanced": report.equal_weight_rebalanced.as_dict(),
                "gross_exposure": report.gross_exposure,
                "net_exposure": report.net_exposure,
                "assets": {
                    a.symbol: {
                        **{k: v for k, v in asdict(a).items() if k not in ("symbol", "alone")},
                        "alone": a.alone.as_dict(),
                    }
                    for a in report.assets
                },
            },
        }
