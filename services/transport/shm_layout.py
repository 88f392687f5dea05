"""The layout of a shared step buffer file: its header words and where each array lives.

Both processes compute the same offsets from the env spec alone (`StepLayout.of`), so the env actor's
announced size and the header's first words are all a model needs to check before it maps a buffer
(services.transport.shm).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MAGIC = 0x524C_5441_5348_4D05
"""First header word: a file that does not start with it is no step buffer of this version."""
ALIGN = 64
HEADER = (
    "magic",
    "n_envs",
    "obs_size",
    "discrete",
    "action_size",
    "action_step",
    "result_step",
    "finished",
    "serving",
    "env_sleeping",
    "model_sleeping",
    "placement",
)
SLOT = {name: i for i, name in enumerate(HEADER)}
ACTION, RESULT, FINISHED, SERVING = (SLOT[k] for k in ("action_step", "result_step", "finished", "serving"))
ENV_SLEEPING, MODEL_SLEEPING, PLACEMENT = (SLOT[k] for k in ("env_sleeping", "model_sleeping", "placement"))
"""The header words both sides read and write, by index."""
WRITING = -1
"""The results' step number while they are being written."""


@dataclass(frozen=True, slots=True)
class StepLayout:
    """Where each array of a role's step buffer lives: its offsets follow from the env spec alone."""

    n_envs: int
    obs_shape: tuple[int, ...]
    discrete: bool
    action_size: int = 0
    """Values per env's action: 0 for one (a single asset), the weights' width for a portfolio."""

    @classmethod
    def of(cls, n_envs: int, obs_shape: Sequence[int], action: str, action_size: int = 0) -> StepLayout:
        """Return the layout of envs described as EnvSpec describes them."""
        discrete = action != "continuous" and not action_size
        return cls(int(n_envs), tuple(int(d) for d in obs_shape), discrete, int(action_size))

    @property
    def action_shape(self) -> tuple[int, ...]:
        """Return the shape of the actions array: one per env, or a row of weights per env."""
        return (self.n_envs, self.action_size) if self.action_size else (self.n_envs,)

    def arrays(self) -> list[tuple[str, np.dtype[Any], tuple[int, ...]]]:
        """Return (name, dtype, shape) of every array after the header, in file order.

        The results are laid out as the env's own step outputs (services.env.records.StepOutputs), so an
        env can step straight into the buffer: terminal_obs has a row per env (valid for the envs that
        finished), flags the terminated, truncated and done rows.
        """
        n, obs = self.n_envs, (self.n_envs, *self.obs_shape)
        return [
            ("actions", np.dtype(np.int64 if self.discrete else np.float32), self.action_shape),
            ("obs", np.dtype(np.float32), obs),
            ("terminal_obs", np.dtype(np.float32), obs),
            ("reward", np.dtype(np.float32), (n,)),
            ("flags", np.dtype(np.bool_), (3, n)),
            ("episode_return", np.dtype(np.float64), (n,)),
            ("episode_length", np.dtype(np.int64), (n,)),
        ]

    def offsets(self) -> tuple[dict[str, int], int]:
        """Return each array's byte offset and the file's size."""
        at = aligned(len(HEADER) * 8)
        offsets = {}
        for name, dtype, shape in self.arrays():
            offsets[name] = at
            at = aligned(at + dtype.itemsize * math.prod(shape))
        return offsets, at

    @property
    def size(self) -> int:
        """Return the file's size in bytes."""
        return self.offsets()[1]

    def describe(self) -> str:
        """Return the layout in words, for refusals."""
        kind = "discrete" if self.discrete else "continuous"
        width = f" of {self.action_size} weights" if self.action_size else ""
        return f"{self.n_envs} envs x obs {self.obs_shape} with {kind} actions{width}"

    def header(self) -> tuple[int, ...]:
        """Return the header words that describe this layout (after them come the step words)."""
        return (MAGIC, self.n_envs, math.prod(self.obs_shape), int(self.discrete), self.action_size)


def aligned(at: int) -> int:
    """Round a byte offset up to the next multiple of ALIGN."""
    return -(-at // ALIGN) * ALIGN
