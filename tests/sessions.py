"""Settings and start-up shared by the tests that run real sessions: a tiny network and budget, and one
fork server for the whole test run.

A session started as a fresh interpreter spends seconds in each of its five processes importing torch and
stable-baselines3 before it trains a step. Most smoke and fault tests are about what a session does, not
about how its processes start, so they fork their sessions from one fork server (`launcher.forkserver`,
the one `run.py tune` uses; docs/EXPERIMENTS.md, "Start-up: the fork server"): the launcher and every
actor are still separate processes with their own stdio, exit status and signals. Tests of what a user's
plain `python run.py` does pass `fresh=True`.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from services.forkserver import ForkedProcess, ForkServer

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "--set", "training.piece_steps=512",
    "--set", "env.n_envs=4",
    "--set", "env.window=8",
    "--set", "env.episode_length=64",
    "--set", "model.net_arch=[8]",
    "--set", "model.hyperparams.n_steps=64",
    "--set", "model.hyperparams.batch_size=64",
    "--set", "model.hyperparams.n_epochs=1",
]  # fmt: skip
"""A tiny PPO on 4 envs; add a budget."""
TINY = [*TINY_MODEL, "--set", "training.steps_per_episode=1024"]
"""A tiny PPO session of 1,024 steps per episode."""

_server: ForkServer | None = None


def fork_server() -> ForkServer:
    """Return the test run's fork server, starting it on first use (tests/conftest.py closes it)."""
    global _server
    if _server is None:
        _server = ForkServer.start([sys.executable, "-m", "launcher.forkserver"], cwd=ROOT, timeout_s=240)
    return _server


def close_fork_server() -> None:
    """Stop the test run's fork server if one was started (its sessions get SIGTERM)."""
    global _server
    if _server is not None:
        _server.close()
        _server = None


class Session:
    """A `run.py` process, forked or fresh, with the part of `subprocess.Popen` the tests use.

    Its stdout and stderr go to temporary files, read with `output()` or once it ends with `communicate()`.
    """

    def __init__(
        self, process: subprocess.Popen[bytes] | ForkedProcess, out: IO[bytes], err: IO[bytes]
    ) -> None:
        self.process = process
        self.forked = isinstance(process, ForkedProcess)
        self._out = out
        self._err = err

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def poll(self) -> int | None:
        return self.process.poll()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end and return the status; raise subprocess.TimeoutExpired past timeout."""
        return self.process.wait(timeout)

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill(self) -> None:
        self.process.kill()

    def output(self) -> tuple[str, str]:
        """Return what the process has written to stdout and stderr so far."""
        return _read(self._out), _read(self._err)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Wait for the end (raise subprocess.TimeoutExpired past timeout) and return stdout and stderr."""
        self.wait(timeout)
        return self.output()


def _read(stream: IO[bytes]) -> str:
    # pread leaves alone the file offset this process shares with the writer.
    fd = stream.fileno()
    return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")


def start(args: list[str], *, fresh: bool = False, preexec_fn: Callable[[], None] | None = None) -> Session:
    """Start `run.py args` from the repository root: forked from the test run's fork server, or as a
    fresh interpreter (`python run.py ...`, as a user starts it) when fresh or preexec_fn is given."""
    out = tempfile.TemporaryFile()  # noqa: SIM115 (the Session holds them until it is collected)
    err = tempfile.TemporaryFile()  # noqa: SIM115
    process: subprocess.Popen[bytes] | ForkedProcess
    if fresh or preexec_fn is not None:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=ROOT,
            stdout=out,
            stderr=err,
            preexec_fn=preexec_fn,
        )
    else:
        process = fork_server().client.spawn(args, cwd=ROOT, stdout=out, stderr=err)
    return Session(process, out, err)


def start_session(
    settings: list[str], runs_dir: Path, name: str, *extra: str, fresh: bool = False, **popen: Any
) -> Session:
    """Start a session with the given settings in its own run folder (see `start`)."""
    args = [*settings, "--set", f"session.runs_dir={runs_dir}", "--name", name, *extra]
    return start(args, fresh=fresh, **popen)


def run_py(*args: str, timeout: float = 300, fresh: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `run.py args` to its end (see `start`); past timeout kill it and raise TimeoutExpired."""
    session = start(list(args), fresh=fresh)
    try:
        out, err = session.communicate(timeout)
    except subprocess.TimeoutExpired:
        session.kill()
        session.wait(30)
        raise
    assert session.returncode is not None
    return subprocess.CompletedProcess(["run.py", *args], session.returncode, out, err)


def events(run_dir: Path) -> list[dict[str, Any]]:
    """Read a run's events.jsonl, skipping a last line still being written."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
