"""Fault injection: kill -9 and SIGSTOP of actor processes, SIGINT and resume, garbage on every socket,
and a file-size limit while checkpointing. Marked `faults`; part of the README's test command.

Sessions are forked from the test run's fork server (tests/sessions.py), except the hung env actor's and
the file-size limit's, which start as fresh interpreters as a user's `python run.py` does (so the
supervisor replaces the hung actor with a fresh `run.py _actor` process)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from messages import DecodeError, decode
from services.model.checkpoint import latest_checkpoint
from services.transport.auth import read_session_key
from services.transport.credentials import PlainClient
from tests.sessions import TINY_MODEL, Session, events, run_py, start_session

TINY = [
    *TINY_MODEL,
    "--set", "session.heartbeat_s=0.25",
    "--set", "session.hang_timeout_s=4",
    "--set", "session.env_timeout_s=1.5",
    "--set", "session.max_restarts_per_minute=5",
]  # fmt: skip

pytestmark = pytest.mark.faults


PASSED: dict[str, Path] = {}
"""The folder of each scenario test (marked @scenario) that passed in this test run, by test name."""


def scenario(test: Callable[[Path], None]) -> Callable[[Path], None]:
    """Note where a fault scenario ran once it passes: test_shm_faults.py checks that run's step buffers."""

    @functools.wraps(test)
    def run(tmp_path: Path) -> None:
        test(tmp_path)
        PASSED[test.__name__] = tmp_path

    return run


def start(tmp_path: Path, name: str, *extra: str, **popen: Any) -> Session:
    return start_session(TINY, tmp_path, name, *extra, **popen)


def wait_for(predicate: Callable[[], bool], timeout_s: float = 60, proc: Session | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"session ended early ({proc.returncode}): {proc.output()[1]}")
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def actor_pid(run_dir: Path, kind: str) -> int:
    started = [
        e for e in events(run_dir) if e["type"] in ("ActorStarted", "Heartbeat") and e["actor"] == kind
    ]
    return int(started[-1]["pid"])


def training_progress(run_dir: Path) -> int:
    return sum(1 for e in events(run_dir) if e["type"] == "TrainingProgress")


@scenario
def test_kill_9_of_every_actor_mid_training_loses_no_episode_and_keeps_the_model(tmp_path: Path) -> None:
    run_dir = tmp_path / "k"
    # Two epochs per update slow training enough that all four kills land while it trains (a forked
    # actor is back within a second or two; 50,000 steps an episode were sized for fresh restarts).
    budget = ["--set", "training.episodes=2", "--set", "training.steps_per_episode=25000"]
    proc = start(tmp_path, "k", *budget, "--set", "model.hyperparams.n_epochs=2")
    for kind in ("env", "data", "monitor", "model"):
        seen = training_progress(run_dir)
        wait_for(lambda s=seen: training_progress(run_dir) > s, proc=proc)
        pid = actor_pid(run_dir, kind)
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda k=kind: any(e["type"] == "ActorRestarted" and e["kind"] == k for e in events(run_dir)),
            proc=proc,
        )
    _, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    evs = events(run_dir)
    restarted = [e["kind"] for e in evs if e["type"] == "ActorRestarted"]
    assert sorted(restarted) == ["data", "env", "model", "monitor"]
    assert len({e["model_id"] for e in evs if e.get("model_id")}) == 1
    assert sorted({e["episode"] for e in evs if e["type"] == "EvaluationFinished"}) == [1, 2]
    assert (run_dir / "eval-episode-2.csv").is_file()


@scenario
def test_a_stopped_env_actor_is_detected_as_hung_and_replaced(tmp_path: Path) -> None:
    run_dir = tmp_path / "h"
    proc = start(tmp_path, "h", "--set", "training.steps_per_episode=20000", fresh=True)
    wait_for(lambda: training_progress(run_dir) > 2, proc=proc)

    os.kill(actor_pid(run_dir, "env"), signal.SIGSTOP)
    _, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    log = (run_dir / "logs" / "session.log").read_text()
    assert "env actor hung (no heartbeat" in log
    restarted = [e for e in events(run_dir) if e["type"] == "ActorRestarted"]
    assert [e["kind"] for e in restarted] == ["env"]
    assert "signal 9" in restarted[0]["reason"]


@scenario
def test_sigint_stops_cleanly_and_resume_continues_the_step_counter(tmp_path: Path) -> None:
    run_dir = tmp_path / "i"
    proc = start(tmp_path, "i", "--set", "training.steps_per_episode=10000000")
    wait_for(lambda: training_progress(run_dir) > 3, proc=proc)

    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)

    assert proc.returncode == 0, err
    assert "stopped (interrupted)" in out
    assert not (run_dir / "ipc").exists()
    info = latest_checkpoint(run_dir / "checkpoints")
    assert info is not None and info.meta["complete"] is False and info.meta["num_timesteps"] > 0
    stopped_at = info.meta["num_timesteps"]

    resumed = run_py("--resume", str(run_dir), "--set", "training.steps_per_episode=2048", timeout=180)

    assert resumed.returncode == 2 and "config differs" in resumed.stderr  # the budget is part of the config
    forced = run_py(
        "--resume", str(run_dir), "--force", "--set", "training.steps_per_episode=2048", timeout=180
    )
    assert forced.returncode == 0, forced.stderr
    created = [e for e in events(run_dir) if e["type"] == "ModelCreated"]
    assert created[-1]["restored_from"] and created[-1]["total_steps"] == stopped_at
    finished = [e for e in events(run_dir) if e["type"] == "EpisodeFinished"]
    assert finished[-1]["total_steps"] >= stopped_at + 2048


INT64 = st.integers(-(2**63), 2**63 - 1)


def garbage_frames() -> st.SearchStrategy[list[bytes]]:
    header = st.fixed_dictionaries(
        {
            "v": st.one_of(st.just(1), st.integers(-3, 5), st.text(max_size=3)),
            "type": st.sampled_from(["StepEnvs", "TrainEpisode", "Stop", "DataBlock", "Nope", "Heartbeat"]),
            "body": st.dictionaries(st.text(max_size=8), INT64 | st.text(max_size=8), max_size=3),
            "arrays": st.lists(
                st.tuples(st.sampled_from(["actions", "obs", "x"]), st.sampled_from(["<f4", "<i8", "|O"]),
                          st.lists(st.integers(0, 2**40), max_size=3)).map(list),
                max_size=2,
            ),
        }
    )  # fmt: skip
    structured = header.map(lambda h: [msgpack.packb(h)]).flatmap(
        lambda frames: st.lists(st.binary(max_size=64), max_size=2).map(lambda extra: frames + extra)
    )
    return st.one_of(st.lists(st.binary(max_size=256), min_size=1, max_size=4), structured).filter(malformed)


def malformed(frames: list[bytes]) -> bool:
    """Keep only frames the codec refuses: a valid Stop is a command, not garbage."""
    try:
        decode(frames)
    except DecodeError:
        return True
    return False


def test_garbage_on_every_socket_changes_nothing_the_session_computes(tmp_path: Path) -> None:
    # Four episodes: the garbage must land while the session runs (one 8,192-step episode trains in
    # about a second, and the blast takes longer than that to get going).
    budget = ("--set", "training.steps_per_episode=8192", "--set", "training.episodes=4")
    clean = start(tmp_path, "clean", *budget)
    clean.communicate(timeout=180)
    assert clean.returncode == 0
    run_dir = tmp_path / "fuzz"
    proc = start(tmp_path, "fuzz", *budget)
    wait_for(
        lambda: (
            (run_dir / "endpoints.json").exists()
            and any(e["type"] == "ModelCreated" for e in events(run_dir))
        ),
        proc=proc,
    )
    endpoints = json.loads((run_dir / "endpoints.json").read_text())
    # Two kinds of peer on every socket: a foreign process (no key: refused at the handshake) and one
    # that holds the session's credentials but not its signing keys (its unsigned frames are refused).
    credentials = PlainClient.of(read_session_key(run_dir))
    ctx = zmq.Context.instance()
    sockets = []
    for keyed in (False, True):
        for key, kind in (("data", zmq.DEALER), ("env", zmq.DEALER), ("model", zmq.DEALER),
                          ("session", zmq.DEALER), ("events_in", zmq.PUSH)):  # fmt: skip
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            if keyed:
                credentials.apply(sock)
            sock.connect(endpoints[key])
            sockets.append(sock)
    keyed_servers = sockets[5:8]
    sent = {"foreign": 0, "keyed": 0}
    rng = random.Random(7)

    @settings(max_examples=1500, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(frames=garbage_frames())
    def blast(frames: list[bytes]) -> None:
        index = rng.randrange(len(sockets))
        try:
            sockets[index].send_multipart(frames, zmq.NOBLOCK)
            sent["keyed" if index >= 5 else "foreign"] += 1
        except zmq.Again:
            pass  # refused at the handshake, or the server's bounded queue is full

    try:
        blast()
        oversized = [msgpack.packb({"v": 1}), b"\x00" * (65 << 20)]
        for sock in keyed_servers:
            with contextlib.suppress(zmq.Again):
                sock.send_multipart(oversized, zmq.NOBLOCK)
        _, err = proc.communicate(timeout=240)
    finally:
        for sock in sockets:
            sock.close(0)

    assert sent["keyed"] > 200, f"too little garbage got past the handshake: {sent}"
    assert proc.returncode == 0, err
    assert (tmp_path / "fuzz" / "eval-episode-1.csv").read_text() == (
        tmp_path / "clean" / "eval-episode-1.csv"
    ).read_text()
    errors = [e for e in events(run_dir) if e["type"] == "ErrorRaised"]
    assert errors, "garbage was answered without any error event"


def test_a_checkpoint_that_hits_a_file_size_limit_stops_the_session_cleanly(tmp_path: Path) -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))

    run_dir = tmp_path / "full"
    # DQN's preallocated replay buffer makes the very first checkpoint larger than the limit.
    proc = start(
        tmp_path, "full",
        "--set", "model.algorithm=dqn",
        "--set", "model.hyperparams={learning_starts: 64, buffer_size: 20000, batch_size: 32}",
        "--set", "model.save_replay_buffer=true",
        "--set", "training.steps_per_episode=8192",
        preexec_fn=limit,
    )  # fmt: skip
    _, err = proc.communicate(timeout=240)

    assert proc.returncode == 1
    assert "checkpoint of episode 0 failed" in err and "File too large" in err
    assert "Traceback" not in err
    checkpoints = run_dir / "checkpoints"
    assert latest_checkpoint(checkpoints) is None
    assert list(checkpoints.iterdir()) == []
    assert not [e for e in events(run_dir) if e["type"] == "EpisodeFinished"]
