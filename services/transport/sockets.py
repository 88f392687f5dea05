"""Carry messages over ZeroMQ: DEALER/ROUTER requests with correlation ids, PUB/SUB events through a hub.

Every socket is created and used in one thread and gets ``linger=0``; each process uses one context.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zmq

from messages import DecodeError, ErrorRaised, Message, RequestFailed, decode, encode
from messages.envelope import Incoming, SessionKey, SignatureError, seal, unseal
from services import errors
from services.transport.credentials import (
    Credentials,
    PlainClient,
    ServerGuard,
)
from services.transport.endpoints import connect, context, secure_ipc
from services.transport.events import unpack_event
from services.transport.socket_wait import SocketWaiter

logger = logging.getLogger(__name__)


class TransportError(errors.TransportError):
    """A request that failed on the way: timeout, peer gone or an error reply."""


class RequestTimeout(TransportError):
    """No reply came within the timeout."""


class RemoteError(TransportError):
    """The peer answered with RequestFailed."""


def _tune(sock: zmq.Socket[bytes], max_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)


MAX_FRAMES = 64
"""Most frames in one message on a session socket (a header, a signature, a few arrays)."""
SERVER_RCVHWM = 64
"""Messages a server's libzmq queue holds per peer before the peer has to wait."""


@dataclass(slots=True)
class _Taken:
    """One message taken frame by frame: its frames, or why it was discarded."""

    frames: list[zmq.Frame]
    error: str = ""


ENVELOPE_BYTES = 1024
"""Most bytes of the frames before a message (routing id, signer, signature), counted apart."""


def _take(sock: zmq.Socket[bytes], max_bytes: int, max_frames: int, *, skip: int = 0) -> _Taken | None:
    """Take one whole message frame by frame (None when none waits), discarding it past the limits.

    The first `skip` frames (a ROUTER's routing id, a signed envelope's signer and signature) are kept
    apart from the limits; a discarded message keeps only a routing id (skip >= 1), so it can be answered.
    """
    try:
        frame = sock.recv(zmq.NOBLOCK, copy=False)
    except zmq.Again:
        return None
    frames: list[zmq.Frame] = []
    index = count = total = envelope = 0
    while True:
        index += 1
        if index <= skip:
            envelope += len(frame.buffer)
        else:
            count += 1
            total += len(frame.buffer)
        if envelope <= ENVELOPE_BYTES and count <= max_frames and total <= max_bytes:
            frames.append(frame)
        elif len(frames) > min(skip, 1):
            del frames[min(skip, 1) :]  # past a limit: keep nothing more of this message
        if not frame.more:
            break
        frame = sock.recv(copy=False)
    if envelope > ENVELOPE_BYTES:
        return _Taken(frames, f"envelope of more than {ENVELOPE_BYTES} bytes")
    if count > max_frames:
        return _Taken(frames, f"message of {count} frames exceeds the limit of {max_frames}")
    if total > max_bytes:
        return _Taken(frames, f"message of {total} bytes exceeds the limit of {max_bytes}")
    return _Taken(frames)


class _Throttle:
    """Let one log line through every few seconds and count the ones held back."""

    __slots__ = ("_every_s", "_next", "held")

    def __init__(self, every_s: float = 5.0) -> None:
        self._every_s = every_s
        self._next = 0.0
        self.held = 0

    def due(self) -> bool:
        """Tell whether a line may be written now; otherwise count it."""
        now = time.monotonic()
        if now < self._next:
            self.held += 1
            return False
        self._next = now + self._every_s
        return True

    def more(self) -> str:
        """Return " (and N more)" for the lines held back since the last one, and reset the count."""
        held, self.held = self.held, 0
        return f" (and {held} more in the last {self._every_s:g} s)" if held else ""


def _open(key: SessionKey, frames: Sequence[Any], max_bytes: int) -> Message:
    """Check a signed message and decode it; its sender must be the role that signed it."""
    signer, rest = unseal(key, frames)
    msg = decode(rest, max_bytes=max_bytes)
    if msg.sender != signer:
        raise SignatureError(f"{type(msg).__name__} from {msg.sender!r} was signed by {signer!r}")
    return msg


def _sealed(key: SessionKey, signer: bytes, msg: Message) -> list[Any]:
    """Encode a message signed by one role; the role is its sender, whatever the message said."""
    name = signer.decode()
    if msg.sender != name:
        msg = dataclasses.replace(msg, sender=name)
    return seal(key, signer, encode(msg))


class Server:
    """A ROUTER that receives signed requests and answers each peer by its routing id.

    A message that is not signed with this session's key is refused without an answer, counted and
    reported at most every few seconds (as one Incoming without a message, naming the count).
    """

    def __init__(
        self, endpoint: str, *, max_bytes: int, name: str, key: SessionKey, max_frames: int = MAX_FRAMES
    ) -> None:
        self._name = name
        self._signer = name.encode()
        self._key = key
        self._max_bytes = max_bytes
        self._max_frames = max_frames
        self._sock = context().socket(zmq.ROUTER)
        _tune(self._sock, max_bytes)
        self._sock.setsockopt(zmq.RCVHWM, SERVER_RCVHWM)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._guard = ServerGuard(self._sock, key)
        self._sock.bind(endpoint)
        secure_ipc(endpoint)
        self._waiter = SocketWaiter(self._sock)
        self.endpoint = endpoint
        self.refused = 0
        """Messages refused because they were not signed with this session's key."""
        self._unreported = 0
        self._refusals = _Throttle()
        self._rejections = _Throttle()
        self._drops = 0
        self._next_drop_log = 0.0

    def poll(self, timeout_ms: int, limit: int = 64) -> list[Incoming]:
        """Wait up to timeout_ms for requests and return those available (at most `limit`)."""
        out: list[Incoming] = []
        if self._unreported and self._refusals.due():
            out.append(self._summary(b"", "since the last report"))
        if not self._waiter.wait(timeout_ms):
            return out
        self._waiter.touch()
        for _ in range(limit * 4):
            if len(out) >= limit:
                break
            taken = _take(self._sock, self._max_bytes, self._max_frames, skip=3)
            if taken is None:
                break
            item = self._incoming(taken)
            if item is not None:
                out.append(item)
        return out

    def pending(self) -> bool:
        """Tell, without blocking, whether a message waits on the socket (signed or not)."""
        return self._waiter.wait(0)

    @property
    def socket(self) -> zmq.Socket[bytes]:
        """The ROUTER, for a handler that sleeps until a request comes (it polls, the Server reads)."""
        return self._sock

    def _incoming(self, taken: _Taken) -> Incoming | None:
        peer = taken.frames[0].bytes
        if taken.error:
            return self._rejected(peer, DecodeError(taken.error))
        try:
            message = _open(self._key, [f.buffer for f in taken.frames[1:]], self._max_bytes)
        except SignatureError as exc:
            return self._refused(peer, exc)
        except DecodeError as exc:
            return self._rejected(peer, exc)
        return Incoming(peer, message)

    def _refused(self, peer: bytes, exc: SignatureError) -> Incoming | None:
        """Count a foreign message; say so (log line and Incoming) at most every few seconds."""
        self.refused += 1
        self._unreported += 1
        if not self._refusals.due():
            return None
        return self._summary(peer, f"last: {exc}")

    def _summary(self, peer: bytes, detail: str) -> Incoming:
        count, self._unreported = self._unreported, 0
        error = (
            f"refused {count} message(s) not signed with this session's key ({self.refused} in all; {detail})"
        )
        logger.warning("%s: %s", self._name, error)
        return Incoming(peer, None, error)

    def _rejected(self, peer: bytes, exc: DecodeError) -> Incoming:
        """Answer a signed message that does not decode, logging at most one line every few seconds."""
        if self._rejections.due():
            logger.warning("%s: rejected a request: %s%s", self._name, exc, self._rejections.more())
        return Incoming(peer, None, str(exc), request_id=exc.msg_id)

    def reply(self, peer: bytes, msg: Message) -> bool:
        """Send a reply to one peer; return False (and log) when the peer is gone or saturated."""
        if not peer:
            return False
        try:
            self._sock.send_multipart([peer, *_sealed(self._key, self._signer, msg)], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._dropped(msg, "peer is not reading")
            return False
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EHOSTUNREACH:
                self._dropped(msg, "peer is gone")
                return False
            raise
        return True

    def _dropped(self, msg: Message, why: str) -> None:
        """Log dropped replies at most every 10 s, counting the rest (a flooding peer)."""
        self._drops += 1
        now = time.monotonic()
        if now >= self._next_drop_log:
            logger.warning(
                "%s: %d reply(ies) dropped, last %s: %s", self._name, self._drops, type(msg).__name__, why
            )
            self._drops = 0
            self._next_drop_log = now + 10.0

    def close(self) -> None:
        """Close the socket."""
        self._sock.close(0)
        self._guard.release()


class Client:
    """A DEALER that sends requests and waits for the reply that carries the request's id.

    Inside a session (`key` given) every message is signed and every reply checked; a monitor's client
    of the session socket (`key` None) sends plain messages and proves itself in the handshake instead.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        max_bytes: int,
        timeout_s: float,
        sender: str,
        key: SessionKey | None,
        auth: Credentials | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._sender = sender
        self._signer = sender.encode()
        self._key = key
        self._sock = context().socket(zmq.DEALER)
        _tune(self._sock, max_bytes)
        if auth is None and key is not None:
            auth = PlainClient.of(key)
        if auth is not None:
            auth.apply(self._sock)
        connect(self._sock, endpoint)
        self._waiter = SocketWaiter(self._sock)
        self._rejections = _Throttle()

    @classmethod
    def factory(
        cls,
        endpoint: str,
        *,
        max_bytes: int,
        timeout_s: float,
        sender: str,
        key: SessionKey | None,
        auth: Credentials | None = None,
    ) -> Callable[[], Client]:
        """Return a factory of clients to one endpoint, called in the thread that uses the client."""
        return lambda: cls(
            endpoint, max_bytes=max_bytes, timeout_s=timeout_s, sender=sender, key=key, auth=auth
        )

    def send(self, msg: Message) -> None:
        """Send a message without waiting for a reply."""
        if self._key is not None:
            frames = _sealed(self._key, self._signer, msg)
        else:
            frames = encode(msg if msg.sender else dataclasses.replace(msg, sender=self._sender))
        self._sock.send_multipart(frames, copy=False)
        self._waiter.touch()

    def receive(self, timeout_ms: int) -> Message | None:
        """Return the next valid message within timeout_ms, or None; invalid ones are logged and skipped."""
        deadline = time.monotonic() + timeout_ms / 1000
        extra = 2 if self._key is not None else 0
        while True:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._waiter.wait(remaining):
                return None
            taken = _take(self._sock, self._max_bytes, MAX_FRAMES, skip=extra)
            if taken is None:
                continue
            try:
                if taken.error:
                    raise DecodeError(taken.error)
                buffers = [f.buffer for f in taken.frames]
                if self._key is None:
                    return decode(buffers, max_bytes=self._max_bytes)
                return _open(self._key, buffers, self._max_bytes)
            except DecodeError as exc:
                if self._rejections.due():
                    more = self._rejections.more()
                    logger.warning("reply from %s rejected: %s%s", self.endpoint, exc, more)

    def request(self, msg: Message, timeout_s: float | None = None) -> Message:
        """Send a request and return its reply; raise RequestTimeout or RemoteError."""
        timeout = self._timeout_s if timeout_s is None else timeout_s
        self.send(msg)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            reply = self.receive(max(0, int(remaining * 1000))) if remaining > 0 else None
            if reply is None:
                raise RequestTimeout(
                    f"no reply to {type(msg).__name__} from {self.endpoint} within {timeout:g} s"
                )
            if reply.correlation_id != msg.msg_id:
                logger.debug("dropped a stale %s from %s", type(reply).__name__, self.endpoint)
                continue
            if isinstance(reply, RequestFailed):
                raise RemoteError(f"{reply.request} failed at {self.endpoint}: {reply.error}")
            return reply

    def close(self) -> None:
        """Close the socket."""
        self._sock.close(0)


PUBLISH_LINGER_MS = 1000
"""How long a closing publisher may still deliver its queued events (its last ActorStopped)."""


class Publisher:
    """A PUSH connected to the hub's input: events are queued from connect() on, so none is lost to the
    join; publishing never blocks: a full queue drops the event, counts it and reports the count next."""

    def __init__(self, endpoint: str, *, sender: str, key: SessionKey, hwm: int = 10_000) -> None:
        self._sender = sender
        self._signer = sender.encode()
        self._key = key
        self._sock = context().socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, PUBLISH_LINGER_MS)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        PlainClient.of(key).apply(self._sock)
        self._sock.connect(endpoint)
        self.dropped = 0
        """Events dropped in all because the hub's queue was full."""
        self._unreported = 0

    def publish(self, msg: Message) -> None:
        """Publish an event; drop and count it if the hub is not keeping up."""
        if self._unreported and self._send(
            ErrorRaised(
                where=f"{self._sender} events",
                error=f"dropped {self._unreported} event(s): the hub was not keeping up "
                f"({self.dropped} in all)",
                sender=self._sender,
            )
        ):
            self._unreported = 0
        if not self._send(msg):
            self.dropped += 1
            self._unreported += 1

    def _send(self, msg: Message) -> bool:
        try:
            self._sock.send_multipart(_sealed(self._key, self._signer, msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        return True

    def close(self) -> None:
        """Close the socket (queued events still go out for up to PUBLISH_LINGER_MS)."""
        self._sock.close()


class Subscriber:
    """A SUB on the hub's XPUB side: yields (sequence number, event)."""

    def __init__(self, endpoint: str, *, max_bytes: int, auth: Credentials | None = None) -> None:
        self._max_bytes = max_bytes
        self._sock = context().socket(zmq.SUB)
        _tune(self._sock, max_bytes)
        self._sock.setsockopt(zmq.RCVHWM, 10_000)
        if auth is not None:
            auth.apply(self._sock)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        connect(self._sock, endpoint)
        self._rejections = _Throttle()

    def receive(self, timeout_ms: int) -> tuple[int, Message] | None:
        """Return the next valid (seq, event) within timeout_ms, or None."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(remaining):
                return None
            frames = self._sock.recv_multipart(copy=False)
            try:
                return unpack_event([f.buffer for f in frames], self._max_bytes)
            except DecodeError as exc:
                if self._rejections.due():
                    logger.warning("event rejected: %s%s", exc, self._rejections.more())

    def close(self) -> None:
        """Close the socket."""
        self._sock.close(0)
