"""Define the events published on the bus (PUB -> XSUB/XPUB proxy -> SUB); they may be dropped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from messages.base import Event


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStarted(Event):
    """The session started: its name, run folder, endpoints and plan."""

    name: str
    run_dir: str
    monitor: str
    """Endpoint a monitor connects to."""
    episodes: int
    steps_per_episode: int
    config: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionFinished(Event):
    """The session ended; status is "completed", "stopped" or "failed"."""

    name: str
    status: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorStarted(Event):
    """An actor started in process `pid`."""

    pid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorStopped(Event):
    """An actor stopped."""

    pid: int
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class ActorRestarted(Event):
    """The supervisor restarted an actor's process after it died or hung."""

    kind: str
    """Which actor: data, env, model or monitor."""
    pid: int
    restarts: int
    """Restarts of this actor so far in the session."""
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Event):
    """An actor is alive: its process id, memory and CPU use and what it is doing."""

    pid: int
    rss_bytes: int
    cpu_percent: float
    state: str
    busy_s: float = 0.0
    """Seconds the actor has spent on the message it is handling now (0 between messages)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataLoaded(Event):
    """The data actor loaded and processed its source (once per session)."""

    source: str
    rows: int
    features: tuple[str, ...]
    bars_per_year: float
    data_hash: str
    cached: bool
    seconds: float
    close_only: bool = False
    """The source has closes only: its bars are flat at each close, so every fill is at the next close."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows data.source.nan_policy=drop left out, by reason ("missing close")."""
    filled: int = 0
    """Rows with a missing value that data.source.nan_policy=ffill filled."""
    clipped: int = 0
    """Bars whose high and low data.source.ohlc_policy=clip widened."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvsCreated(Event):
    """The env actor created its envs (once per session)."""

    n_envs: int
    obs_shape: tuple[int, ...]
    action: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DataSwapped(Event):
    """The env actor swapped new data into its existing envs."""

    split: str
    rows: int
    episode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCreated(Event):
    """The session's one model was created (exactly once per session)."""

    model_id: str
    algorithm: str
    device: str
    parameters: int
    episode: int
    restored_from: str = ""
    """Checkpoint the model was restored from on resume; empty for a new model."""
    total_steps: int = 0
    """The model's step counter when it was created or restored."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointWritten(Event):
    """The model actor wrote a checkpoint (after an episode, or on stop mid-episode)."""

    model_id: str
    episode: int
    complete: bool
    total_steps: int
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelReused(Event):
    """The existing model serves another episode."""

    model_id: str
    episode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodeStarted(Event):
    """The session started an episode."""

    episode: int
    episodes: int
    steps: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingProgress(Event):
    """Progress of the current episode's training."""

    model_id: str
    episode: int
    steps: int
    """Steps done in this episode."""
    steps_total: int
    """Steps budgeted for this episode."""
    total_steps: int
    """The model's step counter."""
    steps_per_s: float
    eta_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingMetrics(Event):
    """Values of SB3's logger after a rollout/update (losses, entropy, fps, episode reward)."""

    model_id: str
    episode: int
    total_steps: int
    values: dict[str, float]


@dataclass(frozen=True, slots=True, kw_only=True)
class EpisodeFinished(Event):
    """An episode finished training."""

    model_id: str
    episode: int
    steps: int
    total_steps: int
    seconds: float
    steps_per_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationFinished(Event):
    """An episode's evaluation finished: agent and buy-and-hold metrics on the eval window."""

    model_id: str
    episode: int
    agent: dict[str, float]
    buy_and_hold: dict[str, float]
    ruined_at: int = -1
    """Eval record row at which the agent was ruined and flattened for the rest of the window; -1: never."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorRaised(Event):
    """Something went wrong that the actor survived (or not: `fatal`)."""

    where: str
    error: str
    fatal: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyStarted(Event):
    """A `run.py tune` process started (or resumed) a study: its plan and what it holds already."""

    name: str
    run_dir: str
    """runs/<study>/: the trials' folders, the report and this process's events."""
    trials: int
    """N: the study runs until it holds N finished (complete or pruned) trials."""
    seeds: int
    """Sessions per trial."""
    episodes: int
    """Episodes per session."""
    finished: int
    """Trials finished before this process started."""
    storage: str
    """The storage URL, without its password."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialStarted(Event):
    """A trial drew its configuration and starts its first seed's session."""

    number: int
    params: dict[str, Any]
    """Config key -> value of each searched key."""
    retry_of: int = -1
    """The failed trial this one retries with the same parameters; -1: none."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedStarted(Event):
    """A trial's seed session starts; `run.py monitor --run RUN_DIR` attaches to it."""

    number: int
    seed: int
    run_dir: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialProgressed(Event):
    """How far a trial's running seed session has trained (at most one a second per trial)."""

    number: int
    seed: int
    episode: int
    steps: int
    """Steps done in this episode."""
    steps_total: int
    """Steps budgeted for this episode."""
    steps_per_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialReported(Event):
    """A trial's seed session evaluated an episode; the value went to the pruner."""

    number: int
    seed: int
    episode: int
    sharpe: float
    """The validation Sharpe ratio (annualised) the pruner judges."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialCompleted(Event):
    """A trial completed every seed: its objective and the study's best so far."""

    number: int
    value: float
    """The interquartile mean of the seeds' last validation Sharpe ratios."""
    seed_sharpes: tuple[float, ...]
    finished: int
    """Finished trials of the study after this one."""
    best_number: int
    best_value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialPruned(Event):
    """The median pruner stopped a trial (its session was stopped as a user stops one)."""

    number: int
    reason: str
    finished: int
    best_number: int = -1
    """-1 while no trial has completed."""
    best_value: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialFailed(Event):
    """A trial's session failed; the study goes on (a trial failing N times in a row ends it)."""

    number: int
    error: str
    finished: int
    best_number: int = -1
    best_value: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyFinished(Event):
    """The `run.py tune` process ends: status "completed" (trials and lockbox done), "stopped" or "failed"."""

    name: str
    status: str
    finished: int
    best_number: int = -1
    best_value: float = 0.0
    report: str = ""
    """runs/<study>/report.md"""
    reason: str = ""
