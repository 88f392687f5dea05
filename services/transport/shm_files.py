"""The shared step buffers' files: how their names end, removing those left behind, and where an
endpoint's buffers live."""

from __future__ import annotations

from pathlib import Path

SUFFIX = ".shm"
"""How a buffer file's name ends; anything else in the folder is not a buffer."""


def remove_buffers(folder: Path, role: str = "") -> int:
    """Remove the buffer files left in folder (of one role, or all); return how many were removed.

    A buffer's bells (named pipes) go with it and are not counted.
    """
    removed = 0
    for path in folder.glob(f"{role}-*{SUFFIX}*" if role else f"*{SUFFIX}*"):
        path.unlink(missing_ok=True)
        removed += path.name.endswith(SUFFIX)
    return removed


def shared_folder(endpoint: str) -> Path | None:
    """Return the folder of an ipc endpoint's socket, where its buffers live; None for other endpoints."""
    if not endpoint.startswith("ipc://"):
        return None
    return Path(endpoint[len("ipc://") :]).parent
