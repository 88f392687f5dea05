"""The setups the training benchmark compares: the env actor in a child process, a bare env server,
a timed backend, SB3's DummyVecEnv and a VecEnv that does no work."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from common import BENCH_KEY, ROOT, serve_until_stopped, train_data

from messages import DataBlock, DataComplete, DataInstalled, Ping, Stop
from services.config import Config, config_to_dict, load_config
from services.data.dataset import SplitArrays
from services.env.gym_env import TradingEnv
from services.model.remote_vec_env import rollout_hook
from services.transport.auth import write_session_key
from services.transport.endpoints import Endpoints
from services.transport.sockets import Client


class EnvActorProcess:
    """Run the real env actor in a child process (`run.py _actor env`) and feed it the train split."""

    def __init__(self, config: Config, folder: Path) -> None:
        self.folder = folder
        (folder / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        ipc = folder / "ipc"
        ipc.mkdir()
        self.endpoints = Endpoints.local(ipc, events_out="", session="")
        self.endpoints.write(folder / "endpoints.json")
        write_session_key(folder, BENCH_KEY)
        self._max_bytes = config.session.max_message_bytes
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "_actor", "env", "--run-dir", str(folder)], cwd=ROOT
        )
        self._control = self.client("bench")
        self._control.request(Ping(), timeout_s=120.0)

    def client(self, sender: str) -> Client:
        """Return a new DEALER to the env actor's ROUTER."""
        return Client(
            self.endpoints.env, max_bytes=self._max_bytes, timeout_s=60.0, sender=sender, key=BENCH_KEY
        )

    def install(self, split: str, arrays: SplitArrays, bars_per_year: float, block_rows: int) -> None:
        """Stream one split to the env actor the way the data actor does, and wait until installed."""
        for block in DataBlock.cut(split, arrays, block_rows):
            self._control.request(block)
        done = self._control.request(
            DataComplete(split=split, total_rows=len(arrays), bars_per_year=bars_per_year, episode=1)
        )
        if not isinstance(done, DataInstalled) or done.rows != len(arrays):
            raise RuntimeError(f"the env actor did not install the {split} split: {done!r}")

    def stop(self) -> None:
        """Ask the actor to stop and wait for its process to exit."""
        try:
            self._control.request(Stop(reason="benchmark finished"), timeout_s=10.0)
        finally:
            self._control.close()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class TimedBackend:
    """Wrap an env backend and record the duration of every step request (for the breakdown)."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.spec = backend.spec
        self.durations: list[float] = []

    def reset(self, seed: int) -> np.ndarray:
        """Reset through the wrapped backend."""
        return np.asarray(self._backend.reset(seed))

    def step(self, actions: np.ndarray) -> Any:
        """Step through the wrapped backend, timing the call."""
        started = time.perf_counter()
        result = self._backend.step(actions)
        self.durations.append(time.perf_counter() - started)
        return result

    def begin_rollout(self) -> None:
        """Pass the rollout's start on (the shared path places its steps on a busy machine)."""
        rollout_hook(self._backend, "begin_rollout")

    def end_rollout(self) -> None:
        """Pass the rollout's end on."""
        rollout_hook(self._backend, "end_rollout")


def serve_plain(endpoint: str, overrides: list[str], max_bytes: int) -> None:
    """Serve the train envs from a bare transport Server loop in this (child) process, without an actor."""
    from messages import DescribeEnvs, EnvSpec, EnvsReset, EnvsStepped, Message, ResetEnvs, StepEnvs
    from services.env.factory import VecEnvFactory
    from services.transport.sockets import Server

    config = load_config(None, overrides)
    summary, train = train_data(config)
    factory = VecEnvFactory(config.env, seed=config.training.seed)
    env = factory.create("train", summary.bars_per_year)
    env.update_data(train.features, train.open, train.close)

    def answer(msg: Message) -> Message:
        if isinstance(msg, StepEnvs):
            return EnvsStepped.from_value(env.step(msg.actions).finished_only(), correlation_id=msg.msg_id)
        if isinstance(msg, ResetEnvs):
            return EnvsReset(correlation_id=msg.msg_id, obs=env.reset(None if msg.seed < 0 else msg.seed))
        if isinstance(msg, DescribeEnvs):
            return EnvSpec(
                correlation_id=msg.msg_id,
                role=msg.role,
                n_envs=env.n_envs,
                obs_shape=tuple(env.observation_shape),
                action=factory.action,
                n_actions=factory.n_actions,
                max_leverage=factory.max_leverage,
            )
        raise RuntimeError(f"plain env server got {msg!r}")

    serve_until_stopped(Server(endpoint, max_bytes=max_bytes, name="plain-env", key=BENCH_KEY), answer)


def null_vec_env(n_envs: int, obs_size: int, n_actions: int) -> Any:
    """Return a VecEnv that does no work: zero observations and rewards, never done."""
    from gymnasium import spaces
    from stable_baselines3.common.vec_env.base_vec_env import VecEnv

    class NullVecEnv(VecEnv):
        """Answer every reset and step with preallocated zeros."""

        def __init__(self) -> None:
            observation = spaces.Box(-np.inf, np.inf, shape=(obs_size,), dtype=np.float32)
            super().__init__(n_envs, observation, spaces.Discrete(n_actions))
            self._obs = np.zeros((n_envs, obs_size), dtype=np.float32)
            self._rewards = np.zeros(n_envs, dtype=np.float32)
            self._dones = np.zeros(n_envs, dtype=bool)
            self._infos: list[dict[str, Any]] = [{} for _ in range(n_envs)]

        def reset(self) -> np.ndarray:
            return self._obs

        def step_async(self, actions: np.ndarray) -> None:
            pass

        def step_wait(self) -> Any:
            return self._obs, self._rewards, self._dones, self._infos

        def close(self) -> None:
            pass

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            if attr_name == "render_mode":
                return [None] * n_envs
            raise AttributeError(attr_name)

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            raise AttributeError(attr_name)

        def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
            raise AttributeError(method_name)

        def env_is_wrapped(self, wrapper_class: type[Any], indices: Any = None) -> list[bool]:
            return [False] * n_envs

    return NullVecEnv()


def dummy_vec_env(config: Config, train: SplitArrays, bars_per_year: float) -> Any:
    """Return SB3's DummyVecEnv over n_envs single TradingEnvs, seeded like the env actor's envs."""
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    options = config.env
    seed = config.training.seed

    def maker(i: int) -> Callable[[], Any]:
        return lambda: Monitor(
            TradingEnv(
                train.features, train.open, train.close, options, seed=seed + i, bars_per_year=bars_per_year
            )
        )

    return DummyVecEnv([maker(i) for i in range(config.env.n_envs)])
