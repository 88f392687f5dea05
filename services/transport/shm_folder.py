"""The env actor's shared step buffers, one per role, as files in the session's ipc folder."""

from __future__ import annotations

from pathlib import Path

from services.transport.shm import SharedSteps, TornBuffer
from services.transport.shm_layout import StepLayout


class SharedFolder:
    """The env actor's step buffers, one per role, as files in the session's ipc folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._buffers: dict[str, SharedSteps] = {}

    def create(
        self, role: str, n_envs: int, obs_shape: tuple[int, ...], action: str, action_size: int = 0
    ) -> tuple[str, int]:
        """Replace the role's buffer with a new one (a model that attaches again gets fresh memory)."""
        old = self._buffers.pop(role, None)
        if old is not None:
            old.close()
        layout = StepLayout.of(n_envs, obs_shape, action, action_size)
        steps = SharedSteps.create(self.folder, role, layout)
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
