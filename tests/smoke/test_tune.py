"""Smoke tests of run.py tune on SQLite: a worker killed mid-trial, the rerun resumes; bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.sessions import ROOT, TINY_MODEL

pytestmark = pytest.mark.smoke

SPACE = (
    "model.hyperparams.learning_rate: {log_float: [1.0e-4, 1.0e-3]}\n"
    "model.net_arch: {categorical: [[8], [16]]}\n"
)
BUDGET = [*TINY_MODEL, "--set", "training.steps_per_episode=1024"]


def tune_command(tmp_path: Path, study: str, *extra: str) -> list[str]:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return [
        sys.executable, str(ROOT / "run.py"), "tune", "--space", str(space), "--study", study,
        *BUDGET, "--set", f"session.runs_dir={tmp_path / 'runs'}", *extra,
    ]  # fmt: skip


def wait_for(predicate: object, deadline_s: float) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + deadline_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def study_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_a_worker_killed_mid_trial_loses_only_that_trial_and_the_rerun_finishes_n_trials(
    tmp_path: Path,
) -> None:
    command = tune_command(tmp_path, "kill", "--trials", "2", "--seeds", "1", "--top", "1")
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    events = tmp_path / "runs" / "kill" / "trial-0" / "seed-0" / "events.jsonl"
    wait_for(lambda: events.exists() and b"EpisodeStarted" in events.read_bytes(), 180)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=10)

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420)

    assert rerun.returncode == 0, rerun.stderr
    trials = study_trials(f"sqlite:///{tmp_path / 'runs' / 'kill' / 'study.db'}", "kill")
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == 2
    assert trials[0].state == TrialState.FAIL
    assert [t.system_attrs.get("failed_trial") for t in done].count(0) == 1
    assert "retry of trial 0" in rerun.stdout
    report = (tmp_path / "runs" / "kill" / "report.md").read_text()
    lockbox = report.split("## Lockbox")[1]
    assert "Verdict: " in report
    assert lockbox.count("\n| ") == 3  # the header, its rule and the best trial's row


def run_tune(command: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_a_space_key_that_does_not_exist_is_one_line_exit_2_and_nothing_written(tmp_path: Path) -> None:
    command = tune_command(tmp_path, "bad", "--trials", "1")
    Path(command[command.index("--space") + 1]).write_text("model.no_such_key: {float: [0, 1]}\n")

    result = run_tune(command)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "unknown key model.no_such_key" in result.stderr
    assert "space.yaml" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_storage_is_one_line_exit_2_and_nothing_written(tmp_path: Path) -> None:
    url = "postgresql://user:secret@127.0.0.1:9/optuna"
    command = tune_command(tmp_path, "far", "--trials", "1", "--storage", url)

    result = run_tune(command)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "cannot open the storage" in result.stderr
    assert "secret" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_study_that_exists_with_another_space_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="taken", storage=url).set_user_attr("space", "[]")
    command = tune_command(tmp_path, "taken", "--trials", "1", "--storage", url)

    result = run_tune(command)

    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "exists with another search space" in result.stderr
    study = optuna.load_study(study_name="taken", storage=url)
    assert study.trials == [] and study.user_attrs == {"space": "[]"}
    assert not (tmp_path / "runs").exists()


def test_a_monitor_attached_to_a_running_study_sees_its_signed_trial_events_live(tmp_path: Path) -> None:
    command = tune_command(tmp_path, "watched", "--trials", "2", "--seeds", "1", "--lockbox", "0")
    tune = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "runs" / "watched"
    wait_for(lambda: (folder / "endpoints.json").exists() or tune.poll() is not None, 120)
    monitor = [
        sys.executable,
        str(ROOT / "run.py"),
        "monitor",
        "--run",
        str(folder),
        "--json",
        "--timeout",
        "30",
    ]

    watched = subprocess.run(monitor, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out, err = tune.communicate(timeout=60)

    assert tune.returncode == 0, err
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert lines[0]["type"] == "Snapshot" and lines[0]["state"]["session"]["kind"] == "study"
    live = [line for line in lines[1:] if line["type"] != "Heartbeat"]
    assert {line["actor"] for line in live} == {"study"}
    assert live[-1]["type"] == "StudyFinished" and live[-1]["status"] == "completed"
    assert live[-1]["finished"] == 2 and live[-1]["report"].endswith("report.md")
    seen = {line["type"] for line in live}
    assert {"TrialReported"} <= seen and seen & {"TrialCompleted", "TrialPruned"}
    recorded = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    kinds = [e["type"] for e in recorded if e["type"] != "Heartbeat"]
    assert kinds[0] == "StudyStarted" and kinds.count("TrialStarted") == 2 and kinds[-1] == "StudyFinished"
    assert kinds.count("SeedStarted") == 2 and "monitor --run" in out
    assert not (folder / "ipc").exists()


def test_sessions_forked_from_the_fork_server_compute_what_fresh_interpreters_compute(tmp_path: Path) -> None:
    def seeds(name: str, *extra: str) -> Path:
        command = [
            sys.executable, str(ROOT / "run.py"), "seeds", "--seeds", "2", "--name", name, *BUDGET,
            "--set", f"session.runs_dir={tmp_path}", *extra,
        ]  # fmt: skip
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert "fork server" not in result.stdout  # it started (a failed start is said, then not used)
        return tmp_path / name

    forked, fresh = seeds("forked"), seeds("fresh", "--no-fork-server")

    for seed in ("seed-0", "seed-1"):
        assert (forked / seed / "eval-episode-1.csv").read_bytes() == (
            fresh / seed / "eval-episode-1.csv"
        ).read_bytes()
    report = (forked / "report.md").read_text().replace(str(forked), str(fresh))
    assert report.replace("Seeds of forked", "Seeds of fresh") == (fresh / "report.md").read_text()
