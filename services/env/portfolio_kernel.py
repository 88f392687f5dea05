"""Compile the portfolio envs' hot loops: the single env's whole step and the vec env's window gather.

PortfolioEnv.step's arithmetic (docs/PORTFOLIO.md section 4) as one numba kernel per weight mapping, so
a step costs one call instead of a dozen numpy calls on a few dozen values each. A kernel runs the
general rule at every bar (assets that cannot fill keep their weight at the fill; when every asset fills
it is the plain softmax or gross-leverage cap), sums over the assets in order, and writes the
observation's feature window, weights and cash into an array the caller allocated, so every observation
the env returns is a new array.

Both kernels take the same arguments:

    action    M + 1 raw values (the assets, then cash) long-only, M long-short; float32 or float64
    obs       float32 [width + M (+ 1)], written whole: bar t's feature window, the weights, the cash
    t         the bar the step moves into
    moves     PortfolioData.moves [T, 3M]: the gap, the body and the fill mask of the step into each bar
    flat      PortfolioData.flat: the features of every bar, bar-major
    state     float64 [3, M]: row 0 the weights held (at bar t - 1's close in, bar t's out); rows 1
              and 2 scratch
    limit     logit_scale (long-only) or max_leverage (long-short)
    cost      commission and slippage per unit traded, (commission_bps + slippage_bps) / 1e4
    borrow    the borrow fee per bar on the short weight
    width     window * M * F, the feature window's length; bar_size: one bar's, M * F

and return the growth factor of the equity. A NaN in the action makes it NaN and leaves the weights as
they were; a growth below MIN_GROWTH (the equity wiped out) empties the weights and is returned as
MIN_GROWTH.

`gather_windows` copies the feature windows of VecPortfolioEnv's observations straight from the flat
features, one pass instead of numpy's gather into a temporary and copy into the buffer.
"""

from __future__ import annotations

import math

import numpy as np

from services.env.accounting import MIN_GROWTH
from services.env.jit import kernel

_TINY = 1e-12
"""Floor of the gross exposure a long-short target is divided by (as target_weights)."""


@kernel
def _gap(state: np.ndarray, gap: np.ndarray) -> tuple[float, float]:
    """Return g1 = 1 + sum(w * gap) and g1 floored at MIN_GROWTH."""
    weights = state[0]
    held_gap = 0.0
    for j in range(weights.shape[0]):
        held_gap += weights[j] * gap[j]
    g1 = 1.0 + held_gap
    return g1, (g1 if g1 > MIN_GROWTH else MIN_GROWTH)


@kernel
def _trade(
    obs: np.ndarray,
    t: int,
    moves: np.ndarray,
    flat: np.ndarray,
    state: np.ndarray,
    share: float,
    g1: float,
    cost: float,
    borrow: float,
    width: int,
    bar_size: int,
    has_cash: bool,
) -> float:
    """Trade to state[2] * share + the frozen weights, through the bar and its borrow; write obs.

    state[1] holds the weights at the fill, state[2] the (softmax's or clipped) action values of the
    assets that fill, 0 for the others.
    """
    weights, at_fill, target = state[0], state[1], state[2]
    m = weights.shape[0]
    row = moves[t]
    body, fill = row[m : 2 * m], row[2 * m : 3 * m]
    traded = 0.0
    grown = 0.0
    for j in range(m):
        value = target[j] * share + at_fill[j] * (1.0 - fill[j])
        target[j] = value
        traded += abs(value - at_fill[j])
        grown += value * body[j]
    g2 = 1.0 - cost * traded
    g3 = 1.0 + grown
    g3_floor = g3 if g3 > MIN_GROWTH else MIN_GROWTH
    growth = g1 * g2 * g3
    g4 = 1.0
    if borrow != 0.0:
        short = 0.0
        for j in range(m):
            closing = target[j] * (1.0 + body[j]) / g3_floor
            if closing < 0.0:
                short -= closing
        g4 = 1.0 - borrow * short
        growth *= g4
    if not math.isfinite(growth):
        return growth
    cash = 1.0
    if growth < MIN_GROWTH:
        growth = MIN_GROWTH
        for j in range(m):
            weights[j] = 0.0
    else:
        for j in range(m):
            w = target[j] * (1.0 + body[j]) / g3_floor / g4
            weights[j] = w
            cash -= w
    # A slice of flat indexed from 0, not flat[start + i]: an index that cannot be negative lets the copy
    # be vectorised.
    window = flat[(t + 1) * bar_size - width : (t + 1) * bar_size]
    for i in range(width):
        obs[i] = window[i]
    for j in range(m):
        obs[width + j] = weights[j]
    if has_cash:
        obs[width + m] = cash
    return growth


@kernel
def _clip_logit(value: float, logit_scale: float) -> float:
    """Return value * logit_scale clipped to +-logit_scale: clip(value, -1, 1) * logit_scale bit for bit.

    A NaN stays NaN through the comparisons, as through np.clip.
    """
    z = value * logit_scale
    if z < -logit_scale:
        return -logit_scale
    if z > logit_scale:
        return logit_scale
    return z


@kernel
def step_long_only(
    action: np.ndarray,
    obs: np.ndarray,
    t: int,
    moves: np.ndarray,
    flat: np.ndarray,
    state: np.ndarray,
    limit: float,
    cost: float,
    borrow: float,
    width: int,
    bar_size: int,
) -> float:
    """Step a long-only portfolio into bar t: a softmax over the assets that fill and cash."""
    weights, at_fill, lifted = state[0], state[1], state[2]
    m = weights.shape[0]
    row = moves[t]
    gap, fill = row[:m], row[2 * m : 3 * m]
    g1, g1_floor = _gap(state, gap)
    frozen = 0.0
    total = 0.0
    for j in range(m):
        w = weights[j] * (1.0 + gap[j]) / g1_floor
        at_fill[j] = w
        frozen += w * (1.0 - fill[j])
        e = math.exp(_clip_logit(action[j], limit)) * fill[j]
        lifted[j] = e
        total += e
    total += math.exp(_clip_logit(action[m], limit))
    share = (1.0 - frozen) / total
    return _trade(obs, t, moves, flat, state, share, g1, cost, borrow, width, bar_size, True)


@kernel
def step_long_short(
    action: np.ndarray,
    obs: np.ndarray,
    t: int,
    moves: np.ndarray,
    flat: np.ndarray,
    state: np.ndarray,
    limit: float,
    cost: float,
    borrow: float,
    width: int,
    bar_size: int,
) -> float:
    """Step a long-short portfolio into bar t (module docstring): clip(a, -1, 1), capped at gross `limit`."""
    weights, at_fill, lifted = state[0], state[1], state[2]
    m = weights.shape[0]
    row = moves[t]
    gap, fill = row[:m], row[2 * m : 3 * m]
    g1, g1_floor = _gap(state, gap)
    frozen = 0.0
    gross = 0.0
    for j in range(m):
        w = weights[j] * (1.0 + gap[j]) / g1_floor
        at_fill[j] = w
        frozen += abs(w * (1.0 - fill[j]))
        x = float(action[j])  # a NaN passes the comparisons and makes the growth NaN
        if x < -1.0:
            x = -1.0
        elif x > 1.0:
            x = 1.0
        x *= fill[j]
        lifted[j] = x
        gross += abs(x)
    budget = limit - frozen
    if budget < 0.0:
        budget = 0.0
    share = budget / (gross if gross > _TINY else _TINY) if gross > budget else 1.0
    return _trade(obs, t, moves, flat, state, share, g1, cost, borrow, width, bar_size, False)


@kernel
def gather_windows(
    obs: np.ndarray, flat: np.ndarray, bars: np.ndarray, envs: np.ndarray, bar_size: int, width: int
) -> None:
    """Copy into obs[i, :width] the feature window ending at bar bars[i], for every env i in envs.

    The window of bar t is flat[(t + 1) * bar_size - width : (t + 1) * bar_size], as PortfolioData.windows
    row t - window + 1.
    """
    for i in envs:
        end = (bars[i] + 1) * bar_size
        window = flat[end - width : end]
        row = obs[i]
        for k in range(width):
            row[k] = window[k]


def compile_steps(weights: str | None = None) -> None:
    """Compile (or load from numba's disk cache) PortfolioEnv's step for float32 and float64 actions.

    Args:
        weights: the weight mapping of the env about to step ("long_only" or "long_short"); None
            compiles both. PortfolioEnv calls this when it is built, so its first step does not pay the
            compilation; after the first call in a process it costs a few microseconds.
    """
    moves = np.zeros((2, 3))
    flat = np.zeros(3, dtype=np.float32)
    steps = ((step_long_only, 2, "long_only"), (step_long_short, 1, "long_short"))
    chosen = [(step, outputs) for step, outputs, mapping in steps if weights in (None, mapping)]
    for dtype in (np.float32, np.float64):
        for step, outputs in chosen:
            obs = np.empty(1 + outputs, dtype=np.float32)
            step(np.zeros(outputs, dtype=dtype), obs, 1, moves, flat, np.zeros((3, 1)), 1.0, 0.0, 0.0, 1, 1)


def compile_gather() -> None:
    """Compile (or load) VecPortfolioEnv's window gather, the one kernel it steps with."""
    gather_windows(
        np.empty((1, 1), dtype=np.float32),
        np.zeros(3, dtype=np.float32),
        np.ones(1, dtype=np.int64),
        np.zeros(1, dtype=np.int64),
        1,
        1,
    )


def compile_kernels() -> None:
    """Compile (or load) every kernel of this module: the fork server, before it forks."""
    compile_steps()
    compile_gather()
