"""Write and read checkpoints atomically: a folder per checkpoint, a manifest of hashes, a latest pointer.

A checkpoint is written into a temporary folder, every file is fsynced and hashed into manifest.json, the
folder is renamed into place, and only then does ``latest.json`` (itself replaced atomically) point at it.
A crash or a full disk in the middle leaves the previous checkpoint and pointer untouched.
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

    Args:
        write_files: writes the checkpoint's files into the folder it is given.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    final = root / name
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
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_json_atomic(root / LATEST, {"checkpoint": name})
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(root, keep=final)
    return final


def _prune(root: Path, keep: Path) -> None:
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p != keep),
        key=lambda p: p.stat().st_mtime,
    )
    for old in folders[: max(0, len(folders) - (KEEP - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def latest_checkpoint(root: Path) -> CheckpointInfo | None:
    """Return the checkpoint latest.json points at, verified against its manifest; None if there is none."""
    pointer = root / LATEST
    if not pointer.is_file():
        return None
    try:
        name = json.loads(pointer.read_text())["checkpoint"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{pointer}: not a checkpoint pointer ({exc})") from None
    return verify_checkpoint(root / str(name))


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
