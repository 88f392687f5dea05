"""Define the small protocols through which actors use sockets, models, envs and the clock."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from messages import Incoming, Message


class CommandServer(Protocol):
    """Receives requests and answers peers (a ROUTER in production)."""

    def poll(self, timeout_ms: int, limit: int = 64) -> list[Incoming]:
        """Return the requests available within timeout_ms."""
        ...

    def reply(self, peer: bytes, msg: Message) -> bool:
        """Answer one peer; False when it is gone."""
        ...

    def close(self) -> None:
        """Release the socket."""
        ...


class RequestClient(Protocol):
    """Sends requests to one actor and waits for replies (a DEALER in production)."""

    def request(self, msg: Message, timeout_s: float | None = None) -> Message:
        """Send and return the reply carrying the request's id; raise on timeout or error reply."""
        ...

    def send(self, msg: Message) -> None:
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

    def publish(self, msg: Message) -> None:
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
