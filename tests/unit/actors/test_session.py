"""Actor-level tests of the session actor's episode loop with fake data, env and model actors."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from actors.ports import Ports
from actors.session import Abort, Outcome, Restarted, SessionActor
from messages import (
    EpisodeDataReady,
    EpisodeStarted,
    EpisodeTrained,
    EvaluateEpisode,
    EvaluationReport,
    Message,
    PrepareEpisode,
    RequestFailed,
    SessionFinished,
    SessionSet,
    SetSession,
    Stop,
    Stopped,
    TrainEpisode,
)
from tests.fakes import FakeClient, FakeClock, FakePublisher, wait_until


class Script:
    """Answers like the three actors; records the order of every request."""

    def __init__(self, *, fail_train: str = "", hold_train: bool = False) -> None:
        self.log: list[tuple[str, str]] = []
        self.fail_train = fail_train
        """Fail TrainEpisode with RequestFailed of this kind ("internal" or "input")."""
        self.hold_train = hold_train
        self.training = threading.Event()

    def actor(self, name: str) -> FakeClient:
        def handle(msg: Message) -> Message | None:
            self.log.append((name, type(msg).__name__))
            cid = msg.msg_id
            match msg:
                case SetSession():
                    return SessionSet(correlation_id=cid, name=msg.name, episode=msg.episode, envs_created=1)
                case PrepareEpisode():
                    return EpisodeDataReady(
                        correlation_id=cid,
                        episode=msg.episode,
                        train_rows=10,
                        eval_rows=5,
                        bars_per_year=252.0,
                        data_hash="h",
                        streamed=msg.episode == 1,
                    )
                case TrainEpisode():
                    self.training.set()
                    if self.hold_train:
                        return None
                    if self.fail_train:
                        return RequestFailed(
                            correlation_id=cid, request="TrainEpisode", error="boom", kind=self.fail_train
                        )
                    return EpisodeTrained(
                        correlation_id=cid,
                        episode=msg.episode,
                        model_id="m1",
                        steps=msg.steps,
                        total_steps=msg.steps * msg.episode,
                        seconds=1.0,
                        steps_per_s=float(msg.steps),
                    )
                case EvaluateEpisode():
                    return EvaluationReport(
                        correlation_id=cid,
                        episode=msg.episode,
                        model_id="m1",
                        agent={"total_return": 0.1},
                        buy_and_hold={"total_return": 0.2},
                        close=np.ones(3),
                    )
                case Stop():
                    return Stopped(correlation_id=cid)
            return None

        return FakeClient(handle)


def start_actor(clients: dict[str, Any], **overrides: Any) -> tuple[Any, Outcome, FakePublisher]:
    """Start a SessionActor over fake clients (one episode, short timeouts unless overridden)."""
    publisher, outcome = FakePublisher(), Outcome()
    ports = Ports(publisher=lambda: publisher, clients={k: (lambda c=c: c) for k, c in clients.items()})
    args: dict[str, Any] = {
        "outcome": outcome,
        "session_name": "s1",
        "episodes": 1,
        "steps_per_episode": 100,
        "ports": ports,
        "clock": FakeClock(),
        "request_timeout_s": 5.0,
        "hang_timeout_s": 3.0,
        "heartbeat_age": lambda actor: 0.0,
        "on_report": lambda report: None,
        "stop_timeout_s": 1.0,
    }
    args.update(overrides)
    return SessionActor.start(**args), outcome, publisher


def run(
    script: Script,
    episodes: int = 2,
    heartbeat_age: float = 0.0,
    abort_when_training: bool = False,
    on_report: Any = None,
):
    reports: list[EvaluationReport] = []
    clients = {name: script.actor(name) for name in ("data", "env", "model")}
    ref, outcome, publisher = start_actor(
        clients,
        episodes=episodes,
        heartbeat_age=lambda actor: heartbeat_age,
        on_report=on_report or reports.append,
    )
    if abort_when_training:
        assert script.training.wait(10)
        ref.tell(Abort(reason="interrupted"))
    assert outcome.done.wait(10), "session did not finish"
    return outcome, publisher, reports


def test_each_episode_prepares_data_trains_then_evaluates_and_the_actors_stop_in_reverse_order() -> None:
    script = Script()

    outcome, publisher, reports = run(script, episodes=2)

    episode = [
        ("env", "SetSession"),
        ("data", "PrepareEpisode"),
        ("model", "TrainEpisode"),
        ("model", "EvaluateEpisode"),
    ]
    stops = [("model", "Stop"), ("env", "Stop"), ("data", "Stop")]
    assert script.log == episode + episode + stops
    assert outcome.status == "completed"
    assert [r.episode for r in reports] == [1, 2]
    assert [t.total_steps for t in outcome.trained] == [100, 200]
    assert [e.episode for e in publisher.of(EpisodeStarted)] == [1, 2]
    assert publisher.of(SessionFinished)[0].status == "completed"


def test_a_failed_request_fails_the_session_and_still_stops_every_actor() -> None:
    script = Script(fail_train="internal")

    outcome, publisher, reports = run(script)

    assert outcome.status == "failed"
    assert "TrainEpisode failed: boom" in outcome.reason
    assert not outcome.input_error
    assert script.log[-3:] == [("model", "Stop"), ("env", "Stop"), ("data", "Stop")]
    assert reports == []
    assert publisher.of(SessionFinished)[0].status == "failed"


def test_a_report_that_cannot_be_written_fails_the_session_and_still_stops_every_actor() -> None:
    script = Script()

    def broken(report: EvaluationReport) -> None:
        raise IndexError("index 25 is out of bounds for axis 0 with size 25")

    outcome, publisher, _ = run(script, on_report=broken)

    assert outcome.status == "failed"
    assert outcome.reason == "episode 1: IndexError: index 25 is out of bounds for axis 0 with size 25"
    assert script.log[-3:] == [("model", "Stop"), ("env", "Stop"), ("data", "Stop")]
    assert publisher.of(SessionFinished)[0].status == "failed"


def test_a_crash_of_the_session_actor_itself_fails_the_session_instead_of_hanging_the_launcher() -> None:
    class BrokenClient:
        """A client whose socket fails under the actor (outside any request's handling)."""

        def send(self, msg: Any) -> None:
            pass

        def receive(self, timeout_ms: int) -> Any:
            raise RuntimeError("socket closed under the session")

        def close(self) -> None:
            pass

    _, outcome, _ = start_actor({name: BrokenClient() for name in ("data", "env", "model")})

    assert outcome.done.wait(10), "the launcher waits on done: a crash must set it"
    assert outcome.status == "failed"
    assert outcome.reason == "the session actor crashed: RuntimeError: socket closed under the session"


def test_a_request_failed_on_the_users_input_fails_the_session_with_that_line_alone() -> None:
    script = Script(fail_train="input")

    outcome, publisher, _ = run(script)

    assert outcome.status == "failed"
    assert outcome.input_error, "the launcher exits 2 on it"
    assert outcome.reason == "boom", "the actor's line reaches the user as it is"
    assert script.log.count(("model", "TrainEpisode")) == 1, "the same input is not retried"
    assert script.log[-3:] == [("model", "Stop"), ("env", "Stop"), ("data", "Stop")]
    assert publisher.of(SessionFinished)[0].status == "failed"


def test_an_abort_while_training_stops_the_session_cleanly() -> None:
    script = Script(hold_train=True)

    outcome, _, _ = run(script, abort_when_training=True)

    assert outcome.status == "stopped"
    assert outcome.reason == "interrupted"
    assert ("model", "EvaluateEpisode") not in script.log
    assert script.log[-3:] == [("model", "Stop"), ("env", "Stop"), ("data", "Stop")]


def test_a_model_without_heartbeat_while_training_fails_the_session() -> None:
    script = Script(hold_train=True)

    outcome, _, _ = run(script, heartbeat_age=10.0)

    assert outcome.status == "failed"
    assert "model actor: no heartbeat" in outcome.reason


class RestartScript(Script):
    """Holds the first TrainEpisode (its actor died); answers the retried one."""

    def __init__(self) -> None:
        super().__init__()
        self.train_requests: list[TrainEpisode] = []
        self.prepared: list[PrepareEpisode] = []

    def actor(self, name: str) -> FakeClient:
        client = super().actor(name)
        base = client._handler

        def handle(msg: Message) -> Message | None:
            if isinstance(msg, TrainEpisode):
                self.train_requests.append(msg)
                self.training.set()
                if len(self.train_requests) == 1:
                    self.log.append((name, "TrainEpisode"))
                    return None
            if isinstance(msg, PrepareEpisode):
                self.prepared.append(msg)
            return base(msg)

        client._handler = handle
        return client


def start_restart_case(script: RestartScript, restarted: str):
    clients = {name: script.actor(name) for name in ("data", "env", "model")}
    ref, outcome, _ = start_actor(clients, hang_timeout_s=30.0)
    assert script.training.wait(10)
    ref.tell(Restarted(restarted))
    return outcome


def test_a_restarted_model_actor_gets_the_episode_again_and_the_session_completes() -> None:
    script = RestartScript()

    outcome = start_restart_case(script, "model")

    assert outcome.done.wait(10)
    assert outcome.status == "completed"
    assert len(script.train_requests) == 2
    assert script.train_requests[0].msg_id != script.train_requests[1].msg_id


def test_a_restarted_env_actor_gets_the_data_again_while_the_model_keeps_its_episode() -> None:
    script = RestartScript()

    start_restart_case(script, "env")

    assert script.training.wait(10)
    wait_until(lambda: len(script.prepared) == 2)
    assert script.prepared[1].force and script.prepared[1].episode == 1
    assert len(script.train_requests) == 1
