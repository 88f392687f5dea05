"""Reading a run's events.jsonl back: the events of one type, in order, past a line a crash cut short."""

from __future__ import annotations

import json
from pathlib import Path

from services.session.recorder import recorded_events


def test_recorded_events_yields_one_type_in_order_and_skips_cut_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [
        json.dumps({"type": "EvaluationFinished", "episode": 1}),
        json.dumps({"type": "SessionStarted", "note": "names EvaluationFinished in a field"}),
        '{"type": "EvaluationFinished", "episo',  # cut short by a crash
        json.dumps(["EvaluationFinished"]),  # not an event
        json.dumps({"type": "EvaluationFinished", "episode": 2}),
    ]
    path.write_text("\n".join(lines) + "\n")

    found = list(recorded_events(path, "EvaluationFinished"))

    assert [event["episode"] for event in found] == [1, 2]


def test_recorded_events_of_a_run_without_events_is_empty(tmp_path: Path) -> None:
    assert list(recorded_events(tmp_path / "events.jsonl", "DataLoaded")) == []
