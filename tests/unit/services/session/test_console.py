"""Tests of the console views on a state built from mocked events: live, plain, JSON, stale actors."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from rich.console import Console

from messages import (
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    DataLoaded,
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
    TrainingMetrics,
    TrainingProgress,
)
from services.session.console import JsonView, NullView, PlainView, session_progress
from services.session.live import LiveView
from services.session.state import SessionState
from services.session.views import make_view

T0 = 1_700_000_000.0
AGENT = {"total_return": 0.12, "sharpe": 1.1, "max_drawdown": -0.05, "trades": 14.0}
BENCH = {"total_return": 0.08, "sharpe": 0.7, "max_drawdown": -0.11, "trades": 1.0}


class ViewClock:
    """Monotonic and wall clocks that move only when told to."""

    def __init__(self, wall: float = T0) -> None:
        self.mono = 100.0
        self.wall = wall

    def monotonic(self) -> float:
        return self.mono

    def time(self) -> float:
        return self.wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def at(ts: float, msg: Message) -> Message:
    """Return the message stamped with a wall time (messages are frozen)."""
    return dataclasses.replace(msg, ts=ts)


def progress(steps: int, episode: int = 1) -> TrainingProgress:
    return TrainingProgress(
        model_id="m1",
        episode=episode,
        steps=steps,
        steps_total=1000,
        total_steps=steps,
        steps_per_s=250.0,
        eta_s=(1000 - steps) / 250,
        sender="model",
    )


def heartbeat(actor: str, ts: float, state: str = "idle") -> Heartbeat:
    return Heartbeat(pid=100, rss_bytes=80 << 20, cpu_percent=12.5, state=state, sender=actor, ts=ts)


def script() -> list[Message]:
    """A short session: start, data, model, training values, one evaluation, heartbeats, an error."""
    events = [
        SessionStarted(
            name="demo", run_dir="runs/demo", monitor="tcp://127.0.0.1:1", episodes=2, steps_per_episode=1000,
            config={}, sender="session", ts=T0,
        ),
        ActorStarted(pid=100, sender="model", ts=T0),
        ActorStarted(pid=101, sender="env", ts=T0),
        DataLoaded(
            source="data.csv", rows=4000, features=("r1", "r5"), bars_per_year=252.0, data_hash="h",
            cached=False, seconds=0.1, sender="data", ts=T0,
        ),
        ModelCreated(
            model_id="m1", algorithm="ppo", device="cpu", parameters=1234, episode=1, sender="model"
        ),
        EpisodeStarted(episode=1, episodes=2, steps=1000, sender="session"),
        at(T0, progress(250)),
        TrainingMetrics(
            model_id="m1", episode=1, total_steps=256,
            values={
                "train/loss": 0.5, "train/entropy_loss": -1.05, "rollout/ep_rew_mean": 0.02, "custom/x": 3.0
            },
            sender="model",
        ),
        at(T0 + 1, progress(500)),
        heartbeat("model", T0 + 1),
        heartbeat("env", T0 + 1),
        EpisodeFinished(
            model_id="m1", episode=1, steps=1024, total_steps=1024, seconds=4.0, steps_per_s=256.0
        ),
        EvaluationFinished(model_id="m1", episode=1, agent=AGENT, buy_and_hold=BENCH, sender="model"),
        ModelReused(model_id="m1", episode=2, sender="model"),
        ErrorRaised(where="env socket", error="DecodeError: garbage", sender="env"),
        ActorRestarted(kind="env", pid=102, restarts=1, reason="exited with status 1", sender="session"),
    ]  # fmt: skip
    return [msg if msg.ts < T0 + 10 else at(T0 + 1, msg) for msg in events]  # the session's clock


def folded(events: list[Message]) -> SessionState:
    state = SessionState()
    for seq, msg in enumerate(events, start=1):
        state.apply(seq, msg)
    return state


def feed(view: object, events: list[Message]) -> SessionState:
    state = SessionState()
    for seq, msg in enumerate(events, start=1):
        if state.apply(seq, msg):
            view.event(state, seq, msg)  # type: ignore[attr-defined]
    return state


def render(view: LiveView, width: int = 140) -> str:
    console = Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)
    console.print(view.render())
    out = console.file.getvalue()  # type: ignore[attr-defined]
    return str(out)


# Live view.


def test_the_live_view_shows_progress_training_values_evaluations_and_actors() -> None:
    clock = ViewClock(wall=T0 + 1.5)
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), clock=clock, auto_refresh=False)
    view.snapshot(folded(script()))

    text = render(view)

    assert "session demo" in text and "running" in text
    assert "model m1 (ppo, cpu, 1,234 parameters; created 1, restored 0, reused 1)" in text
    assert "episode 1/2" in text and "1,024/1,000 steps (100%)" in text and "256 steps/s" in text
    assert "session" in text and "1,000/2,000 steps (50%)" in text
    assert "loss" in text and "0.5" in text and "entropy loss" in text and "custom/x" in text
    assert "12.00%" in text and "8.00%" in text and "-11.00%" in text
    assert "model" in text and "80 MB" in text and "12.5%" in text and "0.5 s ago" in text
    assert "restarted (1 restart(s))" in text
    assert "STALE" not in text
    assert "DecodeError: garbage" in text
    view.close()


def test_the_live_view_marks_an_actor_stale_after_three_missed_heartbeats() -> None:
    clock = ViewClock(wall=T0 + 1.0)
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), clock=clock, auto_refresh=False)
    feed(view, [heartbeat("model", T0 + 1.0), heartbeat("env", T0 + 1.0)])

    clock.advance(2.9)
    fresh = render(view)
    clock.advance(0.2)  # 3.1 s: the third heartbeat is overdue
    late = render(view)

    assert "STALE" not in fresh
    assert late.count("STALE") == 2
    view.close()


def test_a_stopped_actor_is_never_stale() -> None:
    clock = ViewClock(wall=T0)
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), clock=clock, auto_refresh=False)
    feed(view, [heartbeat("data", T0), ActorStopped(pid=100, sender="data", ts=T0)])

    clock.advance(60)

    assert "STALE" not in render(view)
    view.close()


def test_a_remote_clock_offset_does_not_make_actors_stale() -> None:
    clock = ViewClock(wall=T0 + 30.0)  # this host's clock runs 30 s ahead of the session's
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), clock=clock, auto_refresh=False)
    feed(view, [heartbeat("model", T0), heartbeat("env", T0)])

    clock.advance(1.0)
    assert "STALE" not in render(view)
    clock.advance(3.0)
    assert render(view).count("STALE") == 2
    view.close()


def test_the_live_view_redraws_itself_and_prints_the_final_state_on_close() -> None:
    out = io.StringIO()
    view = LiveView(Console(file=out, force_terminal=True, width=120), clock=ViewClock(wall=T0 + 1))
    state = feed(view, script())
    view.notice("lost 2 event(s) (sequence 3..4)")
    state.apply(99, SessionFinished(name="demo", status="completed"))
    view.event(state, 99, SessionFinished(name="demo", status="completed"))

    view.close()

    text = out.getvalue()
    assert "completed" in text
    assert "lost 2 event(s)" in text
    assert "2,000/2,000 steps (100%)" in text


def test_a_rendering_failure_shows_a_line_instead_of_killing_the_refresh_thread() -> None:
    class Broken(SessionState):
        def to_dict(self) -> dict:
            raise KeyError("boom")

    view = LiveView(Console(file=io.StringIO(), force_terminal=True), auto_refresh=False)
    view.snapshot(Broken())

    assert "rendering failed" in render(view)
    view.close()


def test_only_the_latest_evaluations_are_listed_with_a_count_of_the_others() -> None:
    events: list[Message] = [
        EvaluationFinished(model_id="m1", episode=k, agent=AGENT, buy_and_hold=BENCH) for k in range(1, 21)
    ]
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), auto_refresh=False)
    view.snapshot(folded(events))

    text = render(view)

    assert "8 earlier episode(s) not shown" in text
    view.close()


def test_session_progress_counts_finished_episodes_and_the_current_one() -> None:
    state = folded([*script(), EpisodeStarted(episode=2, episodes=2, steps=1000), progress(400, episode=2)])

    done, total, eta = session_progress(state.to_dict())

    assert (done, total) == (1400, 2000)
    assert eta == pytest.approx(600 / 250)


# Plain view.


def test_the_plain_view_prints_the_events_that_matter() -> None:
    out = io.StringIO()
    view = PlainView(out, tables=True, clock=ViewClock(wall=T0 + 1))

    feed(view, script())

    text = out.getvalue()
    assert "session demo: 2 episode(s) x 1,000 steps" in text
    assert "data: 4,000 bars, 2 features" in text
    assert "model m1 created (ppo, cpu, 1,234 parameters)" in text
    assert "Evaluation of episode 1" in text and "12.00%" in text
    assert "model m1 reused for episode 2" in text
    assert "error in env (env socket): DecodeError: garbage" in text
    assert "actor env restarted as pid 102 (restart 1): exited with status 1" in text


def test_a_restored_model_is_said_to_be_restored_from_its_checkpoint_not_created() -> None:
    out = io.StringIO()
    view = PlainView(out, tables=False, clock=ViewClock(wall=T0 + 1))
    restored = ModelCreated(
        model_id="m1", algorithm="ppo", device="cpu", parameters=1234, episode=3,
        restored_from="runs/demo/checkpoints/episode-0002", total_steps=8192, sender="model",
    )  # fmt: skip

    feed(view, [restored])

    line = out.getvalue().strip()
    assert line == "model m1 restored from checkpoint episode-0002 at step 8,192 (ppo, cpu, 1,234 parameters)"
    assert "created" not in line


def test_the_live_header_counts_a_restored_model_as_restored() -> None:
    restored = ModelCreated(
        model_id="m1", algorithm="ppo", device="cpu", parameters=1234, episode=3,
        restored_from="runs/demo/checkpoints/episode-0002-partial", total_steps=8192, sender="model",
    )  # fmt: skip
    view = LiveView(Console(file=io.StringIO(), force_terminal=True), clock=ViewClock(), auto_refresh=False)
    view.snapshot(folded([restored]))

    text = render(view)

    assert "created 0, restored 1, reused 0" in text
    view.close()


def test_the_plain_evaluation_line_says_where_the_agent_was_ruined() -> None:
    out = io.StringIO()
    view = PlainView(out, tables=False, clock=ViewClock(wall=T0 + 1))
    ruined = EvaluationFinished(model_id="m1", episode=1, agent=AGENT, buy_and_hold=BENCH, ruined_at=4593)
    whole = EvaluationFinished(model_id="m1", episode=2, agent=AGENT, buy_and_hold=BENCH)

    feed(view, [ruined, whole])

    first, second = [line for line in out.getvalue().splitlines() if "evaluated:" in line]
    assert "ruined at eval bar 4593 and flat after" in first
    assert "ruined" not in second


def test_the_plain_view_prints_progress_at_most_every_few_seconds() -> None:
    out, clock = io.StringIO(), ViewClock(wall=T0)
    view = PlainView(out, progress_every_s=5.0, clock=clock)
    state = SessionState()

    for seq in range(1, 101):
        msg = progress(seq * 10)
        state.apply(seq, msg)
        view.event(state, seq, msg)
        clock.advance(0.1)  # 100 progress events over 10 s

    lines = [line for line in out.getvalue().splitlines() if line.startswith("episode 1/")]
    assert len(lines) == 2


def test_the_plain_view_says_once_when_an_actor_goes_stale_and_when_it_is_back() -> None:
    out, clock = io.StringIO(), ViewClock(wall=T0)
    view = PlainView(out, clock=clock)
    state = feed(view, [heartbeat("model", T0), heartbeat("env", T0)])

    for _ in range(8):  # only env keeps beating; model falls silent
        clock.advance(1.0)
        msg = heartbeat("env", clock.wall)
        state.apply(state.seq + 1, msg)
        view.event(state, state.seq, msg)
    clock.advance(1.0)
    msg = heartbeat("model", clock.wall, state="training")
    state.apply(state.seq + 1, msg)
    view.event(state, state.seq, msg)

    text = out.getvalue()
    assert text.count("actor model: no heartbeat") == 1
    assert "actor env: no heartbeat" not in text
    assert "actor model: training again" in text


def test_the_plain_view_lists_the_actors_now_and_then() -> None:
    out, clock = io.StringIO(), ViewClock(wall=T0)
    view = PlainView(out, actors_every_s=30.0, clock=clock)
    state = SessionState()

    for seq in range(1, 62):
        msg = heartbeat("model", clock.wall)
        state.apply(seq, msg)
        view.event(state, seq, msg)
        clock.advance(1.0)

    lines = [line for line in out.getvalue().splitlines() if line.startswith("actor model ")]
    assert len(lines) == 2
    assert "pid 100" in lines[0] and "RSS      80 MB" in lines[0] and "CPU  12.5%" in lines[0]


def test_the_plain_snapshot_summarises_the_attached_session() -> None:
    out = io.StringIO()
    view = PlainView(out, tables=True, clock=ViewClock(wall=T0 + 1))

    view.snapshot(folded(script()))

    text = out.getvalue()
    assert "attached to session demo (running) at event 16; model m1" in text
    assert "Evaluation of episode 1" in text
    assert "actor env" in text


# JSON view.


def test_the_json_view_emits_one_valid_json_object_per_line() -> None:
    out = io.StringIO()
    view = JsonView(out)
    events = script()
    view.snapshot(folded(events[:3]))

    feed(view, events)
    view.notice("session is back")

    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert records[0]["type"] == "Snapshot" and records[0]["seq"] == 3
    assert [r["type"] for r in records[1:-1]] == [type(m).__name__ for m in events]
    assert [r["seq"] for r in records[1:-1]] == list(range(1, len(events) + 1))
    assert records[1]["actor"] == "session"
    assert records[-1] == {"type": "Notice", "text": "session is back"}


# Choosing a view.


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_chooses_live_on_a_terminal_and_plain_otherwise() -> None:
    assert isinstance(make_view("auto", json=False, tables=False, stream=Tty()), LiveView)
    assert isinstance(make_view("auto", json=False, tables=False, stream=io.StringIO()), PlainView)
    assert isinstance(make_view("plain", json=False, tables=True, stream=Tty()), PlainView)
    assert isinstance(make_view("live", json=False, tables=True, stream=io.StringIO()), LiveView)
    assert isinstance(make_view("off", json=False, tables=True, stream=Tty()), NullView)
    assert isinstance(make_view("auto", json=True, tables=True, stream=Tty()), JsonView)


def test_an_unknown_console_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="fancy"):
        make_view("fancy", json=False, tables=True, stream=io.StringIO())


def test_the_plain_data_line_says_close_only_fills_and_dropped_rows() -> None:
    out = io.StringIO()
    view = PlainView(out, tables=False, clock=ViewClock(wall=T0 + 1))
    loaded = DataLoaded(
        source="close.csv", rows=1299, features=("ret_1",), bars_per_year=252.0, data_hash="h",
        cached=False, seconds=0.1, close_only=True, dropped={"missing close": 1}, sender="data",
    )  # fmt: skip

    view.event(SessionState(), 1, loaded)

    assert out.getvalue().strip() == (
        "data: 1,299 bars, 1 features; close prices only: every fill is at the next bar's close; "
        "dropped 1 row (1 missing close, data.source.nan_policy=drop)"
    )


def test_an_error_passed_on_by_several_actors_is_said_once() -> None:
    out = io.StringIO()
    view = PlainView(out, tables=False, clock=ViewClock(wall=T0 + 1))
    line = "/data/bars.parquet, row 17: high 9.5 is below low 10.0"

    feed(
        view,
        [
            ErrorRaised(where="PrepareEpisode", error=line, sender="data"),
            ErrorRaised(where="episode 1", error=f"data: {line}", sender="session"),
            SessionFinished(name="s", status="failed", reason=f"data: {line}", sender="session"),
        ],
    )

    text = out.getvalue()
    assert text.count(line) == 1
    assert "session s failed (the error above)" in text


def test_different_errors_are_each_said() -> None:
    out = io.StringIO()
    view = PlainView(out, tables=False, clock=ViewClock(wall=T0 + 1))

    feed(
        view,
        [
            ErrorRaised(where="env socket", error="bad frame", sender="env"),
            ErrorRaised(where="model socket", error="unknown type", sender="model"),
            SessionFinished(name="s", status="failed", reason="model actor died 4 times", sender="session"),
        ],
    )

    text = out.getvalue()
    assert "bad frame" in text and "unknown type" in text
    assert "session s failed: model actor died 4 times" in text
