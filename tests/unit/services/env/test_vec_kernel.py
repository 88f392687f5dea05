"""Tests of the compiled step of VecTradingEnv: bit for bit the numpy step it replaced, compiled up front."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from services.env import vec_kernel
from services.env.options import EnvOptions
from services.env.vec_env import VecTradingEnv


class NumpyVecTradingEnv(VecTradingEnv):
    """VecTradingEnv with the numpy step it had before the kernels (Accounting's formulas): the reference."""

    def _targets(self, actions: np.ndarray) -> np.ndarray:
        """Write the target positions of the actions into the preallocated buffer and return it."""
        actions = np.asarray(actions)
        if actions.size != self.n_envs:
            raise ValueError(f"step: expected {self.n_envs} actions, got shape {actions.shape}")
        if actions.ndim != 1:
            actions = actions.reshape(self.n_envs)
        if self._table.size:
            kind = actions.dtype.kind
            if kind not in "iu":
                raise ValueError(f"step: discrete actions must be integers, got {actions.dtype}")
            try:
                if kind == "i" and actions.min() < 0:
                    raise IndexError
                np.copyto(self._new, self._table[actions])
            except IndexError:
                raise ValueError(f"step: actions must be in [0, {self._table.size}), got {actions}") from None
        else:
            if actions.dtype.kind != "f" or not np.isfinite(actions).all():
                raise ValueError("step: continuous actions must be finite floats")
            np.clip(actions, -1.0, 1.0, out=self._new)
            self._new *= self.options.max_leverage
        return self._new

    def step(self, actions: np.ndarray) -> Any:
        """Advance every env by one bar with numpy, as the env did before its kernels."""
        self._require_data()
        if self.sequential and self._run_done:
            self._begin_run()
        acc = self._acc
        old = self._position
        new = self._targets(actions)
        if self._ruined_at >= 0:
            new[:] = 0.0
        self._t += 1
        gap, drift, fill, log_close = self._data.bars.take(self._t, axis=1)
        growth = acc.growth(old, new, gap, drift)
        log_growth = np.log(growth)
        if self.sequential:
            cost = float(acc.costs(self._equity, old, new, gap, drift)[0])
        np.copyto(self._entry, acc.entry(old, new, self._entry, fill))
        np.copyto(self._unrealised, acc.unrealised(new, self._entry, log_close))
        np.copyto(old, new)
        self._equity *= growth
        reward, state = acc.reward(np, growth, log_growth, self._equity, self._reward_state)
        if state is not self._reward_state:
            for column, value in zip(self._reward_state, state, strict=True):
                np.copyto(column, value)
        np.copyto(self._reward, reward, casting="same_kind")
        self._ep_return += reward
        if self.sequential:
            self._record(int(self._t[0]), float(new[0]), float(self._equity[0]), cost)
        self._obs[:, : self._width] = self._data.windows[self._t - (self.options.window - 1)]
        self._obs[:, self._width] = self._position
        self._obs[:, self._width + 1] = self._unrealised
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


# The state rows the numpy step kept; the kernels' scratch rows (growth, its log, costs) are not among them.
_KEPT_ROWS = [
    vec_kernel.POSITION,
    vec_kernel.TARGET,
    vec_kernel.ENTRY,
    vec_kernel.UNREALISED,
    vec_kernel.EQUITY,
    vec_kernel.REWARD_A,
    vec_kernel.REWARD_B,
    vec_kernel.EPISODE_RETURN,
]
_KERNELS: tuple[Any, ...] = (vec_kernel.advance_discrete, vec_kernel.advance_continuous, vec_kernel.settle)
"""The compiled step's numba dispatchers (each lists the signatures it has compiled)."""

# Every action, reward and fill, with and without borrow; the leverage is high enough for ruin.
_EVERY_OPTION = list(
    itertools.product(
        [("discrete3", 3.0), ("discrete2", 4.0), ("continuous", 6.0)],
        ["log_return", "dsr", "drawdown_penalty"],
        ["next_open", "close"],
        [0.0, 300.0],
    )
)


def _random_data(n_bars: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return random features and a random-walk open/close path."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, n_bars)))
    open_ = close * np.exp(rng.normal(0.0, 0.01, n_bars))
    features = rng.normal(size=(n_bars, n_features)).astype(np.float32)
    return features, open_, close


def _options(action: str, leverage: float, reward: str, fill: str, borrow: float) -> EnvOptions:
    """Return options with short episodes, ruin at 0.8 and the given choices."""
    return EnvOptions(
        window=3,
        episode_length=15,
        action=action,
        max_leverage=leverage,
        reward=reward,
        fill=fill,
        borrow_bps_per_year=borrow,
        ruin_equity=0.8,
    )


def _random_actions(rng: np.random.Generator, options: EnvOptions, n_envs: int) -> np.ndarray:
    """Return one step's actions as the shared step buffer holds them, with clipped and edge values."""
    if options.action == "continuous":
        actions = rng.uniform(-1.5, 1.5, size=n_envs)
        edges = np.array([-1.0, 1.0, 0.0, -0.0, 1.25, -1.25])
        pick = rng.random(n_envs) < 0.2
        actions[pick] = rng.choice(edges, size=int(pick.sum()))
        # The model sends float32; other callers float64.
        return actions.astype(np.float32) if rng.random() < 0.7 else actions
    return rng.integers(0, len(options.positions), size=n_envs)


def _pair(
    options: EnvOptions, *, n_envs: int = 5, sequential: bool = False
) -> tuple[VecTradingEnv, VecTradingEnv]:
    """Return a kernel env and a numpy reference env on the same data, reset alike."""
    data = _random_data(90, 2, seed=3)
    envs = []
    for cls in (VecTradingEnv, NumpyVecTradingEnv):
        env = cls(options, n_envs=n_envs, seed=21, sequential=sequential, bars_per_year=252.0)
        env.update_data(*data)
        env.reset()
        envs.append(env)
    return envs[0], envs[1]


def _assert_same_step(compiled: Any, reference: Any) -> None:
    """Assert that two step results are equal array for array (terminal rows included)."""
    for name, mine, theirs in zip(compiled._fields, compiled, reference, strict=True):
        assert mine.dtype == theirs.dtype, name
        assert np.array_equal(mine, theirs), name


def _assert_same_state(compiled: VecTradingEnv, reference: VecTradingEnv) -> None:
    """Assert that the two envs hold the same per-env state and clock."""
    assert np.array_equal(compiled._state[_KEPT_ROWS], reference._state[_KEPT_ROWS])
    for name in ("_t", "_start", "_end"):
        assert np.array_equal(getattr(compiled, name), getattr(reference, name)), name


def _assert_same_records(compiled: VecTradingEnv, reference: VecTradingEnv) -> None:
    """Assert that two sequential envs hold the same run so far."""
    assert (compiled.done, compiled.ruined_at) == (reference.done, reference.ruined_at)
    mine, theirs = compiled.records(), reference.records()
    assert mine.ruined_at == theirs.ruined_at
    for name in ("bar", "close", "position", "equity", "buy_and_hold", "cost"):
        assert np.array_equal(getattr(mine, name), getattr(theirs, name)), name


@pytest.mark.parametrize(("action_leverage", "reward", "fill", "borrow"), _EVERY_OPTION)
def test_the_compiled_step_equals_the_numpy_step_bit_for_bit(
    action_leverage: tuple[str, float], reward: str, fill: str, borrow: float
) -> None:
    action, leverage = action_leverage
    options = _options(action, leverage, reward, fill, borrow)
    compiled, reference = _pair(options)
    rng = np.random.default_rng(8)
    ends = {"terminated": 0, "truncated": 0}

    for _ in range(400):
        actions = _random_actions(rng, options, compiled.n_envs)
        mine = compiled.step(actions)
        theirs = reference.step(actions.copy())
        _assert_same_step(mine, theirs)
        _assert_same_state(compiled, reference)
        ends["terminated"] += int(mine.terminated.sum())
        ends["truncated"] += int(mine.truncated.sum())

    assert ends["truncated"] > 0 and ends["terminated"] > 0


@pytest.mark.parametrize(("action_leverage", "reward", "fill", "borrow"), _EVERY_OPTION)
def test_a_compiled_sequential_run_records_what_the_numpy_one_did(
    action_leverage: tuple[str, float], reward: str, fill: str, borrow: float
) -> None:
    action, leverage = action_leverage
    options = _options(action, leverage, reward, fill, borrow)
    compiled, reference = _pair(options, sequential=True)
    rng = np.random.default_rng(9)
    runs, ruined = 0, 0

    # Three whole runs over the 90 bars (the step after a finished run starts the next).
    for _ in range(3 * (90 - options.window)):
        actions = _random_actions(rng, options, 1)
        _assert_same_step(compiled.step(actions), reference.step(actions.copy()))
        _assert_same_state(compiled, reference)
        _assert_same_records(compiled, reference)
        if compiled.done:
            runs += 1
            ruined += compiled.ruined_at >= 0

    assert runs == 3 and ruined > 0


@pytest.mark.parametrize(
    ("action", "bad"),
    [
        ("discrete3", np.array([0, 1, 3, 2, 0])),
        ("discrete3", np.array([0, -1, 2, 2, 0])),
        ("discrete3", np.array([0, 1, 2, 2, 2**63 + 5], dtype=np.uint64)),
        ("discrete3", np.array([0, 1, 2, 2, 1], dtype=np.int8) * np.int8(-1)),
        ("discrete3", np.zeros(5)),
        ("discrete3", np.zeros(5, dtype=bool)),
        ("discrete3", np.zeros(4, dtype=np.int64)),
        ("continuous", np.array([0.5, np.nan, 0.0, 0.0, 0.0], dtype=np.float32)),
        ("continuous", np.array([0.5, 0.0, -np.inf, 0.0, 0.0])),
        ("continuous", np.zeros(5, dtype=np.int64)),
        ("continuous", np.zeros((5, 2), dtype=np.float32)),
    ],
)
def test_refused_actions_raise_the_numpy_steps_message_and_change_nothing(
    action: str, bad: np.ndarray
) -> None:
    options = _options(action, 1.0, "dsr", "next_open", 0.0)
    compiled, reference = _pair(options)
    rng = np.random.default_rng(4)
    for _ in range(5):
        actions = _random_actions(rng, options, 5)
        compiled.step(actions)
        reference.step(actions)
    before = compiled._state.copy()

    with pytest.raises(ValueError) as mine:
        compiled.step(bad)
    with pytest.raises(ValueError) as theirs:
        reference.step(bad)

    assert str(mine.value) == str(theirs.value)
    assert np.array_equal(compiled._state, before, equal_nan=True)
    actions = _random_actions(rng, options, 5)
    _assert_same_step(compiled.step(actions), reference.step(actions))


@pytest.mark.parametrize("action", ["discrete3", "continuous"])
def test_actions_of_any_layout_or_dtype_step_alike_without_compiling_again(action: str) -> None:
    options = _options(action, 2.0, "drawdown_penalty", "next_open", 300.0)
    compiled, reference = _pair(options, n_envs=4)
    compiled_before = [len(function.signatures) for function in _KERNELS]
    rng = np.random.default_rng(6)
    base = _random_actions(rng, options, 4)
    read_only = base.copy()
    read_only.flags.writeable = False
    variants = [base, base.reshape(4, 1), np.repeat(base, 2)[::2], read_only]
    if action == "continuous":
        variants += [base.astype(np.float16), base.astype(np.float64), base.astype(np.float32)]
    else:
        variants += [base.astype(np.int32), base.astype(np.uint8), base.tolist()]

    for actions in variants * 3:
        _assert_same_step(compiled.step(actions), reference.step(np.array(actions)))

    assert [len(function.signatures) for function in _KERNELS] == compiled_before


def test_an_env_compiles_its_kernels_when_it_is_created() -> None:
    VecTradingEnv(EnvOptions(action="continuous"), n_envs=2)

    assert all(function.signatures for function in _KERNELS)
    assert len(_KERNELS[1].signatures) >= 2
