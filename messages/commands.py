"""Define the commands sent DEALER -> ROUTER and the replies that answer them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from messages.base import Command, Reply


def _empty_f32() -> np.ndarray:
    return np.zeros(0, dtype=np.float32)


def _empty_f64() -> np.ndarray:
    return np.zeros(0, dtype=np.float64)


def _empty_i64() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


def _empty_bool() -> np.ndarray:
    return np.zeros(0, dtype=bool)


def _empty_f64_2d() -> np.ndarray:
    return np.zeros((0, 0), dtype=np.float64)


# Session -> data actor.


@dataclass(frozen=True, slots=True, kw_only=True)
class PrepareEpisode(Command):
    """Make sure the env actor holds the data of this episode, streaming it if needed."""

    episode: int
    """1-based episode number."""
    force: bool = False
    """Stream the data even if the env actor should already hold it (it was restarted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodeDataReady(Reply):
    """Reply to PrepareEpisode: the env actor holds the episode's train and eval data."""

    episode: int
    train_rows: int
    eval_rows: int
    bars_per_year: float
    data_hash: str
    """Hash of the source files and the feature config (the cache key)."""
    streamed: bool
    """False when the env actor already held this episode's data."""
    train_start: str = ""
    """ISO timestamp of the first train bar."""
    eval_start: str = ""
    """ISO timestamp of the first eval bar."""
    eval_end: str = ""
    """ISO timestamp of the last eval bar."""


# Data actor -> env actor.


class SplitRows(Protocol):
    """The rows of a split as the data actor streams them: a length and blocks of rows."""

    def __len__(self) -> int:
        """Rows of the split."""
        ...

    def block(self, start: int, stop: int) -> Any:
        """Return rows [start, stop): a value with features, open, close and timestamp arrays."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DataBlock(Command):
    """Carry one bounded block of processed bars for the train or eval split."""

    split: str
    """"train" or "eval"."""
    offset: int
    """Row of the split where this block starts."""
    total_rows: int
    """Rows of the whole split, so the receiver can allocate once."""
    features: np.ndarray = field(default_factory=_empty_f32)
    """Normalised features, float32 [rows, n_features] (a portfolio: [rows, n_assets, n_features])."""
    open: np.ndarray = field(default_factory=_empty_f64)
    """Open prices, float64 [rows] (a portfolio: [rows, n_assets], NaN where an asset has no bar)."""
    close: np.ndarray = field(default_factory=_empty_f64)
    """Close prices, float64 [rows] (a portfolio: [rows, n_assets], NaN where an asset has no bar)."""
    timestamp: np.ndarray = field(default_factory=_empty_i64)
    """Bar times, int64 nanoseconds since the epoch [rows]."""
    tradable: np.ndarray = field(default_factory=_empty_bool)
    """A portfolio's bool [rows, n_assets]: the asset has a bar and complete features; empty otherwise."""

    @classmethod
    def cut(cls, split: str, rows: SplitRows, block_rows: int, *, sender: str = "") -> Iterator[DataBlock]:
        """Cut a split into blocks of `block_rows` rows, in order: how a split is streamed to the env."""
        total = len(rows)
        for start in range(0, total, block_rows):
            block = rows.block(start, min(start + block_rows, total))
            tradable = getattr(block, "tradable", None)
            yield cls.from_value(
                block,
                split=split,
                offset=start,
                total_rows=total,
                sender=sender,
                tradable=_empty_bool() if tradable is None else tradable,
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockAccepted(Reply):
    """Acknowledge a DataBlock (flow control: the sender waits for it)."""

    split: str
    offset: int
    rows: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DataComplete(Command):
    """End a split's stream: the receiver installs the blocks into its envs."""

    split: str
    total_rows: int
    bars_per_year: float
    episode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class DataInstalled(Reply):
    """Reply to DataComplete: the envs of this split now use the new data."""

    split: str
    rows: int


# Session -> env actor.


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSession(Command):
    """Record the session name and episode in the env actor, re-creating nothing."""

    name: str
    episode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionSet(Reply):
    """Reply to SetSession."""

    name: str
    episode: int
    envs_created: int
    """How many times the env actor has created its envs (1 in a healthy session)."""


# Model actor -> env actor (the remote VecEnv).


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeEnvs(Command):
    """Ask for the spaces and size of the train or eval envs."""

    role: str
    """"train" or "eval"."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvSpec(Reply):
    """Describe a vectorized env so that the model side can build its spaces."""

    role: str
    n_envs: int
    obs_shape: tuple[int, ...]
    action: str
    """"discrete3", "discrete2" or "continuous"."""
    n_actions: int
    """Number of discrete actions; 0 for continuous."""
    max_leverage: float
    action_size: int = 0
    """Values of a portfolio's Box action of raw target weights (M + 1 long-only, M long-short); 0 for
    the single-asset action of `action`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ResetEnvs(Command):
    """Reset every env of a role; a seed makes the episode offsets reproducible."""

    role: str
    seed: int = -1
    """Seed for the offsets; -1 keeps the current generator."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvsReset(Reply):
    """Reply to ResetEnvs: the first observations."""

    obs: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class StepEnvs(Command):
    """Step every env of a role with one action each, in one batch."""

    role: str
    actions: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvsStepped(Reply):
    """Reply to StepEnvs: the batched results, finished envs already reset."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    terminal_obs: np.ndarray
    """Last observations of the envs that finished on this step, in env order, one row per finished env."""
    episode_return: np.ndarray
    episode_length: np.ndarray


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachShared(Command):
    """Ask the env actor for shared step buffers of a role, sized for these envs (same host only)."""

    role: str
    n_envs: int
    obs_shape: tuple[int, ...]
    action: str
    """The EnvSpec's action: the buffer holds int64 actions for a discrete one, float32 otherwise."""
    action_size: int = 0
    """The EnvSpec's action_size: a portfolio's buffer holds a row of that many float32 weights per env."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedAttached(Reply):
    """Reply to AttachShared: the buffer file, in the folder of the env actor's ipc socket, and its size."""

    role: str
    name: str
    size: int
    """Bytes of the file; the model refuses a buffer whose size does not match its env spec."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepShared(Command):
    """Step every env of a role with the actions in its shared buffer (the token of a shared step)."""

    role: str
    name: str
    """The buffer, as SharedAttached named it."""
    step: int
    """The step number the model wrote after the actions; the results come back under it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedStepped(Reply):
    """Reply to StepShared: the step's results are in the shared buffer, its step number written last."""

    step: int
    finished: int
    """Envs that finished on this step (their terminal rows come first in the buffer)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FinishEvaluation(Command):
    """Ask the env actor for the metrics and records of the finished evaluation run."""

    episode: int
    offset: int = 0
    """First record row wanted."""
    limit: int = 0
    """Most record rows wanted (0: every row from offset on)."""
    max_bytes: int = 0
    """Most bytes of per-bar records in the reply (0: no bound): the env actor, which knows a row's
    size (a portfolio's grows with its assets), sends fewer rows than `limit` to stay under it."""


RECORD_ARRAYS = ("timestamp", "close", "position", "equity", "bh_equity")
"""The per-bar arrays of an evaluation record, cut into pieces for long runs (rows first)."""
PORTFOLIO_ARRAYS = ("asset_close", "tradable", "weights", "traded", "costs", "pnl")
"""A portfolio evaluation's per-bar, per-asset arrays, cut into pieces like the others."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Evaluation(Reply):
    """Fields of both evaluation replies (not a message type itself: the codec skips _ names).

    The model actor answers EvaluateEpisode with the env actor's records as they came, adding its model
    id (`EvaluationReport.from_value(computed, ...)`), so the arrays are never repacked on the way.
    """

    episode: int
    agent: dict[str, float]
    buy_and_hold: dict[str, float]
    timestamp: np.ndarray = field(default_factory=_empty_i64)
    close: np.ndarray = field(default_factory=_empty_f64)
    position: np.ndarray = field(default_factory=_empty_f64)
    equity: np.ndarray = field(default_factory=_empty_f64)
    bh_equity: np.ndarray = field(default_factory=_empty_f64)
    ruined_at: int = -1
    """Record row at which the agent's equity first fell to env.ruin_equity; from the decision at that
    bar on it is flat (closing costs charged) to the end of the window. -1: never ruined."""
    offset: int = 0
    """Record row of the first row these arrays hold (a long run's records come in pieces)."""
    total_rows: int = 0
    """Record rows of the whole run (0: these arrays hold them all)."""
    symbols: tuple[str, ...] = ()
    """A portfolio's symbols, in the column order of the per-asset arrays below; empty for one asset."""
    asset_close: np.ndarray = field(default_factory=_empty_f64_2d)
    """A portfolio's float64 [rows, M]: each asset's last close at or before the bar."""
    tradable: np.ndarray = field(default_factory=_empty_bool)
    """A portfolio's bool [rows, M]: the asset could be chosen at the bar's decision."""
    weights: np.ndarray = field(default_factory=_empty_f64_2d)
    """A portfolio's float64 [rows, M]: the weights held at the bar's close."""
    traded: np.ndarray = field(default_factory=_empty_f64_2d)
    """A portfolio's float64 [rows, M]: |w_new - w_g| of the fill during the bar."""
    costs: np.ndarray = field(default_factory=_empty_f64_2d)
    """A portfolio's float64 [rows, M]: costs paid for each asset during the bar (units of start equity)."""
    pnl: np.ndarray = field(default_factory=_empty_f64_2d)
    """A portfolio's float64 [rows, M]: each asset's profit during the bar before costs."""
    portfolio: dict[str, Any] = field(default_factory=dict)
    """A portfolio's other figures (docs/PORTFOLIO.md, section 5): equal_weight_rebalanced (metrics),
    assets (symbol -> turnover, costs, contribution, mean_weight, alone), gross_exposure, net_exposure."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationComputed(_Evaluation):
    """Reply to FinishEvaluation: metrics of the agent and buy-and-hold plus per-bar records."""


# Session -> model actor.


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainEpisode(Command):
    """Train the session's one model for this many steps."""

    episode: int
    steps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodeTrained(Reply):
    """Reply to TrainEpisode: the model trained for the episode's steps."""

    episode: int
    model_id: str
    steps: int
    """Steps trained in this episode (whole rollouts, so at least the budget)."""
    total_steps: int
    """The model's step counter after the episode."""
    seconds: float
    steps_per_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluateEpisode(Command):
    """Evaluate the session's model deterministically on the eval window."""

    episode: int
    offset: int = 0
    """First record row wanted in the reply; above 0 it asks for the next piece of the finished run's
    records (the model evaluates again only if it has no finished run of this episode)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationReport(_Evaluation):
    """Reply to EvaluateEpisode: metrics and per-bar records of the eval run."""

    model_id: str


# Any client -> any actor.


@dataclass(frozen=True, slots=True, kw_only=True)
class Stop(Command):
    """Stop the actor after the current piece of work."""

    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopped(Reply):
    """Reply to Stop: the actor is stopping."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Ping(Command):
    """Ask an actor whether it is alive and what it is doing."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Pong(Reply):
    """Reply to Ping."""

    state: str
    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestFailed(Reply):
    """Reply to any request that could not be served, saying why."""

    request: str
    """Type name of the failed request."""
    error: str
    """One line naming what went wrong."""
    kind: str = "internal"
    """"input" when the user's data or config is at fault (the line is then for the user as is; the
    launcher exits with status 2), "internal" for every other failure."""


# Monitor -> session (the only requests a monitor can make).


@dataclass(frozen=True, slots=True, kw_only=True)
class DescribeSession(Command):
    """Ask the session for its name and the event endpoint to subscribe to."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionDescription(Reply):
    """Reply to DescribeSession."""

    name: str
    events: str
    """Endpoint of the event stream (XPUB)."""
    protocol: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestSnapshot(Command):
    """Ask the session for the current state (zguide Clone pattern)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot(Reply):
    """Reply to RequestSnapshot: the state after event number `seq`."""

    seq: int
    state: dict[str, Any]
