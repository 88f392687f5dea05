"""The run's report: written from the evaluations, or a one-line failure the session turns into its status."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from launcher.summary import write_run_report

EVALUATION = {
    "episode": 1,
    "agent": {"total_return": 0.1, "sharpe": 1.2, "max_drawdown": 0.04, "trades": 9},
    "buy_and_hold": {"total_return": 0.05, "sharpe": 0.6, "max_drawdown": 0.12, "trades": 1},
}


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    with (tmp_path / "eval-episode-1.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "close", "position", "equity", "buy_and_hold_equity"])
        for i in range(5):
            writer.writerow([f"2021-01-0{i + 1}T00:00:00", 100 + i, 1.0, 1 + i / 100, 1 + i / 50])
    return tmp_path


def test_a_written_report_is_announced_and_counts_as_written(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    written = write_run_report(run_dir, name="demo", model_id="m1", evaluations=[EVALUATION])

    assert written is True
    assert (run_dir / "report.md").is_file() and (run_dir / "equity.png").is_file()
    assert capsys.readouterr().out.strip() == f"report: {run_dir / 'report.md'}"


def test_a_run_without_evaluations_has_no_report_and_nothing_failed(run_dir: Path) -> None:
    written = write_run_report(run_dir, name="demo", model_id="m1", evaluations=[])

    assert written is True
    assert not (run_dir / "report.md").exists()


def test_a_report_path_that_is_a_folder_fails_the_report_in_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "report.md").mkdir()

    written = write_run_report(run_dir, name="demo", model_id="m1", evaluations=[EVALUATION])

    assert written is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report: not written (") and "report.md" in err


def test_a_plots_path_that_is_a_file_fails_the_report_in_one_line(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (run_dir / "plots").write_text("not a folder")

    written = write_run_report(run_dir, name="demo", model_id="m1", evaluations=[EVALUATION])

    assert written is False
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("report: not written (") and "plots" in err
