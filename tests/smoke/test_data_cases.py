"""Smoke tests of the data a user actually has: each case through run.py, refused before any process starts.

One tiny session covers the files that must train (five years of daily closes only, semicolon-separated,
one missing close, env.fill=close) and its resume after the file was touched; the refused files
never start a process, so each takes about as long as the launcher's imports.
"""

from __future__ import annotations

import csv
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests import sessions
from tests.sessions import ROOT, events

pytestmark = pytest.mark.smoke

TINY_KEEPING_DEFAULT_WINDOWS = [
    "--set", "training.piece_steps=512",
    "--set", "training.steps_per_episode=1024",
    "--set", "env.n_envs=4",
    "--set", "model.net_arch=[8]",
    "--set", "model.hyperparams.n_steps=64",
    "--set", "model.hyperparams.batch_size=64",
    "--set", "model.hyperparams.n_epochs=1",
]  # fmt: skip
"""A tiny PPO that keeps the default env.window (1) and env.episode_length (256)."""


def run_py(*args: str, timeout: float = 240, fresh: bool = False) -> subprocess.CompletedProcess[str]:
    """Run run.py forked from the test run's fork server, or as a fresh interpreter (tests/sessions.py)."""
    return sessions.run_py(*args, timeout=timeout, fresh=fresh)


def googl_rows(count: int) -> list[dict[str, str]]:
    with (ROOT / "data" / "STOCKS_GOOGL.csv").open() as fh:
        return list(csv.DictReader(fh))[:count]


def refused(tmp_path: Path, *args: str) -> str:
    """Run a launch that must be refused: exit 2, one stderr line, nothing on stdout, no run folder."""
    started = time.monotonic()
    # Fresh, as a user starts it: the time bound says the refusal comes before any actor starts.
    result = run_py(*args, "--set", f"session.runs_dir={tmp_path / 'runs'}", "--name", "refused", fresh=True)

    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr and result.stdout.strip() == ""
    assert not (tmp_path / "runs" / "refused").exists()
    assert time.monotonic() - started < 30
    return result.stderr.strip()


def test_five_years_of_closes_train_with_the_defaults_and_resume_after_touch(tmp_path: Path) -> None:
    rows = googl_rows(1300)
    rows[500]["Close"] = ""
    source = tmp_path / "closes.csv"
    source.write_text("Date;Close\n" + "".join(f"{r['Date']};{r['Close']}\n" for r in rows))
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    runs = f"session.runs_dir={tmp_path / 'runs'}"

    first = run_py(
        *TINY_KEEPING_DEFAULT_WINDOWS, "--data", str(source), "--set", "env.fill=close",
        "--set", cache, "--set", runs, "--name", "closes",
    )  # fmt: skip
    os.utime(source)
    resumed = run_py("--resume", str(tmp_path / "runs" / "closes"), "--set", "training.episodes=2")

    assert first.returncode == 0, first.stderr
    assert "note: close-only data: env.fill=close" in first.stdout
    data_line = next(line for line in first.stdout.splitlines() if line.startswith("data: "))
    assert data_line == (
        "data: 1,299 bars, 4 features; close prices only: every fill is at the next bar's close; "
        "dropped 1 row (1 missing close, data.source.nan_policy=drop)"
    )
    assert resumed.returncode == 0, resumed.stderr
    loaded = [e for e in events(tmp_path / "runs" / "closes") if e["type"] == "DataLoaded"]
    assert len(loaded) == 2 and loaded[0]["data_hash"] == loaded[1]["data_hash"]
    assert [e["cached"] for e in loaded] == [False, True], "built for the first run, found by the resume"


def test_an_excel_file_renamed_csv_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_bytes(b"PK\x03\x04" + bytes(300))

    assert "this is an Excel workbook (.xlsx) or another zip file" in refused(tmp_path, "--data", str(path))


def test_an_empty_file_is_refused_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_text("")

    assert refused(tmp_path, "--data", str(path)) == f"error: {path}: the file is empty"


def test_a_bad_row_is_refused_once_before_any_process_starts(tmp_path: Path) -> None:
    rows = googl_rows(400)
    rows[150]["Date"] = "2013-13-45"
    path = tmp_path / "bars.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    assert refused(tmp_path, "--data", str(path)).startswith(f"error: {path}, line 152: unparsable timestamp")


def test_a_walk_forward_plan_longer_than_the_data_is_refused_before_it_starts(tmp_path: Path) -> None:
    plan = [
        "--set", "data.split.walk_forward=true", "--set", "data.split.train_bars=1000",
        "--set", "data.split.eval_bars=300", "--set", "training.episodes=5",
        "--set", f"data.cache_dir={tmp_path / 'cache'}",
    ]  # fmt: skip

    message = refused(tmp_path, *plan)

    assert "walk-forward episode 5 needs bars up to 2600" in message  # 100 warm-up + 1,000 + 5 x 300
    assert "only 4 episodes fit" in message and "training.episodes" in message
