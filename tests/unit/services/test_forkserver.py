"""Tests of the fork server: children with their own stdio, folder, environment and status; signals; bad
requests; the launcher watch of forked actors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.forkserver import (
    READY,
    SERVER_ENV,
    WATCH_ENV,
    ForkedProcess,
    ForkServer,
    ForkServerError,
    launcher_gone,
)

ROOT = Path(__file__).resolve().parents[3]
SERVER = f"""
import os, sys, time
from pathlib import Path
sys.path.insert(0, {str(ROOT)!r})
from services.forkserver import serve

def run(argv):
    match argv:
        case ["exit", code]:
            return int(code)
        case ["print", text]:
            print(text, os.getcwd(), os.environ.get("FORK_TEST", "-"), os.getsid(0) == os.getpid())
            return 0
        case ["sleep", seconds]:
            time.sleep(float(seconds))
            return 0
        case ["env", *names]:
            print(*(os.environ.get(name, "-") for name in names))
            return 0
        case ["raise"]:
            raise RuntimeError("boom")
    return 9

serve(Path(sys.argv[sys.argv.index("--socket") + 1]), run)
"""


@pytest.fixture
def server() -> Iterator[ForkServer]:
    started = ForkServer.start([sys.executable, "-c", SERVER], cwd=ROOT, timeout_s=30)
    yield started
    started.close()


def wait_until(predicate: object, timeout_s: float = 10.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_child_runs_in_its_folder_with_its_environment_and_output_and_reports_its_status(
    server: ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        child = server.client.spawn(
            ["print", "hello"],
            cwd=tmp_path,
            env={**os.environ, "FORK_TEST": "yes"},
            stdout=stdout,
            new_session=True,
        )
    status = child.wait(10)

    assert status == 0 and child.poll() == 0
    assert out.read_text().split() == ["hello", str(tmp_path), "yes", "True"]
    assert child.pid != server.pid


def test_exit_statuses_and_a_crash_come_back_as_popen_would_give_them(
    server: ForkServer, tmp_path: Path
) -> None:
    with (tmp_path / "err.txt").open("w") as stderr:
        codes = [
            server.client.spawn(argv, cwd=tmp_path, stderr=stderr) for argv in (["exit", "3"], ["raise"])
        ]

    assert [child.wait(10) for child in codes] == [3, 1]
    assert "RuntimeError: boom" in (tmp_path / "err.txt").read_text()


def test_a_running_child_can_be_waited_on_with_a_timeout_and_killed(
    server: ForkServer, tmp_path: Path
) -> None:
    child = server.client.spawn(["sleep", "30"], cwd=tmp_path)

    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    assert child.poll() is None
    child.kill()

    assert child.wait(10) == -signal.SIGKILL
    child.kill()  # an ended child is never signalled again (its pid may be another process's by now)


def test_a_bad_request_is_refused_and_the_server_goes_on_serving(server: ForkServer, tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.connect(str(server.client.path))
        connection.sendall(b'{"argv": "not a list"}\n')
        connection.settimeout(10)
        reply = json.loads(connection.makefile().readline())

    assert reply["error"].startswith("bad request")
    assert server.client.spawn(["exit", "0"], cwd=tmp_path).wait(10) == 0


def test_a_child_knows_its_server_and_a_watched_one_the_process_that_asked_for_it(
    server: ForkServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    with out.open("w") as stdout:
        plain = server.client.spawn(["env", SERVER_ENV, WATCH_ENV], cwd=tmp_path, stdout=stdout)
        plain.wait(10)
        watched = server.client.spawn(
            ["env", SERVER_ENV, WATCH_ENV], cwd=tmp_path, stdout=stdout, watched=True
        )
        watched.wait(10)

    assert out.read_text().splitlines() == [
        f"{server.client.path} -",
        f"{server.client.path} {os.getpid()}",
    ]


def test_children_that_die_with_the_server_get_sigterm_when_it_stops(
    server: ForkServer, tmp_path: Path
) -> None:
    launcher = server.client.spawn(["sleep", "30"], cwd=tmp_path, die_with_server=True)
    actor = server.client.spawn(["sleep", "1"], cwd=tmp_path, die_with_server=False)
    pid = launcher.pid

    server.close()

    wait_until(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text())
    with pytest.raises(ForkServerError):
        server.client.spawn(["exit", "0"], cwd=tmp_path)
    assert actor.wait(10) == 1  # its status went with the server; its end is still seen


def test_a_watched_process_ending_is_seen_as_the_launcher_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    monkeypatch.setenv(WATCH_ENV, str(watched.pid))
    gone = launcher_gone()
    assert not gone()

    watched.kill()
    watched.wait()

    assert gone()


def test_without_a_watched_process_the_parent_is_watched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WATCH_ENV, raising=False)

    assert not launcher_gone()()


def test_a_server_that_does_not_say_ready_is_refused_in_one_line(tmp_path: Path) -> None:
    with pytest.raises(ForkServerError, match="instead of ready"):
        ForkServer.start([sys.executable, "-c", "print('hello')"], cwd=tmp_path, timeout_s=30)
    assert READY != "hello"


def test_a_refusal_from_the_server_is_one_error_naming_the_command() -> None:
    ours, theirs = socket.socketpair()
    theirs.sendall(b'{"error": "bad request: argv must be a list of strings"}\n')

    with pytest.raises(ForkServerError, match=r"did not start run.py x: bad request: argv must be"):
        ForkedProcess(["run.py", "x"], ours)
    theirs.close()


def test_a_server_whose_starter_dies_without_a_death_signal_stops_serving(tmp_path: Path) -> None:
    # The starter runs the server without die_with_parent (as when it died between fork and prctl),
    # prints its pid and is killed; the server must notice its new parent and stop on its own.
    socket_path = tmp_path / "fork.sock"
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-c', {SERVER!r}, '--socket', {str(socket_path)!r}],"
            " stdout=subprocess.DEVNULL)\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    server_pid = int(starter.stdout.readline())
    wait_until(socket_path.exists, 30)

    starter.kill()
    starter.wait(10)

    def stopped() -> bool:
        stat = Path(f"/proc/{server_pid}/stat")
        return not stat.exists() or stat.read_text().split(") ")[1].startswith("Z")

    wait_until(stopped, 10)
    assert not socket_path.exists(), "the server removes its socket when it stops"
