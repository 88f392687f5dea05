"""Write and read checkpoints atomically: a folder per checkpoint, a manifest of hashes, a latest pointer.

A checkpoint is written into a temporary folder, every file is fsynced and hashed into manifest.json, the
folder is renamed into place under a name no other folder holds, and only then does ``latest.json`` (itself
replaced atomically) point at it; old checkpoints are renamed aside before they are removed. A process
killed at any step leaves the previous checkpoint and pointer untouched; the next write removes what the
killed one left. A pointer that names a missing or damaged checkpoint, or a name outside the folder, is
ignored with a warning: the newest checkpoint that verifies (by its manifest's episode and steps) is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LATEST = "latest.json"
KEEP = 2
"""Checkpoints kept besides the one being written."""


class CheckpointError(RuntimeError):
    """A checkpoint that could not be written or is not a valid checkpoint of this project."""


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """Where a checkpoint is and what its manifest says."""

    path: Path
    meta: dict[str, Any]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to a temporary file, fsync it and rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(root: Path, name: str, meta: dict[str, Any], write_files: Callable[[Path], None]) -> Path:
    """Write one checkpoint folder `root/name` atomically and point latest.json at it.

    If `root/name` exists (an episode written again), the new checkpoint gets a name of its own
    (`name-<random>`), so the folder latest.json names is never removed before the pointer moves on.

    Args:
        write_files: writes the checkpoint's files into the folder it is given.
    """
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    final = root / name
    if final.exists():
        final = root / f"{name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        write_files(tmp)
        files = {}
        for path in sorted(tmp.iterdir()):
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
            files[path.name] = _sha256(path)
        write_json_atomic(tmp / MANIFEST, {"meta": meta, "files": files})
        _fsync_dir(tmp)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_json_atomic(root / LATEST, {"checkpoint": final.name})
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep=final)
    return final


def _remove_leftovers(root: Path) -> None:
    """Remove the temporary folders and pointer files of a writer that was killed."""
    for stale in root.iterdir():
        if stale.name.startswith(".tmp-"):
            shutil.rmtree(stale, ignore_errors=True)
        elif stale.name.startswith(f".{LATEST}.") and stale.name.endswith(".tmp"):
            stale.unlink(missing_ok=True)


def _prune(root: Path, keep: Path) -> None:
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep),
        key=lambda p: p.stat().st_mtime,
    )
    for old in folders[: max(0, len(folders) - (KEEP - 1))]:
        # Hidden first, so a kill in the middle of removing leaves a leftover, not a damaged checkpoint.
        aside = root / f".tmp-old-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(old, aside)
        except OSError:
            continue
        shutil.rmtree(aside, ignore_errors=True)


def latest_checkpoint(root: Path) -> CheckpointInfo | None:
    """Return the checkpoint latest.json points at, verified; else the newest that verifies; None if none.

    A pointer that is unreadable, names a folder outside `root`, or names a checkpoint that is missing or
    fails verification is ignored with a warning.
    """
    pointer = root / LATEST
    if not pointer.is_file():
        return _newest_valid(root, why=f"{pointer} is missing", required=False)
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return _newest_valid(root, why=f"{pointer}: not a checkpoint pointer ({exc})")
    if not _plain_name(name):
        return _newest_valid(root, why=f"{pointer}: checkpoint name {name!r} is not a folder of {root}")
    try:
        return verify_checkpoint(root / name)
    except CheckpointError as exc:
        return _newest_valid(root, why=str(exc))


def _plain_name(name: object) -> bool:
    """Whether a name from latest.json is one visible folder directly inside the checkpoints folder."""
    return (
        isinstance(name, str)
        and bool(name)
        and Path(name).name == name
        and name[0] != "."
        and "\0" not in name
    )


def _newest_valid(root: Path, *, why: str, required: bool = True) -> CheckpointInfo | None:
    """Return the newest checkpoint in `root` that verifies, logging why the pointer was not used.

    Args:
        required: raise CheckpointError if none verifies (a pointer was there) instead of returning None.
    """
    found: list[CheckpointInfo] = []
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                try:
                    found.append(verify_checkpoint(folder))
                except CheckpointError:
                    continue
    if not found:
        if required:
            raise CheckpointError(f"{why}; no checkpoint in {root} verifies")
        return None
    best = max(found, key=_order)
    logger.warning("%s: pointer ignored, using checkpoint %s", why, best.path.name)
    return best


def _order(info: CheckpointInfo) -> tuple[int, bool, int, float]:
    """Sort key of checkpoints by how far they got: episode, complete, steps, then the folder's age."""

    def number(key: str) -> int:
        value = info.meta.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else -1

    complete = info.meta.get("complete") is True
    return number("episode"), complete, number("num_timesteps"), info.path.stat().st_mtime


def verify_checkpoint(path: Path) -> CheckpointInfo:
    """Check that every file of a checkpoint matches its manifest; return the manifest's meta."""
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files: dict[str, str] = manifest["files"]
        meta: dict[str, Any] = manifest["meta"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: missing or unreadable manifest ({exc})") from None
    for name, digest in files.items():
        file = path / name
        if "/" in name or not file.is_file() or _sha256(file) != digest:
            raise CheckpointError(f"{path}: file {name} is missing or does not match the manifest")
    return CheckpointInfo(path, meta)
