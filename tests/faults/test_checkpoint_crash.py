"""A writer killed by SIGKILL at any step of a checkpoint write leaves a valid latest checkpoint behind.

Each case writes two good checkpoints, then runs one more write in a child process that kills itself with
SIGKILL at a named step (the child wraps the functions the writer calls; the writer has no test hooks),
and checks what the next start and the next write find.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.model.checkpoint import latest_checkpoint, save_checkpoint, verify_checkpoint
from tests.sessions import ROOT

pytestmark = pytest.mark.faults

CHILD = r"""
import os, shutil, signal, sys
from pathlib import Path

from services.model import checkpoint

root, step, name = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
real_replace, real_json, real_rmtree = os.replace, checkpoint.write_json_atomic, shutil.rmtree


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def replace(src, dst):
    src, dst = Path(src), Path(dst)
    if step == "manifest-rename" and dst.name == checkpoint.MANIFEST:
        die()
    if step == "folder-rename" and src.name.startswith(".tmp-") and not dst.name.startswith("."):
        die()
    if step == "pointer-rename" and dst.name == checkpoint.LATEST:
        die()
    return real_replace(src, dst)


def write_json_atomic(path, data):
    if (step, path.name) in (("manifest", checkpoint.MANIFEST), ("pointer", checkpoint.LATEST)):
        die()
    return real_json(path, data)


def rmtree(path, *args, **kwargs):
    if step == "remove":
        next(f for f in Path(path).rglob("*") if f.is_file()).unlink()
        die()
    return real_rmtree(path, *args, **kwargs)


def write_files(folder):
    (folder / "model.bin").write_bytes(b"new " * 1000)
    if step == "files":
        die()
    (folder / "state.json").write_text("{}")


os.replace, checkpoint.write_json_atomic, shutil.rmtree = replace, write_json_atomic, rmtree
checkpoint.save_checkpoint(root, name, {"episode": 3, "complete": True}, write_files)
"""

STEPS_BEFORE_THE_POINTER = (
    "files",
    "manifest",
    "manifest-rename",
    "folder-rename",
    "pointer",
    "pointer-rename",
)
"""Kill points at which latest.json still names the previous checkpoint, in the order a write reaches them."""
STEPS_AFTER_THE_POINTER = ("remove",)
"""Kill points after latest.json names the new checkpoint: removing old checkpoints."""


def write(root: Path, name: str, episode: int, payload: bytes) -> Path:
    def files(folder: Path) -> None:
        (folder / "model.bin").write_bytes(payload)
        (folder / "state.json").write_text("{}")

    return save_checkpoint(root, name, {"episode": episode, "complete": True}, files)


def write_killed_at(root: Path, step: str, name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), step, name], cwd=ROOT, capture_output=True, timeout=30
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


@pytest.mark.parametrize("rewrite", [False, True], ids=["new-name", "name-the-pointer-holds"])
@pytest.mark.parametrize("step", [*STEPS_BEFORE_THE_POINTER, *STEPS_AFTER_THE_POINTER])
def test_a_writer_killed_at_any_step_leaves_the_last_good_checkpoint(
    tmp_path: Path, step: str, rewrite: bool
) -> None:
    root = tmp_path / "checkpoints"
    write(root, "episode-0001", 1, b"one")
    previous = write(root, "episode-0002", 2, b"two")
    name = "episode-0002" if rewrite else "episode-0003"

    write_killed_at(root, step, name)

    pointed = json.loads((root / "latest.json").read_text())["checkpoint"]
    assert verify_checkpoint(root / pointed).path.parent == root
    info = latest_checkpoint(root)
    assert info is not None
    if step in STEPS_BEFORE_THE_POINTER:
        assert info.path == previous and (info.path / "model.bin").read_bytes() == b"two"
    else:
        assert info.meta["episode"] == 3 and (info.path / "model.bin").read_bytes() == b"new " * 1000
    following = write(root, "episode-0004", 4, b"four")
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []
    assert all(verify_checkpoint(p) for p in root.iterdir() if p.is_dir())
    assert latest_checkpoint(root) == verify_checkpoint(following)
