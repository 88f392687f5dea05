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
- the lease: after answering a token, the env actor keeps its handler, sets the `serving` word and
  waits on the buffer's action step number, stepping each new step as soon as it is written, while the
  model waits on the result step number. Each side spins a little, then sleeps on a named pipe the other
  side rings (services.transport.doorbell), so no system call is on the path of a step between two busy
  processes and a waiting process costs no CPU. The env actor's lease asks every `CHECK_S` whether other
  work waits (a request on its socket or already polled, a stop) and ends as soon as some does, so that
  work waits no longer than that; asleep, it sleeps on its command socket as well and asks when a
  request comes, else every `ASLEEP_CHECK_S` (a stop). Otherwise it ends after `CHECKED_IDLE_S`
  without a new step (longer than the learner's update phases, so a session's rollouts follow each
  other within one lease) or `CHECKED_MAX_S` in all. A lease without that check (`LEASE_IDLE_S`,
  `LEASE_MAX_S`) ends sooner. Then `serving` is cleared, the action step number is checked once more,
  and the next step goes by token.

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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from services.env.records import StepOutputs
from services.errors import TransportError
from services.transport import shm_waits as waits
from services.transport.colocate import (
    ONE_CORE,
    SLICE_NS,
    Crowd,
    Placement,
    PlacementChoice,
    current_cpu,
    release_thread,
    request_slice,
    thread_placement,
)
from services.transport.doorbell import CpuLoad, Doorbell
from services.transport.shm_files import SUFFIX, remove_buffers
from services.transport.shm_layout import HEADER as _HEADER
from services.transport.shm_layout import SLOT as _SLOT
from services.transport.shm_layout import StepLayout

if TYPE_CHECKING:
    import zmq

logger = logging.getLogger(__name__)

_ACTION, _RESULT, _FINISHED = (_SLOT[k] for k in ("action_step", "result_step", "finished"))
_SERVING = _SLOT["serving"]
_ENV_SLEEPING, _MODEL_SLEEPING, _PLACEMENT = (
    _SLOT[k] for k in ("env_sleeping", "model_sleeping", "placement")
)
_BELLS = (".env-bell", ".model-bell")
"""The named pipes next to a buffer file: the env actor sleeps on the first, the model on the second."""
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


class SharedSteps:
    """One role's step buffer mapped into this process: the env actor creates it, the model attaches."""

    def __init__(self, path: Path, layout: StepLayout, mapping: mmap.mmap, *, owner: bool) -> None:
        self.path = path
        self.name = path.name
        self.layout = layout
        self.owner = owner
        offsets, _ = layout.offsets()
        self._header = np.frombuffer(mapping, dtype=np.int64, count=len(_HEADER))
        # The step words are read in spin loops: a memoryview reads a word in a fraction of numpy's time.
        self._words = memoryview(mapping)[: len(_HEADER) * 8].cast("q")
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
        self._step = int(self._header[_ACTION])
        self.leased = 0
        """Steps the env actor served within leases, without a token (the rest came by token)."""
        self.rollouts = self.colocated_rollouts = self.split_rollouts = 0
        """Rollouts begun on this buffer (the model's side), and how many of them ran on one core, and
        split (services.transport.colocate)."""
        env_bell, model_bell = (path.with_name(path.name + bell) for bell in _BELLS)
        if owner:
            Doorbell.make(env_bell)
            Doorbell.make(model_bell)
        self._env_bell = Doorbell(env_bell, self._words, _ENV_SLEEPING)
        self._model_bell = Doorbell(model_bell, self._words, _MODEL_SLEEPING)
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
        self._words[_ACTION] = self._step
        self._env_bell.ring()
        return self._step

    def wait(self, step: int, deadline_s: float | None = None) -> bool:
        """Wait until a lease has served `step`; return False when the token must be sent instead.

        False when the env actor is not serving, stops serving without this step, or has not served it
        within deadline_s (SPIN_DEADLINE_S; a stopped or killed env actor: the token then fails too).
        """
        words = self._words
        if not words[_SERVING]:
            return False

        def ready() -> bool:
            return words[_RESULT] == step or not words[_SERVING]

        spin = waits.COLOCATED_SPIN_S if self._pinned else waits.MODEL_SPIN_S[self._load.crowded()]
        deadline = time.perf_counter() + (waits.SPIN_DEADLINE_S if deadline_s is None else deadline_s)
        self._model_bell.wait(ready, spin, deadline, self._load)
        if words[_RESULT] != step:
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
            self._words[_PLACEMENT] = placement.core + 1
            self.colocated_rollouts += 1
        else:
            self._words[_PLACEMENT] = -(placement.core + 1)
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
        self._words[_PLACEMENT] = 0
        self._pinned = False
        release_thread()

    def _sample_crowd(self) -> Crowd:
        """Read the runnable tasks now, less this step's own: the caller, and the env actor's lease unless
        it sleeps."""
        if self._crowd is None:
            self._crowd = Crowd()
        words = self._words
        self._crowd.sample(1 + int(bool(words[_SERVING]) and not words[_ENV_SLEEPING]))
        return self._crowd

    def read(self, step: int) -> SharedResult:
        """Return the results of `step` as new arrays the caller keeps; raise TornBuffer unless the buffer
        holds that step.

        When no env finished, terminal_obs is empty and the episodes' values are shared read-only zeros.
        """
        self._check_results(step)
        finished = self._words[_FINISHED]
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
        held = self._words[_RESULT]
        if held != step:
            state = "half-written" if held == _WRITING else f"step {held}"
            raise TornBuffer(f"shared buffer {self.name} holds {state}, not step {step}")

    # The env actor's side.

    def take_actions(self, step: int) -> np.ndarray:
        """Return the actions of `step` (a view); raise TornBuffer if the buffer holds another step's."""
        held = self._words[_ACTION]
        if held != step:
            raise TornBuffer(f"shared buffer {self.name} holds the actions of step {held}, not {step}")
        return self.actions

    def outputs(self) -> StepOutputs:
        """Return the result arrays, for an env to step into (`share_outputs`: then nothing is copied)."""
        return StepOutputs(
            obs=self._obs,
            terminal_obs=self._terminal,
            reward=self._reward,
            flags=self._flags,
            episode_return=self._return,
            episode_length=self._length,
        )

    def serve_token(self, step: int, step_envs: Callable[[np.ndarray], Any]) -> int:
        """Answer the token of `step`: step the envs unless a lease already did; return finished."""
        if self._words[_RESULT] == step:
            return self._words[_FINISHED]
        actions = self.take_actions(step)
        self._words[_RESULT] = _WRITING  # before the step: an env may step straight into the buffer
        return self.write(step, step_envs(actions))

    def serve(
        self,
        step_envs: Callable[[np.ndarray], Any],
        *,
        interrupted: Callable[[], bool] | None = None,
        woken_by: zmq.Socket[bytes] | None = None,
        idle_s: float | None = None,
        max_s: float | None = None,
    ) -> int:
        """Hold a lease: step each next step the model writes until idle_s passes without one, max_s in
        all, or interrupted() says other work waits (asked every CHECK_S); return the steps served. Call it
        right after answering a token.

        Asleep, the lease also sleeps on woken_by (its command socket), asks when a message comes
        there and else only every ASLEEP_CHECK_S (a stop).

        idle_s and max_s default to CHECKED_IDLE_S and CHECKED_MAX_S with an interruption check, to
        LEASE_IDLE_S and LEASE_MAX_S without one. A step that fails (bad actions) ends the lease
        unserved: the model's token for it then steps it again and gets the error as a reply, as every
        request does.
        """
        checked = interrupted is not None
        if idle_s is None:
            idle_s = waits.CHECKED_IDLE_S if checked else waits.LEASE_IDLE_S
        if max_s is None:
            max_s = waits.CHECKED_MAX_S if checked else waits.LEASE_MAX_S
        words = self._words
        served = 0
        last = words[_RESULT]
        clock = time.perf_counter
        end = clock() + max_s
        check_at = clock() + waits.CHECK_S if checked else math.inf

        def moved() -> bool:
            return bool(words[_ACTION] != last)

        def next_step(spin: float) -> bool:
            """Wait for the model's next step; False after idle_s, at max_s or when other work waits.

            It spins `spin` in all, and `spin` again after each wake-up call of the model."""
            nonlocal check_at
            idle_end = min(clock() + idle_s, end)
            wake_spin = spin
            bell = self._env_bell
            while True:
                now = clock()
                if now >= check_at and interrupted is not None:
                    if interrupted():
                        return False
                    check_at = now + waits.CHECK_S
                if now >= idle_end:
                    return False
                deadline = min(idle_end, check_at if woken_by is None else now + waits.ASLEEP_CHECK_S)
                if bell.wait(moved, spin, deadline, load, wake_spin, woken_by):
                    return True
                if woken_by is not None:  # a request came, or the deadline: ask at once
                    check_at = clock()
                if bell.called_at >= now:  # the spin after a wake-up call goes on past the check
                    spin = max(0.0, wake_spin - (clock() - bell.called_at))
                else:
                    spin = max(0.0, spin - (clock() - now))

        load, placement = self._load, thread_placement()
        if not self._sliced:  # asked once: the serving thread keeps its short slice
            request_slice(SLICE_NS)
            self._sliced = True
        words[_SERVING] = 1
        try:
            while True:
                split = self._follow_model(placement)
                if split:  # on a core a busy process holds: only a sleeper is woken ahead of it
                    spin = 0.0
                else:
                    spin = waits.COLOCATED_SPIN_S if placement.core >= 0 else waits.ENV_SPIN_S[load.crowded()]
                if not next_step(spin):
                    break
                step = words[_ACTION]
                if step != last + 1:
                    break  # not the next step (another model attached): the token path decides
                words[_RESULT] = _WRITING
                self.write(step, step_envs(self.actions))
                self._model_bell.ring()
                last, served = step, served + 1
        except Exception as exc:  # the token of the failed step reports it to the model
            logger.debug("lease of %s ended by a failed step: %s", self.name, exc)
            return served
        finally:
            words[_SERVING] = 0
            self._model_bell.ring()
            placement.release()
        # A step written while serving was being cleared is served here, so the model need not wait.
        if words[_ACTION] == last + 1:
            try:
                words[_RESULT] = _WRITING
                self.write(last + 1, step_envs(self.actions))
                served += 1
            except Exception as exc:
                logger.debug("last step of the lease of %s failed: %s", self.name, exc)
            self._model_bell.ring()
        return served

    def _follow_model(self, placement: Placement) -> bool:
        """Place the serving thread as the model's placement word says; return whether the rollout is
        split (the lease then sleeps between steps, pinned off the model's core where it can be).

        The word is the model's core plus one (join it there), minus that (keep off it), or 0 (unpinned).
        """
        word = int(self._words[_PLACEMENT])
        if word > 0:
            placed = placement.pin(word - 1)
        elif word < 0:
            placed = placement.avoid(-word - 1)
        else:
            placed = False
        if not placed and placement.pinned:
            placement.release()
        return word < 0

    def write(self, step: int, result: Any) -> int:
        """Write a step's results (a StepResult with every row), then its step number; return finished.

        An env that steps into this buffer (`outputs`) has written them already: then only the step
        number and the count of finished envs are written.
        """
        words = self._words
        words[_RESULT] = _WRITING
        if result.obs is not self._obs:
            terminated, truncated, done = self._flags
            np.copyto(self._obs, result.obs)
            np.copyto(self._reward, result.reward, casting="same_kind")
            np.copyto(terminated, result.terminated)
            np.copyto(truncated, result.truncated)
            np.logical_or(terminated, truncated, out=done)
            if done.any():
                np.copyto(self._terminal, result.terminal_obs)
                np.copyto(self._return, result.episode_return, casting="same_kind")
                np.copyto(self._length, result.episode_length, casting="same_kind")
        finished = int(np.count_nonzero(self._done))
        words[_FINISHED] = finished
        words[_RESULT] = step
        return finished

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
