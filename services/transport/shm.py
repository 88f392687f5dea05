"""Share one role's env step buffers between the model and the env actor of one host, as numpy arrays.

Each buffer is a file in the session's ipc folder (0700, the file 0600), mapped by both processes: a
header, then the actions and every step result at fixed offsets. Files in the run folder's ipc folder
are removed by the launcher at the end and at the next start of the run, so a kill -9 of any process
leaves nothing behind once the session ends; nothing goes to /dev/shm, which would need an unlink by name.

One step (PufferLib's and Sample Factory's idea: the bytes never travel, only a step number does):

1. the model writes the actions, then their step number (`put_actions`);
2. the env actor checks the actions' step number (`take_actions`), steps, marks the results as being
   written, writes them, then their step number LAST (`write`);
3. the model checks the results' step number, copies them out and checks it again (`read`).

How the env actor learns of step 2, and the model of step 3, has two forms:

- the token: the model sends the signed ZeroMQ request `StepShared(step)` and the env actor answers
  `SharedStepped(step)`. Every lease starts with one, so only an authenticated peer starts stepping;
- the lease: after answering a token, the env actor keeps its handler and steps each new step as soon as
  its actions are written, while the model waits on the result step number; each side spins a little,
  then sleeps on a named pipe the other side rings (services.transport.shm_serve says when a lease ends).

Either side can stop waiting at any moment and fall back to the token: a token for a step the lease
already served is answered without stepping again, so no step is ever taken twice or lost. A writer
killed or replaced mid-write leaves a step number that is not the one asked for, so the model raises
`TornBuffer` instead of reading half a step; a model waiting on a killed env actor's `serving` word gives
up after `SPIN_DEADLINE_S` and sends the token, which fails like any request to a dead actor. On x86-64
stores become visible in program order, which the step-number-last rule relies on. The durations named
here are in services.transport.shm_waits, the buffer files' names in services.transport.shm_files.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import secrets
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from services.transport import shm_waits as waits
from services.transport.colocate import (
    ONE_CORE,
    SLICE_NS,
    Crowd,
    PlacementChoice,
    current_cpu,
    release_thread,
    request_slice,
    thread_placement,
)
from services.transport.doorbell import CpuLoad, Doorbell
from services.transport.shm_files import SUFFIX, remove_buffers
from services.transport.shm_layout import (
    ACTION,
    ENV_SLEEPING,
    FINISHED,
    HEADER,
    MODEL_SLEEPING,
    PLACEMENT,
    RESULT,
    SERVING,
    WRITING,
    StepLayout,
)
from services.transport.shm_serve import EnvSide, TornBuffer

logger = logging.getLogger(__name__)

_BELLS = (".env-bell", ".model-bell")
"""The named pipes next to a buffer file: the env actor sleeps on the first, the model on the second."""


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


class SharedSteps(EnvSide):
    """One role's step buffer mapped into this process: the env actor creates it, the model attaches."""

    def __init__(self, path: Path, layout: StepLayout, mapping: mmap.mmap, *, owner: bool) -> None:
        self.path = path
        self.name = path.name
        self.layout = layout
        self.owner = owner
        offsets, _ = layout.offsets()
        self._header = np.frombuffer(mapping, dtype=np.int64, count=len(HEADER))
        # The step words are read in spin loops: a memoryview reads a word in a fraction of numpy's time.
        self._words = memoryview(mapping)[: len(HEADER) * 8].cast("q")
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
        self._flags = views["flags"]
        self._done = self._flags[2]
        self._return = views["episode_return"]
        self._length = views["episode_length"]
        self._step = int(self._header[ACTION])
        self.leased = 0
        """Steps the env actor served within leases, without a token (the rest came by token)."""
        self.rollouts = self.colocated_rollouts = self.split_rollouts = 0
        """Rollouts begun on this buffer (the model's side), and how many of them ran on one core, and
        split (services.transport.colocate)."""
        env_bell, model_bell = (path.with_name(path.name + bell) for bell in _BELLS)
        if owner:
            Doorbell.make(env_bell)
            Doorbell.make(model_bell)
        self._env_bell = Doorbell(env_bell, self._words, ENV_SLEEPING)
        self._model_bell = Doorbell(model_bell, self._words, MODEL_SLEEPING)
        self._load = CpuLoad()
        self._pinned = False
        """Whether the model's rollout is placed now (its thread pinned, the placement word set)."""
        self._crowd: Crowd | None = None
        """Whether other processes keep the other cores busy (the model's side, made at its first rollout)."""
        self.choice = PlacementChoice()
        """Split or one core beside busy other cores, by their recent cost (the model's side)."""
        self._chosen: tuple[str, float, int] | None = None
        """The placement the choice made for this rollout, its start (perf_counter) and first step."""
        self._sliced = False
        # What a step in which no env finished hands back for the finished envs' values (read-only).
        n = layout.n_envs
        self._none_finished = (
            np.empty((0, *layout.obs_shape), dtype=np.float32),
            np.zeros(n, dtype=np.float64),
            np.zeros(n, dtype=np.int64),
        )
        for array in self._none_finished:
            array.flags.writeable = False

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
        described = layout.header()
        steps._header[: len(described)] = described
        steps._header[len(described) :] = 0
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
        expected = layout.header()
        found = tuple(int(v) for v in steps._header[: len(expected)])
        if found != expected:
            raise ValueError(
                f"shared buffer {name} refused: its header {found} does not describe the env spec "
                f"({layout.describe()})"
            )
        return steps

    # The model's side.

    def put_actions(self, actions: np.ndarray) -> int:
        """Write the next step's actions, then their step number (waking a sleeping lease); return it."""
        np.copyto(self.actions, np.asarray(actions).reshape(self.layout.action_shape), casting="same_kind")
        self._step += 1
        self._words[ACTION] = self._step
        self._env_bell.ring()
        return self._step

    def wait(self, step: int, deadline_s: float | None = None) -> bool:
        """Wait until a lease has served `step`; return False when the token must be sent instead.

        False when the env actor is not serving, stops serving without this step, or has not served it
        within deadline_s (SPIN_DEADLINE_S; a stopped or killed env actor: the token then fails too).
        """
        words = self._words
        if not words[SERVING]:
            return False

        def ready() -> bool:
            return words[RESULT] == step or not words[SERVING]

        spin = waits.COLOCATED_SPIN_S if self._pinned else waits.MODEL_SPIN_S[self._load.crowded()]
        deadline = time.perf_counter() + (waits.SPIN_DEADLINE_S if deadline_s is None else deadline_s)
        self._model_bell.wait(ready, spin, deadline, self._load)
        if words[RESULT] != step:
            return False
        self.leased += 1
        return True

    def begin_rollout(self) -> bool:
        """Pin the calling (training) thread to its core while other processes keep the other cores busy,
        and ask the env actor's lease to take the other cores (split) or to join it on its core: while
        every core is taken, or where that cost less a step lately (services.transport.colocate).

        Call it from the thread that steps, before a rollout's steps; end_rollout() undoes it. Returns
        whether the thread was pinned (not on a machine with a free core, nor where placement is off or
        impossible).
        """
        self.rollouts += 1
        try:
            return self._place()
        finally:
            # A wake-up call: a lease asleep through the update spins for the first step. Rung after the
            # crowd is read, or the lease it wakes counts as another's task (its word says it sleeps):
            # 17 to 24 % of rollouts beside one hog went on one core (BENCHMARKS.md section 14).
            self._env_bell.ring()

    def _place(self) -> bool:
        """Pin the calling thread and write the placement word as the crowd says; return whether pinned."""
        if not waits.COLOCATE:
            return False
        crowd = self._sample_crowd()
        placement = thread_placement()
        if not crowd.busy() or not placement.pin(current_cpu()):
            return False
        request_slice(SLICE_NS)
        self._pinned = True
        if crowd.full():  # split, the model's own core would be crowded: one core, not measured
            mode = ONE_CORE
        else:
            mode = self.choice.choose()
            self._chosen = (mode, time.perf_counter(), self._step)
        if mode == ONE_CORE:
            self._words[PLACEMENT] = placement.core + 1
            self.colocated_rollouts += 1
        else:
            self._words[PLACEMENT] = -(placement.core + 1)
            self.split_rollouts += 1
        return True

    def end_rollout(self) -> None:
        """Let the env actor's lease and the calling thread go back to every core they had."""
        if self._chosen is not None:
            mode, started, first = self._chosen
            self._chosen = None
            if self._step > first:
                self.choice.record(mode, (time.perf_counter() - started) / (self._step - first))
        if waits.COLOCATE:
            self._sample_crowd()
        self._words[PLACEMENT] = 0
        self._pinned = False
        release_thread()

    def _sample_crowd(self) -> Crowd:
        """Read the runnable tasks now, less this step's own: the caller, and the env actor's lease unless
        it sleeps."""
        if self._crowd is None:
            self._crowd = Crowd()
        words = self._words
        self._crowd.sample(1 + int(bool(words[SERVING]) and not words[ENV_SLEEPING]))
        return self._crowd

    def read(self, step: int) -> SharedResult:
        """Return the results of `step` as new arrays the caller keeps; raise TornBuffer unless the buffer
        holds that step.

        When no env finished, terminal_obs is empty and the episodes' values are shared read-only zeros.
        """
        self._check_results(step)
        finished = self._words[FINISHED]
        obs, reward, flags = self._obs.copy(), self._reward.copy(), self._flags.copy()
        if finished:
            done = flags[2]
            if int(np.count_nonzero(done)) != finished:
                raise TornBuffer(f"shared buffer {self.name}: step {step} names {finished} finished envs")
            terminal, returns, lengths = self._terminal[done], self._return.copy(), self._length.copy()
        else:
            terminal, returns, lengths = self._none_finished
        # Checked again after the copy: a writer that started over meanwhile makes the copy worthless.
        self._check_results(step)
        return SharedResult(obs, reward, flags[0], flags[1], terminal, returns, lengths)

    def _check_results(self, step: int) -> None:
        held = self._words[RESULT]
        if held != step:
            state = "half-written" if held == WRITING else f"step {held}"
            raise TornBuffer(f"shared buffer {self.name} holds {state}, not step {step}")

    def close(self) -> None:
        """Let the buffer go; the owner (the env actor) also removes its files (unmapped with the views)."""
        self._load.close()
        if self._crowd is not None:
            self._crowd.close()
        for bell in (self._env_bell, self._model_bell):
            bell.close()
            if self.owner:
                bell.path.unlink(missing_ok=True)
        if self.owner:
            self.path.unlink(missing_ok=True)
