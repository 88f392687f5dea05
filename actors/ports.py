"""Define the small protocols through which actors use sockets, models, envs, data and the clock.

Everything an actor needs of the world is here: the socket ports, the clock and process probe, one
factory per object it owns (ModelFactory, EnvFactory, DataService) and the one exception a request can
raise (TransportError). Types named only in annotations are imported for the type checker alone, so
importing an actor loads neither ZeroMQ, SB3, torch nor gymnasium.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from messages import Command, DataLoaded, Event, Incoming, Message, Reply
from services.errors import TransportError

if TYPE_CHECKING:
    import zmq

    from services.data.dataset import EpisodeSplit
    from services.env.records import StepOutputs, StepResult

__all__ = [
    "Clock",
    "CommandServer",
    "DataService",
    "EnvFactory",
    "EventPublisher",
    "EventSubscriber",
    "ModelFactory",
    "Ports",
    "ProcessProbe",
    "RequestClient",
    "TrainableModel",
    "TransportError",
    "VecEnvCore",
]


class CommandServer(Protocol):
    """Receives requests and answers peers (a ROUTER in production)."""

    def poll(self, timeout_ms: int, limit: int = 64) -> list[Incoming]:
        """Return the requests available within timeout_ms."""
        ...

    def reply(self, peer: bytes, msg: Reply) -> bool:
        """Answer one peer; False when it is gone."""
        ...

    def pending(self) -> bool:
        """Tell, without blocking, whether a request waits to be polled."""
        ...

    @property
    def socket(self) -> zmq.Socket[bytes] | None:
        """The socket requests arrive on, for a handler that sleeps until one comes (None: it asks
        `pending` now and then instead)."""
        ...

    def close(self) -> None:
        """Release the socket."""
        ...


class RequestClient(Protocol):
    """Sends commands to one actor and waits for replies (a DEALER in production)."""

    def request(self, msg: Command, timeout_s: float | None = None) -> Message:
        """Send and return the reply carrying the request's id; raise TransportError on timeout or error."""
        ...

    def send(self, msg: Command) -> None:
        """Send without waiting."""
        ...

    def receive(self, timeout_ms: int) -> Message | None:
        """Return the next message within timeout_ms, or None."""
        ...

    def close(self) -> None:
        """Release the socket."""
        ...


class EventPublisher(Protocol):
    """Publishes events; never blocks."""

    def publish(self, msg: Event) -> None:
        """Publish one event."""
        ...

    def close(self) -> None:
        """Release the socket."""
        ...


class EventSubscriber(Protocol):
    """Receives numbered events from the hub (a SUB in production)."""

    def receive(self, timeout_ms: int) -> tuple[int, Message] | None:
        """Return the next (seq, event) within timeout_ms, or None."""
        ...

    def close(self) -> None:
        """Release the socket."""
        ...


class ProcessProbe(Protocol):
    """Reads the resident memory and CPU use of the current process."""

    def sample(self) -> tuple[int, float]:
        """Return (rss_bytes, cpu_percent since the last sample)."""
        ...


class Clock(Protocol):
    """Tells time; injected so tests are deterministic."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def time(self) -> float:
        """Seconds since the epoch."""
        ...


@dataclass(frozen=True, slots=True)
class Ports:
    """Factories of an actor's sockets, called in the actor's own thread (one socket per thread)."""

    server: Callable[[], CommandServer] | None = None
    publisher: Callable[[], EventPublisher] | None = None
    clients: Mapping[str, Callable[[], RequestClient]] = field(default_factory=dict)
    subscriber: Callable[[], EventSubscriber] | None = None


class DataService(Protocol):
    """Loads and processes the source once and cuts each episode's windows (the data actor's)."""

    def load(self) -> DataLoaded:
        """Read, validate and process the source (or take it from the cache)."""
        ...

    def episode(self, episode: int) -> EpisodeSplit:
        """Return the normalised train and eval arrays of an episode."""
        ...


class VecEnvCore(Protocol):
    """The vectorized env as the env actor uses it (services.env.vec_env.VecTradingEnv)."""

    n_envs: int

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""
        ...

    def update_data(self, features: np.ndarray, open_: np.ndarray, close: np.ndarray) -> None:
        """Swap the data in place."""
        ...

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Reset every env."""
        ...

    def step(self, actions: np.ndarray) -> StepResult:
        """Step every env with one action each."""
        ...

    def share_outputs(self, outputs: StepOutputs) -> None:
        """Step into these arrays (a shared step buffer's) from now on; ValueError if they do not fit."""
        ...


class EnvFactory(Protocol):
    """The one way to build the envs (called once per role per session)."""

    action: str
    n_actions: int
    max_leverage: float

    def create(self, role: str, bars_per_year: float) -> VecEnvCore:
        """Build the train envs or the sequential eval env."""
        ...

    def evaluation(self, env: VecEnvCore, timestamps: np.ndarray, bars_per_year: float) -> dict[str, Any]:
        """Return agent and buy_and_hold metrics plus the per-bar arrays of a finished eval run.

        The keys are those of EvaluationComputed: agent, buy_and_hold, timestamp, close, position,
        equity, bh_equity and ruined_at.
        """
        ...


class TrainableModel(Protocol):
    """What the model actor needs of the model: training in pieces and a deterministic evaluation run."""

    model_id: str
    device: str
    restored_from: str

    @property
    def num_timesteps(self) -> int:
        """The step counter, continuous across episodes."""
        ...

    @property
    def parameters(self) -> int:
        """Number of trainable parameters."""
        ...

    def learn(self, steps: int, tick: Callable[[int], bool]) -> int:
        """Train at least `steps` more steps; return the steps trained."""
        ...

    def start_evaluation(self) -> None:
        """Start a deterministic evaluation pass on the eval envs, from their first bar."""
        ...

    def evaluate(self, steps: int) -> bool:
        """Take up to `steps` more steps of the evaluation pass; return True once it reached the last bar."""
        ...


class ModelFactory(Protocol):
    """The one way to build the session's model (called once per session)."""

    algorithm: str

    @property
    def restores(self) -> bool:
        """Whether create() restores a checkpoint (a resumed session, or a model restarted mid-session)."""
        ...

    def create(
        self, env_client: RequestClient, on_values: Callable[[int, dict[str, float]], None]
    ) -> TrainableModel:
        """Build (or restore, on resume) the model on remote envs reached through env_client."""
        ...

    def checkpoint(self, model: Any, episode: int, complete: bool) -> str:
        """Write a checkpoint atomically and return its path; raise if it cannot be written."""
        ...
