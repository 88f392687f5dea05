"""Smoke test: a session whose eval window is over 100,000 bars finishes and evaluates every bar.

The eval pass lasts far longer than the hang timeout, and its records are longer than one reply may
hold, so it passes only when evaluation runs in pieces with heartbeats throughout and the records
come back in pieces.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.sessions import TINY_MODEL, events, run_py, start_session

pytestmark = pytest.mark.smoke

ROWS = 110_000
TRAIN_FRACTION = 0.05
GENERATE = ["--rows", str(ROWS), "--freq", "1min", "--seed", "1"]
SETTINGS = [
    *TINY_MODEL,
    "--set", "training.steps_per_episode=256",
    "--set", f"data.split.train_fraction={TRAIN_FRACTION}",
    "--set", "data.cache=false",
    "--set", "session.heartbeat_s=0.25",
    "--set", "session.hang_timeout_s=4",
    "--set", "session.env_timeout_s=1.5",
    "--set", "session.max_message_bytes=2097152",
    "--set", "session.console=plain",
]  # fmt: skip
"""A tiny budget; a hang timeout a fraction of the eval pass; records in pieces of about 26,000 rows."""


def test_an_eval_window_of_over_100k_bars_is_evaluated_to_its_last_bar(tmp_path: Path) -> None:
    data = tmp_path / "minutes.csv"
    made = run_py("generate-data", *GENERATE, "--out", str(data), timeout=120)
    assert made.returncode == 0, made.stderr

    proc = start_session(SETTINGS, tmp_path, "long", "--data", str(data))
    out, err = proc.communicate(timeout=300)

    assert proc.returncode == 0, err
    run_dir = tmp_path / "long"
    evs = events(run_dir)
    ready = [e for e in evs if e["type"] == "EvaluationFinished"]
    assert len(ready) == 1
    bars = int(ready[0]["agent"]["bars"])
    assert bars >= 100_000
    with (run_dir / "eval-episode-1.csv").open() as fh:
        rows = sum(1 for _ in csv.DictReader(fh))
    assert rows == bars + 1, "one record row per eval bar plus the start row"
    assert int(ready[0]["buy_and_hold"]["bars"]) == bars
    assert not [e for e in evs if e["type"] == "ActorRestarted"], out
