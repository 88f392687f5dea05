"""Tests of run.py seeds: its summary of the seeds' spread and its refusal of too few seeds."""

from __future__ import annotations

from pathlib import Path

import pytest

from launcher.cli import main
from launcher.seeds import INTERVAL_SEED, summary_lines
from services.experiments import stats
from services.experiments.runner import Evaluation, SessionResult


def result(sharpe: float) -> SessionResult:
    evaluation = Evaluation(
        episode=1,
        agent={"sharpe": sharpe, "total_return": sharpe / 10},
        buy_and_hold={"sharpe": 1.3, "total_return": 0.5},
    )
    return SessionResult(run_dir=Path(f"runs/x/seed-{sharpe}"), evaluations=(evaluation,))


def test_the_summary_gives_each_seed_and_the_iqm_and_mean_intervals_of_the_library() -> None:
    sharpes = [0.2, -0.1, 0.4, 0.9]

    lines = summary_lines("x", [result(s) for s in sharpes])

    summary = stats.seed_summary(sharpes, seed=INTERVAL_SEED)
    text = "\n".join(lines)
    assert text.count("| runs/x/seed-") == 0 and text.count("`runs/x/seed-") == 4
    assert f"IQM of the Sharpe ratios {summary.iqm.estimate:.3f}" in text
    assert f"[{summary.mean.low:.3f}, {summary.mean.high:.3f}]" in text
    assert "buy & hold on the same bars: Sharpe 1.300" in text


def test_fewer_than_two_seeds_are_refused_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["seeds", "--seeds", "1"])

    assert status == 2
    assert (
        capsys.readouterr().err
        == "error: run.py seeds: --seeds must be at least 2 (an interval needs 2), got 1\n"
    )
