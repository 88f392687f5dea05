"""Carry messages over ZeroMQ: DEALER/ROUTER requests with correlation ids, PUB/SUB events through a hub.

Every socket is created and used in one thread and gets ``linger=0``; each process uses one context.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import math
import os
import struct
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import zmq

from messages import DecodeError, Message, RequestFailed, decode, encode
from messages.envelope import Incoming
from services import errors

logger = logging.getLogger(__name__)

_SEQ = struct.Struct(">Q")
IPC_PATH_LIMIT = 100
"""Longest ipc path used; longer run folders get their sockets in a short temporary folder."""


class TransportError(errors.TransportError):
    """A request that failed on the way: timeout, peer gone or an error reply."""


class RequestTimeout(TransportError):
    """No reply came within the timeout."""


class RemoteError(TransportError):
    """The peer answered with RequestFailed."""


def context() -> zmq.Context[zmq.Socket[bytes]]:
    """Return the process's one ZeroMQ context."""
    return zmq.Context.instance()


def is_loopback(endpoint: str) -> bool:
    """Tell whether an endpoint stays on this machine (ipc, inproc or a loopback tcp address)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Every endpoint of a session; written to the run folder as endpoints.json."""

    events_in: str
    """XSUB side of the event hub: every actor's PUB connects here."""
    events_out: str
    """XPUB side of the event hub: monitors subscribe here."""
    session: str
    """The launcher's ROUTER for monitors: session description and state snapshots."""
    data: str
    """The data actor's ROUTER."""
    env: str
    """The env actor's ROUTER."""
    model: str
    """The model actor's ROUTER."""
    ipc_dir: str
    """Folder holding the ipc socket files, removed at the end of the session."""

    @classmethod
    def local(cls, ipc_dir: Path, *, events_out: str, session: str) -> Endpoints:
        """Name a session's endpoints: its actors and the hub's input on ipc sockets in ipc_dir."""
        return cls(
            events_in=f"ipc://{ipc_dir}/events_in.sock",
            events_out=events_out,
            session=session,
            data=f"ipc://{ipc_dir}/data.sock",
            env=f"ipc://{ipc_dir}/env.sock",
            model=f"ipc://{ipc_dir}/model.sock",
            ipc_dir=str(ipc_dir),
        )

    def to_dict(self) -> dict[str, str]:
        """Return the endpoints as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Endpoints:
        """Build endpoints from a dict written by to_dict."""
        return cls(**{f.name: str(raw[f.name]) for f in dataclasses.fields(cls)})

    def write(self, path: Path) -> None:
        """Write the endpoints as JSON, atomically."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)


def ipc_folder(run_dir: Path) -> Path:
    """Return a folder for ipc sockets: under the run folder, or a short temporary one if too long."""
    candidate = run_dir.resolve() / "ipc"
    if len(str(candidate)) + len("/events_in.sock") <= IPC_PATH_LIMIT:
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate
    return Path(tempfile.mkdtemp(prefix="rlta-"))


def _bind_tcp(sock: zmq.Socket[bytes], host: str, port: int) -> str:
    if port:
        sock.bind(f"tcp://{host}:{port}")
        return f"tcp://{host}:{port}"
    chosen = sock.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{host}:{chosen}"


SPIN_S = 0.002
"""How long a socket on the hot path polls before it blocks: a reply to an env step, or the next step
request, usually arrives within this, and waking a blocked process costs more than the spin."""
HOT_S = 0.01
"""A socket is on the hot path while its last message (received by a server, sent by a client) is at most
this old; any other socket blocks at once, so idle actors cost no CPU."""


# Plain ints: the spin reads these hundreds of times a request, and pyzmq's enums are slower to combine.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class _Waiter:
    """Wait until a socket is readable: poll it in a loop for a short while when it is busy, else block.

    The loop gives the CPU away (sched_yield) between polls, so that on a machine with few cores the
    ZeroMQ I/O threads of both processes, which carry the message, are not kept waiting by the spin.
    """

    __slots__ = ("_last", "_sock")

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._sock = sock
        self._last = -math.inf

    def touch(self) -> None:
        """Mark the socket busy: the next wait spins before it blocks."""
        self._last = time.perf_counter()

    def wait(self, timeout_ms: int) -> bool:
        """Return True once the socket has a message, False after timeout_ms without one."""
        readable = self._readable
        if readable():
            return True
        if timeout_ms <= 0:
            return False
        started = now = time.perf_counter()
        if now - self._last < HOT_S:
            end = now + min(SPIN_S, timeout_ms / 1000)
            while now < end:
                os.sched_yield()
                if readable():
                    return True
                now = time.perf_counter()
            timeout_ms -= int((now - started) * 1000)
        return bool(self._sock.poll(max(timeout_ms, 0)))

    def _readable(self) -> bool:
        """Tell whether a message is waiting, without blocking (cheaper than poll(0))."""
        return bool(cast(int, self._sock.get(_EVENTS)) & _POLLIN)


def _tune(sock: zmq.Socket[bytes], max_bytes: int) -> None:
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)


class Server:
    """A ROUTER that receives requests and answers each peer by its routing id."""

    def __init__(self, endpoint: str, *, max_bytes: int, name: str) -> None:
        self._name = name
        self._max_bytes = max_bytes
        self._sock = context().socket(zmq.ROUTER)
        _tune(self._sock, max_bytes)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.bind(endpoint)
        self._waiter = _Waiter(self._sock)
        self.endpoint = endpoint
        self._drops = 0
        self._next_drop_log = 0.0

    def poll(self, timeout_ms: int, limit: int = 64) -> list[Incoming]:
        """Wait up to timeout_ms for requests and return those available (at most `limit`)."""
        out: list[Incoming] = []
        if not self._waiter.wait(timeout_ms):
            return out
        self._waiter.touch()
        while len(out) < limit:
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            out.append(self._take(frames))
        return out

    def _take(self, frames: Sequence[zmq.Frame]) -> Incoming:
        peer = frames[0].bytes
        try:
            message = decode([f.buffer for f in frames[1:]], max_bytes=self._max_bytes)
        except DecodeError as exc:
            logger.warning("%s: rejected a request: %s", self._name, exc)
            return Incoming(peer, None, str(exc))
        return Incoming(peer, message)

    def reply(self, peer: bytes, msg: Message) -> bool:
        """Send a reply to one peer; return False (and log) when the peer is gone or saturated."""
        try:
            self._sock.send_multipart([peer, *encode(msg)], zmq.NOBLOCK, copy=False)
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


class Client:
    """A DEALER that sends requests and waits for the reply that carries the request's id."""

    def __init__(
        self,
        endpoint: str,
        *,
        max_bytes: int,
        timeout_s: float,
        sender: str,
        curve: CurveClientKeys | None = None,
    ) -> None:
        self.endpoint = endpoint
        self._max_bytes = max_bytes
        self._timeout_s = timeout_s
        self._sender = sender
        self._sock = context().socket(zmq.DEALER)
        _tune(self._sock, max_bytes)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.connect(endpoint)
        self._waiter = _Waiter(self._sock)

    @classmethod
    def factory(
        cls,
        endpoint: str,
        *,
        max_bytes: int,
        timeout_s: float,
        sender: str,
        curve: CurveClientKeys | None = None,
    ) -> Callable[[], Client]:
        """Return a factory of clients to one endpoint, called in the thread that uses the client."""
        return lambda: cls(endpoint, max_bytes=max_bytes, timeout_s=timeout_s, sender=sender, curve=curve)

    def send(self, msg: Message) -> None:
        """Send a message without waiting for a reply."""
        self._sock.send_multipart(encode(msg), copy=False)
        self._waiter.touch()

    def receive(self, timeout_ms: int) -> Message | None:
        """Return the next valid message within timeout_ms, or None; invalid ones are logged and skipped."""
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            remaining = max(0, int((deadline - time.monotonic()) * 1000))
            if not self._waiter.wait(remaining):
                return None
            frames = self._sock.recv_multipart(copy=False)
            try:
                return decode([f.buffer for f in frames], max_bytes=self._max_bytes)
            except DecodeError as exc:
                logger.warning("reply from %s rejected: %s", self.endpoint, exc)

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


class Publisher:
    """A PUB connected to the hub; publishing never blocks (events may be dropped under load)."""

    def __init__(self, endpoint: str, *, sender: str, hwm: int = 10_000) -> None:
        self._sender = sender
        self._sock = context().socket(zmq.PUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, hwm)
        self._sock.connect(endpoint)

    def publish(self, msg: Message) -> None:
        """Publish an event; drop it if the hub is not keeping up."""
        try:
            self._sock.send_multipart(encode(msg), zmq.NOBLOCK, copy=False)
        except zmq.Again:
            logger.debug("event %s dropped", type(msg).__name__)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close(0)


class Subscriber:
    """A SUB on the hub's XPUB side: yields (sequence number, event)."""

    def __init__(self, endpoint: str, *, max_bytes: int, curve: CurveClientKeys | None = None) -> None:
        self._max_bytes = max_bytes
        self._sock = context().socket(zmq.SUB)
        _tune(self._sock, max_bytes)
        self._sock.setsockopt(zmq.RCVHWM, 10_000)
        if curve is not None:
            curve.apply(self._sock)
        self._sock.setsockopt(zmq.SUBSCRIBE, b"")
        self._sock.connect(endpoint)

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
                logger.warning("event rejected: %s", exc)

    def close(self) -> None:
        """Close the socket."""
        self._sock.close(0)


def pack_event(seq: int, msg: Message, frames: Sequence[Any] | None = None) -> list[Any]:
    """Return the frames of a published event: topic, sequence number, then the message."""
    return [type(msg).__name__.encode(), _SEQ.pack(seq), *(frames if frames is not None else encode(msg))]


def unpack_event(frames: Sequence[Any], max_bytes: int) -> tuple[int, Message]:
    """Decode the frames of a published event into (seq, event)."""
    if len(frames) < 3:
        raise DecodeError(f"event has {len(frames)} frames, expected at least 3")
    seq_frame = bytes(frames[1])
    if len(seq_frame) != _SEQ.size:
        raise DecodeError(f"sequence frame of {len(seq_frame)} bytes, expected {_SEQ.size}")
    msg = decode(frames[2:], max_bytes=max_bytes)
    if bytes(frames[0]) != type(msg).__name__.encode():
        raise DecodeError(f"topic {bytes(frames[0])[:40]!r} does not match type {type(msg).__name__}")
    return _SEQ.unpack(seq_frame)[0], msg


@dataclass(frozen=True, slots=True)
class CurveServerKeys:
    """CURVE keys of a server socket bound to a non-loopback address."""

    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make the socket a CURVE server."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


@dataclass(frozen=True, slots=True)
class CurveClientKeys:
    """CURVE keys of a client: its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make the socket a CURVE client of the server."""
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)


EventSink = Callable[[int, Message], object]
"""Called by the hub for every valid event with its sequence number."""
RequestHandler = Callable[[Message], Message | None]
"""Answers a monitor's request on the session socket; None means the request is refused."""
