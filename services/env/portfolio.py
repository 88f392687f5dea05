"""Trade a portfolio of M assets toward target weights: N envs stepped at once with numpy, or one env.

Every rule is written out in docs/PORTFOLIO.md; in short, with ``w`` the weights held at bar t's close
(fractions of equity, drifting with prices), ``k = (commission_bps + slippage_bps) / 1e4`` and
``b = borrow_bps_per_year / 1e4 / bars_per_year``, one step from bar t to bar t + 1 is:

    gap     g1 = 1 + sum(w * gap),   w_g = w * (1 + gap) / g1          gap[m] = open[t+1] / close[t] - 1
    target  w_new from the action (below); assets that cannot fill keep w_g
    costs   g2 = 1 - k * sum(|w_new - w_g|)                            on each asset's traded notional
    body    g3 = 1 + sum(w_new * body),  w_c = w_new * (1 + body) / g3  body[m] = close[t+1] / open[t+1] - 1
    borrow  g4 = 1 - b * sum(max(-w_c, 0)),  w = w_c / g4              on the short exposure at the close
    equity  E[t+1] = E[t] * max(g1 * g2 * g3 * g4, 1e-9)

With ``fill="close"`` the gap is 0 and the body is ``close[t+1] / close[t] - 1`` (fills at bar t's close).
An asset can fill at a step when it is tradable at the decision bar t and has a bar at t + 1 (next_open
fills; close fills need only the first). An asset without a bar keeps its weight and price (gap and
body 0) until it has one again. Raw actions become target weights (`target_weights`):

- long_only, M + 1 outputs (the assets, then cash): ``z = clip(a, -1, 1) * logit_scale``, a softmax of
  z over the assets that can fill and cash, scaled by the weight the others do not hold;
- long_short, M outputs: ``a = clip(a, -1, 1)``, 0 for assets that cannot fill, then
  ``w = a * min(1, budget / sum(|a|))`` with ``budget = max_leverage - sum(|w_g|)`` of the others.

Observation at bar t (float32): the features of bars ``t - window + 1 .. t`` (bar-major, then symbol,
then feature; 0 where a symbol has no bar or is in its warm-up), then the M weights held, then (long_only)
the cash weight: ``window * M * F + M (+ 1)`` values.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from services.env.accounting import MIN_GROWTH, Accounting
from services.env.episodes import EpisodeClock
from services.env.options import (
    DEFAULT_BARS_PER_YEAR,
    EnvOptions,
    PortfolioOptions,
    build_observation_space,
)
from services.env.portfolio_data import PortfolioData
from services.env.portfolio_kernel import compile_gather, gather_windows
from services.env.records import SharesOutputs, StepResult

if TYPE_CHECKING:
    from gymnasium import spaces

logger = logging.getLogger(__name__)

_TINY = 1e-12
fast_sum = np.add.reduce  # ndarray.sum's Python wrapper costs more than the sum of a few dozen values


def clip_actions(values: np.ndarray) -> np.ndarray:
    """Return values clipped to [-1, 1] (two ufunc calls: cheaper than np.clip on short arrays)."""
    return np.minimum(np.maximum(values, -1.0), 1.0)


def n_outputs(portfolio: PortfolioOptions, n_assets: int) -> int:
    """Return the number of raw action values of a portfolio of n_assets (cash adds one when long-only)."""
    return n_assets + 1 if portfolio.weights == "long_only" else n_assets


def observation_size(portfolio: PortfolioOptions, window: int, n_assets: int, n_features: int) -> int:
    """Return the length of one observation: the feature window, the weights and (long-only) cash."""
    return window * n_assets * n_features + n_outputs(portfolio, n_assets)


def target_weights(
    portfolio: PortfolioOptions,
    max_leverage: float,
    actions: np.ndarray,
    weights: np.ndarray,
    can_fill: np.ndarray,
) -> np.ndarray:
    """Return the target weights [N, M] of raw actions given the weights held at the fill and a fill mask.

    Assets that cannot fill (can_fill 0) keep their weight; the others share what is left (the rule of
    the module docstring). The one mapping both envs use.
    """
    hold = 1.0 - can_fill
    frozen = weights * hold
    n_assets = weights.shape[1]
    if portfolio.weights == "long_only":
        # Clipped logits are at most logit_scale in size, so exp cannot overflow.
        e = np.exp(np.clip(actions, -1.0, 1.0) * portfolio.logit_scale)
        e[:, :n_assets] *= can_fill
        budget = 1.0 - frozen.sum(axis=1)
        target = e[:, :n_assets] * (budget / e.sum(axis=1))[:, None]
    else:
        target = np.clip(actions, -1.0, 1.0) * can_fill
        gross = np.abs(target).sum(axis=1)
        budget = np.maximum(max_leverage - np.abs(frozen).sum(axis=1), 0.0)
        target *= np.where(gross > budget, budget / np.maximum(gross, _TINY), 1.0)[:, None]
    target += frozen
    return target


class PortfolioRecords(NamedTuple):
    """Hold the per-bar records of a sequential run; row 0 is the start bar, before any trade."""

    bar: np.ndarray
    """int64 [n + 1]: index of the bar in the data."""
    close: np.ndarray
    """float64 [n + 1, M]: each asset's last close at or before the bar (NaN before its first bar)."""
    tradable: np.ndarray
    """bool [n + 1, M]: the asset was tradable at the bar (could be chosen at that decision)."""
    weights: np.ndarray
    """float64 [n + 1, M]: weights held at the bar's close (row 0: all 0, in cash)."""
    traded: np.ndarray
    """float64 [n + 1, M]: |w_new - w_g| of the fill during the bar (traded notional / equity at the fill)."""
    costs: np.ndarray
    """float64 [n + 1, M]: commission, slippage and borrow paid for each asset during the bar."""
    pnl: np.ndarray
    """float64 [n + 1, M]: each asset's profit during the bar, before costs, in units of the start equity."""
    equity: np.ndarray
    """float64 [n + 1]: equity at the bar's close; 1.0 at the start."""
    ruined_at: int = -1
    """Row at which equity first fell to ruin_equity (flat from the next fill on); -1 when it never did."""


class VecPortfolioEnv(SharesOutputs):
    """Step N portfolio envs of M assets at once with numpy; also the sequential evaluation env (N = 1)."""

    def __init__(
        self,
        options: EnvOptions,
        portfolio: PortfolioOptions | None = None,
        *,
        bars_per_year: float = DEFAULT_BARS_PER_YEAR,
        n_envs: int | None = None,
        seed: int = 0,
        sequential: bool = False,
    ) -> None:
        """Create the envs without data; call update_data before reset.

        Args:
            portfolio: the weight mapping; max_leverage of options is the gross cap of long_short.
            bars_per_year: the data's bars in a year; scales the borrow fee.
            n_envs: overrides options.n_envs; forced to 1 when sequential.
            seed: env i draws its episode starts from np.random.default_rng(seed + i).
            sequential: evaluation mode: one env from the first full window to the last bar, recorded.
        """
        n = 1 if sequential else (options.n_envs if n_envs is None else n_envs)
        if n < 1:
            raise ValueError(f"VecPortfolioEnv: n_envs must be >= 1, got {n}")
        self.options = options
        self.portfolio = portfolio or PortfolioOptions()
        self.n_envs = n
        self.sequential = sequential
        self._acc = Accounting(options, bars_per_year)
        self._data = PortfolioData(options, sequential=sequential)
        self._clock = EpisodeClock(n, seed, sequential=sequential, episode_length=options.episode_length)
        self._has_data = False
        self._t, self._start, self._end = self._clock.t, self._clock.start, self._clock.end
        self._equity = np.ones(n)
        self._reward_state = (np.zeros(n), np.zeros(n))
        self._ep_return = np.zeros(n)
        self._reward = np.zeros(n, dtype=np.float32)
        self._terminated = np.zeros(n, dtype=bool)
        self._truncated = np.zeros(n, dtype=bool)
        self._done = np.zeros(n, dtype=bool)
        self._out_return = np.zeros(n)
        self._out_length = np.zeros(n, dtype=np.int64)
        self._weights = np.zeros((n, 0))
        self._obs = np.zeros((n, 0), dtype=np.float32)
        self._terminal_obs = np.zeros((n, 0), dtype=np.float32)
        self._width = 0
        self._recorded = 0
        self._ruined_at = -1
        self._run_done = False
        self._records: dict[str, np.ndarray] = {}
        self._all_envs = np.arange(n)
        compile_gather()

    @property
    def n_assets(self) -> int:
        """Return the number of assets of the current data."""
        return self._data.n_assets

    @property
    def n_bars(self) -> int:
        """Return the number of bars of the current data."""
        return self._data.n_bars

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """Return the shape of one env's observation."""
        self._require_data()
        return (self._obs.shape[1],)

    @property
    def observation_space(self) -> spaces.Box:
        """Return the observation space of one env."""
        return build_observation_space(self.observation_shape)

    @property
    def action_space(self) -> spaces.Box:
        """Return the action space of one env: Box(-1, 1) of M + 1 (long-only) or M values."""
        from gymnasium import spaces

        self._require_data()
        return spaces.Box(-1.0, 1.0, shape=(n_outputs(self.portfolio, self.n_assets),), dtype=np.float32)

    @property
    def action_size(self) -> int:
        """Return the number of raw action values of one env (M + 1 long-only, M long-short)."""
        self._require_data()
        return n_outputs(self.portfolio, self.n_assets)

    @property
    def done(self) -> bool:
        """Return True once a sequential run has reached its last bar."""
        return self._run_done

    def update_data(
        self, features: np.ndarray, open_: np.ndarray, close: np.ndarray, tradable: np.ndarray
    ) -> None:
        """Swap in new data: float32 features [T, M, F], float64 prices [T, M] (NaN: no bar), bool tradable.

        The number of assets and features is fixed by the first call. The envs are put at new episodes.
        """
        self._data.update(features, open_, close, tradable)
        if not self._has_data:
            data = self._data
            self._width = self.options.window * data.n_assets * data.n_features
            size = observation_size(self.portfolio, self.options.window, data.n_assets, data.n_features)
            self._obs = np.zeros((self.n_envs, size), dtype=np.float32)
            self._terminal_obs = np.zeros_like(self._obs)
            self._weights = np.zeros((self.n_envs, data.n_assets))
            self._result = StepResult(
                obs=self._obs,
                reward=self._reward,
                terminated=self._terminated,
                truncated=self._truncated,
                terminal_obs=self._terminal_obs,
                episode_return=self._out_return,
                episode_length=self._out_length,
            )
            self._has_data = True
        if self.sequential:
            rows, m = self._data.n_bars, self._data.n_assets
            self._records = {
                "bar": np.empty(rows, dtype=np.int64),
                "equity": np.empty(rows),
                **{name: np.empty((rows, m)) for name in ("weights", "traded", "costs", "pnl")},
            }
        self._start_episodes(np.arange(self.n_envs))
        if self.sequential:
            self._begin_run()

    def _require_data(self) -> None:
        if not self._has_data:
            raise RuntimeError("VecPortfolioEnv has no data yet: call update_data() first")

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Start a new episode in every env and return their first observations [N, D]."""
        self._require_data()
        if seed is not None:
            self._clock.reseed(seed)
        self._start_episodes(np.arange(self.n_envs))
        if self.sequential:
            self._begin_run()
        return self._obs

    def _start_episodes(self, envs: np.ndarray) -> None:
        self._clock.begin(envs, self._data.start_bounds(), self._data.n_bars)
        self._weights[envs] = 0.0
        self._equity[envs] = 1.0
        self._ep_return[envs] = 0.0
        for column, value in zip(self._reward_state, self._acc.initial_reward_state(), strict=True):
            column[envs] = value
        data = self._data
        gather_windows(self._obs, data.flat, self._t, envs, data.n_assets * data.n_features, self._width)
        self._obs[envs, self._width :] = 0.0
        if self.portfolio.weights == "long_only":
            self._obs[envs, -1] = 1.0

    def _begin_run(self) -> None:
        self._recorded = 0
        self._ruined_at = -1
        self._run_done = False
        zeros = np.zeros(self._data.n_assets)
        self._record(int(self._start[0]), 1.0, zeros, zeros, zeros, zeros)

    def _actions(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions)
        width = n_outputs(self.portfolio, self._data.n_assets)
        if actions.size != self.n_envs * width:
            raise ValueError(f"step: expected {self.n_envs} x {width} actions, got shape {actions.shape}")
        if actions.dtype.kind != "f" or not np.isfinite(actions).all():
            raise ValueError("step: actions must be finite floats")
        return actions.reshape(self.n_envs, width)

    def step(self, actions: np.ndarray) -> StepResult:
        """Advance every env by one bar toward the actions' target weights; finished envs start anew.

        Returns views of the env's buffers, valid until the next call.
        """
        self._require_data()
        if self.sequential and self._run_done:
            self._begin_run()
        raw = self._actions(actions)
        m = self._data.n_assets
        acc = self._acc
        self._t += 1
        moves = self._data.moves[self._t]
        gap, body, can_fill = moves[:, :m], moves[:, m : 2 * m], moves[:, 2 * m :]
        held = self._weights
        moved = held * gap
        g1 = 1.0 + moved.sum(axis=1)
        at_fill = (held + moved) / np.maximum(g1, MIN_GROWTH)[:, None]
        if self._ruined_at >= 0:
            target = at_fill * (1.0 - can_fill)  # a ruined eval run sells what it can and stays in cash
        else:
            target = target_weights(self.portfolio, self.options.max_leverage, raw, at_fill, can_fill)
        traded = np.abs(target - at_fill)
        g2 = 1.0 - acc.cost * traded.sum(axis=1)
        grown = target * body
        g3 = 1.0 + grown.sum(axis=1)
        closing = (target + grown) / np.maximum(g3, MIN_GROWTH)[:, None]
        growth = g1 * g2 * g3
        weights = closing
        if acc.borrow:
            g4 = 1.0 - acc.borrow * np.maximum(-closing, 0.0).sum(axis=1)
            growth *= g4
            weights = closing / g4[:, None]
        floored = growth < MIN_GROWTH
        np.maximum(growth, MIN_GROWTH, out=growth)
        if floored.any():
            weights[floored] = 0.0  # wiped out: nothing is left to hold
        if self.sequential:
            pieces = self._step_pieces(held, gap, target, body, closing, traded, g1, g2, g3)
        np.copyto(self._weights, weights)
        self._equity *= growth
        reward, state = acc.reward(np, growth, np.log(growth), self._equity, self._reward_state)
        if state is not self._reward_state:
            for column, value in zip(self._reward_state, state, strict=True):
                np.copyto(column, value)
        np.copyto(self._reward, reward, casting="same_kind")
        self._ep_return += reward
        if self.sequential:
            self._record(int(self._t[0]), float(self._equity[0]), self._weights[0], traded[0], *pieces)
        self._write_obs()
        np.less_equal(self._equity, self.options.ruin_equity, out=self._terminated)
        if self.sequential:
            if self._terminated[0] and self._ruined_at < 0:
                self._ruined_at = self._recorded - 1
            self._terminated[0] = False
        np.greater_equal(self._t, self._end, out=self._truncated)
        np.logical_or(self._terminated, self._truncated, out=self._done)
        if self._done.any():
            self._truncated &= ~self._terminated
            self._finish(np.flatnonzero(self._done))
        return self._result

    def _step_pieces(
        self,
        held: np.ndarray,
        gap: np.ndarray,
        target: np.ndarray,
        body: np.ndarray,
        closing: np.ndarray,
        traded: np.ndarray,
        g1: np.ndarray,
        g2: np.ndarray,
        g3: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return env 0's costs and profits per asset over the step, in units of the start equity."""
        equity = float(self._equity[0])
        at_fill = equity * float(g1[0])
        after_costs = at_fill * float(g2[0])
        costs = at_fill * self._acc.cost * traded[0]
        if self._acc.borrow:
            costs = costs + after_costs * float(g3[0]) * self._acc.borrow * np.maximum(-closing[0], 0.0)
        pnl = equity * held[0] * gap[0] + after_costs * target[0] * body[0]
        return costs, pnl

    def _write_obs(self) -> None:
        """Write every env's observation: its feature window (compiled gather), weights and cash."""
        width = self._width
        m = self._data.n_assets
        bar_size = m * self._data.n_features
        gather_windows(self._obs, self._data.flat, self._t, self._all_envs, bar_size, width)
        self._obs[:, width : width + m] = self._weights
        if self.portfolio.weights == "long_only":
            self._obs[:, -1] = 1.0 - self._weights.sum(axis=1)

    def _finish(self, envs: np.ndarray) -> None:
        self._terminal_obs[envs] = self._obs[envs]
        self._out_return[envs] = self._ep_return[envs]
        self._out_length[envs] = self._clock.lengths(envs)
        if self.sequential:
            self._run_done = True
        self._start_episodes(envs)

    def _record(
        self,
        bar: int,
        equity: float,
        weights: np.ndarray,
        traded: np.ndarray,
        costs: np.ndarray,
        pnl: np.ndarray,
    ) -> None:
        i = self._recorded
        rec = self._records
        rec["bar"][i] = bar
        rec["equity"][i] = equity
        rec["weights"][i] = weights
        rec["traded"][i] = traded
        rec["costs"][i] = costs
        rec["pnl"][i] = pnl
        self._recorded = i + 1

    def records(self) -> PortfolioRecords:
        """Return copies of the sequential run's per-bar records so far (the finished run once done)."""
        if not self.sequential:
            raise RuntimeError("records() is only kept by a sequential VecPortfolioEnv")
        n = self._recorded
        rec = {name: array[:n].copy() for name, array in self._records.items()}
        return PortfolioRecords(
            close=self._data.close[rec["bar"]],
            tradable=self._data.tradable[rec["bar"]],
            ruined_at=self._ruined_at,
            **rec,
        )
