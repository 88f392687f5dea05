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


def test_a_pointer_to_a_missing_checkpoint_falls_back_to_the_newest_that_verifies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"one"))  # type: ignore[arg-type]
    save_checkpoint(tmp_path, "episode-0002", {"episode": 2}, writer(b"two"))  # type: ignore[arg-type]
    (tmp_path / "latest.json").write_text(json.dumps({"checkpoint": "episode-0003"}))

    info = latest_checkpoint(tmp_path)

    assert info is not None and info.path == tmp_path / "episode-0002"
    assert "episode-0003" in caplog.text


def test_a_pointer_to_a_damaged_checkpoint_falls_back_to_the_previous_good_one(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"one"))  # type: ignore[arg-type]
    damaged = save_checkpoint(tmp_path, "episode-0002", {"episode": 2}, writer(b"two"))  # type: ignore[arg-type]
    (damaged / "model.bin").write_bytes(b"tw")

    info = latest_checkpoint(tmp_path)

    assert info is not None and info.meta == {"episode": 1}
    assert (info.path / "model.bin").read_bytes() == b"one"


def test_the_fallback_orders_by_episode_then_completeness_then_steps(tmp_path: Path) -> None:
    for name, meta in (
        ("b", {"episode": 3, "complete": True, "num_timesteps": 300}),
        ("a", {"episode": 4, "complete": False, "num_timesteps": 350}),
        ("c", {"episode": 3, "complete": False, "num_timesteps": 250}),
    ):
        save_checkpoint(tmp_path, name, meta, writer(b"x"))  # type: ignore[arg-type]
        (tmp_path / "latest.json").unlink()

    info = latest_checkpoint(tmp_path)

    assert info is not None and info.path.name == "a"


def test_a_checkpoint_without_a_pointer_is_found_by_its_manifest(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"one"))  # type: ignore[arg-type]
    (tmp_path / "latest.json").unlink()

    info = latest_checkpoint(tmp_path)

    assert info is not None and info.path == tmp_path / "episode-0001"


def test_a_folder_without_checkpoints_has_no_latest_one(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "absent") is None


def test_a_pointer_to_a_damaged_checkpoint_with_no_other_is_reported(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"one"))  # type: ignore[arg-type]
    (path / "manifest.json").unlink()

    with pytest.raises(CheckpointError, match=r"no checkpoint in .* verifies"):
        latest_checkpoint(tmp_path)


@pytest.mark.parametrize("name", ["../outside", "../../etc", "OUTSIDE", "sub/episode-0001", "..", ".", "", 7])
def test_a_pointer_name_that_leaves_the_checkpoints_folder_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: object
) -> None:
    root = tmp_path / "checkpoints"
    outside = save_checkpoint(tmp_path, "outside", {"episode": 9}, writer(b"evil"))  # type: ignore[arg-type]
    (root / "sub").mkdir(parents=True)
    save_checkpoint(root / "sub", "episode-0001", {"episode": 8}, writer(b"sub"))  # type: ignore[arg-type]
    save_checkpoint(root, "episode-0001", {"episode": 1}, writer(b"good"))  # type: ignore[arg-type]
    pointed = str(outside) if name == "OUTSIDE" else name
    (root / "latest.json").write_text(json.dumps({"checkpoint": pointed}))

    info = latest_checkpoint(root)

    assert info is not None and info.path == root / "episode-0001"
    assert "ignored" in caplog.text


def test_rewriting_the_checkpoint_the_pointer_names_writes_a_new_folder(tmp_path: Path) -> None:
    first = save_checkpoint(tmp_path, "episode-0002", {"episode": 2}, writer(b"old"))  # type: ignore[arg-type]

    second = save_checkpoint(tmp_path, "episode-0002", {"episode": 2}, writer(b"new"))  # type: ignore[arg-type]

    assert second != first and second.name.startswith("episode-0002")
    info = latest_checkpoint(tmp_path)
    assert info is not None and info.path == second
    assert (second / "model.bin").read_bytes() == b"new"
    assert verify_checkpoint(first).meta == {"episode": 2}


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "episode-0001", {"episode": 1}, writer(b"one"))  # type: ignore[arg-type]
    (tmp_path / ".tmp-episode-0002-deadbeef").mkdir()
    (tmp_path / ".tmp-episode-0002-deadbeef" / "model.bin").write_bytes(b"half")
    (tmp_path / ".latest.json.deadbeef.tmp").write_text("{")

    save_checkpoint(tmp_path, "episode-0002", {"episode": 2}, writer(b"two"))  # type: ignore[arg-type]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode-0001", "episode-0002", "latest.json"]
