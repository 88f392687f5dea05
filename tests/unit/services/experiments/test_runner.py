"""Tests of reading a session's evaluations and equity curves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.experiments.runner import SessionProgress, _evaluations, _follow, mean_returns, read_equity


def test_evaluations_are_read_from_the_events_file_skipping_other_events_and_a_torn_line(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.jsonl"
    finished = {
        "type": "EvaluationFinished",
        "episode": 1,
        "agent": {"sharpe": 0.5},
        "buy_and_hold": {"sharpe": 1.0},
    }
    events.write_text(
        json.dumps({"type": "Heartbeat"}) + "\n" + json.dumps(finished) + "\n" + '{"type": "Eval'
    )

    evaluations = _evaluations(events)

    assert len(evaluations) == 1
    assert evaluations[0].agent["sharpe"] == 0.5 and evaluations[0].buy_and_hold["sharpe"] == 1.0


def test_equity_becomes_bar_returns_and_seeds_are_averaged_bar_by_bar(tmp_path: Path) -> None:
    for name, equity in (("a", [1.0, 1.1, 1.21]), ("b", [1.0, 0.9, 0.9])):
        run = tmp_path / name
        run.mkdir()
        rows = ["timestamp,close,position,equity,buy_and_hold_equity"]
        rows += [f"2020-01-0{i + 1},1,1,{e},{1 + 0.1 * i}" for i, e in enumerate(equity)]
        (run / "eval-episode-1.csv").write_text("\n".join(rows) + "\n")

    curves = [read_equity(tmp_path / name, 1) for name in ("a", "b")]
    stamps, agent, held = mean_returns(curves)

    assert curves[0].agent == pytest.approx((0.1, 0.1))
    assert stamps == ("2020-01-02", "2020-01-03")
    assert agent == pytest.approx([0.0, 0.05])
    assert held == pytest.approx([0.1, 0.1 / 1.1])


class _Ended:
    """A session process that has already exited."""

    def poll(self) -> int:
        return 0

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def send_signal(self, sig: int) -> None:
        raise AssertionError("an ended session is not signalled")


def test_following_a_session_gives_its_evaluations_and_only_its_latest_training_progress(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.jsonl"
    progress = [
        {"type": "TrainingProgress", "episode": 1, "steps": s, "steps_total": 1024, "steps_per_s": 9.0}
        for s in (256, 512, 768)
    ]
    finished = {"type": "EvaluationFinished", "episode": 1, "agent": {"sharpe": 1.0}, "buy_and_hold": {}}
    events.write_text("".join(json.dumps(e) + "\n" for e in [progress[0], finished, *progress[1:]]))

    seen = list(_follow(events, _Ended(), lambda: False))

    assert [type(e).__name__ for e in seen] == ["Evaluation", "SessionProgress"]
    assert seen[1] == SessionProgress(episode=1, steps=768, steps_total=1024, steps_per_s=9.0)
