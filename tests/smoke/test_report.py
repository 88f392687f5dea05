"""One real session's outputs: report.md, equity.png and the eval CSV agree with its events and its figures.

The figures are recomputed here from the eval CSV's columns (and the opens of the source data, for the
costs) with the formulas of docs/METRICS.md, independently of services/env/metrics.py.
"""

from __future__ import annotations

import csv
import math
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from services.session.figures import TABLE_ROWS, format_cell
from tests.sessions import ROOT, TINY, events, run_py, start_session

pytestmark = pytest.mark.smoke

BARS_PER_YEAR = 252.0
"""Bars a year of the default data (daily bars on weekdays; the rule in docs/DATA.md)."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Run:
    """A finished session's run folder, its console and its one evaluation."""

    def __init__(self, run_dir: Path, returncode: int, out: str, err: str) -> None:
        self.run_dir = run_dir
        self.returncode = returncode
        self.out = out
        self.err = err
        self.events = events(run_dir)
        finished = [e for e in self.events if e["type"] == "EvaluationFinished"]
        assert len(finished) == 1, err
        self.evaluation = finished[0]
        with (run_dir / "eval-episode-1.csv").open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        self.csv = {name: [row[name] for row in rows] for name in rows[0]}
        self.config = yaml.safe_load((run_dir / "config.yaml").read_text())

    def column(self, name: str) -> np.ndarray:
        """Return one numeric column of the eval CSV."""
        return np.array([float(v) for v in self.csv[name]], dtype=np.float64)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    runs_dir = tmp_path_factory.mktemp("runs")
    proc = start_session(TINY, runs_dir, "report")
    out, err = proc.communicate(timeout=240)
    return Run(runs_dir / "report", proc.returncode, out, err)


def report_table(report: str, episode: int) -> dict[str, tuple[str, str]]:
    """Return the rows of an episode's metric table in report.md: label -> (agent, buy & hold)."""
    block = report.split(f"### Episode {episode}\n", 1)[1].strip().split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        label, agent, bench = (cell.strip() for cell in line.strip("|").split("|"))
        rows[label] = (agent, bench)
    return rows


def source_opens(run: Run) -> np.ndarray:
    """Return the source data's open of every eval bar, matched by timestamp."""
    with (ROOT / run.config["data"]["source"]["path"]).open(newline="") as fh:
        opens = {row["Date"]: float(row["Open"]) for row in csv.DictReader(fh)}
    return np.array([opens[stamp[:10]] for stamp in run.csv["timestamp"]], dtype=np.float64)


def recomputed(run: Run) -> dict[str, float]:
    """Recompute the agent's figures from the eval CSV with the formulas of docs/METRICS.md."""
    equity, position, close = run.column("equity"), run.column("position"), run.column("close")
    env = run.config["env"]
    assert env["fill"] == "next_open" and env.get("borrow_bps_per_year", 0.0) == 0.0
    k = (env["commission_bps"] + env["slippage_bps"]) / 1e4
    opens = source_opens(run)
    n = len(equity) - 1
    years = n / BARS_PER_YEAR
    r = equity[1:] / equity[:-1] - 1
    std = float(np.std(r, ddof=1))
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    peak = np.maximum.accumulate(equity)
    traded = np.abs(np.diff(position))
    gap = opens[1:] / close[:-1] - 1
    costs = equity[:-1] * (1 + position[:-1] * gap) * traded * k
    held = position[1:] != 0
    under = equity < peak
    longest = run_length = 0
    for below in under:
        run_length = run_length + 1 if below else 0
        longest = max(longest, run_length)
    annualised = math.expm1(math.log(equity[-1] / equity[0]) / years)
    max_drawdown = float(np.max(1 - equity / peak))
    return {
        "bars": float(n),
        "total_return": equity[-1] / equity[0] - 1,
        "annualised_return": annualised,
        "annualised_volatility": std * math.sqrt(BARS_PER_YEAR),
        "sharpe": float(np.mean(r)) / std * math.sqrt(BARS_PER_YEAR),
        "sortino": float(np.mean(r)) / downside * math.sqrt(BARS_PER_YEAR),
        "max_drawdown": max_drawdown,
        "max_drawdown_duration": float(longest),
        "calmar": annualised / max_drawdown,
        "turnover": float(np.sum(traded)),
        "turnover_per_year": float(np.sum(traded)) / years,
        "costs_paid": float(np.sum(costs)),
        "trades": float(np.count_nonzero(traded)),
        "win_rate": float(np.mean(r[held] > 0)),
        "exposure": float(np.mean(held)),
    }


def test_the_session_ends_with_status_0_and_names_its_report(run: Run) -> None:
    assert run.returncode == 0, run.err
    assert f"report: {run.run_dir / 'report.md'}" in run.out
    assert "report: not written" not in run.err


def test_report_png_and_eval_csv_exist_and_agree_with_the_events(run: Run) -> None:
    report = (run.run_dir / "report.md").read_text()
    agent, bench = run.evaluation["agent"], run.evaluation["buy_and_hold"]

    table = report_table(report, 1)

    assert (run.run_dir / "equity.png").read_bytes()[:8] == PNG_SIGNATURE
    for key, label, kind in TABLE_ROWS:
        assert table[label] == (format_cell(agent[key], kind), format_cell(bench[key], kind)), label
    summary = re.search(r"^\| 1 \| (.+) \|$", report, re.MULTILINE)
    assert summary is not None
    assert summary.group(1).split(" | ")[:2] == [
        format_cell(agent["total_return"], "pct"),
        format_cell(bench["total_return"], "pct"),
    ]
    assert run.column("equity")[-1] == pytest.approx(1 + agent["total_return"], rel=1e-12)
    assert run.column("buy_and_hold_equity")[-1] == pytest.approx(1 + bench["total_return"], rel=1e-12)
    assert len(run.csv["equity"]) == agent["bars"] + 1  # row 0 is the start bar, before the first return


def test_a_session_whose_plots_cannot_be_written_says_so_in_one_line_and_exits_1(
    run: Run, tmp_path: Path
) -> None:
    resumed = tmp_path / "report"
    shutil.copytree(run.run_dir, resumed)
    shutil.rmtree(resumed / "plots")
    (resumed / "plots").write_text("a file where the plots folder goes")

    proc = run_py("--resume", str(resumed), "--set", "training.episodes=2", timeout=240)

    assert proc.returncode == 1, proc.stderr
    said = [line for line in proc.stderr.splitlines() if "report" in line]
    assert len(said) == 1 and said[0].startswith("report: not written ("), proc.stderr
    assert "Traceback" not in proc.stderr
    finished = [e for e in events(resumed) if e["type"] == "SessionFinished"]
    assert finished[-1]["status"] == "completed"


def test_the_evaluation_figures_follow_from_the_eval_csv(run: Run) -> None:
    agent: dict[str, Any] = run.evaluation["agent"]

    ours = recomputed(run)

    assert ours["trades"] > 0 and ours["costs_paid"] > 0, "a run that never trades checks too little"
    for key, value in ours.items():
        assert agent[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    table = report_table((run.run_dir / "report.md").read_text(), 1)
    for key, label, kind in TABLE_ROWS:
        if key in ours:
            assert table[label][0] == format_cell(ours[key], kind), label
