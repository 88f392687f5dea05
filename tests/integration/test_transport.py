"""Test the ZeroMQ transport and the event hub over real sockets (inproc, ipc and tcp on 127.0.0.1)."""

from __future__ import annotations

import dataclasses
import os
import pickle
import queue
import re
import shutil
import socket
import struct
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import msgpack
import numpy as np
import pytest
import zmq

import services.transport.socket_wait
from messages import (
    PROTOCOL_VERSION,
    DecodeError,
    DescribeSession,
    EnvsStepped,
    EpisodeStarted,
    ErrorRaised,
    Heartbeat,
    Incoming,
    Message,
    ModelCreated,
    Ping,
    Pong,
    RequestFailed,
    RequestSnapshot,
    SessionDescription,
    Snapshot,
    StepEnvs,
    decode,
    encode,
    message_types,
)
from services.session.state import SessionState
from services.transport.endpoints import context, is_loopback
from services.transport.events import pack_event, unpack_event
from services.transport.hub import EventHub
from services.transport.socket_wait import SPIN_S
from services.transport.sockets import (
    Client,
    Publisher,
    RemoteError,
    RequestTimeout,
    Server,
    Subscriber,
)
from tests.integration.signing import AUTH, KEY, SignedSocket
from tests.unit.messages.test_codec import sample_message

pytestmark = pytest.mark.integration

MAX_BYTES = 1 << 20
T = TypeVar("T")


# Fixtures and helpers.


class Resources:
    """Everything a test opened, closed in reverse order when it ends."""

    def __init__(self) -> None:
        self._closers: list[Callable[[], None]] = []

    def add(self, obj: T) -> T:
        """Register a socket, client, server, publisher, subscriber or hub to be closed or stopped."""
        closer = getattr(obj, "stop", None) if isinstance(obj, EventHub | ServerThread) else None
        self._closers.append(closer or obj.close)  # type: ignore[attr-defined]
        return obj

    def socket(self, kind: int, *, credentials: bool = True) -> zmq.Socket[bytes]:
        """Return a raw socket with linger 0 (and the session's handshake credentials), closed at the end."""
        sock = context().socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if credentials:
            AUTH.apply(sock)
        return self.add(sock)

    def signed(self, kind: int) -> SignedSocket:
        """Return a raw socket that signs what it sends with the session key and opens what it receives."""
        return SignedSocket(self.socket(kind))

    def folder(self) -> str:
        """Return a short temporary folder for ipc sockets, removed at the end of the test."""
        path = tempfile.mkdtemp(prefix="t-", dir="/tmp")
        self._closers.append(lambda: shutil.rmtree(path, ignore_errors=True))
        return path

    def close_all(self) -> None:
        """Close everything, even when one closer fails; then raise the first failure."""
        errors: list[BaseException] = []
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception as exc:
                errors.append(exc)
        self._closers.clear()
        if errors:
            raise errors[0]


@pytest.fixture(autouse=True)
def res() -> Iterator[Resources]:
    """Close every socket and stop every hub and server thread; fail if a test leaves a thread running."""
    before = set(threading.enumerate())
    resources = Resources()
    yield resources
    resources.close_all()
    wait_until(lambda: set(threading.enumerate()) <= before, 5.0, "the test's threads to end")


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "a condition") -> None:
    """Poll a condition every few milliseconds; fail the test after timeout_s."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        pause.wait(0.005)


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def endpoint(res: Resources, kind: str) -> str:
    """Return a fresh endpoint of a transport kind."""
    if kind == "ipc":
        return f"ipc://{res.folder()}/s.sock"
    if kind == "inproc":
        return f"inproc://t-{uuid.uuid4().hex}"
    return f"tcp://127.0.0.1:{free_tcp_port()}"


Handler = Callable[[Server, Incoming], None]


class ServerThread:
    """Run a Server in its own thread, which creates, polls and closes it; every request goes to `handler`."""

    def __init__(self, endpoint: str, handler: Handler, max_bytes: int = MAX_BYTES) -> None:
        self.endpoint = endpoint
        self.received: queue.Queue[Incoming] = queue.Queue()
        self._handler = handler
        self._max_bytes = max_bytes
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def start(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(5), "server thread did not start"
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        try:
            server = Server(self.endpoint, max_bytes=self._max_bytes, name="server", key=KEY)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                for item in server.poll(20):
                    self.received.put(item)
                    self._handler(server, item)
        except BaseException as exc:  # a failed assertion in a handler: reported by stop()
            self._error = exc
        finally:
            server.close()

    def stop(self) -> None:
        """Stop the thread; raise what a handler raised, if anything."""
        self._stop.set()
        self._thread.join(5)
        assert not self._thread.is_alive(), "server thread did not stop"
        if self._error is not None:
            raise self._error


def answer_pings(server: Server, item: Incoming) -> None:
    """Answer every Ping with a Pong that carries the Ping's id."""
    if isinstance(item.message, Ping):
        server.reply(item.peer, Pong(correlation_id=item.message.msg_id, sender="server", state="ok", pid=1))


def start_server(res: Resources, kind: str, handler: Handler) -> ServerThread:
    return res.add(ServerThread(endpoint(res, kind), handler)).start()


def client_for(res: Resources, server: ServerThread | str, timeout_s: float = 5.0) -> Client:
    ep = server if isinstance(server, str) else server.endpoint
    return res.add(Client(ep, max_bytes=MAX_BYTES, timeout_s=timeout_s, sender="test", key=KEY))


def poll_server(server: Server, n: int, timeout_s: float = 5.0) -> list[Incoming]:
    """Poll a server owned by the test thread until n requests arrived."""
    got: list[Incoming] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < deadline:
        got += server.poll(50)
    assert len(got) == n, f"expected {n} requests, got {len(got)}"
    return got


TRANSPORTS = ["inproc", "ipc", "tcp"]


# Requests and replies.


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_each_request_gets_the_reply_that_carries_its_id(res: Resources, kind: str) -> None:
    server = start_server(res, kind, answer_pings)
    client = client_for(res, server)

    for _ in range(3):
        ping = Ping(sender="test")
        reply = client.request(ping)

        assert isinstance(reply, Pong)
        assert reply.correlation_id == ping.msg_id
        assert reply.sender == "server"


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_arrays_travel_in_a_request_and_its_reply(res: Resources, kind: str) -> None:
    def step(server: Server, item: Incoming) -> None:
        assert isinstance(item.message, StepEnvs)
        actions = item.message.actions
        server.reply(
            item.peer,
            EnvsStepped(
                correlation_id=item.message.msg_id,
                obs=np.arange(actions.size * 6, dtype=np.float32).reshape(actions.size, 2, 3),
                reward=actions.astype(np.float64) / 10,
                terminated=actions > 1,
                truncated=np.zeros(actions.size, dtype=bool),
                terminal_obs=np.zeros((0, 2, 3), dtype=np.float32),
                episode_return=np.zeros(actions.size),
                episode_length=actions.astype(np.int64),
            ),
        )

    server = start_server(res, kind, step)
    client = client_for(res, server)
    actions = np.array([0, 1, 2, 2], dtype=np.int64)

    reply = client.request(StepEnvs(role="train", actions=actions))

    assert isinstance(reply, EnvsStepped)
    np.testing.assert_array_equal(reply.obs, np.arange(24, dtype=np.float32).reshape(4, 2, 3))
    np.testing.assert_array_equal(reply.reward, [0.0, 0.1, 0.2, 0.2])
    np.testing.assert_array_equal(reply.terminated, [False, False, True, True])
    assert reply.terminal_obs.shape == (0, 2, 3)
    received = server.received.get(timeout=1).message
    assert isinstance(received, StepEnvs)
    np.testing.assert_array_equal(received.actions, actions)


def test_a_stale_reply_to_a_timed_out_request_is_skipped(res: Resources) -> None:
    held: list[Incoming] = []
    stale_sent = threading.Event()

    def late(server: Server, item: Incoming) -> None:
        assert isinstance(item.message, Ping)
        if not held:
            held.append(item)  # answered only after the client gave up on it
            return
        first = held[0]
        assert first.message is not None
        server.reply(first.peer, Pong(correlation_id=first.message.msg_id, state="stale", pid=1))
        stale_sent.set()
        server.reply(item.peer, Pong(correlation_id=item.message.msg_id, state="fresh", pid=2))

    server = start_server(res, "ipc", late)
    client = client_for(res, server)
    with pytest.raises(RequestTimeout):
        client.request(Ping(), timeout_s=0.2)

    second = Ping()
    reply = client.request(second, timeout_s=5)

    assert stale_sent.is_set()
    assert isinstance(reply, Pong)
    assert reply.state == "fresh"
    assert reply.correlation_id == second.msg_id


def test_a_request_nobody_answers_times_out(res: Resources) -> None:
    server = start_server(res, "ipc", lambda server, item: None)
    client = client_for(res, server)

    started = time.monotonic()
    with pytest.raises(RequestTimeout, match=r"no reply to Ping from ipc://.* within 0.2 s"):
        client.request(Ping(), timeout_s=0.2)
    elapsed = time.monotonic() - started

    assert elapsed >= 0.18, "the client waited out its timeout"
    assert isinstance(server.received.get(timeout=1).message, Ping)


def test_a_request_to_an_endpoint_nobody_bound_times_out(res: Resources) -> None:
    client = client_for(res, f"ipc://{res.folder()}/nobody.sock", timeout_s=0.2)

    with pytest.raises(RequestTimeout, match="no reply to Ping"):
        client.request(Ping())


def test_a_request_failed_reply_raises_remote_error(res: Resources) -> None:
    def refuse(server: Server, item: Incoming) -> None:
        assert item.message is not None
        server.reply(
            item.peer,
            RequestFailed(
                correlation_id=item.message.msg_id, request=type(item.message).__name__, error="boom"
            ),
        )

    server = start_server(res, "inproc", refuse)
    client = client_for(res, server)

    with pytest.raises(RemoteError, match=r"Ping failed at inproc://.*: boom"):
        client.request(Ping())


def garbage_messages() -> list[tuple[list[bytes], str]]:
    """Return malformed requests and a fragment of the error each must produce."""
    valid = [bytes(f) for f in encode(Ping(sender="test"))]
    bad_type = msgpack.packb({"v": PROTOCOL_VERSION, "type": "Nope", "body": {}, "arrays": []})
    return [
        ([os.urandom(64)], ""),
        ([b""], "not valid msgpack"),
        ([b"\xc1"], "not valid msgpack"),
        ([pickle.dumps(Ping())], ""),
        ([bad_type], "unknown message type 'Nope'"),
        ([*valid, b"extra frame"], "different count"),
        ([valid[0][:-2]], "not valid msgpack"),
        ([os.urandom(16), os.urandom(16), os.urandom(16)], ""),
    ]


def test_a_server_reports_garbage_and_keeps_serving(res: Resources) -> None:
    ep = endpoint(res, "ipc")
    server = res.add(Server(ep, max_bytes=MAX_BYTES, name="test", key=KEY))
    dealer = res.signed(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"garbage-peer")
    dealer.connect(ep)
    garbage = garbage_messages()

    for frames, _ in garbage:
        dealer.send_multipart(frames)
    rejected = poll_server(server, len(garbage))
    ping = Ping(sender="test")
    dealer.send_multipart(encode(ping))
    [valid] = poll_server(server, 1)

    for item, (_, fragment) in zip(rejected, garbage, strict=True):
        assert item.peer == b"garbage-peer"
        assert item.message is None
        assert item.error
        assert fragment in item.error
    assert valid.error == ""
    assert isinstance(valid.message, Ping)
    assert valid.message.msg_id == ping.msg_id
    assert server.reply(valid.peer, Pong(correlation_id=ping.msg_id, state="ok", pid=1))
    assert dealer.poll(5000)
    reply = decode(dealer.recv_multipart())
    assert isinstance(reply, Pong)
    assert reply.correlation_id == ping.msg_id


def test_a_client_serves_valid_requests_after_another_peer_sent_garbage(res: Resources) -> None:
    server = start_server(res, "tcp", answer_pings)
    vandal = res.signed(zmq.DEALER)
    vandal.connect(server.endpoint)
    client = client_for(res, server)

    for frames, _ in garbage_messages():
        vandal.send_multipart(frames)
    reply = client.request(Ping())

    assert isinstance(reply, Pong)


def test_a_message_over_max_bytes_is_dropped_and_other_peers_are_still_served(res: Resources) -> None:
    ep = endpoint(res, "ipc")
    server = res.add(Server(ep, max_bytes=1 << 16, name="test", key=KEY))
    big = res.signed(zmq.DEALER)
    big.connect(ep)
    small = res.signed(zmq.DEALER)
    small.connect(ep)

    big.send_multipart([b"\x00" * (1 << 17)])
    dropped = server.poll(200)
    small.send_multipart(encode(Ping()))
    [served] = poll_server(server, 1)

    assert dropped == []
    assert isinstance(served.message, Ping)


def test_a_reply_to_a_peer_that_never_connected_returns_false(res: Resources) -> None:
    server = res.add(Server(endpoint(res, "inproc"), max_bytes=MAX_BYTES, name="test", key=KEY))

    assert server.reply(b"nobody", Pong(state="ok", pid=1)) is False


def test_a_reply_to_a_vanished_peer_returns_false(res: Resources) -> None:
    ep = endpoint(res, "ipc")
    server = res.add(Server(ep, max_bytes=MAX_BYTES, name="test", key=KEY))
    dealer = res.signed(zmq.DEALER)
    dealer.setsockopt(zmq.ROUTING_ID, b"leaver")
    dealer.connect(ep)
    dealer.send_multipart(encode(Ping()))
    [item] = poll_server(server, 1)

    dealer.close()

    # The ROUTER notices the disconnect asynchronously; until then a reply is still queued.
    wait_until(lambda: server.reply(item.peer, Pong(state="ok", pid=1)) is False, 5.0, "the reply to fail")


def test_a_reply_to_a_peer_that_does_not_read_returns_false_once_its_queue_is_full(res: Resources) -> None:
    ep = endpoint(res, "inproc")
    server = res.add(Server(ep, max_bytes=MAX_BYTES, name="test", key=KEY))
    dealer = res.signed(zmq.DEALER)
    dealer.setsockopt(zmq.RCVHWM, 10)
    dealer.connect(ep)
    dealer.send_multipart(encode(Ping()))
    [item] = poll_server(server, 1)

    results = [server.reply(item.peer, Pong(state="ok", pid=1)) for _ in range(5000)]

    assert results[0] is True
    assert results[-1] is False


# Waiting: spin on the hot path, block when idle.


class YieldCounter:
    """Count the sched_yield calls of the transport's spin loop (the spin's only system call)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = os.sched_yield

        def counted() -> None:
            self.calls += 1
            real()

        monkeypatch.setattr(services.transport.socket_wait.os, "sched_yield", counted)


def test_an_idle_server_blocks_without_spinning(res: Resources, monkeypatch: pytest.MonkeyPatch) -> None:
    server = res.add(Server(endpoint(res, "ipc"), max_bytes=MAX_BYTES, name="test", key=KEY))
    yields = YieldCounter(monkeypatch)

    started = time.monotonic()
    assert server.poll(30) == []

    assert time.monotonic() - started >= 0.025, "an empty poll waits for its timeout"
    assert yields.calls == 0, "a server with no recent request must block, not spin"


def test_a_server_spins_right_after_a_request_then_blocks_once_idle(
    res: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot_s = 0.5  # wide, so that a slow CI machine cannot make the first poll miss the window
    monkeypatch.setattr(services.transport.socket_wait, "HOT_S", hot_s)
    server = res.add(Server(endpoint(res, "ipc"), max_bytes=MAX_BYTES, name="test", key=KEY))
    client = client_for(res, server.endpoint)
    client.send(Ping(sender="test"))
    poll_server(server, 1)
    yields = YieldCounter(monkeypatch)

    assert server.poll(int(SPIN_S * 1000) + 20) == []
    spun = yields.calls
    time.sleep(hot_s)
    assert server.poll(20) == []

    assert spun > 0, "the poll right after a request spins before it blocks"
    assert yields.calls == spun, "once the last request is older than HOT_S the server blocks at once"


def test_a_request_answered_during_the_spin_returns_its_reply(
    res: Resources, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_server(res, "ipc", answer_pings)
    client = client_for(res, server)
    client.request(Ping(sender="test"))  # connected, and the server is on the hot path
    yields = YieldCounter(monkeypatch)

    replies = [client.request(Ping(sender="test")) for _ in range(20)]

    assert all(isinstance(reply, Pong) for reply in replies)
    assert yields.calls > 0, "the client spins while it waits for a reply"


# Published events.


def test_pack_event_frames_are_topic_sequence_header_and_arrays() -> None:
    msg = ModelCreated(model_id="m", algorithm="ppo", device="cpu", parameters=10, episode=1)

    frames = pack_event(258, msg)

    assert frames[0] == b"ModelCreated"
    assert bytes(frames[1]) == (258).to_bytes(8, "big")
    assert [bytes(f) for f in frames[2:]] == [bytes(f) for f in encode(msg)]


@pytest.mark.parametrize("seq", [1, 2, 255, 256, 2**32 + 5, 2**64 - 1])
def test_unpack_event_reverses_pack_event(seq: int) -> None:
    msg = StepEnvs(role="train", actions=np.array([1, 0, 2], dtype=np.int64))

    got_seq, got = unpack_event([bytes(f) for f in pack_event(seq, msg)], MAX_BYTES)

    assert got_seq == seq
    assert isinstance(got, StepEnvs)
    assert got.msg_id == msg.msg_id
    np.testing.assert_array_equal(got.actions, msg.actions)


@pytest.mark.parametrize(
    ("frames", "fragment"),
    [
        ([], "0 frames"),
        ([b"Ping", struct.pack(">Q", 1)], "2 frames"),
        ([b"Ping", b"\x00" * 7, *encode(Ping())], "sequence frame of 7 bytes"),
        ([b"Ping", b"\x00" * 9, *encode(Ping())], "sequence frame of 9 bytes"),
        ([b"Pong", struct.pack(">Q", 1), *encode(Ping())], "does not match type Ping"),
        ([b"", struct.pack(">Q", 1), *encode(Ping())], "does not match type Ping"),
        ([b"Ping", struct.pack(">Q", 1), b"garbage"], "not valid msgpack"),
    ],
)
def test_unpack_event_rejects_malformed_events(frames: list[bytes], fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        unpack_event([bytes(f) for f in frames], MAX_BYTES)


@pytest.mark.parametrize(
    ("ep", "expected"),
    [
        ("ipc:///tmp/x.sock", True),
        ("inproc://hub", True),
        ("tcp://127.0.0.1:5555", True),
        ("tcp://127.0.0.1:*", True),
        ("tcp://127.8.9.10:5555", True),
        ("tcp://localhost:5555", True),
        ("tcp://[::1]:5555", True),
        ("tcp://0.0.0.0:5555", False),
        ("tcp://*:5555", False),
        ("tcp://192.168.1.20:5555", False),
        ("tcp://10.0.0.1:5555", False),
        ("tcp://[::]:5555", False),
        ("tcp://example.com:5555", False),
        ("tcp://localhost.example.com:5555", False),
        ("tcp://eth0:5555", False),
        ("tcp://127.0.0.1;10.0.0.1:5555", False),
    ],
)
def test_is_loopback_tells_local_endpoints_from_remote_ones(ep: str, expected: bool) -> None:
    assert is_loopback(ep) is expected


# The event hub.


class Recorder:
    """A hub sink that records (seq, event) and lets the test wait for a count."""

    def __init__(self) -> None:
        self.events: list[tuple[int, Message]] = []
        self._cond = threading.Condition()

    def __call__(self, seq: int, msg: Message) -> None:
        with self._cond:
            self.events.append((seq, msg))
            self._cond.notify_all()

    def wait_for_count(self, n: int, timeout_s: float = 5.0) -> list[tuple[int, Message]]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= n, timeout_s), (
                f"hub applied {len(self.events)} events, expected {n}"
            )
            return list(self.events)


def sink_of(state: SessionState) -> Callable[[int, Message], None]:
    """Return a hub sink that applies events to a session state."""

    def apply(seq: int, msg: Message) -> None:
        state.apply(seq, msg)

    return apply


def start_hub(
    res: Resources,
    *,
    sinks: list[Callable[[int, Message], None]],
    snapshot: Callable[[], dict[str, object]] = dict,
    events_in: str = "ipc",
    **kwargs: Any,
) -> tuple[EventHub, str]:
    """Start a hub whose XSUB side binds a fresh endpoint of kind events_in; return it and that endpoint."""
    inlet = endpoint(res, events_in)
    hub = EventHub(
        name="test-session",
        events_in=inlet,
        monitor_host="127.0.0.1",
        events_port=0,
        session_port=0,
        max_bytes=MAX_BYTES,
        sinks=sinks,
        snapshot=snapshot,
        key=KEY,
        **kwargs,
    )
    res.add(hub)
    hub.start()
    return hub, inlet


def raw_inlet(res: Resources, events_in: str) -> SignedSocket:
    """Return a raw PUSH connected to a hub's input that signs what it sends (queued from connect on)."""
    inlet = res.signed(zmq.PUSH)
    inlet.connect(events_in)
    return inlet


def probe() -> Heartbeat:
    return Heartbeat(sender="probe", pid=0, rss_bytes=0, cpu_percent=0.0, state="probe")


def join_raw_subscriber(inlet: SignedSocket, sub: zmq.Socket[bytes], timeout_s: float = 10.0) -> int:
    """Send probes until a raw SUB receives events, then a fence; read up to the fence and return its seq."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert time.monotonic() < deadline, "the subscriber never received an event"
        inlet.send_multipart(encode(probe()))
        if sub.poll(20):
            break
    fence = probe()
    inlet.send_multipart(encode(fence))
    while True:
        assert sub.poll(5000), "the fence never arrived"
        seq, msg = unpack_event(sub.recv_multipart(), MAX_BYTES)
        if msg.msg_id == fence.msg_id:
            return seq


def join_subscribers(publisher: Publisher, subscribers: list[Subscriber], timeout_s: float = 10.0) -> None:
    """Publish probe heartbeats until every subscriber received one (PUB/SUB slow joiner)."""
    joined = [False] * len(subscribers)
    deadline = time.monotonic() + timeout_s
    while not all(joined):
        assert time.monotonic() < deadline, "subscribers never received an event"
        publisher.publish(probe())
        for i, sub in enumerate(subscribers):
            if not joined[i] and sub.receive(20) is not None:
                joined[i] = True


def receive_until(
    sub: Subscriber, done: Callable[[int, Message], bool], timeout_s: float = 10.0
) -> list[Any]:
    """Receive events until one satisfies done; return all received, that one last."""
    got: list[tuple[int, Message]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        item = sub.receive(50)
        if item is not None:
            got.append(item)
            if done(*item):
                return got
    pytest.fail(f"the awaited event never arrived ({len(got)} others did)")


@pytest.mark.parametrize("events_in", ["ipc", "inproc"])
def test_subscribers_receive_events_numbered_in_order_from_one(res: Resources, events_in: str) -> None:
    recorder = Recorder()
    hub, inlet = start_hub(res, sinks=[recorder], events_in=events_in)
    publisher = res.add(Publisher(inlet, sender="test", key=KEY))
    sub = res.add(Subscriber(hub.events_out, max_bytes=MAX_BYTES, auth=AUTH))
    join_subscribers(publisher, [sub])
    sent = [EpisodeStarted(sender="session", episode=i, episodes=20, steps=100) for i in range(1, 21)]

    for msg in sent:
        publisher.publish(msg)
    got = receive_until(sub, lambda seq, msg: msg.msg_id == sent[-1].msg_id)

    applied = recorder.wait_for_count(hub.seq)
    assert [seq for seq, _ in applied] == list(range(1, len(applied) + 1))
    numbers = {msg.msg_id: seq for seq, msg in applied}
    ours: list[tuple[int, EpisodeStarted]] = [(s, m) for s, m in got if isinstance(m, EpisodeStarted)]
    assert [msg.msg_id for _, msg in ours] == [m.msg_id for m in sent]
    assert all(seq == numbers[msg.msg_id] for seq, msg in ours)
    seqs = [seq for seq, _ in ours]
    assert seqs == list(range(seqs[0], seqs[0] + len(sent)))
    assert [msg.episode for _, msg in ours] == list(range(1, 21))


def test_the_first_event_is_number_one(res: Resources) -> None:
    recorder = Recorder()
    hub, events_in = start_hub(res, sinks=[recorder])
    inlet = raw_inlet(res, events_in)
    first = ErrorRaised(sender="env", where="env", error="first")

    inlet.send_multipart(encode(first))
    [(seq, msg)] = recorder.wait_for_count(1)

    assert seq == 1
    assert msg.msg_id == first.msg_id
    assert hub.seq == 1


def test_garbage_sent_to_the_hub_is_counted_and_not_forwarded(res: Resources) -> None:
    recorder = Recorder()
    hub, events_in = start_hub(res, sinks=[recorder])
    inlet = raw_inlet(res, events_in)
    watcher = res.socket(zmq.SUB)
    watcher.setsockopt(zmq.SUBSCRIBE, b"")
    watcher.connect(hub.events_out)
    numbered = join_raw_subscriber(inlet, watcher)
    garbage = [frames for frames, _ in garbage_messages()]
    marker = ErrorRaised(sender="env", where="env", error="after garbage")

    for frames in garbage:
        inlet.send_multipart(frames)
    inlet.send_multipart(encode(marker))

    assert watcher.poll(5000)
    seq, report = unpack_event(watcher.recv_multipart(), MAX_BYTES)
    assert isinstance(report, ErrorRaised), "garbage is reported once, as an error event"
    assert report.where == "session event input"
    assert report.sender == "session" and seq == numbered + 1
    assert watcher.poll(5000)
    seq, msg = unpack_event(watcher.recv_multipart(), MAX_BYTES)
    assert msg.msg_id == marker.msg_id, "the next published event is the marker, not garbage"
    assert seq == numbered + 2, "garbage itself takes no sequence number"
    assert hub.rejected == len(garbage)
    assert [m.msg_id for _, m in recorder.wait_for_count(seq)][-1] == marker.msg_id
    assert len(recorder.events) == seq


def test_a_failing_sink_does_not_stop_the_hub(res: Resources) -> None:
    def broken(seq: int, msg: Message) -> None:
        raise RuntimeError("sink broke")

    recorder = Recorder()
    _, events_in = start_hub(res, sinks=[broken, recorder])
    inlet = raw_inlet(res, events_in)

    for i in range(3):
        inlet.send_multipart(encode(ErrorRaised(where="x", error=str(i))))

    assert [seq for seq, _ in recorder.wait_for_count(3)] == [1, 2, 3]


def test_a_second_hub_on_the_same_inlet_fails_to_start(res: Resources) -> None:
    _, events_in = start_hub(res, sinks=[], events_in="tcp")
    twin = res.add(
        EventHub(
            name="twin",
            events_in=events_in,
            monitor_host="127.0.0.1",
            events_port=0,
            session_port=0,
            max_bytes=MAX_BYTES,
            sinks=[],
            snapshot=dict,
            key=KEY,
        )
    )

    with pytest.raises(RuntimeError, match="could not bind"):
        twin.start()


def session_client(res: Resources, hub: EventHub) -> Client:
    return res.add(
        Client(hub.session, max_bytes=MAX_BYTES, timeout_s=5, sender="monitor", key=None, auth=AUTH)
    )


def test_the_session_socket_describes_the_session(res: Resources) -> None:
    hub, _ = start_hub(res, sinks=[])
    request = DescribeSession(sender="monitor")

    reply = session_client(res, hub).request(request)

    assert isinstance(reply, SessionDescription)
    assert reply.correlation_id == request.msg_id
    assert reply.name == "test-session"
    assert reply.events == hub.events_out
    assert reply.events.startswith("tcp://127.0.0.1:")
    assert reply.protocol == PROTOCOL_VERSION
    assert hub.session.startswith("tcp://127.0.0.1:")


def test_a_snapshot_carries_the_state_after_the_events_applied(res: Resources) -> None:
    state = SessionState()
    recorder = Recorder()
    hub, events_in = start_hub(res, sinks=[sink_of(state), recorder], snapshot=state.to_dict)
    inlet = raw_inlet(res, events_in)
    events = [
        ModelCreated(sender="model", model_id="m-1", algorithm="ppo", device="cpu", parameters=5, episode=1),
        *[Heartbeat(sender="env", pid=7, rss_bytes=i, cpu_percent=1.0, state="idle") for i in range(4)],
    ]
    for msg in events:
        inlet.send_multipart(encode(msg))
    recorder.wait_for_count(len(events))
    request = RequestSnapshot(sender="monitor")

    reply = session_client(res, hub).request(request)

    assert isinstance(reply, Snapshot)
    assert reply.correlation_id == request.msg_id
    assert reply.seq == len(events) == hub.seq
    assert reply.state == state.to_dict()
    assert reply.state["model"]["model_id"] == "m-1"
    assert reply.state["actors"]["env"]["rss_bytes"] == 3


def test_the_session_socket_refuses_every_other_request(res: Resources) -> None:
    hub, _ = start_hub(res, sinks=[])
    client = session_client(res, hub)
    others = sorted(set(message_types()) - {"DescribeSession", "RequestSnapshot"})
    not_refused: list[tuple[str, str]] = []

    for name in others:
        request = dataclasses.replace(sample_message(message_types()[name]), msg_id=uuid.uuid4().hex)
        try:
            reply = client.request(request)
        except RemoteError as exc:
            if not re.search(f"^{name} failed at .*monitors may only", str(exc)):
                not_refused.append((name, str(exc)))
        else:
            not_refused.append((name, f"answered {type(reply).__name__}"))

    assert len(others) > 10
    assert not_refused == []


def test_the_session_socket_answers_garbage_with_request_failed_and_keeps_serving(res: Resources) -> None:
    hub, _ = start_hub(res, sinks=[])
    dealer = res.socket(zmq.DEALER)
    dealer.connect(hub.session)

    dealer.send_multipart([b"\x93garbage"])
    assert dealer.poll(5000)
    reply = decode(dealer.recv_multipart())
    describe = DescribeSession()
    dealer.send_multipart(encode(describe))
    assert dealer.poll(5000)
    described = decode(dealer.recv_multipart())

    assert isinstance(reply, RequestFailed)
    assert reply.request == "?"
    assert "msgpack" in reply.error
    assert isinstance(described, SessionDescription)
    assert described.correlation_id == describe.msg_id


def test_a_subscriber_that_never_reads_does_not_block_publishing(res: Resources) -> None:
    recorder = Recorder()
    hub, events_in = start_hub(res, sinks=[recorder], sndhwm=1000)
    publisher = res.add(Publisher(events_in, sender="test", key=KEY))
    stuck = res.add(Subscriber(hub.events_out, max_bytes=MAX_BYTES, auth=AUTH))
    reader = res.add(Subscriber(hub.events_out, max_bytes=MAX_BYTES, auth=AUTH))
    join_subscribers(publisher, [stuck, reader])
    applied = len(recorder.wait_for_count(hub.seq))
    n, chunk = 50_000, 1000
    beat = Heartbeat(sender="flood", pid=1, rss_bytes=1, cpu_percent=0.0, state="x" * 512)
    read: list[int] = []

    def drain_reader() -> None:
        while (item := reader.receive(0)) is not None:
            read.append(item[0])

    for _ in range(n // chunk):
        for _ in range(chunk):
            publisher.publish(beat)
        # Pace by the hub's progress, so every event reaches it: a hub blocked by `stuck` fails here.
        applied = len(recorder.wait_for_count(applied + chunk, timeout_s=10))
        drain_reader()
    marker = EpisodeStarted(sender="session", episode=7, episodes=7, steps=1)
    publisher.publish(marker)
    got = receive_until(reader, lambda seq, msg: msg.msg_id == marker.msg_id)
    read += [seq for seq, _ in got]
    snapshot = session_client(res, hub).request(RequestSnapshot(), timeout_s=2)
    stuck_seqs = []
    while (item := stuck.receive(200)) is not None:
        stuck_seqs.append(item[0])

    assert isinstance(snapshot, Snapshot)
    assert read[-1] == hub.seq == snapshot.seq, "the reader got the latest event"
    assert read == list(range(read[0], read[-1] + 1)), "the reader lost nothing"
    assert len(read) > n
    assert stuck_seqs[-1] < hub.seq, "the subscriber that never read lost events instead of blocking the hub"
