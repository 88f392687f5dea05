"""The real env actor stepped by RemoteVecEnv over ipc (shared buffers) and tcp (array frames): both paths
step exactly like the same envs in process, for every action, reward and fill option."""

from __future__ import annotations

import itertools
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pykka
import pytest

from actors.environment import EnvActor
from actors.ports import Ports
from messages import AttachShared, DataBlock, DataComplete, DataInstalled, SharedAttached
from services.env.factory import VecEnvFactory
from services.env.options import EnvOptions, PortfolioOptions
from services.env.portfolio import VecPortfolioEnv
from services.env.vec_env import VecTradingEnv
from services.model.remote_vec_env import RemoteBackend, RemoteVecEnv
from services.runtime import PsutilProbe, SystemClock
from services.transport.shm import StepLayout
from services.transport.shm_files import SUFFIX
from services.transport.shm_folder import SharedFolder
from services.transport.sockets import Client, RemoteError, Server
from tests.integration.signing import KEY

MAX_BYTES = 64 << 20
WAIT_S = 30.0
BARS, N_ENVS, SEED, ASSETS = 160, 5, 11, 3

# Every action, reward and fill; leverage and borrow vary with them so that ruin and borrow are exercised.
EVERY_OPTION = [
    (action, reward, fill, leverage, borrow)
    for (action, leverage), reward, (fill, borrow) in itertools.product(
        [("discrete3", 3.0), ("discrete2", 1.0), ("continuous", 6.0)],
        ["log_return", "dsr", "drawdown_penalty"],
        [("next_open", 300.0), ("close", 0.0)],
    )
]


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def market(seed: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.03, BARS)))
    open_ = close * np.exp(rng.normal(0, 0.01, BARS))
    return rng.normal(size=(BARS, 2)).astype(np.float32), open_, close


class RecordingFactory(VecEnvFactory):
    """The env actor's factory, keeping the envs it made (by role) for the test to look at."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.made: dict[str, Any] = {}

    def create(self, role: str, bars_per_year: float) -> Any:
        self.made[role] = env = super().create(role, bars_per_year)
        return env


@dataclass
class Served:
    """An env actor with the train data installed, and the model's client to it."""

    ref: pykka.ActorRef[Any]
    client: Client
    folder: Path
    factory: RecordingFactory
    shared: SharedFolder | None

    def close(self) -> None:
        self.client.close()
        self.ref.stop(block=True, timeout=WAIT_S)


def serve(
    options: EnvOptions,
    endpoint: str,
    folder: Path,
    *,
    shared: bool,
    portfolio: PortfolioOptions | None = None,
) -> Served:
    """Start the real env actor on endpoint and install the train split the way the data actor does."""
    ports = Ports(server=lambda: Server(endpoint, max_bytes=MAX_BYTES, name="env", key=KEY))
    symbols = tuple(f"S{i}" for i in range(ASSETS)) if portfolio else ()
    factory = RecordingFactory(options, seed=SEED, portfolio=portfolio, symbols=symbols)
    buffers = SharedFolder(folder) if shared else None
    ref = EnvActor.start(
        factory=factory,
        shared=buffers,
        ports=ports,
        clock=SystemClock(),
        probe=PsutilProbe(),
    )
    client = Client(endpoint, max_bytes=MAX_BYTES, timeout_s=WAIT_S, sender="model", key=KEY)
    stamps = np.arange(BARS, dtype=np.int64) * 86_400_000_000_000
    if portfolio is None:
        features, open_, close = market()
        arrays = {"features": features, "open": open_, "close": close, "timestamp": stamps}
    else:
        features, open_, close, tradable = universe()
        arrays = {
            "features": features,
            "open": open_,
            "close": close,
            "timestamp": stamps,
            "tradable": tradable,
        }
    client.request(DataBlock(split="train", offset=0, total_rows=BARS, **arrays))
    done = client.request(DataComplete(split="train", total_rows=BARS, bars_per_year=252.0, episode=1))
    assert isinstance(done, DataInstalled) and done.rows == BARS, done
    return Served(ref, client, folder, factory, buffers)


def universe(seed: int = 6) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bars of ASSETS symbols; the last one lists 40 bars late (no bar, not tradable before)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (BARS, ASSETS)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.005, (BARS, ASSETS)))
    tradable = np.ones((BARS, ASSETS), dtype=bool)
    tradable[:40, -1] = False
    close[:40, -1] = open_[:40, -1] = np.nan
    features = rng.normal(size=(BARS, ASSETS, 2)).astype(np.float32)
    features[:40, -1] = 0.0
    return features, open_, close, tradable


@pytest.fixture(params=["ipc", "tcp"])
def transport(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    folder = tmp_path / "ipc"
    folder.mkdir(mode=0o700)
    endpoint = f"ipc://{folder}/env.sock" if request.param == "ipc" else f"tcp://127.0.0.1:{free_tcp_port()}"
    yield endpoint, folder


def step_both(remote: RemoteVecEnv, twin: Any, actions: np.ndarray) -> int:
    """Step the remote envs and their in-process twin alike, check they agree; return envs finished."""
    obs, rewards, dones, infos = remote.step(actions)
    expected = twin.step(actions)
    np.testing.assert_array_equal(obs, expected.obs)
    np.testing.assert_array_equal(rewards, expected.reward)
    np.testing.assert_array_equal(dones, expected.terminated | expected.truncated)
    for i in np.flatnonzero(dones):
        np.testing.assert_array_equal(infos[i]["terminal_observation"], expected.terminal_obs[i])
        assert infos[i]["TimeLimit.truncated"] == bool(expected.truncated[i])
        assert infos[i]["episode"]["r"] == pytest.approx(float(expected.episode_return[i]))
        assert infos[i]["episode"]["l"] == int(expected.episode_length[i])
    return int(dones.sum())


@pytest.mark.parametrize(("action", "reward", "fill", "leverage", "borrow"), EVERY_OPTION)
def test_the_env_actor_steps_like_the_same_envs_in_process_over_both_paths(
    transport: tuple[str, Path], action: str, reward: str, fill: str, leverage: float, borrow: float
) -> None:
    endpoint, folder = transport
    options = EnvOptions(
        n_envs=N_ENVS,
        window=4,
        episode_length=15,
        action=action,
        reward=reward,
        fill=fill,
        max_leverage=leverage,
        borrow_bps_per_year=borrow,
        ruin_equity=0.7,
    )
    served = serve(options, endpoint, folder, shared=True)
    twin = VecTradingEnv(options, seed=SEED)
    twin.update_data(*market())
    try:
        backend = RemoteBackend(served.client, "train")
        remote = RemoteVecEnv(backend)
        remote.seed(SEED)
        np.testing.assert_array_equal(remote.reset(), twin.reset(seed=SEED))
        rng = np.random.default_rng(5)
        finished = 0

        for _ in range(120):
            if action == "continuous":
                actions: np.ndarray = rng.uniform(-1.5, 1.5, size=N_ENVS).astype(np.float32)
            else:
                actions = rng.integers(0, 3 if action == "discrete3" else 2, size=N_ENVS)
            finished += step_both(remote, twin, actions)

        assert backend.shared == endpoint.startswith("ipc://")
        assert any(folder.glob(f"*{SUFFIX}")) == backend.shared
        if backend.shared:
            # The first step of a lease comes by token, the rest within it (how many of each depends on
            # the machine's load); both forms were compared above, and every step went through the buffer.
            buffer = backend._buffer
            assert buffer is not None and backend.tokens >= 1
            assert backend.tokens + buffer.leased == 120, "every step's arrays went through the shared buffer"
            # The env actor's envs step straight into the buffer; the model keeps copies of its own.
            assert served.shared is not None
            owned = served.shared.get("train", buffer.name)
            assert served.factory.made["train"]._result.obs is owned.outputs().obs
            obs, _, _, _ = remote.step(actions)
            assert not np.shares_memory(obs, buffer.outputs().obs) and obs.flags.writeable
        assert finished >= 2 * N_ENVS, "every env finished at least twice"
    finally:
        served.close()
    assert not any(folder.glob(f"*{SUFFIX}*")), "the env actor removes its buffers and bells when it stops"


@pytest.mark.parametrize("weights", ["long_only", "long_short"])
def test_portfolio_envs_step_through_both_paths_like_the_same_envs_in_process(
    transport: tuple[str, Path], weights: str
) -> None:
    endpoint, folder = transport
    options = EnvOptions(
        n_envs=N_ENVS, window=4, episode_length=15, max_leverage=1.5, borrow_bps_per_year=200.0
    )
    portfolio = PortfolioOptions(weights=weights)
    served = serve(options, endpoint, folder, shared=True, portfolio=portfolio)
    twin = VecPortfolioEnv(options, portfolio, seed=SEED)
    twin.update_data(*universe())
    try:
        backend = RemoteBackend(served.client, "train")
        remote = RemoteVecEnv(backend)
        remote.seed(SEED)
        np.testing.assert_array_equal(remote.reset(), twin.reset(seed=SEED))
        rng = np.random.default_rng(8)
        finished = 0

        for _ in range(60):
            actions = rng.uniform(-1.0, 1.0, size=(N_ENVS, twin.action_size)).astype(np.float32)
            finished += step_both(remote, twin, actions)

        assert finished >= N_ENVS, "every env finished at least once"
        assert backend.shared == endpoint.startswith("ipc://")
        if backend.shared:
            buffer = backend._buffer
            assert buffer is not None and buffer.layout.action_shape == (N_ENVS, twin.action_size)
            assert backend.tokens + buffer.leased == 60, "the rows of weights went through the shared buffer"
            assert served.shared is not None
            owned = served.shared.get("train", buffer.name)
            assert served.factory.made["train"]._result.obs is owned.outputs().obs, "stepped in the buffer"
    finally:
        served.close()


def test_a_restarted_env_actor_is_attached_again_after_one_failed_step(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/env.sock"
    options = EnvOptions(n_envs=N_ENVS, window=4, episode_length=15)
    served = serve(options, endpoint, tmp_path, shared=True)
    backend = RemoteBackend(served.client, "train")
    backend.reset(SEED)
    backend.step(np.zeros(N_ENVS, dtype=np.int64))
    served.ref.stop(block=True, timeout=WAIT_S)
    restarted = serve(options, endpoint, tmp_path, shared=True)  # the model's client reconnects to it
    try:
        with pytest.raises(RemoteError, match="attach again"):
            backend.step(np.zeros(N_ENVS, dtype=np.int64))

        result = backend.step(np.ones(N_ENVS, dtype=np.int64))

        assert result.obs.shape == (N_ENVS, 4 * 2 + 2)
        assert len(list(tmp_path.glob(f"*{SUFFIX}"))) == 1
    finally:
        restarted.close()
        served.client.close()


def test_a_buffer_sized_for_other_envs_is_refused_in_one_line(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/env.sock"
    served = serve(EnvOptions(n_envs=N_ENVS, window=4, episode_length=15), endpoint, tmp_path, shared=True)
    try:
        with pytest.raises(RemoteError, match=r"refused: asked for 8 envs x obs \(10,\) .* are 5 x \(10,\)"):
            served.client.request(AttachShared(role="train", n_envs=8, obs_shape=(10,), action="discrete3"))

        attached = served.client.request(
            AttachShared(role="train", n_envs=N_ENVS, obs_shape=(10,), action="discrete3")
        )
        assert isinstance(attached, SharedAttached)
        assert attached.size == StepLayout.of(N_ENVS, (10,), "discrete3").size
    finally:
        served.close()


def test_an_env_actor_without_shared_buffers_refuses_to_attach(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/env.sock"
    served = serve(EnvOptions(n_envs=N_ENVS, window=4, episode_length=15), endpoint, tmp_path, shared=False)
    try:
        with pytest.raises(RemoteError, match="shares no buffers"):
            served.client.request(
                AttachShared(role="train", n_envs=N_ENVS, obs_shape=(10,), action="discrete3")
            )
    finally:
        served.close()
