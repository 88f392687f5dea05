"""The training benchmark runs every setup that talks to an env server: the env actor by shared buffers
and by array frames, the bare server loop (array frames: it has no shared buffers), in process, null."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sessions import ROOT

pytestmark = pytest.mark.smoke

SETUPS = ("actor", "frames", "server", "local", "null")


def test_the_quick_pass_trains_every_server_setup_and_writes_its_ratios(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    command = [sys.executable, "bench/bench_training.py", "--quick", "--skip-session"]
    command += ["--setups", ",".join(SETUPS), "--json", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)

    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())["setups"]
    assert set(figures["rates"]) == set(SETUPS)
    assert all(rate > 0 for rates in figures["rates"].values() for rate in rates)
    assert figures["lease"]["calls"] > 0 and figures["lease"]["rollouts"] > 0
    assert len(figures["steal"]) == 1 and 0.0 <= figures["steal"][0] <= 1.0
    assert "the host stole" in done.stdout
    for ratio in ("actor_over_local", "frames_over_local", "server_over_local", "actor_over_null"):
        assert figures[ratio] > 0
    assert "(a2)/(a'): without the actor framework" in done.stdout


def quick_pass(script: str) -> str:
    """Run a benchmark's --quick pass; return its output after checking that it exited 0."""
    done = subprocess.run(
        [sys.executable, script, "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_learner_costs_benchmark_trains_with_and_without_checks_and_times_both_writers() -> None:
    stdout = quick_pass("bench/bench_learner_costs.py")

    lines = [line for line in stdout.splitlines() if "checks on" in line and "off/on" in line]
    assert [line.split()[0] for line in lines] == ["null", "dummy"]
    assert "SB3 TensorBoardOutputFormat" in stdout and "the model's writer" in stdout


def test_the_neighbour_benchmark_trains_beside_each_neighbour_and_leaves_none_running() -> None:
    stdout = quick_pass("bench/bench_neighbour.py")

    lines = [line for line in stdout.splitlines() if line.startswith("  beside ")]
    assert len(lines) == 4 and "ratio to none 1.000" in lines[0]
    leftover = subprocess.run(["pgrep", "-f", "while True: os.sched_yield"], capture_output=True)
    assert leftover.returncode != 0, "a neighbour was left running"
