"""Fakes of the actors' ports (sockets, clock, probe) for actor-level tests without sockets."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from messages import Command, Event, Incoming, Message, Reply, RequestFailed

WAIT_S = 10.0


class FakeClock:
    """A clock that moves only when told to (monotonic) plus the real wall clock for timestamps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return time.time()

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeProbe:
    """Reports fixed memory and CPU."""

    def sample(self) -> tuple[int, float]:
        return 50 << 20, 1.5


class FakeServer:
    """A command server fed by the test: push requests, read the replies."""

    def __init__(self) -> None:
        self._inbox: queue.Queue[Incoming] = queue.Queue()
        self.replies: list[tuple[bytes, Reply]] = []
        self._cond = threading.Condition()
        self.closed = False

    def push(self, msg: Message, peer: bytes = b"peer") -> Message:
        self._inbox.put(Incoming(peer, msg))
        return msg

    def push_garbage(self, error: str, peer: bytes = b"peer") -> None:
        self._inbox.put(Incoming(peer, None, error))

    socket = None
    """No socket to sleep on: a lease asks `pending` every CHECK_S."""

    def pending(self) -> bool:
        return not self._inbox.empty()

    def poll(self, timeout_ms: int, limit: int = 64) -> list[Incoming]:
        out: list[Incoming] = []
        try:
            out.append(self._inbox.get(timeout=max(timeout_ms, 1) / 1000))
        except queue.Empty:
            return out
        while len(out) < limit:
            try:
                out.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        return out

    def reply(self, peer: bytes, msg: Reply) -> bool:
        with self._cond:
            self.replies.append((peer, msg))
            self._cond.notify_all()
        return True

    def close(self) -> None:
        self.closed = True

    def reply_to(self, request: Message, timeout_s: float = WAIT_S) -> Reply:
        """Wait for the reply whose correlation id is the request's id."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for _, msg in self.replies:
                    if msg.correlation_id == request.msg_id:
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no reply to {type(request).__name__} within {timeout_s} s")
                self._cond.wait(left)


class FakePublisher:
    """Records published events; tests wait for the ones they expect."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()
        self.closed = False

    def publish(self, msg: Event) -> None:
        with self._cond:
            self.events.append(msg)
            self._cond.notify_all()

    def close(self) -> None:
        self.closed = True

    def of(self, kind: type[Message]) -> list[Any]:
        with self._cond:
            return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, kind: type[Message], count: int = 1, timeout_s: float = WAIT_S) -> list[Any]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                found = [e for e in self.events if isinstance(e, kind)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{count} {kind.__name__} event(s) not published within {timeout_s} s"
                    )
                self._cond.wait(left)


class FakeClient:
    """A request client answered by a handler function (called in the actor's thread)."""

    def __init__(self, handler: Callable[[Message], Message | None]) -> None:
        self._handler = handler
        self.sent: list[Command] = []
        self._replies: queue.Queue[Message] = queue.Queue()
        self.closed = False

    def request(self, msg: Command, timeout_s: float | None = None) -> Message:
        self.sent.append(msg)
        reply = self._handler(msg)
        if reply is None:
            raise TimeoutError(f"no reply to {type(msg).__name__}")
        if isinstance(reply, RequestFailed):
            raise RuntimeError(reply.error)
        return reply

    def send(self, msg: Command) -> None:
        self.sent.append(msg)
        reply = self._handler(msg)
        if reply is not None:
            self._replies.put(reply)

    def receive(self, timeout_ms: int) -> Message | None:
        try:
            return self._replies.get(timeout=max(timeout_ms, 1) / 1000)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.closed = True


def wait_until(predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    """Poll a condition with a bounded wait (for state without a notification)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)
