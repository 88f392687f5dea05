"""A monitor attaching mid-run over tcp ends with the hub's state; a stalled monitor slows nothing."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import zmq

from actors.base import ActorExit
from actors.monitor import MonitorActor
from actors.ports import Ports
from messages import (
    ActorStarted,
    EpisodeFinished,
    EpisodeStarted,
    EvaluationFinished,
    Heartbeat,
    Message,
    ModelCreated,
    SessionFinished,
    SessionStarted,
    TrainingMetrics,
    TrainingProgress,
)
from services.runtime import SystemClock
from services.session.state import SessionState
from services.transport.endpoints import context
from services.transport.hub import EventHub
from services.transport.sockets import Client, Publisher, Subscriber
from tests.fakes import FakeProbe, wait_until
from tests.integration.signing import AUTH, KEY

pytestmark = pytest.mark.integration

MAX_BYTES = 1 << 20
BATCH = 250
PHASE_EVENTS = 10_000


class RecordingView:
    """Keeps what the monitor showed; cheap per event, so the monitor keeps up with the publisher."""

    def __init__(self) -> None:
        self.state: SessionState | None = None
        self.snapshots: list[int] = []
        self.applied: list[int] = []
        self.notices: list[str] = []
        self.seq = 0

    def snapshot(self, state: SessionState) -> None:
        self.state = state
        self.snapshots.append(state.seq)
        self.seq = state.seq

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        self.state = state
        self.applied.append(seq)
        self.seq = seq

    def notice(self, text: str) -> None:
        self.notices.append(text)

    def close(self) -> None:
        pass


@dataclass
class Session:
    """A hub with its state, and every event it numbered."""

    hub: EventHub
    state: SessionState
    events_in: str
    numbered: dict[str, int] = field(default_factory=dict)

    def has(self, msg_id: str) -> Callable[[], bool]:
        """Return a condition: the hub numbered this event."""
        return lambda: msg_id in self.numbered

    def passes(self, msg_id: str, check: Callable[[int], bool]) -> Callable[[], bool]:
        """Return a condition: check holds for this event's number."""
        return lambda: check(self.numbered[msg_id])


def start_session(name: str, events_port: int = 0, session_port: int = 0) -> Session:
    state = SessionState()
    events_in = f"inproc://{name}-{uuid.uuid4().hex}"
    numbered: dict[str, int] = {}
    hub = EventHub(
        name=name,
        events_in=events_in,
        monitor_host="127.0.0.1",
        events_port=events_port,
        session_port=session_port,
        max_bytes=MAX_BYTES,
        sinks=[state.apply, lambda seq, msg: numbered.__setitem__(msg.msg_id, seq)],
        snapshot=state.to_dict,
        key=KEY,
        sndhwm=2000,
    )
    hub.start()
    return Session(hub=hub, state=state, events_in=events_in, numbered=numbered)


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    """Sessions a test starts (append them); all are stopped at the end."""
    started: list[Session] = []
    yield started
    for session in started:
        session.hub.stop()


@pytest.fixture
def session(sessions: list[Session]) -> Session:
    sessions.append(start_session("attach"))
    return sessions[-1]


def start_monitor(hub: EventHub, view: RecordingView, note: ActorExit, **options: Any) -> None:
    MonitorActor.start(
        view=view,
        ports=Ports(
            subscriber=lambda: Subscriber(hub.events_out, max_bytes=MAX_BYTES, auth=AUTH),
            clients={
                "session": lambda: Client(
                    hub.session, max_bytes=MAX_BYTES, timeout_s=10, sender="m", key=None, auth=AUTH
                )
            },
        ),
        clock=SystemClock(),
        probe=FakeProbe(),
        exit_note=note,
        exit_when_finished=True,
        **options,
    )


def training(episode: int, i: int) -> list[Message]:
    """Events of one training piece: progress, metrics (about 700 bytes) and a heartbeat."""
    values = {f"train/value_{k}": 0.001 * i + k for k in range(20)}
    return [
        TrainingProgress(
            model_id="m1", episode=episode, steps=i, steps_total=PHASE_EVENTS, total_steps=i,
            steps_per_s=1000.0, eta_s=1.0, sender="model",
        ),
        TrainingMetrics(model_id="m1", episode=episode, total_steps=i, values=values, sender="model"),
        Heartbeat(pid=7, rss_bytes=i, cpu_percent=50.0, state="training", sender="model"),
    ]  # fmt: skip


def _poll(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def connected_publisher(session: Session, seen: Callable[[int], bool] = lambda seq: True) -> Publisher:
    """Return a publisher whose heartbeats the hub numbers and `seen` confirms.

    A PUB drops what it sends until the hub's subscription reaches it, and a SUB gets nothing until its
    subscription reaches the hub; so probe until one heartbeat made the whole way.
    """
    publisher = Publisher(session.events_in, sender="env", key=KEY)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        probe = Heartbeat(pid=8, rss_bytes=1, cpu_percent=1.0, state="idle", sender="env")
        publisher.publish(probe)
        if _poll(session.has(probe.msg_id), 0.1) and _poll(session.passes(probe.msg_id, seen), 0.2):
            return publisher
    publisher.close()
    raise AssertionError("no event made its way from a publisher through the hub")


def publish_in_thread(session: Session, events: list[Message], caught_up: Callable[[int], bool]) -> float:
    """Publish events from a thread of its own in batches, each once the hub and `caught_up` have it.

    Returns the seconds the publish loop took. Waiting per batch keeps the publisher's and the reading
    monitor's queues below their high-water marks, so no event is dropped on their way.
    """
    took: list[float] = []

    def run() -> None:
        publisher = connected_publisher(session)
        start = time.perf_counter()
        for begin in range(0, len(events), BATCH):
            batch = events[begin : begin + BATCH]
            for msg in batch:
                publisher.publish(msg)
            wait_until(session.has(batch[-1].msg_id))
            wait_until(session.passes(batch[-1].msg_id, caught_up))
        took.append(time.perf_counter() - start)
        publisher.close()

    thread = threading.Thread(target=run, name="publisher")
    thread.start()
    thread.join(120)
    assert took, "the publish loop did not finish"
    return took[0]


def test_a_monitor_attached_mid_run_over_tcp_ends_with_the_hubs_state(session: Session) -> None:
    hub = session.hub
    # Before the monitor: the session starts and trains a while.
    opening: list[Message] = [
        SessionStarted(
            name="attach", run_dir="runs/attach", monitor=hub.session, episodes=2,
            steps_per_episode=PHASE_EVENTS, config={"seed": 1}, sender="session",
        ),
        ActorStarted(pid=7, sender="model"),
        ModelCreated(model_id="m1", algorithm="ppo", device="cpu", parameters=99, episode=1, sender="model"),
        EpisodeStarted(episode=1, episodes=2, steps=PHASE_EVENTS, sender="session"),
    ]  # fmt: skip
    before = opening + [m for i in range(300) for m in training(1, i)]
    publish_in_thread(session, before, caught_up=lambda seq: True)

    # A monitor attaches over tcp: snapshot first, then live events.
    view, note = RecordingView(), ActorExit()
    start_monitor(hub, view, note)
    wait_until(lambda: bool(view.snapshots))
    connected_publisher(session, seen=lambda seq: view.seq >= seq).close()
    first_live, settled = hub.seq + 1, len(view.notices)

    def monitor_has(seq: int) -> bool:
        return view.seq >= seq

    # Training goes on with the reading monitor only, then with a second subscriber that never reads.
    alone = [m for i in range(PHASE_EVENTS // 3) for m in training(1, i)]
    alone_s = publish_in_thread(session, alone, caught_up=monitor_has)
    stalled = context().socket(zmq.SUB)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.RCVHWM, 100)
    stalled.setsockopt(zmq.RCVBUF, 4096)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    AUTH.apply(stalled)
    stalled.connect(hub.events_out)
    try:
        connected_publisher(session, seen=lambda seq: stalled.poll(0) != 0).close()
        stalled.recv_multipart()  # it joined; from now on it reads nothing
        crowded = [
            EpisodeFinished(
                model_id="m1", episode=1, steps=PHASE_EVENTS, total_steps=PHASE_EVENTS, seconds=1.0,
                steps_per_s=1.0, sender="model",
            ),
            EvaluationFinished(
                model_id="m1", episode=1, agent={"total_return": 0.1}, buy_and_hold={"total_return": 0.05},
                sender="model",
            ),
            EpisodeStarted(episode=2, episodes=2, steps=PHASE_EVENTS, sender="session"),
            *(m for i in range(PHASE_EVENTS // 3) for m in training(2, i)),
            SessionFinished(name="attach", status="completed", sender="session"),
        ]  # fmt: skip
        crowded_s = publish_in_thread(session, crowded, caught_up=monitor_has)
        assert note.event.wait(30), "the monitor did not stop after SessionFinished"
        stalled_got = 0
        while stalled.poll(0):
            stalled.recv_multipart()
            stalled_got += 1
    finally:
        stalled.close(0)

    published = before + alone + crowded
    print(
        f"\npublish loop: {len(alone)} events in {alone_s:.3f} s with one reading monitor, "
        f"{len(crowded)} in {crowded_s:.3f} s with a stalled subscriber too "
        f"(it received {stalled_got + 1} of {len(crowded) + 1} after joining)"
    )
    assert all(msg.msg_id in session.numbered for msg in published)
    assert hub.seq == len(session.numbered)
    assert view.state is not None and view.state.to_dict() == session.state.to_dict()
    assert set(range(first_live, hub.seq + 1)) <= set(view.applied)
    assert not [n for n in view.notices[settled:] if "lost" in n]


def port(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


def test_a_monitor_says_the_session_is_gone_and_resynchronises_when_it_is_back(
    sessions: list[Session],
) -> None:
    first = start_session("first")
    sessions.append(first)
    view, note = RecordingView(), ActorExit()
    start_monitor(first.hub, view, note, silence_s=0.5, snapshot_timeout_s=5.0)
    wait_until(lambda: bool(view.snapshots))
    connected_publisher(first, seen=lambda seq: view.seq >= seq).close()
    publish_in_thread(first, [m for i in range(50) for m in training(1, i)], lambda seq: view.seq >= seq)

    first.hub.stop()
    wait_until(lambda: any("may be gone" in n for n in view.notices))
    second = start_session("second", port(first.hub.events_out), port(first.hub.session))
    sessions.append(second)
    connected_publisher(second, seen=lambda seq: any("resynchronised" in n for n in view.notices)).close()
    events: list[Message] = [
        SessionStarted(
            name="second", run_dir="runs/second", monitor=second.hub.session, episodes=1,
            steps_per_episode=10, config={}, sender="session",
        ),
        *(m for i in range(20) for m in training(1, i)),
        SessionFinished(name="second", status="completed", sender="session"),
    ]  # fmt: skip
    publish_in_thread(second, events, lambda seq: view.seq >= seq)

    assert note.event.wait(30)
    assert any("session is back" in n for n in view.notices)
    assert view.state is not None and view.state.to_dict() == second.state.to_dict()
    assert view.state.to_dict()["session"]["name"] == "second"
