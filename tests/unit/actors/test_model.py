"""Actor-level tests of the model actor with a fake model factory and fake sockets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from actors.model import ModelActor
from actors.ports import Ports, RequestClient
from messages import (
    CheckpointWritten,
    EpisodeFinished,
    EpisodeTrained,
    ErrorRaised,
    EvaluateEpisode,
    EvaluationComputed,
    EvaluationFinished,
    EvaluationReport,
    FinishEvaluation,
    Heartbeat,
    Message,
    ModelCreated,
    ModelReused,
    RequestFailed,
    Stop,
    Stopped,
    TrainEpisode,
    TrainingMetrics,
    TrainingProgress,
)
from services.transport.sockets import RequestTimeout
from tests.fakes import FakeClient, FakeClock, FakeProbe, FakePublisher, FakeServer

ROLLOUT = 1000


@dataclass
class FakeModel:
    model_id: str
    device: str = "cpu"
    restored_from: str = ""
    num_timesteps: int = 0
    parameters: int = 123
    learn_calls: list[int] = field(default_factory=list)
    evaluations: int = 0
    values: Callable[[int, dict[str, float]], None] | None = None
    fail_learn: int = 0
    eval_bars: int = 42
    eval_pieces: list[int] = field(default_factory=list)
    on_eval_piece: Callable[[int], None] | None = None
    _eval_left: int = 0

    def learn(self, steps: int, tick: Callable[[int], bool]) -> int:
        if self.fail_learn:
            self.fail_learn -= 1
            raise RequestTimeout("no reply to StepEnvs")
        self.learn_calls.append(steps)
        rollouts = -(-steps // ROLLOUT)
        for _ in range(rollouts):
            self.num_timesteps += ROLLOUT
            tick(self.num_timesteps)
        if self.values is not None:
            self.values(self.num_timesteps, {"train/loss": 0.5})
        return rollouts * ROLLOUT

    def start_evaluation(self) -> None:
        self.evaluations += 1
        self._eval_left = self.eval_bars

    def evaluate(self, steps: int) -> bool:
        self.eval_pieces.append(steps)
        if self.on_eval_piece is not None:
            self.on_eval_piece(len(self.eval_pieces))
        self._eval_left -= min(steps, self._eval_left)
        return self._eval_left == 0


class FakeFactory:
    algorithm = "ppo"

    def __init__(
        self, fail_checkpoint: bool = False, fail_learn: int = 0, restores: bool = False, **model: Any
    ) -> None:
        self.fail_learn = fail_learn
        self.restores = restores
        self._model = model
        self.created: list[FakeModel] = []
        self.checkpoints: list[tuple[str, int, bool, int]] = []
        self.fail_checkpoint = fail_checkpoint

    def checkpoint(self, model: FakeModel, episode: int, complete: bool) -> str:
        if self.fail_checkpoint:
            raise OSError(28, "No space left on device")
        self.checkpoints.append((model.model_id, episode, complete, model.num_timesteps))
        return f"ckpt/{episode}"

    def create(
        self, env_client: RequestClient, on_values: Callable[[int, dict[str, float]], None]
    ) -> FakeModel:
        model = FakeModel(
            model_id=f"m{len(self.created) + 1}",
            values=on_values,
            fail_learn=self.fail_learn,
            restored_from="ckpt/1" if self.restores else "",
            **self._model,
        )
        self.created.append(model)
        return model


EQUITY = np.linspace(1.0, 1.1, 10)


def env_handler(msg: Message) -> Message | None:
    if isinstance(msg, FinishEvaluation):
        end = len(EQUITY) if msg.limit <= 0 else min(len(EQUITY), msg.offset + msg.limit)
        rows = slice(msg.offset, end)
        return EvaluationComputed(
            correlation_id=msg.msg_id,
            episode=msg.episode,
            agent={"total_return": 0.1},
            buy_and_hold={"total_return": 0.2},
            close=np.ones(len(EQUITY))[rows],
            position=np.zeros(len(EQUITY))[rows],
            equity=EQUITY[rows],
            bh_equity=np.ones(len(EQUITY))[rows],
            timestamp=np.arange(len(EQUITY), dtype=np.int64)[rows],
            ruined_at=-1,
            offset=msg.offset,
            total_rows=len(EQUITY),
        )
    return None


@pytest.fixture
def world() -> tuple[FakeServer, FakePublisher, FakeFactory, FakeClient]:
    return FakeServer(), FakePublisher(), FakeFactory(), FakeClient(env_handler)


def start(
    world: tuple[FakeServer, FakePublisher, FakeFactory, FakeClient], piece_steps: int = 2500, **options: Any
) -> ModelActor:
    server, publisher, factory, env = world
    ports = Ports(server=lambda: server, publisher=lambda: publisher, clients={"env": lambda: env})
    return ModelActor.start(
        factory=factory, piece_steps=piece_steps, ports=ports, clock=FakeClock(), probe=FakeProbe(), **options
    )


def test_three_train_messages_are_served_by_one_model_created_once(world) -> None:
    server, publisher, factory, _ = world
    start(world)

    replies = []
    for k in (1, 2, 3):
        request = server.push(TrainEpisode(episode=k, steps=5000))
        replies.append(server.reply_to(request))

    assert len(factory.created) == 1
    assert all(isinstance(r, EpisodeTrained) for r in replies)
    assert {r.model_id for r in replies} == {"m1"}
    assert [r.episode for r in replies] == [1, 2, 3]
    assert [r.total_steps for r in replies] == [5000, 10000, 15000]
    assert len(publisher.of(ModelCreated)) == 1
    assert [e.episode for e in publisher.of(ModelReused)] == [2, 3]
    model_events = (
        publisher.of(TrainingProgress) + publisher.of(EpisodeFinished) + publisher.of(TrainingMetrics)
    )
    assert model_events and {e.model_id for e in model_events} == {"m1"}


def test_training_is_cut_into_pieces_of_the_configured_size(world) -> None:
    server, _, factory, _ = world
    start(world, piece_steps=2000)

    request = server.push(TrainEpisode(episode=1, steps=5000))
    reply = server.reply_to(request)

    assert isinstance(reply, EpisodeTrained)
    assert factory.created[0].learn_calls == [2000, 2000, 1000]
    assert reply.steps == 5000


def test_steps_beyond_the_budget_finish_the_last_whole_rollout(world) -> None:
    server, _, _, _ = world
    start(world, piece_steps=100_000)

    reply = server.reply_to(server.push(TrainEpisode(episode=1, steps=2500)))

    assert isinstance(reply, EpisodeTrained)
    assert reply.steps == 3000


def test_ping_is_answered_between_pieces_while_training(world) -> None:
    from messages import Ping, Pong

    server, publisher, _, _ = world
    start(world, piece_steps=1000)

    train = server.push(TrainEpisode(episode=1, steps=20_000))
    publisher.wait_for(TrainingProgress)
    ping = server.push(Ping())
    pong = server.reply_to(ping)
    trained = server.reply_to(train)

    assert isinstance(pong, Pong)
    assert isinstance(trained, EpisodeTrained)
    assert pong.state in ("training episode 1", "idle")


def test_evaluate_reports_metrics_and_records_of_the_same_model(world) -> None:
    server, publisher, factory, env = world
    start(world)

    server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))
    report = server.reply_to(server.push(EvaluateEpisode(episode=1)))

    assert isinstance(report, EvaluationReport)
    assert report.model_id == "m1"
    assert report.agent == {"total_return": 0.1}
    np.testing.assert_array_equal(report.equity, EQUITY)
    assert factory.created[0].evaluations == 1
    assert any(isinstance(m, FinishEvaluation) for m in env.sent)
    assert publisher.wait_for(EvaluationFinished)[0].model_id == "m1"


def test_evaluate_before_any_training_is_refused_without_creating_a_model(world) -> None:
    server, _, factory, _ = world
    start(world)

    reply = server.reply_to(server.push(EvaluateEpisode(episode=1)))

    assert isinstance(reply, RequestFailed)
    assert "train" in reply.error
    assert factory.created == []


def test_a_second_train_message_while_training_is_refused(world) -> None:
    server, _, factory, _ = world
    start(world, piece_steps=1000)

    first = server.push(TrainEpisode(episode=1, steps=30_000))
    second = server.push(TrainEpisode(episode=2, steps=1000))

    refused = server.reply_to(second)
    done = server.reply_to(first)
    assert isinstance(refused, RequestFailed)
    assert "still training" in refused.error
    assert isinstance(done, EpisodeTrained)
    assert len(factory.created) == 1


def test_stop_answers_the_pending_episode_and_the_stop(world) -> None:
    server, publisher, _, _ = world
    ref = start(world, piece_steps=1000)

    train = server.push(TrainEpisode(episode=1, steps=10_000_000))
    publisher.wait_for(TrainingProgress)
    stop = server.push(Stop(reason="test"))

    assert isinstance(server.reply_to(stop), Stopped)
    failed = server.reply_to(train)
    assert isinstance(failed, RequestFailed)
    assert "stopped after" in failed.error
    ref.actor_stopped.wait(10)
    assert ref.actor_stopped.is_set()


def test_garbage_on_the_socket_is_answered_and_published_and_the_actor_goes_on(world) -> None:
    server, publisher, _, _ = world
    start(world)

    server.push_garbage("header is not valid msgpack")
    reply = server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))

    assert isinstance(reply, EpisodeTrained)
    errors = publisher.wait_for(ErrorRaised)
    assert "msgpack" in errors[0].error
    failed = [m for _, m in server.replies if isinstance(m, RequestFailed)]
    assert failed and "msgpack" in failed[0].error


def test_heartbeats_name_the_actor_and_its_memory(world) -> None:
    _, publisher, _, _ = world
    start(world)

    beat = publisher.wait_for(Heartbeat)[0]

    assert beat.sender == "model"
    assert beat.rss_bytes == 50 << 20


def test_a_checkpoint_is_written_after_every_episode(world) -> None:
    server, publisher, factory, _ = world
    start(world)

    for k in (1, 2):
        server.reply_to(server.push(TrainEpisode(episode=k, steps=2000)))

    assert factory.checkpoints == [("m1", 0, True, 0), ("m1", 1, True, 2000), ("m1", 2, True, 4000)]
    written = publisher.wait_for(CheckpointWritten, 3)
    assert [e.episode for e in written] == [0, 1, 2]


def test_stop_mid_episode_writes_a_partial_checkpoint(world) -> None:
    server, publisher, factory, _ = world
    start(world, piece_steps=1000)

    server.push(TrainEpisode(episode=1, steps=10_000_000))
    publisher.wait_for(TrainingProgress)
    server.reply_to(server.push(Stop(reason="interrupted")))

    initial, (model_id, episode, complete, steps) = factory.checkpoints
    assert initial == ("m1", 0, True, 0)
    assert (model_id, episode, complete) == ("m1", 1, False)
    assert steps > 0


def test_a_failed_checkpoint_fails_the_episode_and_is_published() -> None:
    world = (FakeServer(), FakePublisher(), FakeFactory(fail_checkpoint=True), FakeClient(env_handler))
    server, publisher, _, _ = world
    start(world)

    reply = server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))

    assert isinstance(reply, RequestFailed)
    assert "No space left" in reply.error
    assert publisher.wait_for(ErrorRaised)[0].fatal


def test_a_lost_env_actor_is_retried_and_the_episode_still_completes() -> None:
    world = (FakeServer(), FakePublisher(), FakeFactory(fail_learn=2), FakeClient(env_handler))
    server, publisher, _, _ = world
    start(world, piece_steps=1000, retry_wait_s=0.01)

    reply = server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))

    assert isinstance(reply, EpisodeTrained)
    lost = [e for e in publisher.of(ErrorRaised) if "env actor did not answer" in e.error]
    assert len(lost) == 2 and not any(e.fatal for e in lost)


def test_an_env_actor_that_never_comes_back_fails_the_episode() -> None:
    world = (FakeServer(), FakePublisher(), FakeFactory(fail_learn=100), FakeClient(env_handler))
    server, _, _, _ = world
    start(world, piece_steps=1000, retry_wait_s=0.001, env_retries=3)

    reply = server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))

    assert isinstance(reply, RequestFailed)
    assert "gave up after 3 retries" in reply.error


def test_the_eval_pass_runs_in_pieces_answering_ping_between_them() -> None:
    from messages import Ping, Pong

    pongs: list[Message] = []
    server = FakeServer()

    def between(piece: int) -> None:
        if piece == 2:
            pongs.append(server.push(Ping()))
        if piece == 3:  # the Ping sent during piece 2 was answered before this piece began
            pongs.append(server.reply_to(pongs[0], timeout_s=5))

    world = (
        server,
        FakePublisher(),
        FakeFactory(eval_bars=10_000, on_eval_piece=between),
        FakeClient(env_handler),
    )
    _, publisher, factory, _ = world
    start(world, piece_steps=2500)

    server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))
    report = server.reply_to(server.push(EvaluateEpisode(episode=1)))

    assert isinstance(report, EvaluationReport)
    assert factory.created[0].eval_pieces == [2500, 2500, 2500, 2500]
    assert isinstance(pongs[1], Pong) and pongs[1].state.startswith("evaluating episode 1")
    assert len(publisher.wait_for(EvaluationFinished)) == 1


def test_heartbeats_keep_coming_while_an_eval_piece_runs(world) -> None:
    server, publisher, _, env = world
    beats_during: list[int] = []

    def slow_piece(piece: int) -> None:
        # The piece holds the actor's thread until five more heartbeats were published meanwhile.
        before = len(publisher.of(Heartbeat))
        publisher.wait_for(Heartbeat, before + 5, timeout_s=5)
        beats_during.append(len(publisher.of(Heartbeat)) - before)

    world = (server, publisher, FakeFactory(on_eval_piece=slow_piece), env)
    start(world, heartbeat_s=0.02)

    server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))
    report = server.reply_to(server.push(EvaluateEpisode(episode=1)))

    assert isinstance(report, EvaluationReport)
    assert beats_during and min(beats_during) >= 5
    assert any(b.state.startswith("evaluating episode 1") for b in publisher.of(Heartbeat))


def test_evaluate_on_a_fresh_actor_with_a_checkpoint_restores_the_model_and_evaluates(world) -> None:
    server, publisher, _, env = world
    factory = FakeFactory(restores=True)
    start((server, publisher, factory, env))

    report = server.reply_to(server.push(EvaluateEpisode(episode=3)))

    assert isinstance(report, EvaluationReport)
    assert report.model_id == "m1" and report.episode == 3
    assert len(factory.created) == 1 and factory.created[0].evaluations == 1
    created = publisher.wait_for(ModelCreated)[0]
    assert created.restored_from == "ckpt/1" and created.episode == 3
    assert factory.checkpoints == [], "a restored model writes no initial checkpoint"


def test_records_too_long_for_one_reply_are_read_in_pieces_without_evaluating_again(world) -> None:
    server, _, factory, _ = world
    start(world, max_reply_bytes=4 * 2 * 40)

    server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))
    first = server.reply_to(server.push(EvaluateEpisode(episode=1)))
    rest = [server.reply_to(server.push(EvaluateEpisode(episode=1, offset=k))) for k in (4, 8)]

    pieces = [first, *rest]
    assert all(isinstance(p, EvaluationReport) for p in pieces)
    assert [(p.offset, len(p.equity), p.total_rows) for p in pieces] == [(0, 4, 10), (4, 4, 10), (8, 2, 10)]
    np.testing.assert_array_equal(np.concatenate([p.equity for p in pieces]), EQUITY)
    assert factory.created[0].evaluations == 1


def test_stop_during_the_eval_pass_answers_it(world) -> None:
    server, publisher, _, env = world
    stop: list[Message] = []

    def stop_now(piece: int) -> None:
        if piece == 1:
            stop.append(server.push(Stop(reason="test")))

    world = (server, publisher, FakeFactory(eval_bars=10**9, on_eval_piece=stop_now), env)
    ref = start(world, piece_steps=10)
    server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))

    evaluate = server.push(EvaluateEpisode(episode=1))

    failed = server.reply_to(evaluate)
    assert isinstance(failed, RequestFailed) and "stopped during the evaluation" in failed.error
    assert isinstance(server.reply_to(stop[0]), Stopped)
    assert ref.actor_stopped.wait(10)


class SlowFactory(FakeFactory):
    """Builds the model as slowly as importing torch and SB3 does: five heartbeats' time."""

    def __init__(self, publisher: FakePublisher) -> None:
        super().__init__()
        self._publisher = publisher

    def create(
        self, env_client: RequestClient, on_values: Callable[[int, dict[str, float]], None]
    ) -> FakeModel:
        before = len(self._publisher.of(Heartbeat))
        self._publisher.wait_for(Heartbeat, before + 5, timeout_s=5)
        return super().create(env_client, on_values)


def test_heartbeats_keep_coming_while_the_model_is_built(world) -> None:
    server, publisher, _, env = world
    start((server, publisher, SlowFactory(publisher), env), heartbeat_s=0.02)

    reply = server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))

    assert isinstance(reply, EpisodeTrained)
    assert any(b.state == "building the model" for b in publisher.of(Heartbeat))


class StuckFactory(FakeFactory):
    """Builds the model while the clock moves 42 s on: the heartbeats must say the actor is busy."""

    def __init__(self, publisher: FakePublisher, clock: FakeClock) -> None:
        super().__init__()
        self._publisher = publisher
        self._clock = clock

    def create(
        self, env_client: RequestClient, on_values: Callable[[int, dict[str, float]], None]
    ) -> FakeModel:
        self._clock.now += 42.0
        before = len(self._publisher.of(Heartbeat))
        self._publisher.wait_for(Heartbeat, before + 3, timeout_s=5)
        return super().create(env_client, on_values)


def test_heartbeats_say_how_long_the_actor_has_been_on_one_message(world) -> None:
    server, publisher, _, env = world
    clock = FakeClock()
    ports = Ports(server=lambda: server, publisher=lambda: publisher, clients={"env": lambda: env})
    ModelActor.start(
        factory=StuckFactory(publisher, clock),
        piece_steps=2500,
        ports=ports,
        clock=clock,
        probe=FakeProbe(),
        heartbeat_s=0.02,
    )

    reply = server.reply_to(server.push(TrainEpisode(episode=1, steps=1000)))
    done = len(publisher.of(Heartbeat))
    publisher.wait_for(Heartbeat, done + 3, timeout_s=5)

    assert isinstance(reply, EpisodeTrained)
    building = [b.busy_s for b in publisher.of(Heartbeat) if b.state == "building the model"]
    assert building and max(building) >= 42.0
    assert publisher.of(Heartbeat)[-1].busy_s < 42.0, "between messages the actor is not busy"
