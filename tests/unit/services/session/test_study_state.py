"""Test a study's events folded into the monitors' state and shown as plain lines, across a snapshot."""

from __future__ import annotations

import io
import shlex
import sys
from pathlib import Path

from rich.console import Console

from messages import (
    Message,
    SeedStarted,
    Snapshot,
    StudyFinished,
    StudyStarted,
    TrialCompleted,
    TrialProgressed,
    TrialPruned,
    TrialReported,
    TrialStarted,
    decode,
    encode,
)
from services.session.console import PlainView
from services.session.live import LiveView
from services.session.state import MAX_TRIALS, SessionState
from tests.sessions import ROOT


def study_events() -> list[Message]:
    """Return the events of a study of two trials: one complete, one pruned."""
    return [
        StudyStarted(
            name="s",
            run_dir="runs/s",
            trials=2,
            seeds=2,
            episodes=1,
            finished=0,
            storage="sqlite://",
            sender="study",
        ),
        TrialStarted(number=0, params={"model.net_arch": [8], "lr": 0.000123456}, sender="study"),
        SeedStarted(number=0, seed=0, run_dir="runs/s/trial-0/seed-0", sender="study"),
        TrialReported(number=0, seed=0, episode=1, sharpe=0.5, sender="study"),
        TrialCompleted(
            number=0,
            value=0.5,
            seed_sharpes=(0.5, 0.5),
            finished=1,
            best_number=0,
            best_value=0.5,
            sender="study",
        ),
        TrialStarted(number=1, params={"model.net_arch": [16], "lr": 0.001}, retry_of=0, sender="study"),
        TrialProgressed(
            number=1, seed=0, episode=1, steps=512, steps_total=1024, steps_per_s=2000.0, sender="study"
        ),
        TrialReported(number=1, seed=0, episode=1, sharpe=-1.0, sender="study"),
        TrialPruned(
            number=1,
            reason="pruned at seed 0 episode 1",
            finished=2,
            best_number=0,
            best_value=0.5,
            sender="study",
        ),
        StudyFinished(
            name="s",
            status="completed",
            finished=2,
            best_number=0,
            best_value=0.5,
            report="r.md",
            sender="study",
        ),
    ]


def test_a_study_folds_into_its_trials_its_best_and_a_finished_status() -> None:
    state = SessionState()
    for seq, msg in enumerate(study_events(), start=1):
        state.apply(seq, msg)

    d = state.to_dict()
    assert (
        d["session"]["name"] == "s"
        and d["session"]["status"] == "completed"
        and d["session"]["kind"] == "study"
    )
    study = d["study"]
    assert (study["finished"], study["best_number"], study["best_value"], study["report"]) == (
        2,
        0,
        0.5,
        "r.md",
    )
    first, second = study["recent"]
    assert (
        first["state"] == "complete"
        and first["value"] == 0.5
        and first["seeds"] == {"0": "runs/s/trial-0/seed-0"}
    )
    assert second["state"] == "pruned" and second["retry_of"] == 0 and second["last_report"]["sharpe"] == -1.0


def test_a_study_snapshot_that_crossed_the_wire_resumes_to_the_same_state() -> None:
    events = study_events()
    whole, part = SessionState(), SessionState()
    for seq, msg in enumerate(events, start=1):
        whole.apply(seq, msg)
        if seq <= 4:
            part.apply(seq, msg)
    wire = decode(encode(Snapshot(seq=4, state=part.to_dict(), sender="session")))
    assert isinstance(wire, Snapshot)

    resumed = SessionState.from_snapshot(wire.seq, wire.state)
    for seq, msg in enumerate(events[4:], start=5):
        resumed.apply(seq, msg)

    assert resumed.to_dict() == whole.to_dict()


def test_a_long_study_keeps_only_its_latest_trials() -> None:
    state = SessionState()
    for number in range(MAX_TRIALS + 5):
        state.apply(number + 1, TrialStarted(number=number, params={}, sender="study"))

    recent = state.to_dict()["study"]["recent"]
    assert len(recent) == MAX_TRIALS and recent[0]["number"] == 5


def test_the_plain_view_says_each_trial_event_in_one_line() -> None:
    out = io.StringIO()
    view, state = PlainView(out, tables=True), SessionState()
    for seq, msg in enumerate(study_events(), start=1):
        state.apply(seq, msg)
        view.event(state, seq, msg)

    lines = out.getvalue().splitlines()
    # The monitor line names the interpreter of this process (a bare `python` may lack the packages).
    prefix = "trial 0 seed 0: monitor: "
    shown = [line for line in lines if line.startswith(prefix)]
    assert len(shown) == 1
    words = shlex.split(shown[0].removeprefix(prefix))
    assert Path(words[0]).resolve() == Path(sys.executable).resolve()
    assert Path(words[1]).resolve() == ROOT / "run.py"
    assert words[2:] == ["monitor", "--run", "runs/s/trial-0/seed-0"]
    lines[lines.index(shown[0])] = prefix + "MONITOR"
    assert lines == [
        "study s: 2 trials x 2 seed(s) x 1 episode(s); 0 finished before; storage sqlite://",
        "trial 0 started: model.net_arch=[8], lr=0.0001235",
        "trial 0 seed 0: monitor: MONITOR",
        "trial 0 seed 0 episode 1: validation Sharpe 0.500",
        "trial 0 complete: value 0.500 (2 seeds) [1/2 finished; best so far trial 0 value 0.500]",
        "trial 1 started (retry of trial 0): model.net_arch=[16], lr=0.001",
        "trial 1 seed 0: episode 1 512/1,024 steps (50%), 2,000 steps/s",
        "trial 1 seed 0 episode 1: validation Sharpe -1.000",
        "trial 1 pruned (pruned at seed 0 episode 1) [2/2 finished; best so far trial 0 value 0.500]",
        "study s completed: 2 trial(s) finished; best trial 0 value 0.500; report r.md",
    ]


def test_attaching_to_a_study_sums_up_its_trials() -> None:
    out = io.StringIO()
    state = SessionState()
    for seq, msg in enumerate(study_events()[:7], start=1):
        state.apply(seq, msg)

    PlainView(out, tables=True).snapshot(state)

    assert out.getvalue().splitlines() == [
        "attached to study s (running) at event 7: 1/2 trials finished; best trial 0 value 0.500",
        "trial 0 complete value 0.500: model.net_arch=[8], lr=0.0001235",
        "trial 1 running seed 0 episode 1 512/1,024 steps (50%), 2,000 steps/s: "
        "model.net_arch=[16], lr=0.001",
    ]


def test_the_live_view_of_a_study_shows_its_trials_instead_of_a_session() -> None:
    state = SessionState()
    for seq, msg in enumerate(study_events()[:8], start=1):
        state.apply(seq, msg)
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), auto_refresh=False)
    view.snapshot(state)
    console = Console(file=io.StringIO(), force_terminal=True, width=160, color_system=None)

    console.print(view.render())
    text = console.file.getvalue()  # type: ignore[attr-defined]
    view.close()

    assert "study s" in text and "1/2 trials finished" in text and "best trial 0 value 0.500" in text
    assert "complete" in text and "0.500" in text and "lr=0.0001235" in text
    assert "seed 0 episode 1: Sharpe -1.000" in text and "512/1,024 steps (50%)" in text
    assert "episode 0/" not in text and "ETA" not in text  # no session progress bars
