"""Fault injection: when the launcher dies with kill -9, no actor process outlives it.

The session starts as a fresh interpreter, as a user's `python run.py` does: its actors are the launcher's
children and go when their parent does (tests/faults/test_forked_sessions.py has the forked case)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.sessions import TINY_MODEL, events, start_session

pytestmark = pytest.mark.faults


def alive(pid: int) -> bool:
    """Tell whether a process exists (a zombie child of someone else counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_every_actor_process_exits_after_the_launcher_and_the_env_are_killed(tmp_path: Path) -> None:
    run_dir = tmp_path / "orphans"
    # A long budget: the model is in the middle of training when the launcher dies.
    proc = start_session(
        TINY_MODEL, tmp_path, "orphans", "--set", "training.steps_per_episode=10000000", fresh=True
    )
    deadline = time.monotonic() + 120
    while not any(e["type"] == "EpisodeStarted" for e in events(run_dir)):
        assert proc.poll() is None, "the session ended before training started"
        assert time.monotonic() < deadline, "training did not start in time"
        time.sleep(0.2)
    started = {e["actor"]: e["pid"] for e in events(run_dir) if e["type"] == "ActorStarted"}
    assert len(started) == 4, started

    # With no env and no launcher the model's step requests can never be answered: it must still go.
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    os.kill(started.pop("env"), signal.SIGKILL)
    pids = set(started.values())

    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(pid for pid in pids if alive(pid))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"actor processes outlived their launcher: {left}"
