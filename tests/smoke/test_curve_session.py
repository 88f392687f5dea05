"""Smoke test of a CURVE-guarded session: real processes, keys made by `run.py keys`, monitors attaching.

One session runs for the whole module; while it trains, a listed monitor follows it to the end and
monitors without keys, with another keys folder's kit and with an unlisted key are turned away. The
session and its monitors are forked from the test run's fork server (tests/sessions.py).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zmq.auth

from tests.sessions import ROOT, TINY, fork_server

STEPS = "training.steps_per_episode=15000"
"""Long enough (about five seconds of training) for every forked monitor to attach while the session runs."""
SESSION_S = 120.0
MONITOR_S = 60.0

pytestmark = pytest.mark.smoke


@dataclass(frozen=True)
class Finished:
    """How a process ended."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def stderr_lines(self) -> list[str]:
        return self.stderr.strip().splitlines()


class Process:
    """A forked run.py process whose stdout is read line by line as it comes; stderr goes to a file."""

    def __init__(self, folder: Path, name: str, *args: str | Path) -> None:
        self._stderr_path = folder / f"{name}.stderr"
        read_end, write_end = os.pipe()
        with self._stderr_path.open("w") as stderr, os.fdopen(write_end, "wb") as stdout:
            self.proc = fork_server().client.spawn(
                [str(a) for a in args], cwd=ROOT, stdout=stdout, stderr=stderr
            )
        self._stdout_pipe = os.fdopen(read_end, "r")
        self.command = " ".join(map(str, args))
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stdout: list[str] = []
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        with self._stdout_pipe:
            for line in self._stdout_pipe:
                self._stdout.append(line)
                self._lines.put(line)
        self._lines.put(None)

    def wait_for_line(self, prefix: str, timeout_s: float) -> str:
        """Return the first stdout line that starts with prefix; fail if the process ends or is silent."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"run.py ended before printing {prefix!r}: {self.finish(5).stderr}")
            if line.startswith(prefix):
                return line.strip()
        pytest.fail(f"run.py printed no {prefix!r} line within {timeout_s:g} s")

    def finish(self, timeout_s: float) -> Finished:
        """Wait for the process to end (kill it after timeout_s) and return what it printed."""
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"run.py {self.command} did not end within {timeout_s:g} s")
        self._reader.join(5)
        return Finished(self.proc.returncode, "".join(self._stdout), self._stderr_path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def run_py(*args: str | Path, timeout_s: float = MONITOR_S) -> Finished:
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    return Finished(result.returncode, result.stdout, result.stderr)


def public_key(kit: Path) -> str:
    """Return the z85 public key of a client kit, as the session logs it."""
    public, _ = zmq.auth.load_certificate(kit / "client.key")
    return public.decode("ascii")


@dataclass(frozen=True)
class GuardedSession:
    """What happened in and around one CURVE session."""

    run_dir: Path
    url: str
    session: Finished
    listed: Finished
    keyless: Finished
    foreign: Finished
    unlisted: Finished
    foreign_kit: Path
    unlisted_kit: Path


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedSession]:
    """Run one CURVE session and every monitor against it; kill whatever is still running at the end."""
    tmp = tmp_path_factory.mktemp("curve")
    keys, other = tmp / "keys", tmp / "other"
    for folder, clients in ((keys, "2"), (other, "1")):
        made = run_py("keys", "--dir", folder, "--clients", clients)
        assert made.returncode == 0, made.stderr
    # A key pair that knows this session's public key but is not in its allowlist.
    unlisted_kit = tmp / "unlisted"
    shutil.copytree(other / "client-1", unlisted_kit)
    shutil.copyfile(keys / "server" / "server.key", unlisted_kit / "server.key")
    started: list[Process] = []

    def start(name: str, *args: str | Path) -> Process:
        started.append(Process(tmp, name, *args))
        return started[-1]

    try:
        session = start(
            "session",
            *TINY,
            "--set", STEPS,
            "--set", f"session.runs_dir={tmp}",
            "--set", f"session.keys_dir={keys}",
            "--name", "guarded",
        )  # fmt: skip
        url = session.wait_for_line("monitor: ", SESSION_S).split("--connect ", 1)[1].split()[0]
        listed = start("listed", "monitor", "--connect", url, "--keys", keys / "client-1", "--json")
        keyless = start("keyless", "monitor", "--connect", url, "--once")
        foreign = start("foreign", "monitor", "--connect", url, "--keys", other / "client-1", "--once")
        unlisted = start("unlisted", "monitor", "--connect", url, "--keys", unlisted_kit, "--once")
        yield GuardedSession(
            run_dir=tmp / "guarded",
            url=url,
            keyless=keyless.finish(MONITOR_S),
            foreign=foreign.finish(MONITOR_S),
            unlisted=unlisted.finish(MONITOR_S),
            listed=listed.finish(SESSION_S),
            session=session.finish(SESSION_S),
            foreign_kit=other / "client-1",
            unlisted_kit=unlisted_kit,
        )
    finally:
        for process in started:
            process.kill()


def test_a_listed_kit_follows_the_session_from_a_snapshot_to_its_end(guarded: GuardedSession) -> None:
    lines = [json.loads(line) for line in guarded.listed.stdout.splitlines()]

    assert guarded.listed.returncode == 0, guarded.listed.stderr
    assert lines[0]["type"] == "Snapshot"
    assert lines[-1]["type"] == "SessionFinished" and lines[-1]["status"] == "completed"
    assert any(line["type"] == "TrainingProgress" for line in lines)


def test_a_monitor_without_keys_is_told_in_one_line_that_the_session_needs_them(
    guarded: GuardedSession,
) -> None:
    result = guarded.keyless

    assert result.returncode != 0
    assert len(result.stderr_lines) == 1, result.stderr
    assert "requires CURVE keys" in result.stderr and "--keys" in result.stderr
    assert guarded.url in result.stderr
    assert result.stdout == ""


def test_a_kit_from_another_keys_folder_is_refused_in_one_line_naming_its_server_key(
    guarded: GuardedSession,
) -> None:
    result = guarded.foreign

    assert result.returncode != 0
    assert len(result.stderr_lines) == 1, result.stderr
    assert "server.key" in result.stderr and str(guarded.foreign_kit) in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unlisted_key_is_refused_and_the_session_log_names_it(guarded: GuardedSession) -> None:
    result = guarded.unlisted
    log = (guarded.run_dir / "logs" / "session.log").read_text()

    assert result.returncode != 0
    assert len(result.stderr_lines) == 1, result.stderr
    assert "refused this monitor's key" in result.stderr and "not listed" in result.stderr
    refusals = [line for line in log.splitlines() if public_key(guarded.unlisted_kit) in line]
    assert len(refusals) == 1 and "WARNING" in refusals[0] and "not listed" in refusals[0], refusals


def test_the_session_log_records_a_kit_from_another_keys_folder(guarded: GuardedSession) -> None:
    log = (guarded.run_dir / "logs" / "session.log").read_text().splitlines()
    unlisted = public_key(guarded.unlisted_kit)

    others = [line for line in log if "WARNING" in line and "monitor" in line and unlisted not in line]

    assert any("handshake" in line or "refused" in line for line in others), others


def test_the_guarded_session_completes(guarded: GuardedSession) -> None:
    result = guarded.session

    assert result.returncode == 0, result.stderr
    assert "session guarded completed" in result.stdout
    assert guarded.url.startswith("tcp://127.0.0.1:")
    assert (guarded.run_dir / "eval-episode-1.csv").is_file()


def test_a_session_beyond_loopback_without_keys_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_py(
        *TINY,
        "--set", "session.monitor_host=0.0.0.0",
        "--set", f"session.runs_dir={tmp_path}",
        "--name", "open",
    )  # fmt: skip

    assert result.returncode == 2
    assert len(result.stderr_lines) == 1, result.stderr
    assert "0.0.0.0" in result.stderr and "keys" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "open").exists()
