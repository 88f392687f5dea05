"""Actor-level tests of the monitor: snapshot then newer events only (Clone pattern), gaps, silence."""

from __future__ import annotations

import queue
import threading

from actors.base import ActorExit
from actors.monitor import MonitorActor
from actors.ports import Ports
from messages import (
    Heartbeat,
    Message,
    ModelCreated,
    RequestSnapshot,
    SessionFinished,
    Snapshot,
    TrainingProgress,
)
from services.session.state import SessionState
from tests.fakes import FakeClient, FakeClock, FakeProbe, wait_until


class FakeSubscriber:
    def __init__(self) -> None:
        self.events: queue.Queue[tuple[int, Message]] = queue.Queue()
        self.closed = False

    def receive(self, timeout_ms: int) -> tuple[int, Message] | None:
        try:
            return self.events.get(timeout=max(timeout_ms, 1) / 1000)
        except queue.Empty:
            return None

    def close(self) -> None:
        self.closed = True


class RecordingView:
    def __init__(self) -> None:
        self.snapshots: list[dict] = []
        self.shown: list[tuple[int, str]] = []
        self.last_state: dict = {}
        self.notices: list[str] = []
        self.lock = threading.Lock()

    def snapshot(self, state: SessionState) -> None:
        self.snapshots.append(state.to_dict())

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        with self.lock:
            self.shown.append((seq, type(msg).__name__))
            self.last_state = state.to_dict()

    def notice(self, text: str) -> None:
        with self.lock:
            self.notices.append(text)

    def close(self) -> None:
        pass


def progress(steps: int) -> TrainingProgress:
    return TrainingProgress(
        model_id="m1", episode=1, steps=steps, steps_total=100, total_steps=steps, steps_per_s=10.0, eta_s=1.0
    )


def snapshot_state() -> tuple[int, dict]:
    state = SessionState()
    state.apply(1, ModelCreated(model_id="m1", algorithm="ppo", device="cpu", parameters=10, episode=1))
    state.apply(2, progress(20))
    return 2, state.to_dict()


def start(clock: FakeClock | None = None, snapshot: bool = True, silence_s: float = 5.0):
    subscriber, view, note = FakeSubscriber(), RecordingView(), ActorExit()
    seq, state = snapshot_state()

    def session(msg: Message) -> Message | None:
        if isinstance(msg, RequestSnapshot):
            return Snapshot(correlation_id=msg.msg_id, seq=seq, state=state)
        return None

    session_client = FakeClient(session)
    ports = Ports(
        subscriber=lambda: subscriber, clients={"session": lambda: session_client} if snapshot else {}
    )
    MonitorActor.start(
        view=view,
        ports=ports,
        clock=clock or FakeClock(),
        probe=FakeProbe(),
        exit_note=note,
        exit_when_finished=True,
        silence_s=silence_s,
    )
    return subscriber, view, note, session_client


def test_attaching_applies_the_snapshot_then_only_newer_events() -> None:
    subscriber, view, note, _ = start()

    subscriber.events.put((2, progress(20)))  # already in the snapshot
    subscriber.events.put((3, progress(30)))
    subscriber.events.put((4, SessionFinished(name="s", status="completed")))

    assert note.event.wait(10)
    assert view.snapshots[0]["model"]["model_id"] == "m1"
    assert view.shown == [(3, "TrainingProgress"), (4, "SessionFinished")]


def test_the_state_after_snapshot_and_events_equals_the_state_after_all_events() -> None:
    subscriber, view, note, _ = start()
    later = [
        (3, progress(30)),
        (4, Heartbeat(pid=1, rss_bytes=5, cpu_percent=1.0, state="idle", sender="env")),
    ]
    for item in later:
        subscriber.events.put(item)
    subscriber.events.put((5, SessionFinished(name="s", status="completed")))
    assert note.event.wait(10)

    full = SessionState()
    full.apply(1, ModelCreated(model_id="m1", algorithm="ppo", device="cpu", parameters=10, episode=1))
    full.apply(2, progress(20))
    for seq, msg in later:
        full.apply(seq, msg)
    full.apply(5, SessionFinished(name="s", status="completed"))

    assert view.shown[-1] == (5, "SessionFinished")
    assert view.last_state == full.to_dict()


def test_a_sequence_gap_is_reported_as_lost_events() -> None:
    subscriber, view, note, _ = start()

    subscriber.events.put((3, progress(30)))
    subscriber.events.put((7, progress(70)))
    subscriber.events.put((8, SessionFinished(name="s", status="completed")))

    assert note.event.wait(10)
    assert any("lost 3 event(s)" in n for n in view.notices)


class LateSubscription:
    """Events of a running session, and a subscription that reaches the publisher only when it is first
    read: what is published before then never arrives (a ZeroMQ subscription is not instant)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published = 0
        self.active = False
        self.events: queue.Queue[tuple[int, Message]] = queue.Queue()

    def publish(self, msg: Message) -> None:
        with self.lock:
            self.published += 1
            if self.active:
                self.events.put((self.published, msg))

    def receive(self, timeout_ms: int) -> tuple[int, Message] | None:
        with self.lock:
            self.active = True
        try:
            return self.events.get(timeout=max(timeout_ms, 1) / 1000)
        except queue.Empty:
            return None

    def close(self) -> None:
        pass


def test_attaching_to_a_busy_session_loses_no_event_between_the_snapshot_and_the_subscription() -> None:
    hub, view, note = LateSubscription(), RecordingView(), ActorExit()
    beat = Heartbeat(pid=1, rss_bytes=5, cpu_percent=1.0, state="busy", sender="env")

    def session(msg: Message) -> Message | None:
        if isinstance(msg, RequestSnapshot):
            state = SessionState()
            with hub.lock:
                seq = hub.published
            for k in range(1, seq + 1):
                state.apply(k, beat)
            reply = Snapshot(correlation_id=msg.msg_id, seq=seq, state=state.to_dict())
            hub.publish(beat)  # one more event while the reply is on its way
            return reply
        return None

    stop = threading.Event()

    def running_session() -> None:
        while not stop.wait(0.02):
            hub.publish(beat)

    publisher = threading.Thread(target=running_session, daemon=True)
    publisher.start()
    wait_until(lambda: hub.published >= 3)  # the session is running when the monitor attaches
    session_client = FakeClient(session)
    MonitorActor.start(
        view=view,
        ports=Ports(subscriber=lambda: hub, clients={"session": lambda: session_client}),
        clock=FakeClock(),
        probe=FakeProbe(),
        exit_note=note,
        exit_when_finished=True,
    )
    wait_until(lambda: len(view.shown) >= 5, timeout_s=10)
    stop.set()
    publisher.join()
    hub.publish(SessionFinished(name="s", status="completed"))

    assert note.event.wait(10)
    assert not [n for n in view.notices if "lost" in n], view.notices
    assert view.shown[-1][1] == "SessionFinished"


def test_silence_is_reported_once_and_the_return_of_events_too() -> None:
    clock = FakeClock()
    subscriber, view, note, _ = start(clock=clock, silence_s=5.0)
    wait_until(lambda: bool(view.snapshots))

    clock.advance(6.0)
    wait_until(lambda: any("may be gone" in n for n in view.notices))
    subscriber.events.put((3, progress(30)))
    wait_until(lambda: any("back" in n for n in view.notices))
    subscriber.events.put((4, SessionFinished(name="s", status="completed")))

    assert note.event.wait(10)
    assert sum("may be gone" in n for n in view.notices) == 1


def test_a_session_that_finished_while_the_monitor_resynchronised_ends_the_monitor() -> None:
    clock, subscriber, view, note = FakeClock(), FakeSubscriber(), RecordingView(), ActorExit()
    first_seq, first = snapshot_state()
    done = SessionState()
    done.apply(1, ModelCreated(model_id="m1", algorithm="ppo", device="cpu", parameters=10, episode=1))
    done.apply(5, SessionFinished(name="s", status="completed"))
    answers = iter([(first_seq, first), (5, done.to_dict())])

    def session(msg: Message) -> Message | None:
        if isinstance(msg, RequestSnapshot):
            seq, state = next(answers)
            return Snapshot(correlation_id=msg.msg_id, seq=seq, state=state)
        return None

    session_client = FakeClient(session)
    MonitorActor.start(
        view=view,
        ports=Ports(subscriber=lambda: subscriber, clients={"session": lambda: session_client}),
        clock=clock,
        probe=FakeProbe(),
        exit_note=note,
        exit_when_finished=True,
        silence_s=5.0,
    )
    wait_until(lambda: bool(view.snapshots))
    clock.advance(6.0)
    wait_until(lambda: any("may be gone" in n for n in view.notices))

    subscriber.events.put((3, progress(30)))  # the session is back; its SessionFinished (5) was missed

    assert note.event.wait(10), "the resynchronised snapshot says the session finished"
    assert note.reason == "session completed"


def test_the_monitor_sends_no_command_only_the_snapshot_request() -> None:
    subscriber, _, note, session_client = start()

    subscriber.events.put((3, SessionFinished(name="s", status="completed")))

    assert note.event.wait(10)
    assert [type(m).__name__ for m in session_client.sent] == ["RequestSnapshot"]
