"""Smoke test of run.py tune on a real PostgreSQL server: two workers share a study, one is killed -9.

The server runs from a temporary folder as an unprivileged user (postgres refuses root); `python3 dev.py
test` installs the OS package when it is missing on a Debian-like system.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from services.experiments.storage import driver_url
from tests.sessions import ROOT, TINY_MODEL

pytestmark = pytest.mark.smoke

PASSWORD = "tune-secret"
USER = "tuner"
SPACE = (
    "model.hyperparams.learning_rate: {log_float: [1.0e-4, 1.0e-3]}\n"
    "model.net_arch: {categorical: [[8], [16]]}\n"
)


def binaries() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_user(user: str, *command: str) -> None:
    prefix = ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []
    subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)


def unprivileged_user() -> str:
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    for name in ("postgres", "rltune"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--no-create-home", "rltune"], check=True, capture_output=True)
    return "rltune"


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Start PostgreSQL in a temporary folder; yield the URL of an empty database."""
    bin_dir = binaries()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (python3 dev.py test installs it on Debian as root)")
    user = unprivileged_user()
    folder = Path(tempfile.mkdtemp(prefix="tune-pg-"))
    owner = pwd.getpwnam(user)
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    (folder / "pw").write_text(PASSWORD + "\n")
    os.chown(folder / "pw", owner.pw_uid, owner.pw_gid)
    data, port = folder / "data", free_port()
    as_user(user, str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
            f"--pwfile={folder / 'pw'}")  # fmt: skip
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
    as_user(
        user,
        str(bin_dir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(folder / "log"),
        "-w",
        "start",
    )
    try:
        import psycopg2

        admin = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE optuna")
        admin.close()
        yield f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/optuna"
    finally:
        as_user(user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


TRIALS = 5
"""Enough that the first worker always gets a second trial: with 3, the other could claim the last one."""


def worker(tmp_path: Path, url: str, seed: int) -> subprocess.Popen[bytes]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    command = [
        sys.executable, str(ROOT / "run.py"), "tune", "--space", str(space), "--study", "shared",
        "--trials", str(TRIALS), "--seeds", "1", "--lockbox", "0", "--storage", url, "--seed", str(seed),
        *TINY_MODEL, "--set", "training.steps_per_episode=1024",
        "--set", f"session.runs_dir={tmp_path / f'host-{seed}'}",
    ]  # fmt: skip
    log = (tmp_path / f"worker-{seed}.log").open("wb")
    return subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def trials_of(url: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name="shared", storage=driver_url(url)).get_trials()
    except KeyError:
        return []


def test_two_workers_share_a_study_and_a_killed_one_loses_only_its_trial(server: str, tmp_path: Path) -> None:
    first, second = worker(tmp_path, server, 1), worker(tmp_path, server, 2)
    deadline = time.monotonic() + 300

    def first_is_in_its_second_trial() -> bool:
        mine = [t for t in trials_of(server) if t.user_attrs.get("pid") == first.pid]
        return any(t.state == TrialState.COMPLETE for t in mine) and any(
            t.state == TrialState.RUNNING for t in mine
        )

    while not first_is_in_its_second_trial():
        assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "worker-1.log").read_text()
        time.sleep(0.5)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)
    status = second.wait(timeout=420)

    assert status == 0, (tmp_path / "worker-2.log").read_text()
    trials = trials_of(server)
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == TRIALS
    assert {t.user_attrs["pid"] for t in done} == {first.pid, second.pid}
    killed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(killed) == 1 and killed[0].user_attrs["pid"] == first.pid
    retries = [t.system_attrs.get("failed_trial") for t in done]
    assert retries.count(killed[0].number) == 1
    assert len({t.number for t in done}) == TRIALS


def test_a_wrong_password_is_one_line_exit_2_and_nothing_written(server: str, tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    url = server.replace(PASSWORD, "wrong-password")

    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "tune", "--space", str(space), "--study", "pw",
         "--trials", "1", "--storage", url, "--set", f"session.runs_dir={tmp_path / 'runs'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "password authentication failed" in result.stderr
    assert "wrong-password" not in result.stderr
    assert not (tmp_path / "runs").exists()
