"""The fault scenarios on the shared-memory path (the default on one host), then no buffer left anywhere.

Marked `faults`. Each scenario of tests/faults/test_faults.py that kills, stops or interrupts a process
runs as it is (on the shared path, the default); afterwards no step buffer of its sessions is left in the
run folders, their ipc folders or /dev/shm. A scenario that already passed in test_faults.py in this test
run is not run again: its run's folders are checked.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from services.transport.shm_files import SUFFIX
from tests.faults import test_faults as scenarios
from tests.sessions import events

pytestmark = pytest.mark.faults

SCENARIOS = {
    "kill -9 of every actor": "test_kill_9_of_every_actor_mid_training_loses_no_episode_and_keeps_the_model",
    "SIGSTOP of the env actor": "test_a_stopped_env_actor_is_detected_as_hung_and_replaced",
    "SIGINT and resume": "test_sigint_stops_cleanly_and_resume_continues_the_step_counter",
}
"""Each scenario's test in tests/faults/test_faults.py."""


def buffers_left(tmp_path: Path) -> list[str]:
    """Return every step buffer file of the sessions under tmp_path, wherever their ipc folders were."""
    folders = {tmp_path}
    for written in tmp_path.rglob("endpoints.json"):
        folders.add(Path(json.loads(written.read_text())["ipc_dir"]))
    left = [str(p) for folder in folders if folder.exists() for p in folder.rglob(f"*{SUFFIX}*")]
    return left + [str(p) for p in Path("/dev/shm").glob(f"*{SUFFIX}*")]


def ipc_dir(run_dir: Path) -> Path:
    return Path(json.loads((run_dir / "endpoints.json").read_text())["ipc_dir"])


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_fault_scenario_passes_on_the_shared_path_and_leaves_no_buffer(
    tmp_path: Path, scenario: str
) -> None:
    ran = scenarios.PASSED.get(SCENARIOS[scenario])
    if ran is None:
        run: Callable[[Path], None] = getattr(scenarios, SCENARIOS[scenario])
        run(tmp_path)
        ran = tmp_path

    assert buffers_left(ran) == []


def test_training_steps_through_shared_buffers_and_a_killed_env_actor_leaves_none(tmp_path: Path) -> None:
    run_dir = tmp_path / "s"
    proc = scenarios.start(tmp_path, "s", "--set", "training.steps_per_episode=20000")
    scenarios.wait_for(lambda: scenarios.training_progress(run_dir) > 2, proc=proc)
    folder = ipc_dir(run_dir)
    first = sorted(p.name for p in folder.glob(f"*{SUFFIX}"))
    assert [name.split("-")[0] for name in first] == ["train"], first

    os.kill(scenarios.actor_pid(run_dir, "env"), signal.SIGKILL)
    scenarios.wait_for(lambda: any(e["type"] == "ActorRestarted" for e in events(run_dir)), proc=proc)
    seen = scenarios.training_progress(run_dir)
    scenarios.wait_for(lambda: scenarios.training_progress(run_dir) > seen + 1, proc=proc)
    again = sorted(p.name for p in folder.glob(f"train-*{SUFFIX}"))
    _, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    assert len(again) == 1 and again != first[:1], "the new env actor made its own buffer, the old one went"
    assert buffers_left(tmp_path) == []
