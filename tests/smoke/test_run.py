"""Smoke tests: run.py end to end with a tiny budget and a tiny network, plus monitors attaching.

What a user's first hour does starts as fresh interpreters (`python run.py`): the two-episode session with
its monitors, `--default`, and every refusal. The seed and resume tests fork their sessions from the test
run's fork server (tests/sessions.py); a forked session is the same processes, started faster."""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import sessions
from tests.sessions import ROOT, TINY, events

pytestmark = pytest.mark.smoke


def run_py(*args: str, timeout: float = 180, fresh: bool = True) -> subprocess.CompletedProcess[str]:
    """Run run.py as a fresh interpreter, or forked from the test run's fork server (fresh=False)."""
    return sessions.run_py(*args, timeout=timeout, fresh=fresh)


def monitor_command(proc: sessions.Session, timeout_s: float = 120) -> list[str]:
    """Return the monitor command line the session printed, to run as printed (from the repository root)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = proc.output()[0].splitlines(keepends=True)
        for line in lines[:20]:
            if line.startswith("monitor: ") and line.endswith("\n"):
                return shlex.split(line.removeprefix("monitor: "))
        if len(lines) >= 20 or proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError("the session did not print its monitor command")


def test_two_episodes_train_one_model_and_write_the_run_folder(tmp_path: Path) -> None:
    # Quick heartbeats: a false alarm (an actor called stale while it works) shows within a second.
    proc = sessions.start_session(
        TINY,
        tmp_path,
        "two",
        *("--set", "training.episodes=2", "--set", "training.steps_per_episode=2048"),
        *("--set", "session.heartbeat_s=0.25"),
        fresh=True,
    )
    command = monitor_command(proc)
    attached = subprocess.Popen(
        [*command, "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    doomed = subprocess.Popen(
        command,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(2)
    doomed.send_signal(signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    mon_out, _ = attached.communicate(timeout=30)

    assert proc.returncode == 0, err
    false_alarms = [
        line for line in (out + err).splitlines() if re.search(r"stale|no heartbeat|\bagain\b", line)
    ]
    assert false_alarms == [], "a normal run raises no heartbeat alarm"
    run_dir = tmp_path / "two"
    for name in (
        "config.yaml",
        "endpoints.json",
        "events.jsonl",
        "metrics.csv",
        "eval-episode-1.csv",
        "eval-episode-2.csv",
    ):
        assert (run_dir / name).is_file(), name
    evs = events(run_dir)
    types = [e["type"] for e in evs]
    assert "ActorRestarted" not in types
    assert types.count("ModelCreated") == 1
    assert types.count("ModelReused") == 1
    model_ids = {e["model_id"] for e in evs if "model_id" in e}
    assert len(model_ids) == 1
    assert all("actor" in e and "type" in e for e in evs)
    assert {"data", "env", "model", "monitor", "session"} <= {e["actor"] for e in evs}
    finished = [e for e in evs if e["type"] == "SessionFinished"]
    assert len(finished) == 1 and finished[0]["status"] == "completed"
    with (run_dir / "eval-episode-2.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert rows and set(rows[0]) == {"timestamp", "close", "position", "equity", "buy_and_hold_equity"}
    assert float(rows[0]["equity"]) == pytest.approx(1.0)
    with (run_dir / "metrics.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) >= 2
    assert "created 1 time(s), restored 0 time(s), reused 1 time(s)" in out
    assert "Total return" in out
    assert "process RSS:" in out

    lines = [json.loads(line) for line in mon_out.splitlines()]
    assert lines[0]["type"] == "Snapshot"
    snapshot_seq = lines[0]["seq"]
    later = [line for line in lines[1:] if "seq" in line]
    assert later and all(line["seq"] > snapshot_seq for line in later)
    assert later[-1]["type"] == "SessionFinished"
    assert attached.returncode == 0


def test_the_same_seed_gives_the_same_trades_and_metrics(tmp_path: Path) -> None:
    first = run_py(*TINY, "--set", f"session.runs_dir={tmp_path}", "--name", "a", fresh=False)
    second = run_py(*TINY, "--set", f"session.runs_dir={tmp_path}", "--name", "b", fresh=False)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    a = (tmp_path / "a" / "eval-episode-1.csv").read_text()
    b = (tmp_path / "b" / "eval-episode-1.csv").read_text()
    assert a == b


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "training.steps_per_episode=-5"], "steps_per_episode"),
        (["--set", "env.bogus=1"], "env.bogus"),
        (["--config", "nope.yaml"], "nope.yaml"),
        (["--data", "missing.csv"], "missing.csv"),
        (["--frobnicate"], "frobnicate"),
    ],
)
def test_bad_usage_exits_2_with_one_line_and_no_traceback(args: list[str], needle: str) -> None:
    result = run_py(*args, timeout=60)

    assert result.returncode == 2
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_a_monitor_without_a_session_says_so_and_exits_1() -> None:
    result = run_py("monitor", "--connect", "tcp://127.0.0.1:9", "--timeout", "1", timeout=60)

    assert result.returncode == 1
    assert "no session answered" in result.stderr


def test_default_is_accepted_as_the_name_of_the_default_config(tmp_path: Path) -> None:
    result = run_py("--default", *TINY, "--set", f"session.runs_dir={tmp_path}", "--name", "d")

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "d" / "eval-episode-1.csv").is_file()
    assert os.path.getsize(tmp_path / "d" / "events.jsonl") > 0


def test_resume_continues_the_same_model_and_step_counter_and_predict_uses_it(tmp_path: Path) -> None:
    runs = f"session.runs_dir={tmp_path}"
    first = run_py(*TINY, "--set", runs, "--name", "r", "--set", "training.episodes=2", fresh=False)
    assert first.returncode == 0, first.stderr
    run_dir = tmp_path / "r"
    before = events(run_dir)
    trained = [e for e in before if e["type"] == "EpisodeFinished"]

    done = run_py("--resume", str(run_dir), fresh=False)
    mismatch = run_py(
        "--resume", str(run_dir), "--set", "training.episodes=3", "--set", "env.window=9", fresh=False
    )
    resumed = run_py("--resume", str(run_dir), "--set", "training.episodes=3", fresh=False)
    predicted = run_py("predict", "--run", str(run_dir), "--json", fresh=False)

    assert done.returncode == 2 and "all 2 episodes are done" in done.stderr
    assert mismatch.returncode == 2 and "config differs" in mismatch.stderr
    assert resumed.returncode == 0, resumed.stderr
    after = events(run_dir)[len(before) :]
    created = [e for e in after if e["type"] == "ModelCreated"]
    assert len(created) == 1 and created[0]["restored_from"].endswith("episode-0002")
    assert created[0]["model_id"] == trained[0]["model_id"]
    assert created[0]["total_steps"] == trained[-1]["total_steps"]
    finished = [e for e in after if e["type"] == "EpisodeFinished"]
    assert [e["episode"] for e in finished] == [3]
    assert finished[0]["total_steps"] > trained[-1]["total_steps"]
    assert (run_dir / "eval-episode-3.csv").is_file()
    assert predicted.returncode == 0, predicted.stderr
    answer = json.loads(predicted.stdout)
    assert answer["model_id"] == trained[0]["model_id"]
    assert answer["position"] in (-1.0, 0.0, 1.0)
    assert answer["timestamp"].startswith("2018-08-29")


def test_bad_data_exits_2_with_one_line_naming_the_file_and_row(tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    made = run_py("generate-data", "--rows", "400", "--seed", "3", "--out", str(good), timeout=60)
    assert made.returncode == 0, made.stderr
    lines = good.read_text().splitlines()
    fields = lines[150].split(",")
    fields[2], fields[3] = fields[3], fields[2]  # high below low on file line 151
    lines[150] = ",".join(fields)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")

    runs = f"session.runs_dir={tmp_path}"
    result = run_py(*TINY, "--data", str(bad), "--set", runs, "--set", "data.cache=false")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"{bad}, line 151" in result.stderr and "below low" in result.stderr


def test_a_cuda_device_on_a_machine_without_one_exits_2_with_one_line(tmp_path: Path) -> None:
    if _torch_sees_cuda():
        pytest.skip("this machine has a CUDA device")
    result = run_py(*TINY, "--set", "model.device=cuda", "--set", f"session.runs_dir={tmp_path}")

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "model.device is 'cuda'" in result.stderr and "sees no CUDA device" in result.stderr
    assert "Traceback" not in result.stderr


def _torch_sees_cuda() -> bool:
    """Ask a child process, so this test process does not import torch."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return probe.stdout.strip() == "True"


def test_a_window_longer_than_the_data_exits_2_naming_the_rows(tmp_path: Path) -> None:
    result = run_py(*TINY, "--set", "env.window=3000", "--set", f"session.runs_dir={tmp_path}")

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "too few" in result.stderr
