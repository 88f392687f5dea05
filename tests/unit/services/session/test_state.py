"""Test SessionState: folding events, resuming from a snapshot, ignoring duplicates, counting gaps."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from messages import (
    ActorRestarted,
    ActorStarted,
    EpisodeFinished,
    EpisodeStarted,
    ErrorRaised,
    EvaluationFinished,
    Heartbeat,
    Message,
    ModelCreated,
    ModelReused,
    SessionFinished,
    SessionStarted,
    Snapshot,
    TrainingMetrics,
    TrainingProgress,
    decode,
    encode,
)
from services.session.state import MAX_ERRORS, SessionState

T0 = 1_700_000_000.0


def session_events() -> list[Message]:
    """Return the events of a short two-episode session, with fixed timestamps."""
    events: list[Message] = [
        SessionStarted(
            ts=T0,
            sender="session",
            name="run-1",
            run_dir="runs/run-1",
            monitor="tcp://127.0.0.1:5555",
            episodes=2,
            steps_per_episode=1000,
            config={"model": {"algorithm": "ppo"}},
        ),
        ActorStarted(ts=T0 + 1, sender="data", pid=101),
        ActorStarted(ts=T0 + 1, sender="env", pid=102),
        ActorStarted(ts=T0 + 1, sender="model", pid=103),
        Heartbeat(ts=T0 + 2, sender="model", pid=103, rss_bytes=1 << 20, cpu_percent=50.0, state="idle"),
        ModelCreated(
            ts=T0 + 3,
            sender="model",
            model_id="m-1",
            algorithm="ppo",
            device="cpu",
            parameters=9000,
            episode=1,
        ),
        EpisodeStarted(ts=T0 + 3, sender="session", episode=1, episodes=2, steps=1000),
        TrainingProgress(
            ts=T0 + 4,
            sender="model",
            model_id="m-1",
            episode=1,
            steps=512,
            steps_total=1000,
            total_steps=512,
            steps_per_s=256.0,
            eta_s=2.0,
        ),
        TrainingMetrics(
            ts=T0 + 4,
            sender="model",
            model_id="m-1",
            episode=1,
            total_steps=512,
            values={"train/loss": 0.5, "train/entropy_loss": -1.1},
        ),
        ErrorRaised(ts=T0 + 5, sender="env", where="env socket", error="bad frame"),
        EpisodeFinished(
            ts=T0 + 6,
            sender="model",
            model_id="m-1",
            episode=1,
            steps=1024,
            total_steps=1024,
            seconds=4.0,
            steps_per_s=256.0,
        ),
        EvaluationFinished(
            ts=T0 + 7,
            sender="model",
            model_id="m-1",
            episode=1,
            agent={"sharpe": 1.2},
            buy_and_hold={"sharpe": 0.8},
        ),
        ActorRestarted(ts=T0 + 7.5, sender="session", kind="env", pid=202, restarts=1, reason="env died"),
        Heartbeat(ts=T0 + 8, sender="env", pid=202, rss_bytes=2 << 20, cpu_percent=12.5, state="serving"),
        ModelReused(ts=T0 + 8, sender="model", model_id="m-1", episode=2),
        EpisodeStarted(ts=T0 + 8, sender="session", episode=2, episodes=2, steps=1000),
        TrainingProgress(
            ts=T0 + 9,
            sender="model",
            model_id="m-1",
            episode=2,
            steps=256,
            steps_total=1000,
            total_steps=1280,
            steps_per_s=300.0,
            eta_s=2.5,
        ),
        TrainingMetrics(
            ts=T0 + 9,
            sender="model",
            model_id="m-1",
            episode=2,
            total_steps=1280,
            values={"train/loss": 0.25},
        ),
        EpisodeFinished(
            ts=T0 + 10,
            sender="model",
            model_id="m-1",
            episode=2,
            steps=1024,
            total_steps=2048,
            seconds=3.5,
            steps_per_s=292.5,
        ),
        EvaluationFinished(
            ts=T0 + 11,
            sender="model",
            model_id="m-1",
            episode=2,
            agent={"sharpe": 1.4},
            buy_and_hold={"sharpe": 0.8},
        ),
        SessionFinished(ts=T0 + 12, sender="session", name="run-1", status="completed"),
    ]
    return events


def apply_all(state: SessionState, events: list[Message], first_seq: int = 1) -> SessionState:
    """Apply events numbered from first_seq and return the state."""
    for seq, event in enumerate(events, start=first_seq):
        assert state.apply(seq, event)
    return state


def test_applying_a_whole_session_gives_the_expected_state() -> None:
    events = session_events()

    state = apply_all(SessionState(), events).to_dict()

    assert state["seq"] == len(events)
    assert state["session"]["name"] == "run-1"
    assert state["session"]["status"] == "completed"
    assert state["session"]["episodes"] == 2
    assert state["model"]["model_id"] == "m-1"
    assert (state["model"]["created"], state["model"]["reused"]) == (1, 1)
    assert state["progress"]["episode"] == 2
    assert state["progress"]["total_steps"] == 2048
    assert state["metrics"] == {"train/loss": 0.25}
    assert [e["episode"] for e in state["evaluations"]] == [1, 2]
    assert state["evaluations"][1]["agent"] == {"sharpe": 1.4}
    assert state["errors"] == [{"actor": "env", "where": "env socket", "error": "bad frame", "ts": T0 + 5}]
    assert state["actors"]["env"]["state"] == "serving"
    assert state["actors"]["env"]["rss_bytes"] == 2 << 20
    assert (state["actors"]["env"]["pid"], state["actors"]["env"]["restarts"]) == (202, 1)
    assert state["actors"]["data"]["pid"] == 101
    assert state["gaps"] == 0


@pytest.mark.parametrize("k", range(len(session_events()) + 1))
def test_a_snapshot_after_k_events_plus_the_rest_equals_applying_everything(k: int) -> None:
    events = session_events()
    expected = apply_all(SessionState(), events).to_dict()
    first_k = apply_all(SessionState(), events[:k]).to_dict()

    resumed = SessionState.from_snapshot(k, first_k)
    apply_all(resumed, events[k:], first_seq=k + 1)

    assert resumed.seq == len(events)
    assert resumed.to_dict() == expected


@pytest.mark.parametrize("k", range(len(session_events()) + 1))
def test_a_snapshot_that_crossed_the_wire_resumes_to_the_same_state(k: int) -> None:
    events = session_events()
    expected = apply_all(SessionState(), events).to_dict()
    first_k = apply_all(SessionState(), events[:k])
    sent = Snapshot(seq=first_k.seq, state=first_k.to_dict())

    received = decode([bytes(f) for f in encode(sent)])
    assert isinstance(received, Snapshot)
    resumed = SessionState.from_snapshot(received.seq, json.loads(json.dumps(received.state)))
    apply_all(resumed, events[k:], first_seq=k + 1)

    assert resumed.to_dict() == expected


def test_a_snapshot_missing_newer_keys_is_completed_with_empty_values() -> None:
    state = SessionState.from_snapshot(7, {"session": {**SessionState.empty()["session"], "name": "old"}})

    data = state.to_dict()

    assert state.seq == 7
    assert data["session"]["name"] == "old"
    assert data["errors"] == []
    assert data["gaps"] == 0


def test_events_already_applied_are_ignored() -> None:
    events = session_events()
    state = apply_all(SessionState(), events[:5])
    before = state.to_dict()

    assert not state.apply(5, events[5])
    assert not state.apply(3, events[10])
    assert not state.apply(
        1, ModelCreated(model_id="m-2", algorithm="a2c", device="cpu", parameters=1, episode=9)
    )

    assert state.to_dict() == before
    assert state.seq == 5


def test_a_snapshot_ignores_events_it_already_contains() -> None:
    events = session_events()
    snap = apply_all(SessionState(), events[:6]).to_dict()
    state = SessionState.from_snapshot(6, snap)

    applied = [state.apply(seq, event) for seq, event in enumerate(events[:8], start=1)]

    assert applied == [False] * 6 + [True, True]
    assert state.to_dict()["model"]["created"] == 1


def test_gaps_in_sequence_numbers_are_counted() -> None:
    state = SessionState()
    beat = Heartbeat(sender="env", pid=1, rss_bytes=1, cpu_percent=0.0, state="idle")

    state.apply(1, beat)
    state.apply(4, beat)
    state.apply(5, beat)
    gaps_after_5 = state.to_dict()["gaps"]
    state.apply(10, beat)

    assert gaps_after_5 == 2
    assert state.to_dict()["gaps"] == 6
    assert state.seq == 10


def test_gaps_after_a_snapshot_are_counted_from_the_snapshot() -> None:
    state = SessionState.from_snapshot(10, SessionState.empty())

    state.apply(13, Heartbeat(sender="env", pid=1, rss_bytes=1, cpu_percent=0.0, state="idle"))

    assert state.to_dict()["gaps"] == 2


def test_heartbeat_age_is_the_time_since_the_last_heartbeat() -> None:
    state = SessionState()
    state.apply(1, ActorStarted(ts=T0, sender="env", pid=7))
    state.apply(2, Heartbeat(ts=T0 + 10, sender="env", pid=7, rss_bytes=1, cpu_percent=1.0, state="idle"))

    assert state.heartbeat_age("env", T0 + 13.5) == pytest.approx(3.5)
    assert state.heartbeat_age("env", T0 + 5) == 0.0
    assert math.isinf(state.heartbeat_age("model", T0 + 13.5))


def test_an_actor_that_started_but_sent_no_heartbeat_ages_from_its_start() -> None:
    state = SessionState()
    state.apply(1, ActorStarted(ts=T0, sender="data", pid=7))

    assert state.heartbeat_age("data", T0 + 2) == pytest.approx(2.0)


def test_errors_are_bounded_to_the_most_recent() -> None:
    state = SessionState()
    n = MAX_ERRORS + 5

    for i in range(n):
        state.apply(i + 1, ErrorRaised(ts=T0 + i, sender="model", where="model", error=f"error {i}"))

    errors = state.to_dict()["errors"]
    assert MAX_ERRORS == 20
    assert len(errors) == MAX_ERRORS
    assert [e["error"] for e in errors] == [f"error {i}" for i in range(n - MAX_ERRORS, n)]


def test_to_dict_returns_a_copy_that_cannot_change_the_state() -> None:
    state = apply_all(SessionState(), session_events())

    copy = state.to_dict()
    copy["model"]["created"] = 99
    copy["errors"].clear()

    assert state.to_dict()["model"]["created"] == 1
    assert len(state.to_dict()["errors"]) == 1


def test_from_snapshot_does_not_share_the_snapshot_dict() -> None:
    snap = apply_all(SessionState(), session_events()[:3]).to_dict()
    state = SessionState.from_snapshot(3, snap)

    snap["actors"].clear()

    assert set(state.to_dict()["actors"]) == {"data", "env"}


def test_busy_for_adds_the_heartbeats_age_to_the_time_it_reported_busy() -> None:
    state = SessionState()
    beat = Heartbeat(ts=T0 + 10, sender="model", pid=7, rss_bytes=1, cpu_percent=1.0, state="training")
    state.apply(1, dataclasses.replace(beat, busy_s=120.0))
    state.apply(2, dataclasses.replace(beat, sender="env", busy_s=0.0))

    assert state.busy_for("model", T0 + 15) == pytest.approx(125.0)
    assert state.busy_for("env", T0 + 15) == 0.0
    assert state.busy_for("data", T0 + 15) == 0.0
