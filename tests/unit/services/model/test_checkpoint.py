"""Checkpoints are written atomically: a failure or a crash mid-write never harms the last good one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.model.checkpoint import CheckpointError, latest_checkpoint, save_checkpoint, verify_checkpoint


def writer(payload: bytes) -> object:
    def write(folder: Path) -> None:
        (folder / "model.bin").write_bytes(payload)
        (folder / "state.json").write_text("{}")

    return write


def test_a_checkpoint_is_verified_and_pointed_at(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"abc"))  # type: ignore[arg-type]

    info = latest_checkpoint(tmp_path)

    assert info is not None and info.path == path
    assert info.meta == {"episode": 1}
    assert (path / "model.bin").read_bytes() == b"abc"


def test_a_failing_write_keeps_the_previous_checkpoint_and_pointer(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"good"))  # type: ignore[arg-type]

    def full_disk(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"par")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(tmp_path, "episode-0002", {"episode": 2}, full_disk)

    info = latest_checkpoint(tmp_path)
    assert info is not None and info.meta == {"episode": 1}
    assert (info.path / "model.bin").read_bytes() == b"good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode-0001", "latest.json"]


def test_a_crash_in_the_middle_of_writing_leaves_no_partial_checkpoint(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"good"))  # type: ignore[arg-type]

    def crash(folder: Path) -> None:
        (folder / "model.bin").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, "episode-0002", {"episode": 2}, crash)

    assert latest_checkpoint(tmp_path).meta == {"episode": 1}  # type: ignore[union-attr]
    assert not (tmp_path / "episode-0002").exists()


def test_a_tampered_file_is_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"good"))  # type: ignore[arg-type]
    (path / "model.bin").write_bytes(b"evil")

    with pytest.raises(CheckpointError, match="does not match the manifest"):
        verify_checkpoint(path)


def test_a_pointer_that_is_not_json_is_reported(tmp_path: Path) -> None:
    (tmp_path / "latest.json").write_text("{nope")

    with pytest.raises(CheckpointError, match="not a checkpoint pointer"):
        latest_checkpoint(tmp_path)


def test_only_the_two_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    for k in range(1, 5):
        save_checkpoint(tmp_path, f"episode-{k:04d}", {"episode": k}, writer(b"x"))  # type: ignore[arg-type]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode-0003", "episode-0004", "latest.json"]
    assert json.loads((tmp_path / "latest.json").read_text()) == {"checkpoint": "episode-0004"}
