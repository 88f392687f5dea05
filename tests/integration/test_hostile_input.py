"""Hostile input on every socket of the real actors and the event hub, over real ZeroMQ sockets.

The env, data and model actors run in this process (one thread each) with real ipc sockets under /tmp
and a real event hub; only the model and the data service are fakes. Each test sends garbage, requests
the actor does not serve, badly shaped actions or data blocks out of sequence, then checks that the
actor refused them with RequestFailed, reported them as ErrorRaised, and still serves valid requests.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from actors.data import DataActor
from actors.environment import EnvActor
from actors.model import ModelActor
from actors.ports import Ports, RequestClient
from messages import (
    PROTOCOL_VERSION,
    BlockAccepted,
    DataBlock,
    DataComplete,
    DataLoaded,
    DataSwapped,
    DecodeError,
    DescribeEnvs,
    DescribeSession,
    EnvSpec,
    EnvsReset,
    EnvsStepped,
    EpisodeDataReady,
    EpisodeFinished,
    EpisodeTrained,
    ErrorRaised,
    EvaluationComputed,
    FinishEvaluation,
    Heartbeat,
    Message,
    Ping,
    Pong,
    PrepareEpisode,
    RequestFailed,
    RequestSnapshot,
    ResetEnvs,
    SessionDescription,
    Snapshot,
    StepEnvs,
    Stop,
    TrainEpisode,
    TrainingProgress,
    decode,
    encode,
)
from messages.codec import MAX_HEADER_BYTES
from services.data.dataset import EpisodeSplit, SplitArrays
from services.env.factory import VecEnvFactory
from services.env.options import EnvOptions
from services.runtime import PsutilProbe, SystemClock
from services.transport.endpoints import context
from services.transport.hub import EventHub
from services.transport.sockets import Client, Publisher, Server
from tests.integration.signing import AUTH, KEY, opened, signed

pytestmark = pytest.mark.integration

MAX_BYTES = 2 << 20
"""The actors' and the hub's message size limit: above the 1 MiB header limit, so both are reachable."""
SESSION_MAX_BYTES = 1 << 16
"""The hub's limit on a monitor's request (fixed in EventHub)."""
WAIT_S = 5.0
N_ENVS = 4
N_FEATURES = 3
TRAIN_ROWS, EVAL_ROWS = 96, 40
OPTIONS = EnvOptions(n_envs=N_ENVS, window=8, episode_length=16)
ACTORS = ("env", "data", "model")


# Fakes: the model and the data service; everything else is real.


class SteppingModel:
    """A model whose learning is stepping the real env actor through the model actor's own client."""

    device = "cpu"
    restored_from = ""
    parameters = 0

    def __init__(self, env: RequestClient, model_id: str) -> None:
        self.model_id = model_id
        self._env = env
        self.num_timesteps = 0

    def learn(self, steps: int, tick: Callable[[int], bool]) -> int:
        spec = self._env.request(DescribeEnvs(role="train"))
        assert isinstance(spec, EnvSpec)
        actions = np.full(spec.n_envs, 2, dtype=np.int64)
        for _ in range(steps):
            stepped = self._env.request(StepEnvs(role="train", actions=actions))
            assert isinstance(stepped, EnvsStepped)
            self.num_timesteps += 1
            tick(self.num_timesteps)
        return steps

    def evaluate(self) -> int:
        return 0


class SteppingModelFactory:
    """Builds SteppingModels and pretends to checkpoint them."""

    algorithm = "fake"

    def __init__(self) -> None:
        self.created: list[SteppingModel] = []

    def create(self, env_client: RequestClient, on_values: Callable[[int, dict[str, float]], None]) -> Any:
        model = SteppingModel(env_client, f"fake-{len(self.created) + 1}")
        self.created.append(model)
        return model

    def checkpoint(self, model: Any, episode: int, complete: bool) -> str:
        return f"memory://episode-{episode}"


def split_arrays(start: int, rows: int) -> SplitArrays:
    bars = np.arange(start, start + rows, dtype=np.float64)
    features = np.stack([np.sin(bars / 5), np.cos(bars / 7), np.tanh(bars / 50 - 1)], axis=1)
    return SplitArrays(
        features=features.astype(np.float32),
        open=100.0 + bars,
        close=100.5 + bars + np.sin(bars),
        timestamp=(bars.astype(np.int64) + 18_000) * 86_400 * 10**9,
    )


class SmallDataService:
    """Serves one fixed split: 96 train bars and 40 eval bars of three smooth features."""

    def load(self) -> DataLoaded:
        features = ("a", "b", "c")
        return DataLoaded(
            source="memory",
            rows=TRAIN_ROWS + EVAL_ROWS,
            features=features,
            bars_per_year=252.0,
            data_hash="hash",
            cached=False,
            seconds=0.0,
        )

    def episode(self, episode: int) -> EpisodeSplit:
        return EpisodeSplit(
            key=(0, TRAIN_ROWS, TRAIN_ROWS, TRAIN_ROWS + EVAL_ROWS),
            train=split_arrays(0, TRAIN_ROWS),
            eval=split_arrays(TRAIN_ROWS, EVAL_ROWS),
        )


# The world: a hub, three actors, and the test's own raw sockets.


class EventLog:
    """The hub's sink: every valid event it forwarded, with its sequence number."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._events: list[tuple[int, Message]] = []

    def __call__(self, seq: int, msg: Message) -> None:
        with self._cond:
            self._events.append((seq, msg))
            self._cond.notify_all()

    @property
    def last_seq(self) -> int:
        with self._cond:
            return self._events[-1][0] if self._events else 0

    def count(self, match: Callable[[Message], bool]) -> int:
        with self._cond:
            return sum(1 for _, msg in self._events if match(msg))

    def wait_for(
        self, match: Callable[[Message], bool], *, after: int = 0, timeout_s: float = WAIT_S, what: str = ""
    ) -> Message:
        """Return the first event after sequence number `after` that matches; fail after timeout_s."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for seq, msg in self._events:
                    if seq > after and match(msg):
                        return msg
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"the hub forwarded no {what or 'matching event'} within {timeout_s:g} s")
                self._cond.wait(left)

    def wait_count(self, match: Callable[[Message], bool], count: int, timeout_s: float = WAIT_S) -> None:
        """Wait until at least `count` forwarded events match."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while (found := sum(1 for _, msg in self._events if match(msg))) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"{found} of {count} expected events forwarded within {timeout_s:g} s")
                self._cond.wait(left)


class Probe:
    """A raw DEALER (or PUSH) of the test holding the session key: sends any frames (signed, except to the
    session socket, which takes a monitor's plain messages), decodes what comes back."""

    def __init__(self, endpoint: str, kind: int = zmq.DEALER, *, signed: bool = True) -> None:
        self.endpoint = endpoint
        self.signed = signed
        self.sock = context().socket(kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        AUTH.apply(self.sock)
        self.sock.connect(endpoint)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(signed(frames) if self.signed else frames)

    def receive(self, timeout_s: float = WAIT_S) -> Message | None:
        """Return the next reply within timeout_s, or None."""
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        frames = self.sock.recv_multipart()
        return decode(opened(frames) if self.signed else frames, max_bytes=MAX_BYTES)

    def ask(self, msg: Message, timeout_s: float = WAIT_S) -> Message:
        """Send a valid request and return the reply that carries its id."""
        self.send(encode_bytes(msg))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            reply = self.receive(left)
            if reply is not None and reply.correlation_id == msg.msg_id:
                return reply
        pytest.fail(f"no reply to {type(msg).__name__} from {self.endpoint} within {timeout_s:g} s")

    def ask_reconnecting(self, make: Callable[[], Message], timeout_s: float = WAIT_S) -> Message:
        """Send fresh requests until one is answered (a request sent while the socket reconnects is lost)."""
        sent: set[str] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = make()
            sent.add(msg.msg_id)
            self.send(encode_bytes(msg))
            reply = self.receive(0.2)
            while reply is not None:
                if reply.correlation_id in sent:
                    return reply
                reply = self.receive(0.05)
        pytest.fail(f"no request answered by {self.endpoint} within {timeout_s:g} s")

    def refused(self, frames: list[bytes]) -> RequestFailed:
        """Send frames and return the RequestFailed that must answer them."""
        self.send(frames)
        reply = self.receive()
        assert reply is not None, f"{self.endpoint} did not answer"
        assert isinstance(reply, RequestFailed), reply
        return reply

    def close(self) -> None:
        self.sock.close(0)


@dataclass
class World:
    """A running hub and env, data and model actors, plus every endpoint the tests send to."""

    hub: EventHub
    events: EventLog
    endpoints: dict[str, str]
    refs: dict[str, Any]
    model_factory: SteppingModelFactory
    probes: list[Probe] = field(default_factory=list)
    episodes: int = 0

    def probe(self, name: str, kind: int = zmq.DEALER) -> Probe:
        probe = Probe(self.endpoints[name], kind, signed=name != "session")
        self.probes.append(probe)
        return probe

    def error_after(self, mark: int, actor: str, error: str) -> ErrorRaised:
        """Wait for the ErrorRaised an actor published about `error` after sequence number `mark`."""
        event = self.events.wait_for(
            lambda m: isinstance(m, ErrorRaised) and m.sender == actor and m.error == error,
            after=mark,
            what=f"ErrorRaised from {actor} about {error!r}",
        )
        assert isinstance(event, ErrorRaised)
        return event


def encode_bytes(msg: Message) -> list[bytes]:
    return [bytes(frame) for frame in encode(msg)]


def heartbeat_of(actor: str) -> Callable[[Message], bool]:
    return lambda m: isinstance(m, Heartbeat) and m.sender == actor


def client_factory(endpoint: str, sender: str) -> Callable[[], RequestClient]:
    return lambda: Client(endpoint, max_bytes=MAX_BYTES, timeout_s=WAIT_S, sender=sender, key=KEY)


def start_world(world: World) -> None:
    """Start the hub and the actors, wait until each one's events reach the hub, stream the data."""
    endpoints = world.endpoints
    world.hub.start()
    endpoints["session"] = world.hub.session

    def ports(name: str, *clients: str) -> Ports:
        return Ports(
            server=lambda: Server(endpoints[name], max_bytes=MAX_BYTES, name=name, key=KEY),
            publisher=lambda: Publisher(endpoints["events_in"], sender=name, key=KEY),
            clients={c: client_factory(endpoints[c], name) for c in clients},
        )

    common: dict[str, Any] = {"clock": SystemClock(), "probe": PsutilProbe(), "heartbeat_s": 0.05}
    world.refs["env"] = EnvActor.start(factory=VecEnvFactory(OPTIONS, seed=3), ports=ports("env"), **common)
    world.refs["data"] = DataActor.start(
        service=SmallDataService(), block_rows=16, ports=ports("data", "env"), **common
    )
    world.refs["model"] = ModelActor.start(
        factory=world.model_factory, piece_steps=4, ports=ports("model", "env"), **common
    )
    for name in ACTORS:  # a publisher is connected once the hub has forwarded one of its heartbeats
        world.events.wait_for(heartbeat_of(name), what=f"a heartbeat of {name}")
    ready = world.probe("data").ask(PrepareEpisode(episode=1))
    assert isinstance(ready, EpisodeDataReady) and ready.streamed, ready


def stop_world(world: World) -> None:
    """Close the test's sockets, stop the actors in reverse order, then the hub."""
    for probe in world.probes:
        probe.close()
    for name in reversed(ACTORS):
        if name in world.refs:
            world.refs[name].stop(block=True, timeout=WAIT_S)
    world.hub.stop()


@pytest.fixture
def world() -> Iterator[World]:
    """A running world on ipc sockets in a short /tmp folder; afterwards no thread of it is left."""
    before = set(threading.enumerate())
    folder = tempfile.mkdtemp(prefix="h-", dir="/tmp")
    endpoints = {name: f"ipc://{folder}/{name}.sock" for name in ("events_in", *ACTORS)}
    events = EventLog()
    hub = EventHub(
        name="hostile",
        events_in=endpoints["events_in"],
        monitor_host="127.0.0.1",
        events_port=0,
        session_port=0,
        max_bytes=MAX_BYTES,
        sinks=[events],
        snapshot=lambda: {"episode": 0},
        key=KEY,
    )
    world = World(hub, events, endpoints, {}, SteppingModelFactory())
    try:
        start_world(world)
        yield world
    finally:
        try:
            stop_world(world)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    deadline = time.monotonic() + WAIT_S
    pause = threading.Event()
    while (left := set(threading.enumerate()) - before) and time.monotonic() < deadline:
        pause.wait(0.01)
    assert not left, f"threads left running: {sorted(t.name for t in left)}"


def connected_publisher(world: World) -> Probe:
    """Return a raw PUSH on the hub's input whose events are known to arrive."""
    pub = world.probe("events_in", zmq.PUSH)
    hello = Heartbeat(pid=1, rss_bytes=1, cpu_percent=0.0, state="probe", sender="probe")
    deadline = time.monotonic() + WAIT_S
    while not world.events.count(lambda m: m.msg_id == hello.msg_id):
        assert time.monotonic() < deadline, "the probe's PUB never reached the hub"
        pub.send(encode_bytes(hello))  # a PUB drops until the hub's subscription reaches it: repeat
        world.events.wait_for(lambda m: m.sender in ACTORS, after=world.events.last_seq)
    return pub


# Hostile frames.

UNPICKLED = threading.Event()


def _tripwire() -> None:
    UNPICKLED.set()


class Tripwire:
    """Pickles into a call of _tripwire: anything that unpickles it sets UNPICKLED."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _tripwire, ()


def packed(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def header(**changes: Any) -> dict[str, Any]:
    """A valid Ping header with some keys changed."""
    return {"v": PROTOCOL_VERSION, "type": "Ping", "body": {}, "arrays": [], **changes}


def step_header(dtype: str, shape: list[Any]) -> bytes:
    return packed(header(type="StepEnvs", body={"role": "train"}, arrays=[["actions", dtype, shape]]))


def undecodable(max_frame: int) -> list[tuple[str, list[bytes]]]:
    """Frame lists no decoder may accept, each frame below max_frame (ZeroMQ drops larger ones)."""
    ping = encode_bytes(Ping())[0]
    half = max_frame // 2 + 1
    cases = [
        ("random bytes", [random.Random(7).randbytes(97)]),
        ("an empty frame", [b""]),
        ("truncated msgpack", [ping[: len(ping) // 2]]),
        ("msgpack of a list", [packed([1, 2, 3])]),
        ("msgpack of a string", [packed("Ping")]),
        ("a header without a body", [packed({"v": PROTOCOL_VERSION, "type": "Ping"})]),
        ("a header with an extra key", [packed(header(extra=True))]),
        ("a wrongly typed field", [packed(header(type="StepEnvs", body={"role": 5}))]),
        ("a missing field", [packed(header(type="TrainEpisode", body={"episode": 1}))]),
        ("an unknown field", [packed(header(body={"__class__": "os.system"}))]),
        ("bytes in the header", [packed(header(body={"sender": b"\x00\x01"}))]),
        ("an array given as a list", [packed(header(type="StepEnvs", body={"role": "t", "actions": [1]}))]),
        ("an unknown type", [packed(header(type="Frobnicate"))]),
        ("a type that is not a string", [packed(header(type=7))]),
        ("a wrong protocol version", [packed(header(v=PROTOCOL_VERSION + 1))]),
        ("a version given as true", [packed(header(v=True))]),
        ("a frame the header does not describe", [ping, b"\x00" * 8]),
        ("a described array without its frame", [step_header("<i8", [4])]),
        ("a huge array header", [step_header("<i8", [2**39, 2**39]), b"\x00" * 32]),
        ("an array of five dimensions", [step_header("<i8", [1, 1, 1, 1, 4]), b"\x00" * 32]),
        ("a negative dimension", [step_header("<i8", [-4]), b"\x00" * 32]),
        ("an object dtype", [step_header("|O", [4]), b"\x00" * 32]),
        ("a big-endian dtype", [step_header(">i8", [4]), b"\x00" * 32]),
        ("a frame shorter than its shape", [step_header("<i8", [4]), b"\x00" * 31]),
        ("a pickle", [pickle.dumps(Tripwire())]),
        ("deeply nested msgpack", [b"\x91" * 50_000 + b"\xc0"]),
        ("frames above the size limit together", [ping, b"\x00" * half, b"\x00" * half]),
    ]
    if max_frame > MAX_HEADER_BYTES + 64:
        big = packed(header(body={"sender": "x" * (MAX_HEADER_BYTES + 1)}))
        cases.append(("a header above the header limit", [big]))
    for label, frames in cases:
        assert all(len(f) < max_frame for f in frames), label
    return cases


def decode_failure(frames: list[bytes], max_bytes: int) -> DecodeError:
    """Return the codec's error for frames (they must not decode)."""
    with pytest.raises(DecodeError) as info:
        decode(frames, max_bytes=max_bytes)
    return info.value


def decode_error(frames: list[bytes], max_bytes: int) -> str:
    """Return what the codec says is wrong with frames (they must not decode)."""
    return str(decode_failure(frames, max_bytes))


def still_serves(world: World, actor: str) -> None:
    """Check with a fresh client that an actor (or the hub's session socket) serves its requests correctly."""
    probe = world.probe(actor)
    if actor in ACTORS:
        pong = probe.ask(Ping())
        assert isinstance(pong, Pong) and pong.sender == actor
    if actor == "env":
        spec = probe.ask(DescribeEnvs(role="train"))
        assert isinstance(spec, EnvSpec)
        assert (spec.n_envs, spec.obs_shape) == (N_ENVS, (OPTIONS.window * N_FEATURES + 2,))
        reset = probe.ask(ResetEnvs(role="train", seed=1))
        assert isinstance(reset, EnvsReset) and reset.obs.shape == (N_ENVS, *spec.obs_shape)
        stepped = probe.ask(StepEnvs(role="train", actions=np.array([0, 1, 2, 1], dtype=np.int64)))
        assert isinstance(stepped, EnvsStepped) and np.isfinite(stepped.reward).all()
    elif actor == "data":
        mark = world.events.last_seq
        ready = probe.ask(PrepareEpisode(episode=1, force=True))
        assert isinstance(ready, EpisodeDataReady) and ready.streamed
        assert (ready.train_rows, ready.eval_rows) == (TRAIN_ROWS, EVAL_ROWS)
        swapped = world.events.wait_for(lambda m: isinstance(m, DataSwapped), after=mark, what="DataSwapped")
        assert isinstance(swapped, DataSwapped) and swapped.sender == "env"
    elif actor == "model":
        world.episodes += 1
        trained = probe.ask(TrainEpisode(episode=world.episodes, steps=6))
        assert isinstance(trained, EpisodeTrained), trained
        assert trained.steps == 6 and trained.model_id == "fake-1"
    else:
        described = probe.ask(DescribeSession())
        assert isinstance(described, SessionDescription) and described.name == "hostile"
        snapshot = probe.ask(RequestSnapshot())
        assert isinstance(snapshot, Snapshot) and snapshot.state == {"episode": 0}


# Tests.


@pytest.mark.parametrize("actor", ACTORS)
def test_undecodable_requests_are_refused_reported_and_the_actor_keeps_serving(
    world: World, actor: str
) -> None:
    probe = world.probe(actor)

    for label, frames in undecodable(MAX_BYTES):
        failure = decode_failure(frames, MAX_BYTES)
        expected, readable_id = str(failure), failure.msg_id
        mark = world.events.last_seq
        reply = probe.refused(frames)
        assert (reply.request, reply.error, reply.correlation_id) == ("?", expected, readable_id), label
        assert world.error_after(mark, actor, expected).where == f"{actor} socket", label

    assert not UNPICKLED.is_set()
    still_serves(world, actor)
    assert isinstance(probe.ask(Ping()), Pong)


@pytest.mark.parametrize("actor", [*ACTORS, "session"])
def test_a_frame_above_the_size_limit_is_dropped_by_zeromq_and_the_socket_keeps_serving(
    world: World, actor: str
) -> None:
    limit = SESSION_MAX_BYTES if actor == "session" else MAX_BYTES
    probe = world.probe(actor)

    probe.send([b"\x00" * (limit + 1)])

    # ZeroMQ refuses the frame and drops the connection, so nobody is there to answer; the client
    # reconnects on its own and is served again.
    assert probe.receive(timeout_s=0.2) is None
    reply = probe.ask_reconnecting(Ping if actor != "session" else DescribeSession)
    assert isinstance(reply, Pong if actor != "session" else SessionDescription)
    still_serves(world, actor)


@pytest.mark.parametrize(
    ("actor", "request_"),
    [
        ("env", TrainEpisode(episode=1, steps=10)),
        ("env", Pong(state="idle", pid=1)),
        ("data", StepEnvs(role="train", actions=np.zeros(N_ENVS, dtype=np.int64))),
        ("data", DescribeSession()),
        ("model", DataBlock(split="train", offset=0, total_rows=1)),
        ("model", PrepareEpisode(episode=1)),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_a_valid_request_the_actor_does_not_serve_is_refused_by_name(
    world: World, actor: str, request_: Message
) -> None:
    probe = world.probe(actor)
    mark = world.events.last_seq

    reply = probe.ask(request_)

    name = type(request_).__name__
    assert isinstance(reply, RequestFailed)
    assert reply.request == name and reply.error == f"{actor} does not serve {name}"
    assert world.error_after(mark, actor, reply.error).where == actor
    still_serves(world, actor)


def test_steps_with_wrong_actions_are_refused_and_change_nothing(world: World) -> None:
    env = world.probe("env")
    first = env.ask(ResetEnvs(role="train", seed=5))
    good = np.array([2, 0, 1, 2], dtype=np.int64)
    reference = env.ask(StepEnvs(role="train", actions=good))
    assert isinstance(first, EnvsReset) and isinstance(reference, EnvsStepped)
    again = env.ask(ResetEnvs(role="train", seed=5))
    assert isinstance(again, EnvsReset)
    np.testing.assert_array_equal(again.obs, first.obs)
    wrong = [
        ("train", np.zeros(N_ENVS - 1, dtype=np.int64), "expected 4 actions"),
        ("train", np.zeros(N_ENVS + 1, dtype=np.int64), "expected 4 actions"),
        ("train", np.zeros(0, dtype=np.int64), "expected 4 actions"),
        ("train", np.zeros((N_ENVS, 2), dtype=np.int64), "expected 4 actions"),
        ("train", np.zeros(N_ENVS, dtype=np.float64), "must be integers"),
        ("train", np.ones(N_ENVS, dtype=bool), "must be integers"),
        ("train", np.array([0, 1, 2, 3], dtype=np.int64), "must be in [0, 3)"),
        ("train", np.array([0, -1, 2, 1], dtype=np.int64), "must be in [0, 3)"),
        ("train", np.array([0, 1, 2, 2**40], dtype=np.int64), "must be in [0, 3)"),
        ("eval", np.zeros(N_ENVS, dtype=np.int64), "expected 1 actions"),
        ("bogus", np.zeros(N_ENVS, dtype=np.int64), "unknown env role 'bogus'"),
    ]

    for role, actions, needle in wrong:
        mark = world.events.last_seq
        reply = env.ask(StepEnvs(role=role, actions=actions))
        assert isinstance(reply, RequestFailed) and reply.request == "StepEnvs", (role, actions)
        assert reply.error.startswith("ValueError: ") and needle in reply.error, reply.error
        assert world.error_after(mark, "env", reply.error).where == "env.StepEnvs"

    # The refused steps moved no env: the same first step gives the same result as before them.
    after = env.ask(StepEnvs(role="train", actions=good))
    assert isinstance(after, EnvsStepped)
    np.testing.assert_array_equal(after.obs, reference.obs)
    np.testing.assert_array_equal(after.reward, reference.reward)
    still_serves(world, "env")


def test_data_blocks_out_of_sequence_are_refused_and_a_new_stream_installs(world: World) -> None:
    env = world.probe("env")
    first = env.ask(ResetEnvs(role="train", seed=9))
    rows = split_arrays(0, 16)

    def block(split: str, offset: int, total: int, arrays: SplitArrays = rows) -> DataBlock:
        return DataBlock(
            split=split,
            offset=offset,
            total_rows=total,
            features=arrays.features,
            open=arrays.open,
            close=arrays.close,
            timestamp=arrays.timestamp,
        )

    hostile = [
        (block("train", 32, TRAIN_ROWS), "out of sequence"),
        (block("eval", 16, EVAL_ROWS), "out of sequence"),
        (block("train", 16, TRAIN_ROWS + 16), "out of sequence"),
        (block("train", TRAIN_ROWS - 8, TRAIN_ROWS), "outside 0.."),
        (block("train", -16, TRAIN_ROWS), "outside 0.."),
        (block("test", 0, TRAIN_ROWS), "unknown split 'test'"),
        (dataclasses.replace(block("train", 16, TRAIN_ROWS), open=rows.open[:8]), "disagree in length"),
        (
            DataComplete(split="train", total_rows=TRAIN_ROWS + 1, bars_per_year=252.0, episode=1),
            "incomplete",
        ),
        (DataComplete(split="nope", total_rows=1, bars_per_year=252.0, episode=1), "incomplete"),
    ]

    for request_, needle in hostile:
        mark = world.events.last_seq
        reply = env.ask(request_)
        name = type(request_).__name__
        assert isinstance(reply, RequestFailed) and reply.request == name, reply
        assert needle in reply.error, reply.error
        assert world.error_after(mark, "env", reply.error).where == f"env.{name}"

    # The installed data is untouched, and the data actor can still stream and install a new copy.
    again = env.ask(ResetEnvs(role="train", seed=9))
    assert isinstance(first, EnvsReset) and isinstance(again, EnvsReset)
    np.testing.assert_array_equal(again.obs, first.obs)
    still_serves(world, "data")
    still_serves(world, "env")
    still_serves(world, "model")


def run_evaluation(env: Probe) -> EvaluationComputed:
    """Step the sequential eval env to its last bar, flat all the way, and ask for its report."""
    assert isinstance(env.ask(ResetEnvs(role="eval")), EnvsReset)
    flat = np.ones(1, dtype=np.int64)
    for _ in range(EVAL_ROWS):
        stepped = env.ask(StepEnvs(role="eval", actions=flat))
        assert isinstance(stepped, EnvsStepped)
        if stepped.truncated[0] or stepped.terminated[0]:
            break
    computed = env.ask(FinishEvaluation(episode=1))
    assert isinstance(computed, EvaluationComputed), computed
    return computed


def test_a_new_stream_that_never_completes_leaves_the_installed_evaluation_intact(world: World) -> None:
    env = world.probe("env")
    before = run_evaluation(env)
    stray = split_arrays(1000, 5)

    accepted = env.ask(
        DataBlock(
            split="eval",
            offset=0,
            total_rows=5,
            features=stray.features,
            open=stray.open,
            close=stray.close,
            timestamp=stray.timestamp,
        )
    )
    after = run_evaluation(env)

    assert isinstance(accepted, BlockAccepted)
    np.testing.assert_array_equal(after.timestamp, before.timestamp)


def test_a_peer_that_leaves_before_its_reply_costs_the_actor_nothing(world: World) -> None:
    leaver = world.probe("model")
    leaver.send(encode_bytes(TrainEpisode(episode=1, steps=40)))
    world.events.wait_for(lambda m: isinstance(m, TrainingProgress), what="TrainingProgress")

    leaver.close()

    world.events.wait_for(lambda m: isinstance(m, EpisodeFinished), what="EpisodeFinished")
    still_serves(world, "model")
    still_serves(world, "env")


@pytest.mark.parametrize("actor", ACTORS)
def test_a_peer_that_never_reads_its_replies_does_not_block_the_actor(world: World, actor: str) -> None:
    flooder = world.probe(actor)
    flooder.sock.setsockopt(zmq.RCVHWM, 1)
    pings = [encode_bytes(Ping()) for _ in range(3000)]

    for frames in pings:
        flooder.send(frames)

    still_serves(world, actor)


def test_the_hub_session_socket_refuses_garbage_and_requests_monitors_may_not_make(world: World) -> None:
    probe = world.probe("session")

    for label, frames in undecodable(SESSION_MAX_BYTES):
        failure = decode_failure(frames, SESSION_MAX_BYTES)
        refusal = probe.refused(frames)
        assert (refusal.request, refusal.error, refusal.correlation_id) == (
            "?",
            str(failure),
            failure.msg_id,
        ), label
    for request_ in (Stop(reason="hostile"), TrainEpisode(episode=1, steps=1), Ping()):
        reply = probe.ask(request_)
        assert isinstance(reply, RequestFailed) and reply.request == type(request_).__name__
        assert "monitors may only describe the session" in reply.error

    assert not UNPICKLED.is_set()
    still_serves(world, "session")
    for actor in ACTORS:  # nobody was stopped by the Stop above
        assert isinstance(world.probe(actor).ask(Ping()), Pong)


def test_the_hub_drops_undecodable_events_and_forwards_the_next_valid_one(world: World) -> None:
    pub = connected_publisher(world)
    rejected = world.hub.rejected
    garbage = undecodable(MAX_BYTES)

    for _, frames in garbage:
        pub.send(frames)
    marker = ErrorRaised(where="probe", error="after the garbage", sender="probe")
    pub.send(encode_bytes(marker))

    world.events.wait_for(lambda m: m.msg_id == marker.msg_id, what="the marker event")
    assert world.hub.rejected - rejected == len(garbage)
    assert not UNPICKLED.is_set()
    for actor in ACTORS:
        still_serves(world, actor)


def test_an_event_above_the_size_limit_is_dropped_and_the_publisher_gets_through_again(world: World) -> None:
    pub = connected_publisher(world)

    pub.send([b"\x00" * (MAX_BYTES + 1)])

    # ZeroMQ drops the connection of the PUB that sent it; the PUB reconnects on its own.
    marker = ErrorRaised(where="probe", error="after the oversized event", sender="probe")
    deadline = time.monotonic() + WAIT_S
    while not world.events.count(lambda m: m.msg_id == marker.msg_id):
        assert time.monotonic() < deadline, "the probe's PUB never got through again"
        pub.send(encode_bytes(marker))
        world.events.wait_for(lambda m: m.sender in ACTORS, after=world.events.last_seq)
    for actor in ACTORS:
        still_serves(world, actor)


# Generated garbage.


json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION + 1, 0, "1", True]),
        "type": st.sampled_from(["Ping", "StepEnvs", "DataBlock", "TrainEpisode", "Nope", ""]) | json_like,
        "body": st.dictionaries(
            st.sampled_from(["msg_id", "role", "episode", "steps", "split", "offset", "x"]), json_like
        )
        | json_like,
        "arrays": st.lists(
            st.lists(st.sampled_from(["actions", "features", "<i8", "<f4", "|O"]) | json_like, max_size=4),
            max_size=3,
        )
        | json_like,
    },
)


@st.composite
def malformed(draw: st.DrawFn) -> list[bytes]:
    """A frame list that does not decode: raw bytes, odd headers, or a valid message broken."""
    kind = draw(st.sampled_from(["raw", "header", "broken"]))
    if kind == "raw":
        return draw(st.lists(st.binary(max_size=64), min_size=1, max_size=4))
    extra = draw(st.lists(st.binary(max_size=48), max_size=3))
    if kind == "header":
        return [packed(draw(headers)), *extra]
    frames = encode_bytes(StepEnvs(role="train", actions=np.arange(N_ENVS, dtype=np.int64) % 3))
    head = frames[0]
    cut = draw(st.integers(0, len(head) - 1))
    match draw(st.sampled_from(["truncate", "flip", "frames"])):
        case "truncate":
            return [head[:cut], *frames[1:]]
        case "flip":
            flipped = bytes([head[cut] ^ draw(st.integers(1, 255))])
            return [head[:cut] + flipped + head[cut + 1 :], *frames[1:]]
        case _:
            return [head, *extra] if extra else [head]


def fails_to_decode(frames: list[bytes]) -> bool:
    try:
        decode(frames, max_bytes=SESSION_MAX_BYTES)
    except DecodeError:
        return True
    return False


def test_generated_garbage_on_every_socket_is_refused_and_everything_keeps_serving(world: World) -> None:
    probes = {name: world.probe(name) for name in (*ACTORS, "session")}
    pub = connected_publisher(world)
    rejected = world.hub.rejected

    def errors(actor: str) -> Callable[[Message], bool]:
        return lambda m: isinstance(m, ErrorRaised) and m.sender == actor and m.where == f"{actor} socket"

    reported = {actor: world.events.count(errors(actor)) for actor in ACTORS}
    sent: list[list[bytes]] = []

    @settings(
        max_examples=250,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(frames=malformed())
    def refused_everywhere(frames: list[bytes]) -> None:
        assume(fails_to_decode(frames))
        expected = decode_error(frames, SESSION_MAX_BYTES)
        for name, probe in probes.items():
            reply = probe.refused(frames)
            assert (reply.request, reply.error) == ("?", expected), name
        pub.send(frames)
        sent.append(frames)

    refused_everywhere()

    assert len(sent) >= 200
    for actor in ACTORS:
        world.events.wait_count(errors(actor), reported[actor] + len(sent))
    marker = ErrorRaised(where="probe", error="after the generated garbage", sender="probe")
    pub.send(encode_bytes(marker))
    world.events.wait_for(lambda m: m.msg_id == marker.msg_id, what="the marker event")
    assert world.hub.rejected - rejected == len(sent)
    assert not UNPICKLED.is_set()
    for name in (*ACTORS, "session"):
        still_serves(world, name)
