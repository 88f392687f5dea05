"""Actor-level tests of the data actor: load once, stream bounded blocks with acknowledgements."""

from __future__ import annotations

import numpy as np
import pytest

from actors.data import DataActor
from actors.ports import Ports
from messages import (
    BlockAccepted,
    DataBlock,
    DataComplete,
    DataInstalled,
    DataLoaded,
    EpisodeDataReady,
    ErrorRaised,
    Message,
    PrepareEpisode,
    RequestFailed,
)
from services.data.bars import DataError
from services.data.dataset import EpisodeSplit, SplitArrays
from tests.fakes import FakeClient, FakeClock, FakeProbe, FakePublisher, FakeServer


def arrays(start: int, rows: int) -> SplitArrays:
    idx = np.arange(start, start + rows)
    return SplitArrays(
        features=np.repeat(idx[:, None], 2, axis=1).astype(np.float32),
        open=idx.astype(np.float64) + 100,
        close=idx.astype(np.float64) + 100.5,
        timestamp=idx.astype(np.int64) * 86_400 * 10**9,
    )


class FakeService:
    def __init__(self, walk_forward: bool = False, fail: Exception | None = None) -> None:
        self.loads = 0
        self.walk_forward = walk_forward
        self.fail = fail

    def load(self) -> DataLoaded:
        if self.fail is not None:
            raise self.fail
        self.loads += 1
        return DataLoaded(
            source="fake.csv",
            rows=100,
            features=("a", "b"),
            bars_per_year=252.0,
            data_hash="hash",
            cached=False,
            seconds=0.01,
        )

    def episode(self, episode: int) -> EpisodeSplit:
        shift = 10 * (episode - 1) if self.walk_forward else 0
        return EpisodeSplit(
            key=(shift, shift + 70, shift + 70, shift + 90),
            train=arrays(shift, 70),
            eval=arrays(shift + 70, 20),
        )


class EnvSide:
    """Acknowledges blocks like the env actor and records what arrived and how many were in flight."""

    def __init__(self) -> None:
        self.blocks: list[DataBlock] = []
        self.completes: list[DataComplete] = []

    def __call__(self, msg: Message) -> Message | None:
        if isinstance(msg, DataBlock):
            self.blocks.append(msg)
            return BlockAccepted(
                correlation_id=msg.msg_id, split=msg.split, offset=msg.offset, rows=len(msg.close)
            )
        if isinstance(msg, DataComplete):
            self.completes.append(msg)
            return DataInstalled(correlation_id=msg.msg_id, split=msg.split, rows=msg.total_rows)
        return None


def start(
    service: FakeService, block_rows: int = 16
) -> tuple[FakeServer, FakePublisher, EnvSide, FakeClient]:
    server, publisher, env_side = FakeServer(), FakePublisher(), EnvSide()
    client = FakeClient(env_side)
    ports = Ports(server=lambda: server, publisher=lambda: publisher, clients={"env": lambda: client})
    DataActor.start(service=service, block_rows=block_rows, ports=ports, clock=FakeClock(), probe=FakeProbe())
    return server, publisher, env_side, client


def test_first_episode_loads_once_and_streams_both_splits_in_bounded_blocks() -> None:
    service = FakeService()
    server, publisher, env_side, _ = start(service, block_rows=16)

    reply = server.reply_to(server.push(PrepareEpisode(episode=1)))

    assert isinstance(reply, EpisodeDataReady)
    assert reply.streamed and reply.train_rows == 70 and reply.eval_rows == 20
    assert service.loads == 1
    assert max(len(b.close) for b in env_side.blocks) <= 16
    train = [b for b in env_side.blocks if b.split == "train"]
    assert [b.offset for b in train] == [0, 16, 32, 48, 64]
    np.testing.assert_array_equal(np.concatenate([b.close for b in train]), arrays(0, 70).close)
    assert [c.split for c in env_side.completes] == ["train", "eval"]
    assert publisher.wait_for(DataLoaded)[0].rows == 100
    assert reply.eval_start == "1970-03-12T00:00:00"


def test_later_episodes_with_the_same_windows_stream_nothing_and_never_reload() -> None:
    service = FakeService()
    server, publisher, env_side, _ = start(service)
    server.reply_to(server.push(PrepareEpisode(episode=1)))
    sent = len(env_side.blocks)

    reply = server.reply_to(server.push(PrepareEpisode(episode=2)))

    assert isinstance(reply, EpisodeDataReady) and not reply.streamed
    assert len(env_side.blocks) == sent
    assert service.loads == 1
    assert len(publisher.of(DataLoaded)) == 1


def test_walk_forward_streams_the_moved_windows_without_reloading() -> None:
    service = FakeService(walk_forward=True)
    server, _, env_side, _ = start(service)
    server.reply_to(server.push(PrepareEpisode(episode=1)))

    reply = server.reply_to(server.push(PrepareEpisode(episode=2)))

    assert isinstance(reply, EpisodeDataReady) and reply.streamed
    assert service.loads == 1
    assert env_side.blocks[-1].split == "eval"
    assert env_side.blocks[-1].close[-1] == pytest.approx(100.5 + 99)


def test_at_most_two_blocks_are_in_flight() -> None:
    service = FakeService()
    server, _, _, client = start(service, block_rows=4)
    in_flight: list[int] = []
    handler = client._handler
    queued: list[Message] = []

    def delayed(msg: Message) -> Message | None:
        # Hold every acknowledgement until the sender asks for one, counting unacknowledged blocks.
        reply = handler(msg)
        if isinstance(msg, DataBlock):
            queued.append(reply)
            in_flight.append(len(queued))
            return None
        return reply

    original_receive = client.receive

    def receive(timeout_ms: int) -> Message | None:
        if queued:
            return queued.pop(0)
        return original_receive(timeout_ms)

    client._handler = delayed
    client.receive = receive  # type: ignore[method-assign]

    reply = server.reply_to(server.push(PrepareEpisode(episode=1)))

    assert isinstance(reply, EpisodeDataReady)
    assert max(in_flight) == 2


def test_a_load_error_is_answered_with_its_message_and_the_actor_goes_on() -> None:
    service = FakeService(fail=ValueError("data/x.csv line 7: high below low"))
    server, _, _, _ = start(service)

    reply = server.reply_to(server.push(PrepareEpisode(episode=1)))
    again = server.reply_to(server.push(PrepareEpisode(episode=1)))

    assert isinstance(reply, RequestFailed)
    assert "line 7: high below low" in reply.error
    assert reply.kind == "internal", "a ValueError is the system's fault, not the user's"
    assert isinstance(again, RequestFailed)


def test_bad_data_is_answered_as_the_users_input_with_its_line_alone() -> None:
    service = FakeService(fail=DataError("high 9.5 is below low 10", path="data/x.csv", line=7))
    server, publisher, _, _ = start(service)

    reply = server.reply_to(server.push(PrepareEpisode(episode=1)))

    assert isinstance(reply, RequestFailed)
    assert reply.kind == "input"
    assert reply.error == "data/x.csv, line 7: high 9.5 is below low 10"
    assert [e.error for e in publisher.of(ErrorRaised)] == [reply.error]
