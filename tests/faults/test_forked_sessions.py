"""Fault injection on sessions forked from the study's fork server (launcher/forkserver.py): its actors are
separate processes that the supervisor kills and restarts, and none outlives a launcher killed with -9."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.forkserver import ForkedProcess, ForkServer
from tests.faults.test_faults import TINY, actor_pid, training_progress
from tests.faults.test_orphans import alive
from tests.sessions import ROOT, events

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    started = ForkServer.start([sys.executable, "-m", "launcher.forkserver"], cwd=ROOT)
    yield started
    started.close()


def forked_session(server: ForkServer, tmp_path: Path, name: str, *extra: str) -> ForkedProcess:
    """Start `run.py` with the faults' tiny settings as a child of the fork server."""
    args = [*TINY, "--set", f"session.runs_dir={tmp_path}", "--set", "session.console=plain", "--name", name]
    err = (tmp_path / f"{name}.stderr.log").open("w")
    out = (tmp_path / f"{name}.stdout.log").open("w")
    with err, out:
        return server.client.spawn([*args, *extra], cwd=ROOT, stdout=out, stderr=err, new_session=True)


def wait_for(predicate: object, process: ForkedProcess, timeout_s: float = 120) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert process.poll() is None, f"the session ended early ({process.returncode})"
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_forked_actors_killed_mid_training_are_restarted_and_the_model_kept(
    server: ForkServer, tmp_path: Path
) -> None:
    run_dir = tmp_path / "k"
    budget = ["--set", "training.episodes=2", "--set", "training.steps_per_episode=15000"]
    session = forked_session(server, tmp_path, "k", *budget, "--set", "model.hyperparams.n_epochs=2")
    for kind in ("env", "model"):
        seen = training_progress(run_dir)
        wait_for(lambda s=seen: training_progress(run_dir) > s, session)
        pid = actor_pid(run_dir, kind)
        assert pid not in (session.pid, server.pid) and parent(pid) == server.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda k=kind: any(e["type"] == "ActorRestarted" and e["kind"] == k for e in events(run_dir)),
            session,
        )

    assert session.wait(300) == 0, (tmp_path / "k.stderr.log").read_text()
    found = events(run_dir)
    assert sorted(e["kind"] for e in found if e["type"] == "ActorRestarted") == ["env", "model"]
    assert len({e["model_id"] for e in found if e.get("model_id")}) == 1
    assert sorted({e["episode"] for e in found if e["type"] == "EvaluationFinished"}) == [1, 2]


def test_no_forked_actor_outlives_its_launcher_killed_with_kill_9(server: ForkServer, tmp_path: Path) -> None:
    run_dir = tmp_path / "orphans"
    session = forked_session(server, tmp_path, "orphans", "--set", "training.steps_per_episode=10000000")
    wait_for(lambda: any(e["type"] == "EpisodeStarted" for e in events(run_dir)), session)
    pids = {e["pid"] for e in events(run_dir) if e["type"] == "ActorStarted"}
    assert len(pids) == 4

    session.kill()
    assert session.wait(10) == -signal.SIGKILL

    deadline = time.monotonic() + 60
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sorted(pid for pid in pids if alive(pid))
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"forked actor processes outlived their launcher: {left}"
