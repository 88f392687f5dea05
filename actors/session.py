"""Drive the episode loop: per episode, data to the envs, TrainEpisode, then EvaluateEpisode, one model."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pykka

from actors.ports import Clock, EventPublisher, Ports, RequestClient
from messages import (
    Command,
    EpisodeDataReady,
    EpisodeStarted,
    EpisodeTrained,
    ErrorRaised,
    EvaluateEpisode,
    EvaluationReport,
    Event,
    Message,
    PrepareEpisode,
    RequestFailed,
    SessionFinished,
    SetSession,
    Stop,
    TrainEpisode,
    new_id,
)
from messages.commands import PORTFOLIO_ARRAYS, RECORD_ARRAYS

logger = logging.getLogger(__name__)

MAX_RETRIES = 5
"""Times the current call is sent again after restarts of the actors it involves."""
STOP_ORDER = ("model", "env", "data")
"""Actors are stopped in reverse order of their start; the monitor stops on SessionFinished."""


@dataclass(frozen=True, slots=True)
class Call:
    """A request the episode script waits on: to whom, what, and how long (None: while alive)."""

    actor: str
    msg: Command
    timeout_s: float | None


@dataclass(frozen=True, slots=True)
class Abort:
    """Stop the session after the current piece (a signal, or a dead actor)."""

    reason: str
    status: str = "stopped"


@dataclass(frozen=True, slots=True)
class Restarted:
    """The supervisor restarted an actor's process: redo what its death lost."""

    actor: str


@dataclass(frozen=True, slots=True)
class _Wait:
    """Internal: poll for the reply to call number `call`; waits for older calls are dropped."""

    call: int


@dataclass(slots=True)
class Outcome:
    """How the session ended and what it produced."""

    status: str = "running"
    reason: str = ""
    input_error: bool = False
    """True when the session failed on the user's data or config (reason is then the line for them)."""
    trained: list[EpisodeTrained] = field(default_factory=list)
    reports: list[EvaluationReport] = field(default_factory=list)
    data: EpisodeDataReady | None = None
    done: threading.Event = field(default_factory=threading.Event)
    """Set when the session actor has stopped."""


class SessionActor(pykka.ThreadingActor):
    """Runs the episode loop of DESIGN section 2 against the data, env and model actors."""

    name = "session"

    def __init__(
        self,
        *,
        outcome: Outcome,
        session_name: str,
        episodes: int,
        first_episode: int = 1,
        steps_per_episode: int,
        ports: Ports,
        clock: Clock,
        request_timeout_s: float,
        hang_timeout_s: float,
        heartbeat_age: Callable[[str], float],
        on_report: Callable[[EvaluationReport], None],
        stop_timeout_s: float = 10.0,
        supervised: bool = False,
    ) -> None:
        super().__init__()
        self._session_name = session_name
        self._episodes = episodes
        self._first_episode = first_episode
        self._steps = steps_per_episode
        self._ports = ports
        self._clock = clock
        self._request_timeout_s = request_timeout_s
        self._hang_timeout_s = hang_timeout_s
        self._heartbeat_age = heartbeat_age
        self._on_report = on_report
        self._stop_timeout_s = stop_timeout_s
        self._supervised = supervised
        self._clients: dict[str, RequestClient] = {}
        self._publisher: EventPublisher | None = None
        self._script: Generator[Call, Message | None, None] | None = None
        self._call: Call | None = None
        self._deadline: float | None = None
        self._stopping = False
        self._calls = 0
        self._active: Call | None = None
        self._side: deque[Call] = deque()
        self._restarted: set[str] = set()
        self._retries = 0
        self._episode = 0
        self.outcome = outcome

    def on_start(self) -> None:
        """Create the clients in this thread and start the episode loop."""
        for name, factory in self._ports.clients.items():
            self._clients[name] = factory()
        if self._ports.publisher is not None:
            self._publisher = self._ports.publisher()
        self._script = self._episode_loop()
        self._advance(None)

    def on_stop(self) -> None:
        """Close every socket."""
        for client in self._clients.values():
            client.close()
        if self._publisher is not None:
            self._publisher.close()
        self.outcome.done.set()

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        """A crash of this actor fails the session: the launcher, waiting on `done`, then stops the rest."""
        logger.error("session actor crashed: %s: %s", exception_type.__name__, exception_value)
        if self.outcome.status == "running":
            self.outcome.status = "failed"
            self.outcome.reason = f"the session actor crashed: {exception_type.__name__}: {exception_value}"
        self.on_stop()

    def on_receive(self, message: Any) -> Any:
        """Handle waits and aborts."""
        match message:
            case _Wait(call=n) if n == self._calls:
                self._wait()
            case _Wait():
                pass
            case Abort():
                self._abort(message.reason, message.status)
            case Restarted():
                self._on_restart(message.actor)
            case _:
                logger.warning("session: unexpected message %r", type(message).__name__)
        return None

    def _publish(self, msg: Event) -> None:
        if self._publisher is not None:
            self._publisher.publish(msg)

    # The script.

    def _episode_loop(self) -> Generator[Call, Message | None, None]:
        for k in range(self._first_episode, self._episodes + 1):
            self._episode = k
            yield Call(
                "env",
                SetSession(name=self._session_name, episode=k, sender=self.name),
                self._request_timeout_s,
            )
            ready = yield Call("data", PrepareEpisode(episode=k, sender=self.name), self._request_timeout_s)
            if isinstance(ready, EpisodeDataReady):
                self.outcome.data = ready
            self._publish(
                EpisodeStarted(episode=k, episodes=self._episodes, steps=self._steps, sender=self.name)
            )
            trained = yield Call("model", TrainEpisode(episode=k, steps=self._steps, sender=self.name), None)
            if isinstance(trained, EpisodeTrained):
                self.outcome.trained.append(trained)
            # Evaluation runs in pieces like training: waited on while the model's heartbeats come, and
            # records too long for one reply come in pieces, each asked for from where the last ended.
            pieces: list[EvaluationReport] = []
            report = yield Call("model", EvaluateEpisode(episode=k, sender=self.name), None)
            while isinstance(report, EvaluationReport):
                pieces.append(report)
                end = report.offset + len(report.close)
                if end >= report.total_rows:
                    break
                report = yield Call("model", EvaluateEpisode(episode=k, offset=end, sender=self.name), None)
            if pieces:
                joined = _joined(pieces)
                self.outcome.reports.append(joined)
                self._on_report(joined)
        self.outcome.status = "completed"

    def _shutdown(self) -> Generator[Call, Message | None, None]:
        for name in STOP_ORDER:
            if name in self._clients:
                yield Call(
                    name,
                    Stop(reason=f"session {self.outcome.status}", sender=self.name),
                    self._stop_timeout_s,
                )

    # Driving it.

    def _advance(self, reply: Message | None) -> None:
        assert self._script is not None
        while True:
            try:
                call = self._script.send(reply)
            except StopIteration:
                if self._stopping:
                    self._finish()
                    return
                self._stopping = True
                self._script = self._shutdown()
                reply = None
                continue
            except Exception as exc:
                # The script's own work failed (writing a report, say): the session fails, and its actors
                # are still stopped in order.
                logger.exception("session: episode %d failed in the session itself", self._episode)
                if self._stopping:
                    self._finish()
                    return
                self._fail(f"episode {self._episode}: {type(exc).__name__}: {exc}")
                return
            self._call = call
            self._restarted.clear()
            self._retries = 0
            self._send(call)
            return

    def _send(self, call: Call) -> None:
        self._active = call
        self._deadline = None if call.timeout_s is None else self._clock.monotonic() + call.timeout_s
        self._calls += 1
        self._clients[call.actor].send(call.msg)
        self.actor_ref.tell(_Wait(self._calls))

    def _wait(self) -> None:
        call = self._active
        if call is None:
            return
        reply = self._clients[call.actor].receive(100)
        if reply is not None and reply.correlation_id == call.msg.msg_id:
            self._on_reply(call, reply)
            return
        now = self._clock.monotonic()
        if self._deadline is not None and now > self._deadline:
            self._on_silence(call, f"no reply to {type(call.msg).__name__} within {call.timeout_s:g} s")
            return
        # A supervisor kills and restarts a hung actor (then Restarted arrives); without one, or while
        # stopping, silence ends the call.
        unsupervised = not self._supervised or self._stopping
        if self._deadline is None and unsupervised and self._heartbeat_age(call.actor) > self._hang_timeout_s:
            self._on_silence(call, f"no heartbeat for {self._hang_timeout_s:g} s")
            return
        self.actor_ref.tell(_Wait(self._calls))

    def _on_reply(self, call: Call, reply: Message) -> None:
        failed = isinstance(reply, RequestFailed) and not self._stopping
        if failed and isinstance(reply, RequestFailed) and reply.kind == "input":
            # The same input would fail again: no retry, and the line goes to the user as it is.
            self._fail(reply.error, input_error=True)
            return
        if call is not self._call:  # a side call made after a restart
            if failed:
                assert isinstance(reply, RequestFailed)
                self._fail(f"{call.actor} actor: {reply.request} failed after a restart: {reply.error}")
                return
            self._resume_main()
            return
        if failed:
            assert isinstance(reply, RequestFailed)
            if self._can_retry():
                logger.warning("session: %s failed after a restart (%s); retry", reply.request, reply.error)
                self._retry()
                return
            self._fail(f"{call.actor} actor: {reply.request} failed: {reply.error}")
            return
        self._advance(reply)

    # Restarts.

    def _can_retry(self) -> bool:
        return bool(self._restarted) and self._retries < MAX_RETRIES and not self._stopping

    def _retry(self) -> None:
        """Send the current call again (a new id; data is streamed again whatever the envs had)."""
        assert self._call is not None
        self._retries += 1
        msg = self._call.msg
        if isinstance(msg, PrepareEpisode):
            msg = PrepareEpisode(episode=msg.episode, force=True, sender=self.name)
        else:
            msg = dataclasses.replace(msg, msg_id=new_id())
        self._call = Call(self._call.actor, msg, self._call.timeout_s)
        self._side.clear()
        self._send(self._call)

    def _resume_main(self) -> None:
        if self._side:
            self._send(self._side.popleft())
            return
        assert self._call is not None
        self._active = self._call
        timeout = self._call.timeout_s
        self._deadline = None if timeout is None else self._clock.monotonic() + timeout
        self.actor_ref.tell(_Wait(self._calls))

    def _on_restart(self, actor: str) -> None:
        call = self._call
        if self._stopping or call is None:
            return
        self._restarted.add(actor)
        logger.info("session: %s actor restarted during %s", actor, type(call.msg).__name__)
        if call.actor == actor:
            self._retry()  # its reply died with it
            return
        if actor == "env" and self._episode:
            # The new env actor has no data: stream it again while the current call waits.
            refill = PrepareEpisode(episode=self._episode, force=True, sender=self.name)
            self._side.append(Call("data", refill, self._request_timeout_s))
            if self._active is call:
                self._resume_main()

    def _on_silence(self, call: Call, why: str) -> None:
        if call is self._call and self._can_retry():
            logger.warning("session: %s (after a restart); retrying", why)
            self._retry()
            return
        if self._stopping:
            logger.warning("session: %s actor did not confirm its stop (%s)", call.actor, why)
            self._advance(None)
        else:
            self._fail(f"{call.actor} actor: {why}")

    def _fail(self, reason: str, *, input_error: bool = False) -> None:
        logger.info("session failed: %s", reason)
        self._publish(ErrorRaised(where="session", error=reason, fatal=True, sender=self.name))
        self._abort(reason, "failed", input_error=input_error)

    def _abort(self, reason: str, status: str, *, input_error: bool = False) -> None:
        if self._stopping:
            return
        self.outcome.status, self.outcome.reason = status, reason
        self.outcome.input_error = input_error
        self._begin_shutdown()

    def _begin_shutdown(self) -> None:
        self._stopping = True
        self._side.clear()
        self._script = self._shutdown()
        self._call = None
        self._advance(None)

    def _finish(self) -> None:
        self._call = None
        self._publish(
            SessionFinished(
                name=self._session_name,
                status=self.outcome.status,
                reason=self.outcome.reason,
                sender=self.name,
            )
        )
        logger.info("session %s %s", self._session_name, self.outcome.status)
        self.stop()


def _joined(pieces: list[EvaluationReport]) -> EvaluationReport:
    """Return one report holding the records of every piece of an evaluation, in order."""
    if len(pieces) == 1:
        return pieces[0]

    def joined(name: str) -> np.ndarray:
        return np.concatenate([getattr(piece, name) for piece in pieces])

    # A portfolio's per-asset arrays come in pieces like the single-asset ones; one asset's are empty.
    arrays = [name for name in RECORD_ARRAYS + PORTFOLIO_ARRAYS if getattr(pieces[0], name).size]
    fields: dict[str, Any] = {name: joined(name) for name in arrays}
    return dataclasses.replace(pieces[0], **fields, offset=0, total_rows=0)
