"""Step N single-asset trading envs with compiled kernels: the move to the next bar, then its settlement.

VecTradingEnv.step calls one `advance` kernel (actions to target positions, the step to the next bar,
the bar's equity growth and, for a sequential run, its costs), takes the log of the growth with numpy,
and calls `settle` (entry price, unrealised PnL, equity, reward, episode return, observation and the
episode ends), each over all N envs in one call. The log is numpy's on purpose: on CPUs with AVX-512,
numpy's vectorized log differs from the C library's log, which a compiled kernel calls, in the last bit
for one or two growth factors in a hundred; numpy's keeps the rewards equal to the numpy formulas the
kernels replace (Accounting in services.env.accounting), bit for bit, on any CPU.

Every formula keeps the operation order of those formulas, and numba reorders no float arithmetic
without fastmath, so tests compare the two with exact equality. The kernels are compiled by
services.env.jit (cached on disk); `compile_kernels` compiles or loads them before an env's first step.

The per-env float64 state is one [N_ROWS, N] array whose rows the env also holds as named views.
"""

from __future__ import annotations

import numpy as np

from services.env.accounting import DSR_CLIP, DSR_MIN_VARIANCE, MIN_GROWTH, TINY
from services.env.jit import kernel

# Rows of the state array.
POSITION = 0
"""The position held (after a step: the one just entered)."""
TARGET = 1
"""The target position of this step's actions."""
ENTRY = 2
"""The log entry price of the open position."""
UNREALISED = 3
"""The unrealised log PnL of the open position at the current bar."""
EQUITY = 4
"""Equity; 1.0 at an episode's start."""
REWARD_A = 5
"""First reward state: peak equity (drawdown_penalty) or moving mean of the returns (dsr)."""
REWARD_B = 6
"""Second reward state: drawdown (drawdown_penalty) or moving mean of the squared returns (dsr)."""
EPISODE_RETURN = 7
"""Sum of the episode's rewards so far (float64)."""
GROWTH = 8
"""This step's equity growth factor."""
LOG_GROWTH = 9
"""Its log (written by numpy between the two kernels)."""
COST = 10
"""This step's costs in units of equity; computed by a sequential env only."""
N_ROWS = 11

# Entries of the parameter array.
P_COST = 0
"""Commission plus slippage per unit of position traded."""
P_BORROW = 1
"""Borrow fee per bar per unit of short exposure."""
P_HALF_BORROW = 2
"""Half of it, as the numpy formulas compute it: (|new| - new) is twice the short exposure."""
P_MAX_LEVERAGE = 3
P_PENALTY = 4
"""Weight of the drawdown increase (drawdown_penalty)."""
P_ETA = 5
"""Adaptation rate of the moving moments (dsr)."""
P_RUIN = 6
"""Equity at or below which a training episode terminates."""
N_PARAMS = 7

# The reward kinds.
LOG_RETURN = 0
DSR = 1
DRAWDOWN_PENALTY = 2
REWARD_KINDS = {"log_return": LOG_RETURN, "dsr": DSR, "drawdown_penalty": DRAWDOWN_PENALTY}
"""The kernel's number of each of options.REWARDS."""

# What advance returns when it refuses the actions (before changing anything).
OK = 0
ACTION_OUT_OF_RANGE = 1
"""A discrete action is below 0 or not below the table's size."""
ACTION_NOT_FINITE = 2
"""A continuous action is nan or infinite."""


@kernel
def _grow(
    state: np.ndarray, t: np.ndarray, bars: np.ndarray, params: np.ndarray, flatten: bool, sequential: bool
) -> None:
    """Move every env to its next bar and write the bar's growth factor (and costs when sequential)."""
    cost = params[P_COST]
    borrow = params[P_BORROW]
    half_borrow = params[P_HALF_BORROW]
    for i in range(t.size):
        if flatten:
            state[TARGET, i] = 0.0
        bar = t[i] + 1
        t[i] = bar
        gap = bars[0, bar]
        drift = bars[1, bar]
        old = state[POSITION, i]
        new = state[TARGET, i]
        factor = (1.0 + old * gap) * (1.0 - abs(new - old) * cost) * (1.0 + new * drift)
        if borrow != 0.0:
            factor = factor * (1.0 - (abs(new) - new) * half_borrow)
        # np.maximum(factor, MIN_GROWTH), nan passed through as numpy does.
        state[GROWTH, i] = MIN_GROWTH if factor < MIN_GROWTH else factor
        if sequential:
            at_fill = state[EQUITY, i] * (1.0 + old * gap)
            traded = at_fill * abs(new - old) * cost
            at_close = (at_fill - traded) * (1.0 + new * drift)
            state[COST, i] = traded + at_close * (abs(new) - new) * half_borrow


@kernel
def advance_discrete(
    actions: np.ndarray,
    table: np.ndarray,
    state: np.ndarray,
    t: np.ndarray,
    bars: np.ndarray,
    params: np.ndarray,
    flatten: bool,
    sequential: bool,
) -> int:
    """Look the actions' target positions up in the table, then grow every env over its next bar.

    Returns ACTION_OUT_OF_RANGE, having changed nothing, when an action is not an index of the table.
    """
    n_actions = table.size
    for i in range(t.size):
        if actions[i] < 0 or actions[i] >= n_actions:
            return ACTION_OUT_OF_RANGE
    for i in range(t.size):
        state[TARGET, i] = table[actions[i]]
    _grow(state, t, bars, params, flatten, sequential)
    return OK


@kernel
def advance_continuous(
    actions: np.ndarray,
    state: np.ndarray,
    t: np.ndarray,
    bars: np.ndarray,
    params: np.ndarray,
    flatten: bool,
    sequential: bool,
) -> int:
    """Clip the actions to [-1, 1] and scale them by the leverage, then grow every env over its next bar.

    Returns ACTION_NOT_FINITE, having changed nothing, when an action is nan or infinite.
    """
    for i in range(t.size):
        if not np.isfinite(actions[i]):
            return ACTION_NOT_FINITE
    leverage = params[P_MAX_LEVERAGE]
    for i in range(t.size):
        # Clipping before or after the exact widening to float64 gives the same value.
        value = float(actions[i])
        if value < -1.0:
            value = -1.0
        elif value > 1.0:
            value = 1.0
        state[TARGET, i] = value * leverage
    _grow(state, t, bars, params, flatten, sequential)
    return OK


@kernel
def settle(
    state: np.ndarray,
    t: np.ndarray,
    end: np.ndarray,
    bars: np.ndarray,
    features: np.ndarray,
    obs: np.ndarray,
    reward: np.ndarray,
    flags: np.ndarray,
    params: np.ndarray,
    discrete: bool,
    reward_kind: int,
    window: int,
    sequential: bool,
) -> int:
    """Enter the target positions at the bar's fill, book the growth, write rewards, observations, ends.

    Args:
        features: the data's features flattened row after row ([n_bars * n_features] float32).
        obs: [N, window * n_features + 2] float32, written in full.
        flags: [3, N] bool rows terminated, truncated, done; a sequential env never terminates.
    Returns:
        the number of envs whose episode ended.
    """
    width = obs.shape[1] - 2
    n_features = width // window
    penalty = params[P_PENALTY]
    eta = params[P_ETA]
    ruin = params[P_RUIN]
    finished = 0
    for i in range(t.size):
        bar = t[i]
        fill = bars[2, bar]
        log_close = bars[3, bar]
        old = state[POSITION, i]
        new = state[TARGET, i]
        entry = state[ENTRY, i]
        if discrete:
            # Discrete positions are -lev, 0 or lev: a change is a flip, an entry or an exit.
            if new != old:
                entry = fill
        else:
            added = abs(new) - abs(old)
            if added < 0.0:
                added = 0.0
            if old * new > 0.0:
                size = abs(new)
                share_new = added / (TINY if size < TINY else size)
            else:
                share_new = 1.0
            entry = entry + share_new * (fill - entry)
        # np.sign: 0.0 for a zero of either sign.
        side = 1.0 if new > 0.0 else (-1.0 if new < 0.0 else 0.0)
        unrealised = side * (log_close - entry)
        state[ENTRY, i] = entry
        state[UNREALISED, i] = unrealised
        state[POSITION, i] = new
        growth = state[GROWTH, i]
        log_growth = state[LOG_GROWTH, i]
        equity = state[EQUITY, i] * growth
        state[EQUITY, i] = equity
        if reward_kind == LOG_RETURN:
            value = log_growth
        elif reward_kind == DRAWDOWN_PENALTY:
            peak = state[REWARD_A, i]
            if peak < equity:
                peak = equity
            drawdown = 1.0 - equity / peak
            increase = drawdown - state[REWARD_B, i]
            if increase < 0.0:
                increase = 0.0
            value = log_growth - penalty * increase
            state[REWARD_A, i] = peak
            state[REWARD_B, i] = drawdown
        else:
            # Moody & Saffell (1998), as Accounting.reward writes it.
            mean = state[REWARD_A, i]
            mean_sq = state[REWARD_B, i]
            ret = growth - 1.0
            d_mean = ret - mean
            d_sq = ret * ret - mean_sq
            variance = mean_sq - mean * mean
            floored = DSR_MIN_VARIANCE if variance < DSR_MIN_VARIANCE else variance
            value = (mean_sq * d_mean - 0.5 * mean * d_sq) / (floored * np.sqrt(floored))
            if not variance > DSR_MIN_VARIANCE:
                value = 0.0
            if value < -DSR_CLIP:
                value = -DSR_CLIP
            if value > DSR_CLIP:
                value = DSR_CLIP
            state[REWARD_A, i] = mean + eta * d_mean
            state[REWARD_B, i] = mean_sq + eta * d_sq
        reward[i] = value
        state[EPISODE_RETURN, i] += value
        # The feature window ending at the bar, then position and unrealised PnL.
        first = (bar - window + 1) * n_features
        for j in range(width):
            obs[i, j] = features[first + j]
        obs[i, width] = new
        obs[i, width + 1] = unrealised
        terminated = not sequential and equity <= ruin
        truncated = bar >= end[i]
        done = terminated or truncated
        flags[0, i] = terminated
        # A ruined env is terminated, not truncated, even on its last bar.
        flags[1, i] = truncated and not terminated
        flags[2, i] = done
        if done:
            finished += 1
    return finished


def compile_kernels(discrete: bool | None = None) -> None:
    """Compile the kernels for the array types VecTradingEnv passes, or load them from numba's cache.

    Runs them once on scratch buffers of one env, so that no step of a session pays the compilation.

    Args:
        discrete: the kind of actions of the env about to step (True: the table lookup; False: continuous
            float32 and float64 actions); None compiles both kinds (the fork server, before it forks).
    """
    state = np.zeros((N_ROWS, 1))
    state[EQUITY] = 1.0
    t = np.zeros(1, dtype=np.int64)
    end = np.ones(1, dtype=np.int64)
    bars = np.zeros((4, 2))
    params = np.zeros(N_PARAMS)
    table = np.zeros(1)
    if discrete is None or discrete:
        advance_discrete(np.zeros(1, dtype=np.int64), table, state, t, bars, params, False, False)
    if discrete is None or not discrete:
        for dtype in (np.float32, np.float64):
            t[0] = 0
            advance_continuous(np.zeros(1, dtype=dtype), state, t, bars, params, False, False)
    features = np.zeros(2, dtype=np.float32)
    obs = np.zeros((1, 3), dtype=np.float32)
    reward = np.zeros(1, dtype=np.float32)
    flags = np.zeros((3, 1), dtype=bool)
    settle(state, t, end, bars, features, obs, reward, flags, params, False, LOG_RETURN, 1, False)
