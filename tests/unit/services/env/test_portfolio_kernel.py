"""Tests of the compiled portfolio kernels against the numpy code they replaced (at commit 263628d).

The single env's step is stepped beside a transcription of PortfolioEnv's numpy step; the vec env's
observations are checked against numpy's gather of PortfolioData.windows, which must be equal bit for bit.

For the single env, the feature window of every observation must be equal, since both copy the same
float32 values. Everything else is compared to 1e-12 relative (weights, equity, rewards; the float32
weights and cash of the observation to one unit in the last place): every figure of the numpy step comes
out of matrix products and dots (BLAS, whose summation order and fused multiply-adds are its own) or
np.sum's pairwise sums, whose order the kernel's loops over the assets do not reproduce. The dsr reward
is also allowed what a growth 1e-13 away from the reference's would change it by: it divides
differences of small moments by the variance to the power 1.5, which magnifies the last digits of the
growth by up to 1e3 early in an episode, so that how much of 1e-12 is used depends on the machine's BLAS
(a CI machine's went over it).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from services.env.accounting import MIN_GROWTH, ScalarOps
from services.env.options import EnvOptions, PortfolioOptions
from services.env.portfolio import VecPortfolioEnv, target_weights
from services.env.portfolio_gym import PortfolioEnv
from services.env.portfolio_kernel import step_long_only, step_long_short
from tests.unit.services.env.test_portfolio import market


class NumpyStep:
    """Step one portfolio as PortfolioEnv did at 263628d, numpy calls on the env's own data and options.

    A transcription of that commit's _build_tables, _step_long_only, _step_long_short, _step_general,
    _wipe_out and _observation; the reward, the episode counters and the info dict did not change.
    """

    def __init__(self, env: PortfolioEnv) -> None:
        self.data, self.portfolio = env._data, env.portfolio
        self.cost, self.borrow = env._acc.cost, env._acc.borrow
        self.cap = env.options.max_leverage
        self.acc = env._acc
        m = self.m = self.data.n_assets
        self.width, self.bar_size, self.size = env._width, env._bar_size, env._size
        self.long_only = self.portfolio.weights == "long_only"
        k = m + 1 if self.long_only else m
        n_bars = self.data.n_bars
        gap = self.data.moves[:, :m]
        body = self.data.moves[:, m : 2 * m]
        self.columns = np.zeros((n_bars, k, 4))
        self.columns[:, :m, 0] = 1.0
        self.columns[:, :m, 1] = body
        self.columns[:, :m, 2] = gap
        self.columns[:, :, 3] = 1.0
        self.growths = np.empty((n_bars, 2, m))
        self.growths[:, 0] = 1.0 + body
        self.growths[:, 1] = self.growths[:, 0]
        self.growths[:-1, 1] *= 1.0 + gap[1:]
        self.mix = np.zeros(3)
        if self.long_only:
            self.rows = np.zeros((3, k))
            self.lifted, self.units = self.rows[0], self.rows[1, :m]
            self.lifted_assets = self.rows[0, :m]
            self.summed, self.mixed = self.rows[0:2], self.rows
            self.next_units = self.rows[1:3, :m]
            self.ones = self.columns[0, :, 0].copy()
            logit = float(self.portfolio.logit_scale)
            self.logit = np.array(logit)
            self.low, self.high = np.full(k, -logit), np.full(k, logit)
        else:
            self.rows = np.zeros((4, m))
            self.absolute, self.lifted, self.units, _ = self.rows
            self.summed, self.mixed = self.rows[0:3], self.rows[1:4]
            self.next_units = self.rows[2:4]
            self.ones = np.ones(m)
            self.low, self.high = np.full(k, -1.0), np.full(k, 1.0)

    def start(self, bar: int) -> None:
        """Begin an episode at `bar`, in cash, with equity 1."""
        self.t, self.scale, self.equity = bar, 1.0, 1.0
        self.next_units[:] = 0.0
        self.reward_state = self.acc.initial_reward_state()

    @property
    def weights(self) -> np.ndarray:
        """Return the weights held at the current bar's close."""
        return self.units * self.scale

    def step(self, action: np.ndarray) -> tuple[float, np.ndarray]:
        """Step into the next bar; return the reward and the observation."""
        t = self.t + 1
        if self.data.all_fill[t]:
            step = self.step_long_only if self.long_only else self.step_long_short
            growth, cash = step(action, t)
        else:
            growth, cash = self.step_general(action, t)
        self.growth = growth
        self.before = (self.equity, self.reward_state)
        self.equity *= growth
        reward, self.reward_state = self.acc.reward(
            ScalarOps, growth, math.log(growth), self.equity, self.reward_state
        )
        self.t = t
        return reward, self.observation(cash)

    def reward_spread(self, rel: float) -> float:
        """Return half the change of the last step's reward over growths `rel` below and above its own."""
        equity, state = self.before
        rewards = [
            self.acc.reward(ScalarOps, g, math.log(g), equity * g, state)[0]
            for g in (self.growth * (1.0 - rel), self.growth * (1.0 + rel))
        ]
        return abs(rewards[1] - rewards[0]) / 2.0

    def step_long_only(self, action: np.ndarray, t: int) -> tuple[float, float]:
        """Return growth and cash of a long-only step at a bar where every asset fills."""
        lifted = self.lifted
        np.multiply(action, self.logit, lifted)
        np.maximum(lifted, self.low, out=lifted)
        np.minimum(lifted, self.high, out=lifted)
        np.exp(lifted, lifted)
        (assets, grown, _, total), (_, _, held_gap, _) = self.summed.dot(self.columns[t]).tolist()
        scale = self.scale
        g1 = 1.0 + scale * held_gap
        inverse = 1.0 / total
        self.mix[0] = inverse
        self.mix[2] = -scale / (g1 if g1 > MIN_GROWTH else MIN_GROWTH)
        traded = np.abs(self.mix.dot(self.mixed))
        g2 = 1.0 - self.cost * float(traded.dot(self.ones))
        g3 = 1.0 + grown * inverse
        growth = g1 * g2 * g3
        if growth < MIN_GROWTH:
            return self.wipe_out(), 1.0
        scale = inverse / (g3 if g3 > MIN_GROWTH else MIN_GROWTH)
        self.scale = scale
        np.multiply(self.lifted_assets, self.growths[t], self.next_units)
        return growth, 1.0 - scale * (assets + grown)

    def step_long_short(self, action: np.ndarray, t: int) -> tuple[float, float]:
        """Return growth and 0 of a long-short step at a bar where every asset fills."""
        lifted = self.lifted
        np.maximum(action, self.low, out=lifted)
        np.minimum(lifted, self.high, out=lifted)
        np.absolute(lifted, self.absolute)
        sums = self.summed.dot(self.columns[t]).tolist()
        (gross, gross_grown, _, _), (net, grown, _, _), (_, _, held_gap, _) = sums
        scale = self.scale
        g1 = 1.0 + scale * held_gap
        q = self.cap / gross if gross > self.cap else 1.0
        self.mix[0] = q
        self.mix[2] = -scale / (g1 if g1 > MIN_GROWTH else MIN_GROWTH)
        traded = np.abs(self.mix.dot(self.mixed))
        g2 = 1.0 - self.cost * float(traded.dot(self.ones))
        g3 = 1.0 + q * grown
        growth = g1 * g2 * g3
        scale = q / (g3 if g3 > MIN_GROWTH else MIN_GROWTH)
        if self.borrow:
            short = 0.5 * scale * ((gross + gross_grown) - (net + grown))
            g4 = 1.0 - self.borrow * (short if short > 0.0 else 0.0)
            growth *= g4
            scale /= g4
        if growth < MIN_GROWTH:
            return self.wipe_out(), 0.0
        self.scale = scale
        np.multiply(lifted, self.growths[t], self.next_units)
        return growth, 0.0

    def step_general(self, action: np.ndarray, t: int) -> tuple[float, float]:
        """Return growth and cash of a step at a bar where some asset cannot fill."""
        m = self.m
        row = self.data.moves[t]
        gap, body, fill = row[:m], row[m : 2 * m], row[2 * m :]
        held = self.units * self.scale
        g1 = 1.0 + float(np.dot(held, gap))
        at_fill = held * (1.0 + gap) / max(g1, MIN_GROWTH)
        raw = np.asarray(action, dtype=np.float64)
        target = target_weights(self.portfolio, self.cap, raw[None], at_fill[None], fill[None])[0]
        g2 = 1.0 - self.cost * float(np.abs(target - at_fill).sum())
        g3 = 1.0 + float(np.dot(target, body))
        closing = target * (1.0 + body) / max(g3, MIN_GROWTH)
        growth = g1 * g2 * g3
        scale = 1.0
        if self.borrow:
            g4 = 1.0 - self.borrow * float(np.maximum(-closing, 0.0).sum())
            growth *= g4
            scale /= g4
        if growth < MIN_GROWTH:
            return self.wipe_out(), 1.0 if self.long_only else 0.0
        self.scale = scale
        np.multiply(target / max(g3, MIN_GROWTH), self.growths[t], out=self.next_units)
        return growth, 1.0 - float(closing.sum()) * scale

    def wipe_out(self) -> float:
        """Drop every holding; return the floored growth."""
        self.next_units[:] = 0.0
        self.scale = 1.0
        return MIN_GROWTH

    def observation(self, cash: float) -> np.ndarray:
        """Return the feature window of the current bar, the weights and the cash."""
        start = (self.t + 1) * self.bar_size - self.width
        obs = self.data.flat[start : start + self.size].copy()
        obs[self.width : self.width + self.m] = self.units * self.scale
        if self.long_only:
            obs[-1] = cash
        return obs


def wild_market(n_bars: int, n_assets: int, seed: int) -> tuple[np.ndarray, ...]:
    """Return a market of 30 % daily moves: leveraged portfolios are wiped out in it now and then."""
    features, _, _, tradable = market(n_bars, n_assets, seed=seed, holes=True)
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.3, (n_bars, n_assets)), axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.3, (n_bars, n_assets)))
    close[~tradable] = np.nan
    open_[~tradable] = np.nan
    return features, open_, close, tradable


CASES = list(
    itertools.product(
        ["long_only", "long_short"],
        ["next_open", "close"],
        ["log_return", "dsr", "drawdown_penalty"],
        ["calm", "holes", "wild"],
    )
)


@pytest.mark.parametrize(("weights", "fill", "reward", "kind"), CASES)
def test_the_kernel_steps_as_the_numpy_step_it_replaced(
    weights: str, fill: str, reward: str, kind: str
) -> None:
    n_assets = 6
    if kind == "wild":
        data = wild_market(300, n_assets, seed=11)
    else:
        data = market(300, n_assets, seed=9, holes=kind == "holes")
    options = EnvOptions(
        window=3,
        episode_length=40,
        fill=fill,
        reward=reward,
        commission_bps=15.0,
        slippage_bps=10.0,
        borrow_bps_per_year=2_000.0,
        max_leverage=4.0 if kind == "wild" else 1.5,
        ruin_equity=0.95 if kind == "calm" else 0.0,
    )
    env = PortfolioEnv(*data, options, PortfolioOptions(weights=weights), seed=3, bars_per_year=52.0)
    old = NumpyStep(env)
    width = env._width
    rng = np.random.default_rng(12)
    seen = {"general": 0, "wiped": 0, "ruined": 0}

    for _ in range(8):
        obs, info = env.reset()
        old.start(info["bar"])
        np.testing.assert_array_equal(obs, old.observation(1.0))
        over = False
        while not over:
            # Beyond [-1, 1] too (clipped), exact zeros and bounds, float32 and float64.
            dtype = np.float32 if rng.random() < 0.5 else np.float64
            action = rng.uniform(-1.3, 1.3, env.action_space.shape)
            action[rng.random(action.shape) < 0.1] = rng.choice([-1.0, 0.0, 1.0])
            action = action.astype(dtype)
            seen["general"] += not env._data.all_fill[old.t + 1]
            obs, got, terminated, truncated, info = env.step(action)
            expected, old_obs = old.step(action)
            over = terminated or truncated
            seen["wiped"] += old.growth == MIN_GROWTH
            seen["ruined"] += terminated
            assert terminated == (old.equity <= options.ruin_equity)
            # The log of a growth near 1 loses digits: 1e-15 absolute on top of 1e-12 relative; the dsr
            # also what a growth 1e-13 away would change (see the module docstring).
            slack = old.reward_spread(1e-13) if reward == "dsr" else 0.0
            assert got == pytest.approx(expected, rel=1e-12, abs=1e-15 + slack)
            np.testing.assert_allclose(env._reward_state, old.reward_state, rtol=1e-12, atol=1e-15)
            assert info["equity"] == pytest.approx(old.equity, rel=1e-12)
            np.testing.assert_allclose(env.weights, old.weights, rtol=1e-12, atol=1e-15)
            np.testing.assert_array_equal(obs[:width], old_obs[:width])
            np.testing.assert_array_max_ulp(obs[width:], old_obs[width:], maxulp=1)
    # Each case took the paths it is there for: general bars, wipe-outs (and steps after them), ruin.
    assert (seen["general"] > 0) == (kind != "calm")
    assert (seen["wiped"] > 0) == (kind == "wild" and weights == "long_short")
    assert (seen["ruined"] > 0) == (kind == "calm")


def test_a_nan_in_the_action_raises_and_leaves_the_weights_as_they_were() -> None:
    data = market(100, 3, seed=1)
    for weights in ("long_only", "long_short"):
        env = PortfolioEnv(*data, EnvOptions(window=2, episode_length=20), PortfolioOptions(weights=weights))
        env.reset()
        env.step(np.full(env.action_space.shape, 0.5))
        held = env.weights
        action = np.full(env.action_space.shape, 0.5)
        action[1] = np.nan

        with pytest.raises(ValueError, match="finite"):
            env.step(action)

        np.testing.assert_array_equal(env.weights, held)


@pytest.mark.parametrize(
    ("weights", "kernel"), [("long_only", step_long_only), ("long_short", step_long_short)]
)
def test_the_first_step_of_a_new_env_does_not_compile(weights: str, kernel: object) -> None:
    data = market(100, 3, seed=1)

    env = PortfolioEnv(*data, EnvOptions(window=2, episode_length=20), PortfolioOptions(weights=weights))
    built = list(kernel.signatures)  # type: ignore[attr-defined]

    # Built for float32 and float64 actions when the env was: a step would not add a signature.
    assert {sig[0].dtype.name for sig in built} >= {"float32", "float64"}
    env.reset(seed=0)
    for dtype in (np.float32, np.float64):
        env.step(np.zeros(env.action_space.shape, dtype=dtype))
    assert list(kernel.signatures) == built  # type: ignore[attr-defined]


@pytest.mark.parametrize("weights", ["long_only", "long_short"])
def test_the_vec_env_observations_hold_the_numpy_gather_of_the_windows_bit_for_bit(weights: str) -> None:
    features, open_, close, tradable = market(200, 5, seed=13, holes=True)
    options = EnvOptions(window=6, episode_length=7, n_envs=5, ruin_equity=0.0)
    env = VecPortfolioEnv(options, PortfolioOptions(weights=weights), seed=4)
    env.update_data(features, open_, close, tradable)
    windows, width = env._data.windows, env._width
    rng = np.random.default_rng(14)
    finished = 0

    obs = env.reset()
    np.testing.assert_array_equal(obs[:, :width], windows[env._t - 5])
    for _ in range(30):
        before = env._t.copy()
        result = env.step(rng.uniform(-1, 1, (5, env.action_size)))
        done = result.terminated | result.truncated
        finished += int(done.sum())

        # Envs that finished are at a new start; their last observation is in terminal_obs.
        np.testing.assert_array_equal(result.obs[:, :width], windows[env._t - 5])
        np.testing.assert_array_equal(result.terminal_obs[done, :width], windows[before[done] + 1 - 5])
    assert finished > 0
