"""Provide the base of every socket-serving actor: poll requests in pieces, answer, heartbeat.

Heartbeats come from a thread of their own with its own publisher socket, so they go on while a handler
runs long synchronous work (building the model, an eval piece); they stop only with the actor or with
its process (a SIGSTOPped process sends none, so the supervisor still sees it hang).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict, TypeVar

import pykka

from actors.ports import Clock, CommandServer, EventPublisher, Ports, ProcessProbe, RequestClient
from messages import (
    ActorStarted,
    ActorStopped,
    Command,
    ErrorRaised,
    Event,
    Heartbeat,
    Incoming,
    Message,
    Ping,
    Pong,
    Reply,
    RequestFailed,
    Stop,
    Stopped,
)
from services.errors import InputError

if TYPE_CHECKING:
    import zmq

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


@dataclass(frozen=True, slots=True)
class _Poll:
    """Internal: take the next batch of requests from the server socket."""


@dataclass(slots=True)
class ActorExit:
    """How an actor ended, for the process that hosts it."""

    event: threading.Event = dataclasses.field(default_factory=threading.Event)
    reason: str = ""
    crashed: bool = False


class _HeartbeatThread:
    """Publish a Heartbeat every interval from a thread and socket of its own until stopped."""

    def __init__(
        self,
        name: str,
        state: Callable[[], str],
        busy_s: Callable[[], float],
        publisher: Callable[[], EventPublisher],
        probe: ProcessProbe,
        interval_s: float,
    ) -> None:
        self._name = name
        self._state = state
        self._busy_s = busy_s
        self._publisher = publisher
        self._probe = probe
        self._interval_s = interval_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{name}-heartbeat", daemon=True)

    def start(self) -> None:
        """Start beating; the first heartbeat goes out at once."""
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and wait for the thread to close its socket."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=max(2 * self._interval_s, 1.0))

    def _run(self) -> None:
        publisher = self._publisher()
        try:
            while not self._stopped.is_set():
                rss, cpu = self._probe.sample()
                beat = Heartbeat(
                    pid=os.getpid(),
                    rss_bytes=rss,
                    cpu_percent=cpu,
                    state=self._state(),
                    busy_s=self._busy_s(),
                )
                publisher.publish(_stamped(beat, self._name))
                self._stopped.wait(self._interval_s)
        except Exception:
            # Without heartbeats the supervisor restarts the actor as hung: say why in its log.
            logger.exception("%s: heartbeats stopped", self._name)
        finally:
            publisher.close()


class _Complaints:
    """Let one kind of complaint through at most once per window, counting the ones held back."""

    def __init__(self, clock: Clock, window_s: float = 5.0) -> None:
        self._clock = clock
        self._window_s = window_s
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def admit(self, kind: str) -> int | None:
        """Return how many of this kind were held back since the last one let through, or None to hold it."""
        now = self._clock.monotonic()
        if now < self._next.get(kind, -1.0):
            self._held[kind] = self._held.get(kind, 0) + 1
            return None
        self._next[kind] = now + self._window_s
        return self._held.pop(kind, 0)


class ServiceArgs(TypedDict):
    """The arguments of every ServiceActor, which subclasses pass on as they came."""

    ports: Ports
    clock: Clock
    probe: ProcessProbe
    heartbeat_s: NotRequired[float]
    exit_note: NotRequired[ActorExit | None]


class ServiceActor(pykka.ThreadingActor):
    """An actor that owns a command server, served in pieces so stop and status are always answered.

    Subclasses implement `handle(peer, command)`; requests that fail to decode, and messages that are
    not commands, are answered with RequestFailed and published as ErrorRaised, and the actor goes on.
    """

    name = "actor"
    idle_poll_ms = 50

    def __init__(
        self,
        *,
        ports: Ports,
        clock: Clock,
        probe: ProcessProbe,
        heartbeat_s: float = 1.0,
        exit_note: ActorExit | None = None,
    ) -> None:
        super().__init__()
        self.exit_note = exit_note or ActorExit()
        self._ports = ports
        self._clock = clock
        self._heartbeats: _HeartbeatThread | None = None
        if ports.publisher is not None:
            self._heartbeats = _HeartbeatThread(
                self.name, lambda: self._state, self.busy_s, ports.publisher, probe, heartbeat_s
            )
        self._server: CommandServer | None = None
        self._publisher: EventPublisher | None = None
        self._clients: dict[str, RequestClient] = {}
        self._state = "starting"
        self._busy = False
        self._busy_since: float | None = None
        self._queued = 0
        """Requests of the current poll not handled yet (the one being handled excluded)."""
        self._complaints = _Complaints(clock)
        """Bad requests are answered and published one by one but logged at most once per window."""
        self.stop_reason = ""

    # Lifecycle.

    def on_start(self) -> None:
        """Create the sockets in the actor's thread and start serving."""
        if self._ports.publisher is not None:
            self._publisher = self._ports.publisher()
        if self._ports.server is not None:
            self._server = self._ports.server()
        for name, factory in self._ports.clients.items():
            self._clients[name] = factory()
        self._state = "idle"
        self.publish(ActorStarted(pid=os.getpid()))
        if self._heartbeats is not None:
            self._heartbeats.start()
        self.started()
        self.actor_ref.tell(_Poll())

    def started(self) -> None:
        """Run once after the sockets exist (subclasses override)."""

    def on_stop(self) -> None:
        """Stop the heartbeats, announce the stop and close every socket."""
        if self._heartbeats is not None:
            self._heartbeats.stop()
        self.publish(ActorStopped(pid=os.getpid(), reason=self.stop_reason))
        for client in self._clients.values():
            client.close()
        if self._server is not None:
            self._server.close()
        if self._publisher is not None:
            self._publisher.close()
        self.exit_note.reason = self.stop_reason
        self.exit_note.event.set()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """Log the crash with its cause; the process host exits non-zero."""
        logger.error("%s actor crashed: %s: %s", self.name, exception_type.__name__, exception_value)
        self.stop_reason = f"crashed: {exception_type.__name__}: {exception_value}"
        self.exit_note.crashed = True
        self.publish(ErrorRaised(where=self.name, error=self.stop_reason, fatal=True))
        self.on_stop()

    # Messages.

    def on_receive(self, message: Any) -> Any:
        """Dispatch internal messages; requests arrive through the server socket."""
        self._busy_since = self._clock.monotonic()
        try:
            match message:
                case _Poll():
                    self._poll()
                case _:
                    return self.on_internal(message)
            return None
        finally:
            self._busy_since = None

    def busy_s(self) -> float:
        """Seconds spent on the message being handled now (0 between messages); read by the heartbeats."""
        since = self._busy_since
        return 0.0 if since is None else max(0.0, self._clock.monotonic() - since)

    def on_internal(self, message: Any) -> Any:
        """Handle an internal (in-process) message; subclasses override."""
        logger.warning("%s: unexpected internal message %r", self.name, type(message).__name__)
        return None

    def _poll(self) -> None:
        if self.actor_stopped.is_set():
            return
        if self._server is not None:
            timeout = 0 if self._busy else self.poll_timeout_ms()
            batch = self._server.poll(timeout)
            for index, item in enumerate(batch):
                self._queued = len(batch) - index - 1
                self._dispatch(item)
                if self.actor_stopped.is_set():
                    return
            self._queued = 0
        self.after_poll()
        if not self.actor_stopped.is_set():
            self.actor_ref.tell(_Poll())

    def requests_waiting(self) -> bool:
        """Tell, from within a handler, whether other work waits: requests polled after the one being
        handled, one on the socket, or a message in the actor's inbox (a stop). A handler that holds on
        (the env actor's lease) ends when this says so."""
        if self._queued or not self.actor_inbox.empty():
            return True
        return self._server is not None and self._server.pending()

    def request_socket(self) -> zmq.Socket[bytes] | None:
        """The command socket, for a handler that sleeps until a request comes (None without one)."""
        return None if self._server is None else self._server.socket

    def poll_timeout_ms(self) -> int:
        """How long an idle poll of the command socket may block."""
        return self.idle_poll_ms

    def after_poll(self) -> None:
        """Do other waiting work after each poll; without a server, wait a little (subclasses override)."""
        if self._server is None and not self._busy:
            self.actor_stopped.wait(self.idle_poll_ms / 1000)

    def _dispatch(self, item: Incoming) -> None:
        msg = item.message
        if msg is None:
            self._complain(f"{self.name} socket", item.error)
            failed = RequestFailed(request="?", correlation_id=item.request_id, error=item.error)
            self.reply(item.peer, failed)
            return
        match msg:
            case Stop():
                logger.info("%s: stopping (%s)", self.name, msg.reason or "asked to")
                self.before_stop(msg.reason)
                self.reply(item.peer, Stopped(correlation_id=msg.msg_id))
                self.stop_reason = msg.reason
                self.stop()
            case Ping():
                self.reply(item.peer, Pong(correlation_id=msg.msg_id, state=self._state, pid=os.getpid()))
            case Command():
                try:
                    self.handle(item.peer, msg)
                except InputError as exc:
                    # The user's data or config is wrong: one line for them, no traceback.
                    logger.warning("%s: %s refused: %s", self.name, type(msg).__name__, exc)
                    self.publish(ErrorRaised(where=f"{self.name}.{type(msg).__name__}", error=str(exc)))
                    self.reply(item.peer, self.failure(msg, str(exc), kind="input"))
                except Exception as exc:
                    # A failed request is answered and published, not a crash; the first of a kind in a
                    # window logs its traceback, the rest are counted.
                    error = f"{type(exc).__name__}: {exc}"
                    self._complain(f"{self.name}.{type(msg).__name__}", error, exc)
                    self.reply(item.peer, self.failure(msg, error))
            case _:
                self._refuse(item.peer, msg)

    def handle(self, peer: bytes, msg: Command) -> None:
        """Serve one command; subclasses match on its type and refuse the rest with super().handle."""
        self._refuse(peer, msg)

    def _refuse(self, peer: bytes, msg: Message) -> None:
        """Answer a message this actor does not serve with RequestFailed, and publish the refusal."""
        error = f"{self.name} does not serve {type(msg).__name__}"
        self._complain(self.name, error)
        self.reply(peer, self.failure(msg, error))

    def _complain(self, where: str, error: str, exc: BaseException | None = None) -> None:
        """Publish a bad request's error; log it at most once a window per place, with the count held back."""
        self.publish(ErrorRaised(where=where, error=error))
        held = self._complaints.admit(where)
        if held is not None:
            more = f" (and {held} more like it since the last line)" if held else ""
            logger.warning("%s: %s%s", where, error, more, exc_info=exc)

    def before_stop(self, reason: str) -> None:
        """Finish or abandon work before a Stop is acknowledged (subclasses override)."""

    # Helpers for subclasses.

    def failure(self, request: Message, error: str, *, kind: str = "internal") -> RequestFailed:
        """Build the error reply to a request (kind "input" when the user's data or config is at fault)."""
        return RequestFailed(
            correlation_id=request.msg_id, request=type(request).__name__, error=error, kind=kind
        )

    def reply(self, peer: bytes, msg: Reply) -> None:
        """Answer a peer, stamping this actor as the sender."""
        if self._server is not None:
            self._server.reply(peer, _stamped(msg, self.name))

    def publish(self, msg: Event) -> None:
        """Publish an event, stamping this actor as the sender."""
        if self._publisher is not None:
            self._publisher.publish(_stamped(msg, self.name))

    def client(self, name: str) -> RequestClient:
        """Return the request client to another actor."""
        return self._clients[name]

    def set_state(self, state: str) -> None:
        """Record what the actor is doing (reported in heartbeats)."""
        self._state = state


def _stamped(msg: M, sender: str) -> M:
    if msg.sender:
        return msg
    return dataclasses.replace(msg, sender=sender)
