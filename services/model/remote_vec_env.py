"""Expose the env actor's vectorized envs to SB3 as a VecEnv, stepping them over ZeroMQ.

Imported only in the model actor's process (it imports stable_baselines3).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from messages import (
    AttachShared,
    DescribeEnvs,
    EnvSpec,
    EnvsReset,
    EnvsStepped,
    Message,
    ResetEnvs,
    SharedAttached,
    SharedStepped,
    StepEnvs,
    StepShared,
)
from services.env.options import build_action_space, build_observation_space
from services.errors import TransportError
from services.transport.colocate import release_thread
from services.transport.shm import SharedResult, SharedSteps, StepLayout
from services.transport.shm_files import shared_folder


class Requester(Protocol):
    """Sends one request and returns its reply."""

    def request(self, msg: Message, timeout_s: float | None = None) -> Message:
        """Send and wait for the reply."""
        ...


class EnvBackend(Protocol):
    """Where the vectorized envs live: in the env actor (RemoteBackend) or in this process (LocalBackend)."""

    spec: EnvSpec

    def reset(self, seed: int) -> np.ndarray:
        """Reset every env (seed -1 keeps the current offsets generator)."""
        ...

    def step(self, actions: np.ndarray) -> Any:
        """Step every env; the result has the fields of EnvsStepped."""
        ...


class RemoteBackend:
    """The env actor's envs of one role, one request per batched reset or step.

    The client's endpoint chooses how a step's arrays travel: over ipc (the same host) they go through a
    shared buffer, and a step is either served within the env actor's lease (both sides spin on the
    buffer's step numbers) or started by the signed request that carries only the step number; over tcp
    they are array frames.
    """

    def __init__(self, client: Requester, role: str, *, shared: bool = True) -> None:
        """Describe the role's envs; `shared` False keeps the array frames even over ipc (benchmarks)."""
        self._client = client
        self._role = role
        spec = client.request(DescribeEnvs(role=role))
        if not isinstance(spec, EnvSpec):
            raise TypeError(f"env actor answered DescribeEnvs with {type(spec).__name__}")
        self.spec = spec
        self._folder = shared_folder(getattr(client, "endpoint", "")) if shared else None
        self._buffer: SharedSteps | None = None
        self.tokens = 0
        """Shared steps started by a signed request (the rest were served within the env actor's lease)."""

    @property
    def shared(self) -> bool:
        """Tell whether steps go through a shared buffer."""
        return self._folder is not None

    def reset(self, seed: int) -> np.ndarray:
        reply = self._client.request(ResetEnvs(role=self._role, seed=seed))
        if not isinstance(reply, EnvsReset):
            raise TypeError(f"env actor answered ResetEnvs with {type(reply).__name__}")
        return reply.obs

    def step(self, actions: np.ndarray) -> EnvsStepped | SharedResult:
        if self._folder is None:
            reply = self._client.request(StepEnvs(role=self._role, actions=actions))
            if not isinstance(reply, EnvsStepped):
                raise TypeError(f"env actor answered StepEnvs with {type(reply).__name__}")
            return reply
        buffer = self._buffer or self._attach(self._folder)
        step = buffer.put_actions(actions)
        try:
            if not buffer.wait(step):
                self.tokens += 1
                stepped = self._client.request(StepShared(role=self._role, name=buffer.name, step=step))
                if not isinstance(stepped, SharedStepped) or stepped.step != step:
                    raise TypeError(f"env actor answered StepShared {step} with {stepped!r}")
            return buffer.read(step)
        except TransportError:
            # The env actor may be gone or replaced (it forgets its buffers): attach again at the next step.
            self._buffer = None
            raise

    def begin_rollout(self) -> None:
        """Put the calling thread and the env actor's lease on one core for a rollout (shared path only)."""
        if self._folder is None:
            return
        try:
            buffer = self._buffer or self._attach(self._folder)
        except TransportError:
            self._buffer = None
            return  # the rollout's first step meets the same fault and reports it
        buffer.begin_rollout()

    def end_rollout(self) -> None:
        """Undo begin_rollout (also after the buffer was dropped for a fault)."""
        if self._buffer is not None:
            self._buffer.end_rollout()
        else:
            release_thread()

    def _attach(self, folder: Path) -> SharedSteps:
        """Ask the env actor for the role's shared buffer and map it; refuse one unfit for the spec."""
        spec = self.spec
        reply = self._client.request(
            AttachShared(
                role=self._role,
                n_envs=spec.n_envs,
                obs_shape=spec.obs_shape,
                action=spec.action,
                action_size=spec.action_size,
            )
        )
        if not isinstance(reply, SharedAttached) or reply.role != self._role:
            raise TypeError(f"env actor answered AttachShared with {reply!r}")
        layout = StepLayout.of(spec.n_envs, spec.obs_shape, spec.action, spec.action_size)
        self._buffer = SharedSteps.attach(folder, reply.name, layout, reply.size)
        return self._buffer


class LocalBackend:
    """A VecTradingEnv in this process (inference, benchmarks), behind the same interface."""

    def __init__(
        self, env: Any, *, action: str, n_actions: int, max_leverage: float, role: str = "eval"
    ) -> None:
        self._env = env
        self.spec = EnvSpec(
            role=role,
            n_envs=env.n_envs,
            obs_shape=tuple(env.observation_shape),
            action=action,
            n_actions=n_actions,
            max_leverage=max_leverage,
        )

    def reset(self, seed: int) -> np.ndarray:
        return np.asarray(self._env.reset(seed=None if seed < 0 else seed))

    def step(self, actions: np.ndarray) -> Any:
        return self._env.step(actions).finished_only()


def rollout_hook(target: Any, name: str) -> None:
    """Call target's begin_rollout or end_rollout (name) where it has one (RemoteBackend, RemoteVecEnv and
    SB3's wrappers around it, which pass attributes through)."""
    hook = getattr(target, name, None)
    if hook is not None:
        hook()


def spaces_from_spec(spec: EnvSpec) -> tuple[spaces.Box, spaces.Space[Any]]:
    """Rebuild the observation and action spaces described by the env actor (a portfolio: Box of weights)."""
    observation = build_observation_space(tuple(spec.obs_shape))
    if spec.action_size:
        return observation, spaces.Box(-1.0, 1.0, shape=(spec.action_size,), dtype=np.float32)
    return observation, build_action_space(spec.action)


class RemoteVecEnv(VecEnv):
    """A VecEnv over an EnvBackend; with RemoteBackend the envs live in the env actor's process."""

    def __init__(self, backend: EnvBackend) -> None:
        self._backend = backend
        self.spec = backend.spec
        observation, action = spaces_from_spec(self.spec)
        self._actions: np.ndarray | None = None
        self._episode_start = time.monotonic()
        super().__init__(self.spec.n_envs, observation, action)

    def reset(self) -> np.ndarray:
        """Reset every env; the first seed set by seed() makes the offsets reproducible."""
        seed = self._seeds[0]
        obs = self._backend.reset(-1 if seed is None else int(seed))
        self._reset_seeds()
        return np.array(obs, dtype=np.float32)

    def step_async(self, actions: np.ndarray) -> None:
        """Remember the actions; the request goes out in step_wait."""
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        """Step every env in one request and rebuild SB3's per-env info dicts."""
        assert self._actions is not None
        actions = np.asarray(self._actions)
        if actions.dtype.kind == "f":
            width = (self.spec.action_size,) if self.spec.action_size else ()
            actions = actions.astype(np.float32, copy=False).reshape(self.num_envs, *width)
        else:
            actions = actions.astype(np.int64, copy=False).reshape(self.num_envs)
        reply = self._backend.step(actions)
        dones = np.logical_or(reply.terminated, reply.truncated)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            now = time.monotonic() - self._episode_start
            # terminal_obs holds the finished envs' rows only, in env order (both backends).
            for row, i in enumerate(np.flatnonzero(dones)):
                infos[i] = {
                    "terminal_observation": np.array(reply.terminal_obs[row]),
                    "TimeLimit.truncated": bool(reply.truncated[i] and not reply.terminated[i]),
                    "episode": {
                        "r": float(reply.episode_return[i]),
                        "l": int(reply.episode_length[i]),
                        "t": round(now, 6),
                    },
                }
        if isinstance(reply, SharedResult):  # new arrays (SharedSteps.read): SB3 may keep them as they are
            return reply.obs, reply.reward, dones, infos
        return np.array(reply.obs, dtype=np.float32), np.array(reply.reward, dtype=np.float32), dones, infos

    def begin_rollout(self) -> None:
        """A rollout starts: the backend may put this thread and the env actor's steps on one core."""
        rollout_hook(self._backend, "begin_rollout")

    def end_rollout(self) -> None:
        """The rollout ended (the update follows): undo begin_rollout."""
        rollout_hook(self._backend, "end_rollout")

    def close(self) -> None:
        """Nothing to close: the envs belong to the env actor."""

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Answer the attributes SB3 asks for; the remote envs have no others."""
        n = len(list(self._get_indices(indices)))
        if attr_name == "render_mode":
            return [None] * n
        raise AttributeError(f"remote envs have no attribute {attr_name!r}")

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Refuse: remote envs are configured by the env actor."""
        raise AttributeError(f"cannot set {attr_name!r} on remote envs")

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        """Refuse: remote envs are driven only by reset and step."""
        raise AttributeError(f"remote envs have no method {method_name!r}")

    def env_is_wrapped(self, wrapper_class: type[Any], indices: VecEnvIndices = None) -> list[bool]:
        """Report the envs as unwrapped (episode statistics come from the env actor)."""
        return [False] * len(list(self._get_indices(indices)))

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Remote envs do not render."""
        return [None] * self.num_envs
