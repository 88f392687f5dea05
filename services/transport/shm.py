"""Share one role's env step buffers between the model and the env actor of one host, as numpy arrays.

Each buffer is a file in the session's ipc folder (0700, the file 0600), mapped by both processes: a
header, then the actions and every step result at fixed offsets. Files in the run folder's ipc folder
are removed by the launcher at the end and at the next start of the run, so a kill -9 of any process
leaves nothing behind once the session ends; nothing goes to /dev/shm, which would need an unlink by name.

One step, with the signed ZeroMQ request as the token (PufferLib's and Sample Factory's idea: the bytes
never travel, only a step number does):

1. the model writes the actions, then their step number (`put_actions`), and sends `StepShared(step)`;
2. the env actor checks the actions' step number (`take_actions`), steps, marks the results as being
   written, writes them, then their step number LAST (`write`), and answers `SharedStepped(step)`;
3. the model checks the results' step number, copies them out and checks it again (`read`).

A writer killed or replaced mid-write leaves a step number that is not the one asked for, so the model
raises `TornBuffer` instead of reading half a step.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from services.errors import TransportError

logger = logging.getLogger(__name__)

SUFFIX = ".shm"
"""How a buffer file's name ends; anything else in the folder is not a buffer."""
MAGIC = 0x524C_5441_5348_4D01
"""First header word: a file that does not start with it is no step buffer of this version."""
_ALIGN = 64
_HEADER = ("magic", "n_envs", "obs_size", "discrete", "action_step", "result_step", "finished")
_SLOT = {name: i for i, name in enumerate(_HEADER)}
_WRITING = -1
"""The results' step number while they are being written."""


class TornBuffer(TransportError):
    """A shared buffer does not hold the step asked for: its writer died or was replaced mid-step."""


class SharedResult(NamedTuple):
    """Hold one step's results as copies, in the wire form of EnvsStepped (finished rows only)."""

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    terminal_obs: np.ndarray
    """Last observations of the envs that finished on this step, in env order."""
    episode_return: np.ndarray
    episode_length: np.ndarray


@dataclass(frozen=True, slots=True)
class StepLayout:
    """Where each array of a role's step buffer lives: its offsets follow from the env spec alone."""

    n_envs: int
    obs_shape: tuple[int, ...]
    discrete: bool

    @classmethod
    def of(cls, n_envs: int, obs_shape: Sequence[int], action: str) -> StepLayout:
        """Return the layout of envs described as EnvSpec describes them."""
        return cls(int(n_envs), tuple(int(d) for d in obs_shape), action != "continuous")

    def arrays(self) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]]:
        """Return (name, dtype, shape) of every array after the header, in file order."""
        n, obs = self.n_envs, (self.n_envs, *self.obs_shape)
        return [
            ("actions", np.dtype(np.int64 if self.discrete else np.float32), (n,)),
            ("obs", np.dtype(np.float32), obs),
            ("terminal_obs", np.dtype(np.float32), obs),
            ("reward", np.dtype(np.float32), (n,)),
            ("terminated", np.dtype(np.bool_), (n,)),
            ("truncated", np.dtype(np.bool_), (n,)),
            ("episode_return", np.dtype(np.float64), (n,)),
            ("episode_length", np.dtype(np.int64), (n,)),
        ]

    def offsets(self) -> tuple[dict[str, int], int]:
        """Return each array's byte offset and the file's size."""
        at = _aligned(len(_HEADER) * 8)
        offsets = {}
        for name, dtype, shape in self.arrays():
            offsets[name] = at
            at = _aligned(at + dtype.itemsize * math.prod(shape))
        return offsets, at

    @property
    def size(self) -> int:
        """Return the file's size in bytes."""
        return self.offsets()[1]

    def describe(self) -> str:
        """Return the layout in words, for refusals."""
        kind = "discrete" if self.discrete else "continuous"
        return f"{self.n_envs} envs x obs {self.obs_shape} with {kind} actions"


def _aligned(at: int) -> int:
    return -(-at // _ALIGN) * _ALIGN


class SharedSteps:
    """One role's step buffer mapped into this process: the env actor creates it, the model attaches."""

    def __init__(self, path: Path, layout: StepLayout, mapping: mmap.mmap, *, owner: bool) -> None:
        self.path = path
        self.name = path.name
        self.layout = layout
        self.owner = owner
        offsets, _ = layout.offsets()
        self._header = np.frombuffer(mapping, dtype=np.int64, count=len(_HEADER))
        views = {
            name: np.frombuffer(mapping, dtype=dtype, count=math.prod(shape), offset=offsets[name]).reshape(
                shape
            )
            for name, dtype, shape in layout.arrays()
        }
        self.actions = views["actions"]
        self._obs = views["obs"]
        self._terminal = views["terminal_obs"]
        self._reward = views["reward"]
        self._terminated = views["terminated"]
        self._truncated = views["truncated"]
        self._return = views["episode_return"]
        self._length = views["episode_length"]
        self._done = np.zeros(layout.n_envs, dtype=bool)
        self._step = int(self._header[_SLOT["action_step"]])
        self._out = SharedResult(
            obs=np.empty_like(self._obs),
            reward=np.empty_like(self._reward),
            terminated=np.empty_like(self._terminated),
            truncated=np.empty_like(self._truncated),
            terminal_obs=np.empty_like(self._terminal),
            episode_return=np.empty_like(self._return),
            episode_length=np.empty_like(self._length),
        )

    @classmethod
    def create(cls, folder: Path, role: str, layout: StepLayout) -> SharedSteps:
        """Create a new buffer file for a role in folder (0600), removing the role's stale ones first."""
        remove_buffers(folder, role)
        path = folder / f"{role}-{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, layout.size)
            mapping = mmap.mmap(fd, layout.size)
        finally:
            os.close(fd)
        steps = cls(path, layout, mapping, owner=True)
        discrete = int(layout.discrete)
        header = (MAGIC, layout.n_envs, math.prod(layout.obs_shape), discrete, 0, 0, 0)
        steps._header[:] = header
        logger.info("shared step buffer %s: %s, %d bytes", path.name, layout.describe(), layout.size)
        return steps

    @classmethod
    def attach(cls, folder: Path, name: str, layout: StepLayout, size: int) -> SharedSteps:
        """Map an existing buffer file of folder; refuse one whose size or header does not fit layout."""
        if "/" in name or not name.endswith(SUFFIX) or name.startswith("."):
            raise ValueError(f"shared buffer name {name!r} refused: not a buffer file of the ipc folder")
        path = folder / name
        fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
        try:
            actual = os.fstat(fd).st_size
            if size != layout.size or actual != layout.size:
                raise ValueError(
                    f"shared buffer {name} refused: it holds {actual} bytes (announced {size}), but the env "
                    f"spec ({layout.describe()}) needs {layout.size}"
                )
            mapping = mmap.mmap(fd, layout.size)
        finally:
            os.close(fd)
        steps = cls(path, layout, mapping, owner=False)
        expected = (MAGIC, layout.n_envs, math.prod(layout.obs_shape), int(layout.discrete))
        found = tuple(int(v) for v in steps._header[:4])
        if found != expected:
            raise ValueError(
                f"shared buffer {name} refused: its header {found} does not describe the env spec "
                f"({layout.describe()})"
            )
        return steps

    # The model's side.

    def put_actions(self, actions: np.ndarray) -> int:
        """Write the next step's actions, then their step number; return the step number."""
        np.copyto(self.actions, np.asarray(actions).reshape(self.layout.n_envs), casting="same_kind")
        self._step += 1
        self._header[_SLOT["action_step"]] = self._step
        return self._step

    def read(self, step: int) -> SharedResult:
        """Return copies of the results of `step`; raise TornBuffer unless the buffer holds that step."""
        self._check_results(step)
        out = self._out
        np.copyto(out.obs, self._obs)
        np.copyto(out.reward, self._reward)
        np.copyto(out.terminated, self._terminated)
        np.copyto(out.truncated, self._truncated)
        np.copyto(out.episode_return, self._return)
        np.copyto(out.episode_length, self._length)
        finished = int(self._header[_SLOT["finished"]])
        if not 0 <= finished <= self.layout.n_envs:
            raise TornBuffer(f"shared buffer {self.name}: step {step} names {finished} finished envs")
        np.copyto(out.terminal_obs[:finished], self._terminal[:finished])
        # Checked again after the copy: a writer that started over meanwhile makes the copy worthless.
        self._check_results(step)
        return out._replace(terminal_obs=out.terminal_obs[:finished])

    def _check_results(self, step: int) -> None:
        held = int(self._header[_SLOT["result_step"]])
        if held != step:
            state = "half-written" if held == _WRITING else f"step {held}"
            raise TornBuffer(f"shared buffer {self.name} holds {state}, not step {step}")

    # The env actor's side.

    def take_actions(self, step: int) -> np.ndarray:
        """Return the actions of `step` (a view); raise TornBuffer if the buffer holds another step's."""
        held = int(self._header[_SLOT["action_step"]])
        if held != step:
            raise TornBuffer(f"shared buffer {self.name} holds the actions of step {held}, not {step}")
        return self.actions

    def write(self, step: int, result: Any) -> int:
        """Write a step's results (a StepResult with every row), then its step number; return finished."""
        header = self._header
        header[_SLOT["result_step"]] = _WRITING
        np.copyto(self._obs, result.obs)
        np.copyto(self._reward, result.reward, casting="same_kind")
        np.copyto(self._terminated, result.terminated)
        np.copyto(self._truncated, result.truncated)
        np.logical_or(result.terminated, result.truncated, out=self._done)
        finished = int(np.count_nonzero(self._done))
        if finished:
            np.compress(self._done, result.terminal_obs, axis=0, out=self._terminal[:finished])
            np.copyto(self._return, result.episode_return, casting="same_kind")
            np.copyto(self._length, result.episode_length, casting="same_kind")
        header[_SLOT["finished"]] = finished
        header[_SLOT["result_step"]] = step
        return finished

    def close(self) -> None:
        """Let the buffer go; the owner (the env actor) also removes its file (unmapped with the views)."""
        if self.owner:
            self.path.unlink(missing_ok=True)


class SharedFolder:
    """The env actor's step buffers, one per role, as files in the session's ipc folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._buffers: dict[str, SharedSteps] = {}

    def create(self, role: str, n_envs: int, obs_shape: tuple[int, ...], action: str) -> tuple[str, int]:
        """Replace the role's buffer with a new one (a model that attaches again gets fresh memory)."""
        old = self._buffers.pop(role, None)
        if old is not None:
            old.close()
        steps = SharedSteps.create(self.folder, role, StepLayout.of(n_envs, obs_shape, action))
        self._buffers[role] = steps
        return steps.name, steps.layout.size

    def get(self, role: str, name: str) -> SharedSteps:
        """Return the role's buffer of that name; raise if it is not the current one."""
        steps = self._buffers.get(role)
        if steps is None or steps.name != name:
            raise TornBuffer(f"no shared {role} buffer {name} here (attach again)")
        return steps

    def close(self) -> None:
        """Unmap and remove every buffer."""
        for steps in self._buffers.values():
            steps.close()
        self._buffers.clear()


def remove_buffers(folder: Path, role: str = "") -> int:
    """Remove the buffer files left in folder (of one role, or all); return how many were removed."""
    removed = 0
    for path in folder.glob(f"{role}-*{SUFFIX}" if role else f"*{SUFFIX}"):
        path.unlink(missing_ok=True)
        removed += 1
    return removed


def shared_folder(endpoint: str) -> Path | None:
    """Return the folder of an ipc endpoint's socket, where its buffers live; None for other endpoints."""
    if not endpoint.startswith("ipc://"):
        return None
    return Path(endpoint[len("ipc://") :]).parent
