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

    def evaluate(self) -> int:
        self.evaluations += 1
        return 42


class FakeFactory:
    algorithm = "ppo"

    def __init__(self, fail_checkpoint: bool = False, fail_learn: int = 0) -> None:
        self.fail_learn = fail_learn
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
        model = FakeModel(model_id=f"m{len(self.created) + 1}", values=on_values, fail_learn=self.fail_learn)
        self.created.append(model)
        return model


def env_handler(msg: Message) -> Message | None:
    if isinstance(msg, FinishEvaluation):
        return EvaluationComputed(
            correlation_id=msg.msg_id,
            episode=msg.episode,
            agent={"total_return": 0.1},
            buy_and_hold={"total_return": 0.2},
            close=np.array([1.0, 2.0]),
            position=np.array([0.0, 1.0]),
            equity=np.array([1.0, 1.1]),
            bh_equity=np.array([1.0, 2.0]),
            timestamp=np.array([1, 2], dtype=np.int64),
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
    np.testing.assert_array_equal(report.equity, [1.0, 1.1])
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
