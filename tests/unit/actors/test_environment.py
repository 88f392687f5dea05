"""Actor-level tests of the env actor: data streamed in blocks, envs created once, steps served."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pytest
import zmq

from actors.environment import EnvActor
from actors.ports import Ports
from messages import (
    AttachShared,
    BlockAccepted,
    DataBlock,
    DataComplete,
    DataInstalled,
    DataSwapped,
    DescribeEnvs,
    EnvsCreated,
    EnvSpec,
    EnvsReset,
    EnvsStepped,
    ErrorRaised,
    EvaluationComputed,
    FinishEvaluation,
    Message,
    RequestFailed,
    ResetEnvs,
    SessionSet,
    SetSession,
    SharedAttached,
    SharedStepped,
    StepEnvs,
    StepShared,
)
from services.env.records import StepOutputs, StepResult
from services.transport import shm_waits
from services.transport.shm import SharedSteps, StepLayout
from services.transport.shm_folder import SharedFolder
from services.transport.shm_layout import ENV_SLEEPING, SERVING
from tests.fakes import FakeClock, FakeProbe, FakePublisher, FakeServer

N_FEATURES = 3


class FakeEnv:
    def __init__(self, role: str, n_envs: int) -> None:
        self.role = role
        self.n_envs = n_envs
        self.updates: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.seeds: list[int | None] = []
        self.done = False
        self.shared: list[StepOutputs] = []

    @property
    def observation_shape(self) -> tuple[int, ...]:
        return (N_FEATURES + 2,)

    def update_data(self, features: np.ndarray, open_: np.ndarray, close: np.ndarray) -> None:
        self.updates.append((features.copy(), open_.copy(), close.copy()))

    def reset(self, seed: int | None = None) -> np.ndarray:
        self.seeds.append(seed)
        return np.zeros((self.n_envs, N_FEATURES + 2), dtype=np.float32)

    def share_outputs(self, outputs: StepOutputs) -> None:
        self.shared.append(outputs)

    def step(self, actions: np.ndarray) -> StepResult:
        n = self.n_envs
        obs = np.tile(actions.astype(np.float32)[:, None], (1, N_FEATURES + 2))
        return StepResult(
            obs,
            actions.astype(np.float32) / 10,
            np.zeros(n, bool),
            actions == 1,  # the envs given action 1 finish
            obs * 10,
            np.ones(n),
            np.ones(n, np.int64),
        )


class FakeFactory:
    action = "discrete3"
    n_actions = 3
    max_leverage = 1.0

    def __init__(self) -> None:
        self.created: list[FakeEnv] = []
        self.bars_per_year: list[float] = []

    def create(self, role: str, bars_per_year: float) -> FakeEnv:
        env = FakeEnv(role, 1 if role == "eval" else 4)
        self.created.append(env)
        self.bars_per_year.append(bars_per_year)
        return env

    def evaluation(self, env: Any, timestamps: np.ndarray, bars_per_year: float) -> dict[str, Any]:
        return {
            "agent": {"total_return": 0.5, "bars_per_year": bars_per_year},
            "buy_and_hold": {"total_return": 0.25},
            "timestamp": np.ascontiguousarray(timestamps),
            "close": np.ones(len(timestamps)),
            "position": np.zeros(len(timestamps)),
            "equity": np.ones(len(timestamps)),
            "bh_equity": np.ones(len(timestamps)),
            "ruined_at": -1,
        }


@pytest.fixture
def world() -> tuple[FakeServer, FakePublisher, FakeFactory]:
    server, publisher, factory = FakeServer(), FakePublisher(), FakeFactory()
    ports = Ports(server=lambda: server, publisher=lambda: publisher)
    EnvActor.start(factory=factory, ports=ports, clock=FakeClock(), probe=FakeProbe())
    return server, publisher, factory


def stream(
    server: FakeServer, split: str, rows: int, block: int, scale: float = 1.0, episode: int = 1
) -> None:
    features = (np.arange(rows * N_FEATURES, dtype=np.float32).reshape(rows, N_FEATURES)) * scale
    prices = 100.0 + np.arange(rows, dtype=np.float64) * scale
    stamps = np.arange(rows, dtype=np.int64) * 86_400 * 10**9
    for start in range(0, rows, block):
        end = min(start + block, rows)
        msg = server.push(
            DataBlock(
                split=split,
                offset=start,
                total_rows=rows,
                features=features[start:end],
                open=prices[start:end],
                close=prices[start:end],
                timestamp=stamps[start:end],
            )
        )
        ack = server.reply_to(msg)
        assert isinstance(ack, BlockAccepted) and ack.offset == start and ack.rows == end - start
    done = server.reply_to(
        server.push(DataComplete(split=split, total_rows=rows, bars_per_year=252.0, episode=episode))
    )
    assert isinstance(done, DataInstalled) and done.rows == rows


def test_blocks_are_assembled_in_order_and_installed_into_new_envs(world) -> None:
    server, publisher, factory = world

    stream(server, "train", rows=10, block=3)

    (env,) = factory.created
    features, _, close = env.updates[0]
    np.testing.assert_array_equal(features, np.arange(30, dtype=np.float32).reshape(10, 3))
    np.testing.assert_array_equal(close, 100.0 + np.arange(10))
    assert publisher.wait_for(EnvsCreated)[0].n_envs == 4
    assert publisher.wait_for(DataSwapped)[0].rows == 10


def test_new_data_is_swapped_into_the_same_envs_without_recreating_them(world) -> None:
    server, publisher, factory = world
    stream(server, "train", rows=10, block=4)

    stream(server, "train", rows=8, block=4, scale=2.0, episode=2)
    reply = server.reply_to(server.push(SetSession(name="second", episode=2)))

    assert len(factory.created) == 1
    env = factory.created[0]
    assert len(env.updates) == 2
    np.testing.assert_array_equal(env.updates[1][2], 100.0 + 2.0 * np.arange(8))
    assert isinstance(reply, SessionSet) and reply.envs_created == 1 and reply.name == "second"
    assert len(publisher.of(EnvsCreated)) == 1


def test_out_of_sequence_block_is_refused_and_the_actor_keeps_serving(world) -> None:
    server, _, factory = world
    bad = server.push(
        DataBlock(
            split="train",
            offset=5,
            total_rows=10,
            features=np.zeros((2, N_FEATURES), np.float32),
            open=np.ones(2),
            close=np.ones(2),
            timestamp=np.zeros(2, np.int64),
        )
    )

    reply = server.reply_to(bad)
    stream(server, "train", rows=6, block=6)

    assert isinstance(reply, RequestFailed)
    assert "out of sequence" in reply.error
    assert len(factory.created) == 1


def test_incomplete_stream_is_not_installed(world) -> None:
    server, _, factory = world
    first = server.push(
        DataBlock(
            split="eval",
            offset=0,
            total_rows=10,
            features=np.zeros((4, N_FEATURES), np.float32),
            open=np.ones(4),
            close=np.ones(4),
            timestamp=np.zeros(4, np.int64),
        )
    )
    server.reply_to(first)

    reply = server.reply_to(
        server.push(DataComplete(split="eval", total_rows=10, bars_per_year=252.0, episode=1))
    )

    assert isinstance(reply, RequestFailed)
    assert "4 of 10" in reply.error
    assert factory.created == []


def test_describe_reset_and_step_serve_the_train_envs_in_one_batch(world) -> None:
    server, _, factory = world
    stream(server, "train", rows=10, block=10)

    spec = server.reply_to(server.push(DescribeEnvs(role="train")))
    reset = server.reply_to(server.push(ResetEnvs(role="train", seed=7)))
    stepped = server.reply_to(server.push(StepEnvs(role="train", actions=np.array([0, 1, 2, 1]))))

    assert isinstance(spec, EnvSpec) and spec.n_envs == 4 and spec.obs_shape == (5,) and spec.n_actions == 3
    assert isinstance(reset, EnvsReset) and reset.obs.shape == (4, 5)
    assert factory.created[0].seeds == [7]
    assert isinstance(stepped, EnvsStepped)
    np.testing.assert_allclose(stepped.reward, [0.0, 0.1, 0.2, 0.1], rtol=1e-6)
    assert stepped.truncated.tolist() == [False, True, False, True]
    assert stepped.terminal_obs.shape == (2, 5), "the reply carries the finished envs' rows alone"
    np.testing.assert_array_equal(stepped.terminal_obs, 10.0)
    assert stepped.sender == "env"


class SocketServer(FakeServer):
    """A fake server whose requests also arrive as a byte on a ZeroMQ socket, as the real ROUTER's do:
    a lease asleep on that socket wakes for them."""

    def __init__(self) -> None:
        super().__init__()
        context = zmq.Context.instance()
        self.socket = context.socket(zmq.PAIR)  # type: ignore[assignment]
        self.socket.bind("inproc://env-actor-lease-test")
        self._client = context.socket(zmq.PAIR)
        self._client.connect("inproc://env-actor-lease-test")

    def push(self, msg: Message, peer: bytes = b"peer") -> Message:
        super().push(msg, peer)
        self._client.send(b"\x01")
        return msg

    def pending(self) -> bool:  # called on the actor's thread, the socket's reader
        while self.socket.poll(0):
            self.socket.recv()
        return super().pending()

    def close(self) -> None:
        super().close()
        self.socket.close(0)
        self._client.close(0)


@pytest.mark.parametrize("woken", [False, True], ids=["asked-every-check", "woken-by-its-socket"])
def test_a_request_that_comes_during_a_lease_ends_it_and_is_answered(tmp_path, monkeypatch, woken) -> None:
    # The lease's own limits are made a minute long: only the waiting request can end it; with a socket
    # to sleep on, the lease asleep asks only once a minute unless the request wakes it.
    monkeypatch.setattr(shm_waits, "CHECKED_IDLE_S", 60.0)
    monkeypatch.setattr(shm_waits, "CHECKED_MAX_S", 60.0)
    monkeypatch.setattr(shm_waits, "ASLEEP_CHECK_S", 60.0)
    if woken:  # and it does not ask while it serves either: only the socket's wake-up gets it to ask
        monkeypatch.setattr(shm_waits, "CHECK_S", 60.0)
    monkeypatch.setattr(shm_waits, "COLOCATE", False)
    server, factory = SocketServer() if woken else FakeServer(), FakeFactory()
    ports = Ports(server=lambda: server, publisher=FakePublisher)
    ref = EnvActor.start(
        factory=factory, shared=SharedFolder(tmp_path), ports=ports, clock=FakeClock(), probe=FakeProbe()
    )
    try:
        stream(server, "train", rows=10, block=10)
        attached = server.reply_to(
            server.push(AttachShared(role="train", n_envs=4, obs_shape=(5,), action="discrete3"))
        )
        assert isinstance(attached, SharedAttached)
        assert len(factory.created[0].shared) == 1, "the envs were given the buffer's arrays to step into"
        layout = StepLayout.of(4, (5,), "discrete3")
        model = SharedSteps.attach(tmp_path, attached.name, layout, attached.size)
        step = model.put_actions(np.array([0, 1, 2, 1]))
        stepped = server.reply_to(server.push(StepShared(role="train", name=attached.name, step=step)))
        assert isinstance(stepped, SharedStepped) and stepped.finished == 2
        deadline = time.monotonic() + 10
        while not model._words[SERVING]:  # the lease starts right after the answer
            assert time.monotonic() < deadline, "the actor holds a lease after the token"
            time.sleep(0.001)
        following = model.put_actions(np.array([1, 1, 1, 1]))
        assert model.wait(following), "the lease serves the next step"
        while not model._words[ENV_SLEEPING]:  # the update phase: the lease sleeps
            assert time.monotonic() < deadline, "the lease never slept"
            time.sleep(0.001)

        spec = server.reply_to(server.push(DescribeEnvs(role="train")), timeout_s=20.0)

        assert isinstance(spec, EnvSpec) and spec.n_envs == 4
        assert not model._words[SERVING], "the lease ended for the request"
        np.testing.assert_allclose(model.read(following).reward, 0.1, rtol=1e-6)
        model.close()
    finally:
        ref.stop(block=True, timeout=10)
    assert not list(tmp_path.glob("*.shm")), "the actor removes its buffer when it stops"


def test_steps_before_any_data_are_refused(world) -> None:
    server, _, _ = world

    reply = server.reply_to(server.push(StepEnvs(role="train", actions=np.zeros(4, np.int64))))
    unknown = server.reply_to(server.push(StepEnvs(role="bogus", actions=np.zeros(4, np.int64))))

    assert isinstance(reply, RequestFailed) and "no data" in reply.error
    assert isinstance(unknown, RequestFailed) and "unknown env role" in unknown.error


def test_finish_evaluation_reports_on_the_eval_bars_with_their_timestamps(world) -> None:
    server, _, _ = world
    stream(server, "eval", rows=6, block=4)

    reply = server.reply_to(server.push(FinishEvaluation(episode=3)))

    assert isinstance(reply, EvaluationComputed)
    assert reply.episode == 3
    assert reply.agent["total_return"] == 0.5
    np.testing.assert_array_equal(reply.timestamp, np.arange(6) * 86_400 * 10**9)


def test_finish_evaluation_reads_the_records_of_a_long_run_in_pieces(world) -> None:
    server, _, _ = world
    stream(server, "eval", rows=10, block=4)

    pieces = [server.reply_to(server.push(FinishEvaluation(episode=1, offset=k, limit=4))) for k in (0, 4, 8)]

    assert all(isinstance(p, EvaluationComputed) for p in pieces)
    assert [(p.offset, len(p.close), p.total_rows) for p in pieces] == [(0, 4, 10), (4, 4, 10), (8, 2, 10)]
    joined = np.concatenate([p.timestamp for p in pieces])
    np.testing.assert_array_equal(joined, np.arange(10) * 86_400 * 10**9)
    assert {p.agent["total_return"] for p in pieces} == {0.5}


def test_finish_evaluation_cuts_its_pieces_to_the_byte_budget_it_is_given(world) -> None:
    server, _, _ = world
    stream(server, "eval", rows=10, block=4)
    row_bytes = 5 * 8  # timestamp, close, position, equity, buy-and-hold: 8 bytes each

    piece = server.reply_to(server.push(FinishEvaluation(episode=1, limit=8, max_bytes=3 * row_bytes + 7)))
    tiny = server.reply_to(server.push(FinishEvaluation(episode=1, offset=3, max_bytes=1)))

    assert isinstance(piece, EvaluationComputed) and (piece.offset, len(piece.close)) == (0, 3)
    assert isinstance(tiny, EvaluationComputed) and (tiny.offset, len(tiny.close)) == (3, 1), "never 0 rows"


def test_a_burst_of_bad_requests_is_answered_and_published_each_but_logged_once(world, caplog) -> None:
    server, publisher, _ = world
    bad = [StepEnvs(role="train", actions=np.zeros(4, np.int64)) for _ in range(20)]

    with caplog.at_level(logging.WARNING, logger="actors.base"):
        replies = [server.reply_to(server.push(msg)) for msg in bad]
        publisher.wait_for(ErrorRaised, 20)

    assert all(isinstance(r, RequestFailed) and "no data" in r.error for r in replies)
    lines = [r for r in caplog.records if "no data" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].exc_info is not None, "the first of a kind keeps its traceback for the log file"
