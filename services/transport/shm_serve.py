"""The env actor's side of a shared step buffer (services.transport.shm): answering a step's token and
holding a lease.

The lease: after answering a token, the env actor keeps its handler, sets the `serving` word and waits on
the buffer's action step number, stepping each new step as soon as it is written, while the model waits
on the result step number. Each side spins a little, then sleeps on a named pipe the other side rings
(services.transport.doorbell), so no system call is on the path of a step between two busy processes and
a waiting process costs no CPU. The env actor's lease asks every `CHECK_S` whether other work waits (a
request on its socket or already polled, a stop) and ends as soon as some does, so that work waits no
longer than that; asleep, it sleeps on its command socket as well and asks when a request comes, else
every `ASLEEP_CHECK_S` (a stop). Otherwise it ends after `CHECKED_IDLE_S` without a new step (longer than
the learner's update phases, so a session's rollouts follow each other within one lease) or
`CHECKED_MAX_S` in all. A lease without that check (`LEASE_IDLE_S`, `LEASE_MAX_S`) ends sooner. Then
`serving` is cleared, the action step number is checked once more, and the next step goes by token. The
durations are in services.transport.shm_waits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from services.env.records import StepOutputs
from services.errors import TransportError
from services.transport import shm_waits as waits
from services.transport.colocate import SLICE_NS, Placement, request_slice, thread_placement
from services.transport.doorbell import CpuLoad, Doorbell
from services.transport.shm_layout import ACTION, FINISHED, PLACEMENT, RESULT, SERVING, WRITING

if TYPE_CHECKING:
    import zmq

logger = logging.getLogger(__name__)


class TornBuffer(TransportError):
    """A shared buffer does not hold the step asked for: its writer died or was replaced mid-step."""


class EnvSide:
    """The env actor's methods of SharedSteps, over the views SharedSteps maps."""

    name: str
    actions: np.ndarray
    _words: memoryview
    _obs: np.ndarray
    _terminal: np.ndarray
    _reward: np.ndarray
    _flags: np.ndarray
    _done: np.ndarray
    _return: np.ndarray
    _length: np.ndarray
    _env_bell: Doorbell
    _model_bell: Doorbell
    _load: CpuLoad
    _sliced: bool

    def take_actions(self, step: int) -> np.ndarray:
        """Return the actions of `step` (a view); raise TornBuffer if the buffer holds another step's."""
        held = self._words[ACTION]
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
        if self._words[RESULT] == step:
            return self._words[FINISHED]
        actions = self.take_actions(step)
        self._words[RESULT] = WRITING  # before the step: an env may step straight into the buffer
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
        last = words[RESULT]
        clock = time.perf_counter
        end = clock() + max_s
        check_at = clock() + waits.CHECK_S if checked else math.inf

        def moved() -> bool:
            return bool(words[ACTION] != last)

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
        words[SERVING] = 1
        try:
            while True:
                split = self._follow_model(placement)
                if split:  # on a core a busy process holds: only a sleeper is woken ahead of it
                    spin = 0.0
                else:
                    spin = waits.COLOCATED_SPIN_S if placement.core >= 0 else waits.ENV_SPIN_S[load.crowded()]
                if not next_step(spin):
                    break
                step = words[ACTION]
                if step != last + 1:
                    break  # not the next step (another model attached): the token path decides
                words[RESULT] = WRITING
                self.write(step, step_envs(self.actions))
                self._model_bell.ring()
                last, served = step, served + 1
        except Exception as exc:  # the token of the failed step reports it to the model
            logger.debug("lease of %s ended by a failed step: %s", self.name, exc)
            return served
        finally:
            words[SERVING] = 0
            self._model_bell.ring()
            placement.release()
        # A step written while serving was being cleared is served here, so the model need not wait.
        if words[ACTION] == last + 1:
            try:
                words[RESULT] = WRITING
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
        word = int(self._words[PLACEMENT])
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
        words[RESULT] = WRITING
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
        words[FINISHED] = finished
        words[RESULT] = step
        return finished
