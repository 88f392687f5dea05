"""CURVE on the session's monitor sockets: a listed key gets in, any other is refused and told why."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import zmq
from zmq.auth.thread import ThreadAuthenticator

from messages import DescribeSession, Heartbeat, RequestSnapshot, SessionDescription, Snapshot
from services.session.state import SessionState
from services.transport.credentials import CurveServerKeys
from services.transport.curve import (
    ALLOWLIST_DIR,
    Handshake,
    KeyAllowlist,
    KeysError,
    check_handshake,
    create_keys,
    explain_handshake,
    load_client_keys,
    load_session_keys,
)
from services.transport.endpoints import context
from services.transport.hub import EventHub
from services.transport.sockets import Client, Publisher, Subscriber
from tests.integration.signing import KEY

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MAX_BYTES = 1 << 20
T = TypeVar("T")


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A keys folder with two client kits, of which client-2 is not (or no longer) listed."""
    folder = tmp_path / "keys"
    create_keys(folder, clients=2)
    (folder / ALLOWLIST_DIR / "client-2.key").unlink()
    return folder


@pytest.fixture
def events_in() -> str:
    """The hub's XSUB endpoint, where the test's publishers connect."""
    return f"inproc://curve-{uuid.uuid4().hex}"


def started(start: Callable[[], T]) -> T:
    """Call start, retrying while the previous test's authenticator still holds the ZAP endpoint.

    ThreadAuthenticator.stop returns before libzmq has released inproc://zeromq.zap.01.
    """
    deadline = time.monotonic() + 5
    while True:
        try:
            return start()
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


@pytest.fixture
def hub(keys: Path, events_in: str) -> Iterator[EventHub]:
    session = load_session_keys(keys)
    state = SessionState()

    def start() -> EventHub:
        hub = EventHub(
            name="guarded",
            events_in=events_in,
            monitor_host="127.0.0.1",
            events_port=0,
            session_port=0,
            max_bytes=MAX_BYTES,
            sinks=[state.apply],
            snapshot=state.to_dict,
            key=KEY,
            curve=session.curve,
            allowed_keys_dir=session.allowlist,
        )
        hub.start()
        return hub

    hub = started(start)
    try:
        yield hub
    finally:
        hub.stop()


def run_monitor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "monitor", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_are_laid_out_for_the_session_its_allowlist_and_each_monitor(tmp_path: Path) -> None:
    created = create_keys(tmp_path / "k", clients=2)
    again = create_keys(tmp_path / "k", clients=1)

    assert [kit.name for kit in created.kits] == ["local", "client-1", "client-2"]
    assert created.server_created and not again.server_created
    assert [kit.name for kit in again.kits] == ["client-3"]
    listed = sorted(p.name for p in (tmp_path / "k" / ALLOWLIST_DIR).iterdir())
    assert listed == ["client-1.key", "client-2.key", "client-3.key", "local.key"]
    kit = tmp_path / "k" / "client-1"
    assert (kit / "client.key_secret").stat().st_mode & 0o077 == 0
    assert load_client_keys(kit).server_public == load_session_keys(tmp_path / "k").curve.public


def test_loading_keys_from_the_wrong_folder_names_the_file_and_the_fix(keys: Path) -> None:
    with pytest.raises(KeysError, match="client folder such as"):
        load_client_keys(keys)
    with pytest.raises(KeysError, match=r"server\.key_secret is missing; create keys with"):
        load_session_keys(keys / "client-1")


def test_a_listed_key_gets_the_description_the_snapshot_and_events(
    hub: EventHub, keys: Path, events_in: str
) -> None:
    listed = load_client_keys(keys / "client-1")
    client = Client(hub.session, max_bytes=MAX_BYTES, timeout_s=5, sender="monitor", key=None, auth=listed)
    subscriber = Subscriber(hub.events_out, max_bytes=MAX_BYTES, auth=listed)
    publisher = Publisher(events_in, sender="model", key=KEY)
    try:
        assert check_handshake(hub.session, listed, timeout_s=5) is Handshake.ACCEPTED
        description = client.request(DescribeSession())
        snapshot = client.request(RequestSnapshot())
        received = None
        deadline = time.monotonic() + 10
        while received is None and time.monotonic() < deadline:
            publisher.publish(Heartbeat(pid=1, rss_bytes=1, cpu_percent=0.0, state="idle"))
            received = subscriber.receive(100)
    finally:
        for sock in (client, subscriber, publisher):
            sock.close()

    assert isinstance(description, SessionDescription) and description.name == "guarded"
    assert isinstance(snapshot, Snapshot)
    assert received is not None and isinstance(received[1], Heartbeat)


def test_an_unlisted_key_is_refused_and_the_refusal_is_named(hub: EventHub, keys: Path) -> None:
    unlisted = load_client_keys(keys / "client-2")

    result = check_handshake(hub.session, unlisted, timeout_s=5)

    assert result is Handshake.REFUSED
    message = explain_handshake(result, hub.session, keys / "client-2", 5)
    assert "refused this monitor's key" in message and "not listed" in message


def test_a_monitor_without_keys_is_told_that_the_session_needs_them(hub: EventHub) -> None:
    result = check_handshake(hub.session, None, timeout_s=5)

    assert result is Handshake.MECHANISM
    assert "requires CURVE keys: pass --keys DIR" in explain_handshake(result, hub.session, None, 5)


def test_a_kit_of_another_session_breaks_off_the_handshake(hub: EventHub, tmp_path: Path) -> None:
    create_keys(tmp_path / "other", clients=1)
    foreign = load_client_keys(tmp_path / "other" / "client-1")

    assert check_handshake(hub.session, foreign, timeout_s=5) is Handshake.FAILED


def test_the_monitor_command_attaches_with_a_listed_key_and_says_why_it_cannot_without(
    hub: EventHub, keys: Path
) -> None:
    accepted = run_monitor("--connect", hub.session, "--keys", str(keys / "client-1"), "--once", "--json")
    refused = run_monitor("--connect", hub.session, "--keys", str(keys / "client-2"), "--once")
    keyless = run_monitor("--connect", hub.session, "--once", "--timeout", "5")

    assert accepted.returncode == 0, accepted.stderr
    assert json.loads(accepted.stdout.splitlines()[0])["type"] == "Snapshot"
    assert refused.returncode == 1
    assert "refused this monitor's key" in refused.stderr and "Traceback" not in refused.stderr
    assert keyless.returncode == 1
    assert "requires CURVE keys" in keyless.stderr


def test_the_allowlist_logs_a_refused_key_once_and_reads_revocations_at_once(
    keys: Path, caplog: pytest.LogCaptureFixture
) -> None:
    session = load_session_keys(keys)
    allowlist = KeyAllowlist(session.allowlist)
    auth = ThreadAuthenticator(context())
    started(auth.start)
    auth.configure_curve_callback(domain="*", credentials_provider=allowlist)
    server = context().socket(zmq.ROUTER)
    server.setsockopt(zmq.LINGER, 0)
    CurveServerKeys(public=session.curve.public, secret=session.curve.secret).apply(server)
    endpoint = f"tcp://127.0.0.1:{server.bind_to_random_port('tcp://127.0.0.1')}"
    listed = load_client_keys(keys / "client-1")
    try:
        with caplog.at_level(logging.WARNING, logger="services.transport.curve"):
            before = check_handshake(endpoint, listed, timeout_s=5)
            refused = [check_handshake(endpoint, load_client_keys(keys / "client-2"), 5) for _ in range(3)]
            (keys / ALLOWLIST_DIR / "client-1.key").unlink()
            after = check_handshake(endpoint, listed, timeout_s=5)
    finally:
        server.close(0)
        auth.stop()

    assert before is Handshake.ACCEPTED
    assert refused == [Handshake.REFUSED] * 3
    assert after is Handshake.REFUSED
    warnings = [r.getMessage() for r in caplog.records if "refused a monitor" in r.getMessage()]
    assert len(warnings) == 2  # client-2 once despite three attempts, then the revoked client-1
    assert all("is not listed in" in w for w in warnings)
