"""Tests of a study's event hub: its record, its heartbeats among frequent events, its folder."""

from __future__ import annotations

import json
import time
from pathlib import Path

from messages import TrialStarted
from services.experiments.broadcast import StudyBroadcast
from services.transport.auth import read_session_key
from services.transport.endpoints import Endpoints


def recorded(folder: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


def test_events_are_recorded_signed_as_the_study_and_heartbeats_go_on_between_frequent_events(
    tmp_path: Path,
) -> None:
    broadcast = StudyBroadcast("s", tmp_path, heartbeat_s=0.2)
    broadcast.start()
    broadcast.doing("trial 0 seed 0")
    for number in range(20):  # an event every 0.05 s: never a quiet heartbeat interval
        broadcast.publish(TrialStarted(number=number, params={}, sender="study" if number else ""))
        time.sleep(0.05)

    broadcast.close()

    events = recorded(tmp_path)
    trials = [e for e in events if e["type"] == "TrialStarted"]
    beats = [e for e in events if e["type"] == "Heartbeat"]
    assert [e["number"] for e in trials] == list(range(20))
    assert {e["actor"] for e in events} == {"study"}  # whatever an event said, the study signs it
    assert len(beats) >= 3 and beats[-1]["state"] == "trial 0 seed 0"
    assert Endpoints.from_dict(json.loads((tmp_path / "endpoints.json").read_text())).session
    assert read_session_key(tmp_path) is not None
    assert not (tmp_path / "ipc").exists()
    assert broadcast.state.to_dict()["study"]["recent"][-1]["number"] == 19
