"""Trust on the session's sockets: only holders of the session key get in, no peer speaks for another,
the first events of every publisher arrive, and no message or subscription can bloat the receiver."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import zmq

from messages import (
    ActorStarted,
    DescribeSession,
    ErrorRaised,
    Heartbeat,
    Message,
    Ping,
    SessionDescription,
    SessionStarted,
    Stop,
    encode,
)
from messages.envelope import SessionKey, seal
from services.transport.auth import KEY_FILE, ZapHandler, read_session_key, write_session_key
from services.transport.credentials import PlainClient
from services.transport.endpoints import advertised, context, ipc_folder
from services.transport.hub import EventHub
from services.transport.sockets import Client, Publisher, RequestTimeout, Server, Subscriber
from tests.integration.signing import AUTH, KEY, signed

pytestmark = pytest.mark.integration

MAX_BYTES = 1 << 20
WAIT_S = 5.0


class Log:
    """A hub sink that keeps every (seq, event) and lets a test wait for one."""

    def __init__(self) -> None:
        self.events: list[tuple[int, Message]] = []
        self._cond = threading.Condition()

    def __call__(self, seq: int, msg: Message) -> None:
        with self._cond:
            self.events.append((seq, msg))
            self._cond.notify_all()

    def wait_count(self, count: int, timeout_s: float = WAIT_S) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.events) >= count, timeout_s), len(self.events)

    def wait_for(self, match: Callable[[Message], bool], timeout_s: float = WAIT_S) -> Message:
        with self._cond:
            assert self._cond.wait_for(lambda: any(match(m) for _, m in self.events), timeout_s)
            return next(m for _, m in self.events if match(m))


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tr-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def hub(folder: Path) -> Iterator[tuple[EventHub, Log]]:
    log = Log()
    hub = EventHub(
        name="trusted",
        events_in=f"ipc://{folder}/in.sock",
        monitor_host="127.0.0.1",
        events_port=0,
        session_port=0,
        max_bytes=MAX_BYTES,
        sinks=[log],
        snapshot=dict,
        key=KEY,
    )
    hub.start()
    yield hub, log
    hub.stop()


@pytest.fixture
def server(folder: Path) -> Iterator[Server]:
    server = Server(f"ipc://{folder}/env.sock", max_bytes=MAX_BYTES, name="env", key=KEY)
    yield server
    server.close()


def raw(kind: int, endpoint: str, *, credentials: PlainClient | None = None) -> zmq.Socket[bytes]:
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if credentials is not None:
        credentials.apply(sock)
    sock.connect(endpoint)
    return sock


def served(server: Server, timeout_s: float = 1.0) -> list[object]:
    """Poll a server for a while and return what it handed over."""
    got: list[object] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got += server.poll(50)
    return got


def test_the_session_key_file_is_private_whatever_the_umask(folder: Path) -> None:
    old = os.umask(0)
    try:
        key = write_session_key(folder)
    finally:
        os.umask(old)

    mode = stat.S_IMODE((folder / KEY_FILE).stat().st_mode)
    assert mode == 0o600
    assert read_session_key(folder).secret == key.secret


def test_the_ipc_folder_and_socket_files_are_private_whatever_the_umask(folder: Path) -> None:
    old = os.umask(0)
    try:
        ipc = ipc_folder(folder)
        server = Server(f"ipc://{ipc}/env.sock", max_bytes=MAX_BYTES, name="env", key=KEY)
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(ipc.stat().st_mode) == 0o700
        assert stat.S_IMODE((ipc / "env.sock").stat().st_mode) == 0o600
    finally:
        server.close()


def test_a_process_without_the_key_is_refused_at_the_handshake_and_counted(server: Server) -> None:
    domain = KEY.domain()
    before = ZapHandler.refused(domain)
    foreign = raw(zmq.DEALER, server.endpoint)
    wrong = raw(zmq.DEALER, server.endpoint, credentials=PlainClient.of(SessionKey.generate()))
    try:
        for sock in (foreign, wrong):
            for _ in range(3):
                with contextlib.suppress(zmq.Again):  # a refused peer's queue may be gone
                    sock.send_multipart(encode(Stop(reason="foreign", sender="session")), zmq.NOBLOCK)

        got = served(server, 1.0)

        assert got == [], "nothing of a foreign process reaches the actor"
        assert ZapHandler.refused(domain) > before, "the refused handshakes are counted"
    finally:
        foreign.close(0)
        wrong.close(0)


def test_messages_not_signed_with_the_session_key_are_refused_counted_and_never_handed_over(
    server: Server,
) -> None:
    peer = raw(zmq.DEALER, server.endpoint, credentials=AUTH)
    other = SessionKey.generate()
    stop = [bytes(f) for f in encode(Stop(reason="spoofed", sender="session"))]
    try:
        peer.send_multipart(stop)  # no envelope at all
        peer.send_multipart(seal(other, b"session", stop))  # signed with another session's key
        peer.send_multipart([b"session", b"\x00" * 32, *stop])  # a made-up signature

        got = served(server, 1.0)

        assert server.refused == 3
        assert all(getattr(item, "message", None) is None for item in got)
        assert len(got) == 1 and "not signed with this session's key" in got[0].error  # type: ignore[attr-defined]
        assert "(1 in all; last: not signed" in got[0].error  # type: ignore[attr-defined]
    finally:
        peer.close(0)


def test_a_signed_message_that_names_another_sender_is_refused(server: Server) -> None:
    peer = raw(zmq.DEALER, server.endpoint, credentials=AUTH)
    as_session = [bytes(f) for f in encode(Stop(reason="spoofed", sender="session"))]
    try:
        peer.send_multipart(seal(KEY, b"model", as_session))  # the model speaking for the session

        got = served(server, 0.5)

        assert server.refused == 1
        assert [getattr(item, "message", None) for item in got] == [None]
    finally:
        peer.close(0)


def test_a_request_whose_body_is_bad_is_answered_with_its_own_id(server: Server) -> None:
    peer = raw(zmq.DEALER, server.endpoint, credentials=AUTH)
    try:
        ping = Ping(sender="model")
        header = bytes(encode(ping)[0])
        peer.send_multipart(signed([header, b"an array frame the header does not describe"]))

        [item] = served(server, 0.5)

        assert item.message is None  # type: ignore[attr-defined]
        assert item.request_id == ping.msg_id  # type: ignore[attr-defined]
    finally:
        peer.close(0)


def test_a_message_past_the_frame_or_byte_limit_is_refused_and_the_server_keeps_serving(
    folder: Path,
) -> None:
    server = Server(f"ipc://{folder}/small.sock", max_bytes=1 << 16, name="env", key=KEY, max_frames=8)
    peer = raw(zmq.DEALER, server.endpoint, credentials=AUTH)
    client = Client(server.endpoint, max_bytes=1 << 16, timeout_s=WAIT_S, sender="model", key=KEY)
    try:
        header = bytes(encode(Ping(sender="model"))[0])
        peer.send_multipart(signed([header, *[b"\x00" * 60_000] * 4]))  # 240 kB in frames below the limit
        peer.send_multipart(signed([header, *[b"x"] * 100]))  # 100 tiny frames

        refusals = served(server, 0.5)
        client.send(Ping(sender="model"))
        [valid] = served(server, 0.5)

        errors = [item.error for item in refusals]  # type: ignore[attr-defined]
        assert any("bytes exceeds the limit of 65536" in e for e in errors)
        assert any("frames exceeds the limit of 8" in e for e in errors)
        assert isinstance(valid.message, Ping)  # type: ignore[attr-defined]
    finally:
        client.close()
        peer.close(0)
        server.close()


def test_every_first_event_of_many_publishers_reaches_the_hub_in_order(hub: tuple[EventHub, Log]) -> None:
    events_hub, log = hub
    starts = 30

    for n in range(starts):
        publisher = Publisher(events_hub._events_in, sender=f"actor-{n}", key=KEY)
        publisher.publish(
            SessionStarted(name=f"s{n}", run_dir="", monitor="", episodes=1, steps_per_episode=1, config={})
        )
        publisher.publish(ActorStarted(pid=n))
        publisher.publish(Heartbeat(pid=n, rss_bytes=0, cpu_percent=0.0, state="idle"))
        publisher.close()
    log.wait_count(3 * starts, timeout_s=20)

    for n in range(starts):
        mine = [type(m).__name__ for _, m in log.events if m.sender == f"actor-{n}"]
        assert mine == ["SessionStarted", "ActorStarted", "Heartbeat"], n


def test_the_hub_accepts_only_signed_events_from_their_signer(hub: tuple[EventHub, Log]) -> None:
    events_hub, log = hub
    inlet = raw(zmq.PUSH, events_hub._events_in, credentials=AUTH)
    foreign = raw(zmq.PUSH, events_hub._events_in)
    started = [
        bytes(f)
        for f in encode(
            SessionStarted(
                name="spoof",
                run_dir="",
                monitor="",
                episodes=1,
                steps_per_episode=1,
                config={},
                sender="session",
            )
        )
    ]
    try:
        foreign.send_multipart(started, zmq.NOBLOCK)
        inlet.send_multipart(started)  # unsigned
        inlet.send_multipart(seal(KEY, b"env", started))  # signed by another role
        inlet.send_multipart(signed(encode(Ping(sender="env"))))  # a command is not an event
        inlet.send_multipart(
            signed(encode(Heartbeat(pid=1, rss_bytes=1, cpu_percent=0.0, state="x", sender="env")))
        )
        log.wait_for(lambda m: isinstance(m, Heartbeat))

        assert not [m for _, m in log.events if isinstance(m, SessionStarted)], "no spoofed start applied"
        assert events_hub.refused == 2 and events_hub.rejected == 3
        assert any(isinstance(m, ErrorRaised) and m.where == "session event input" for _, m in log.events)
    finally:
        inlet.close(0)
        foreign.close(0)


def test_subscriptions_to_no_event_are_ignored_and_a_normal_subscriber_still_gets_events(
    hub: tuple[EventHub, Log],
) -> None:
    events_hub, _ = hub
    flood = context().socket(zmq.XSUB)
    flood.setsockopt(zmq.LINGER, 0)
    AUTH.apply(flood)
    flood.connect(events_hub.events_out)
    subscriber = Subscriber(events_hub.events_out, max_bytes=MAX_BYTES, auth=AUTH)
    publisher = Publisher(events_hub._events_in, sender="env", key=KEY)
    try:
        for n in range(50):
            flood.send(b"\x01" + n.to_bytes(2, "big") + b"x" * 500)
        flood.send(b"\x01" + b"y" * 5000)  # above the subscription size limit: the peer is dropped
        deadline = time.monotonic() + WAIT_S
        while events_hub.ignored_subscriptions < 50 and time.monotonic() < deadline:
            publisher.publish(Heartbeat(pid=1, rss_bytes=1, cpu_percent=0.0, state="x"))
            time.sleep(0.01)
        got = None
        while got is None and time.monotonic() < deadline:
            publisher.publish(Heartbeat(pid=1, rss_bytes=1, cpu_percent=0.0, state="x"))
            got = subscriber.receive(50)

        assert events_hub.ignored_subscriptions >= 50  # a reconnecting XSUB sends its subscriptions again
        assert got is not None and got[1].sender in ("env", "session")
    finally:
        flood.close(0)
        subscriber.close()
        publisher.close()


def test_a_monitor_without_the_session_token_gets_nothing_from_the_hub(hub: tuple[EventHub, Log]) -> None:
    events_hub, _ = hub
    keyless = Client(events_hub.session, max_bytes=MAX_BYTES, timeout_s=0.5, sender="m", key=None)
    keyed = Client(events_hub.session, max_bytes=MAX_BYTES, timeout_s=WAIT_S, sender="m", key=None, auth=AUTH)
    try:
        with pytest.raises(RequestTimeout):
            keyless.request(DescribeSession())
        assert isinstance(keyed.request(DescribeSession()), SessionDescription)
        assert events_hub.refusals()["handshakes"] >= 0
    finally:
        keyless.close()
        keyed.close()


def test_a_wildcard_host_is_advertised_by_an_address_peers_can_reach() -> None:
    endpoint = advertised("tcp://0.0.0.0:5555")

    host = endpoint[len("tcp://") :].rsplit(":", 1)[0]
    assert endpoint.endswith(":5555") and host not in ("0.0.0.0", "*")
    assert advertised("tcp://10.1.2.3:5555") == "tcp://10.1.2.3:5555"
    assert host in (socket.gethostname(), *{i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None)})


def test_a_hub_on_ipv6_loopback_binds_and_serves(folder: Path) -> None:
    hub = EventHub(
        name="six",
        events_in=f"ipc://{folder}/in6.sock",
        monitor_host="::1",
        events_port=0,
        session_port=0,
        max_bytes=MAX_BYTES,
        sinks=[],
        snapshot=dict,
        key=KEY,
    )
    hub.start()
    client = Client(hub.session, max_bytes=MAX_BYTES, timeout_s=WAIT_S, sender="m", key=None, auth=AUTH)
    try:
        assert hub.session.startswith("tcp://[::1]:")
        assert isinstance(client.request(DescribeSession()), SessionDescription)
    finally:
        client.close()
        hub.stop()


def test_a_refused_request_is_answered_without_a_traceback(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    peer = raw(zmq.DEALER, server.endpoint, credentials=AUTH)
    try:
        with caplog.at_level("WARNING"):
            for _ in range(50):
                peer.send_multipart(signed([b"\x93garbage"]))
            got = served(server, 0.5)

        assert len(got) == 50
        assert all(isinstance(i.error, str) and i.message is None for i in got)  # type: ignore[attr-defined]
        lines = [r for r in caplog.records if "rejected a request" in r.getMessage()]
        assert len(lines) == 1, "one line for the flood, not one per request"
        assert not any(r.exc_info for r in caplog.records)
    finally:
        peer.close(0)
