"""Tests of the end-of-session report: report.md and PNG plots from small synthetic run files."""

from __future__ import annotations

import csv
import json
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from services.session.portfolio_report import MAX_WEIGHT_BANDS, weight_bands
from services.session.recorder import METRIC_COLUMNS
from services.session.report import _EpisodeSeries, drawdown, position_changes, write_report
from services.session.report_files import read_csv

ROOT = Path(__file__).resolve().parents[4]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def evaluation(episode: int) -> dict:
    return {
        "episode": episode,
        "agent": {"total_return": 0.1 * episode, "sharpe": 1.2, "max_drawdown": -0.04, "trades": 9.0},
        "buy_and_hold": {"total_return": 0.05, "sharpe": 0.6, "max_drawdown": -0.12, "trades": 1.0},
    }


def write_eval_csv(run_dir: Path, episode: int, bars: int = 60) -> None:
    rng = np.random.default_rng(episode)
    equity = np.cumprod(1 + rng.normal(0.001, 0.01, bars))
    bench = np.cumprod(1 + rng.normal(0.0005, 0.012, bars))
    stamps = np.datetime64("2021-01-04") + np.arange(bars).astype("timedelta64[D]")
    with (run_dir / f"eval-episode-{episode}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["timestamp", "close", "position", "equity", "buy_and_hold_equity"])
        for i in range(bars):
            writer.writerow([f"{stamps[i]}T00:00:00", 100 + i, 1.0, equity[i], bench[i]])


def write_metrics_csv(run_dir: Path, rows: int = 8) -> None:
    with (run_dir / "metrics.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ts", "episode", "total_steps", *METRIC_COLUMNS])
        for i in range(rows):
            values = {"train/loss": 1.0 / (i + 1), "train/value_loss": 0.5 / (i + 1), "time/fps": 900 + i}
            if i % 2:  # SB3 logs rollout values on some updates only
                values["rollout/ep_rew_mean"] = 0.01 * i
            cells = [str(values[key]) if key in values else "" for key in METRIC_COLUMNS]
            writer.writerow([f"{1000.0 + i:.3f}", 1 + i // 4, 256 * (i + 1), *cells])


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "demo"
    run.mkdir()
    config = {
        "name": "demo",
        "env": {"n_envs": 4, "commission_bps": 1.0},
        "model": {"algorithm": "ppo", "net_arch": [8]},
        "training": {"episodes": 2, "steps_per_episode": 1024},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for episode in (1, 2):
        write_eval_csv(run, episode)
    write_metrics_csv(run)
    return run


def test_the_report_and_its_plots_are_written_from_the_run_files(run_dir: Path) -> None:
    report = write_report(run_dir, name="demo", model_id="m-42", evaluations=[evaluation(1), evaluation(2)])

    text = report.read_text()
    assert report == run_dir / "report.md"
    assert "# Session demo" in text and "`m-42`" in text
    assert "| algorithm | `ppo` |" in text and "| envs | `4` |" in text
    assert "| 2 | 20.00% | 5.00% | 1.200 | 0.600 | -4.00% | -12.00% | 9 |" in text
    assert "| Total return | 10.00% | 5.00% |" in text
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(links) == sorted(
        [
            "equity.png",
            "plots/equity-episode-1.png",
            "plots/drawdown-episode-1.png",
            "plots/equity-episode-2.png",
            "plots/drawdown-episode-2.png",
            "plots/training.png",
        ]
    )
    for link in links:
        assert (run_dir / link).read_bytes()[:8] == PNG_SIGNATURE, link
    assert not list(run_dir.rglob("*.tmp"))


def test_without_figures_the_report_has_its_tables_and_no_png_and_no_matplotlib(run_dir: Path) -> None:
    code = (
        "import sys; from pathlib import Path; "
        "from tests.unit.services.session.test_report import evaluation; "
        "from services.session.report import write_report; "
        f"write_report(Path({str(run_dir)!r}), name='demo', model_id='m-42', "
        "evaluations=[evaluation(1), evaluation(2)], figures=False); "
        "print('matplotlib' in sys.modules)"
    )
    command = [sys.executable, "-c", code]
    loaded = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=True)

    text = (run_dir / "report.md").read_text()
    assert loaded.stdout.strip() == "False"
    assert "| 2 | 20.00% | 5.00% | 1.200 | 0.600 | -4.00% | -12.00% | 9 |" in text
    assert "](eval-episode-2.csv)" in text and "session.figures: false" in text
    assert not re.findall(r"!\[", text)
    assert not list(run_dir.rglob("*.png")) and not (run_dir / "plots").exists()


def test_equity_png_shows_the_latest_episode_equity_over_its_drawdown(run_dir: Path) -> None:
    report = write_report(run_dir, name="demo", model_id="m-42", evaluations=[evaluation(1), evaluation(2)])

    png = (run_dir / "equity.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (900, 850), "one figure: equity, position, drawdown"
    assert "![Episode 2: equity and drawdown, agent vs buy & hold](equity.png)" in report.read_text()
    write_eval_csv(run_dir, 2, bars=30)
    write_report(run_dir, name="demo", model_id="m-42", evaluations=[evaluation(1), evaluation(2)])
    assert (run_dir / "equity.png").read_bytes() != png, "the plot follows the latest episode's records"


@pytest.mark.parametrize("close_only", [True, False])
def test_the_fill_row_says_when_closes_only_made_every_fill_a_next_close(
    run_dir: Path, close_only: bool
) -> None:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["env"]["fill"] = "next_open"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    events = [
        {"type": "SessionStarted", "name": "demo", "note": "DataLoaded is only named here"},
        {"type": "DataLoaded", "rows": 60, "close_only": close_only},
    ]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))

    report = write_report(run_dir, name="demo", model_id="m", evaluations=[evaluation(1)], figures=False)
    text = report.read_text()

    row = next(line for line in text.splitlines() if line.startswith("| fill |"))
    assert row.startswith("| fill | `next_open`")
    assert ("closes only: each fill at the next bar's close" in row) is close_only


def test_an_episode_without_records_keeps_its_table_and_gets_no_plots(tmp_path: Path) -> None:
    write_eval_csv(tmp_path, 1)

    report = write_report(tmp_path, name="bare", model_id="", evaluations=[evaluation(1), evaluation(2)])

    text = report.read_text()
    assert "### Episode 2" in text
    assert "plots/equity-episode-2.png" not in text
    assert "![Episode 1: equity and drawdown, agent vs buy & hold](equity.png)" in text, (
        "equity.png shows the latest episode that has records"
    )
    assert (tmp_path / "plots" / "equity-episode-1.png").is_file()
    assert "No training values were recorded." in text
    assert "## Configuration" not in text


def test_the_report_says_at_which_eval_bar_the_agent_was_ruined(run_dir: Path) -> None:
    ruined = {**evaluation(2), "ruined_at": 17}

    report = write_report(run_dir, name="demo", model_id="m-42", evaluations=[evaluation(1), ruined])

    text = report.read_text()
    assert text.count("ruined at eval bar") == 1
    assert "ruined at eval bar 17" in text.split("### Episode 2")[1]


def test_writing_the_report_again_replaces_it(run_dir: Path) -> None:
    write_report(run_dir, name="demo", model_id="m-1", evaluations=[evaluation(1)])

    report = write_report(run_dir, name="demo", model_id="m-2", evaluations=[evaluation(1), evaluation(2)])

    assert "`m-2`" in report.read_text() and "`m-1`" not in report.read_text()


def test_position_changes_are_the_rows_where_the_position_differs_from_the_row_before() -> None:
    position = np.array([0.0, 1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 1.0, 0.5])

    changes = position_changes(position)

    assert changes["long"].tolist() == [1, 7, 8]
    assert changes["short"].tolist() == [3]
    assert changes["flat"].tolist() == [5]


def test_an_evaluation_that_starts_long_is_marked_at_its_first_row() -> None:
    changes = position_changes(np.array([1.0, 1.0, 0.0]))

    assert changes["long"].tolist() == [0] and changes["flat"].tolist() == [2]


def test_the_equity_panel_marks_each_position_change_on_the_agents_curve() -> None:
    from matplotlib.figure import Figure

    position = [0.0, 1.0, 1.0, 1.0, -1.0, -1.0, 0.0, 0.0, 1.0, 1.0]
    equity = [1.0 + 0.01 * i for i in range(len(position))]
    columns = {
        "timestamp": [],
        "position": [str(v) for v in position],
        "equity": [str(v) for v in equity],
        "buy_and_hold_equity": ["1.0"] * len(position),
    }
    ax = Figure().add_subplot()

    _EpisodeSeries(1, columns).draw(ax, "equity")

    marked = {c.get_label(): c.get_offsets().tolist() for c in ax.collections}
    assert marked == {
        "to long (2)": [[1.0, 1.01], [8.0, 1.08]],
        "to short (1)": [[4.0, 1.04]],
        "to flat (1)": [[6.0, 1.06]],
    }


def test_too_many_position_changes_are_left_to_the_position_panel() -> None:
    from matplotlib.figure import Figure

    from services.session.report import MAX_MARKERS

    bars = MAX_MARKERS + 2
    columns = {
        "position": [str(1.0 if i % 2 else -1.0) for i in range(bars)],
        "equity": ["1.0"] * bars,
        "buy_and_hold_equity": ["1.0"] * bars,
    }
    ax = Figure().add_subplot()

    _EpisodeSeries(1, columns).draw(ax, "equity")

    assert not ax.collections
    assert f"{bars:,} position changes: too many to mark" in ax.get_title()


def test_drawdown_is_the_fall_from_the_running_peak() -> None:
    dd = drawdown(np.array([1.0, 1.2, 0.9, 1.3, 1.04]))

    np.testing.assert_allclose(dd, [0.0, 0.0, -0.25, 0.0, -0.2])


def test_importing_the_report_module_does_not_import_matplotlib() -> None:
    code = "import sys, services.session.report; print('matplotlib' in sys.modules)"

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )

    assert result.stdout.strip() == "False", result.stderr


def test_the_csv_reader_gives_every_column_and_pads_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n4,,6\n7,8\n")

    assert read_csv(path) == {"a": ["1", "4", "7"], "b": ["2", "", "8"], "c": ["3", "6", ""]}
    path.write_text("a,b\n")
    assert read_csv(path) == {"a": [], "b": []}
    assert read_csv(tmp_path / "missing.csv") == {}


def test_a_few_assets_get_a_weight_band_each() -> None:
    weights = np.array([[0.0, 0.5, -0.2], [0.0, 0.3, 0.4]])

    longs, shorts, labels = weight_bands(weights, ["A", "B"])

    assert labels == ["A", "B"]
    np.testing.assert_array_equal(longs, [[0.0, 0.5, 0.0], [0.0, 0.3, 0.4]])
    np.testing.assert_array_equal(shorts, [[0.0, 0.0, -0.2], [0.0, 0.0, 0.0]])


def test_with_many_assets_the_largest_holdings_get_bands_and_the_rest_one_that_adds_up() -> None:
    rng = np.random.default_rng(3)
    n_assets = MAX_WEIGHT_BANDS + 18
    weights = rng.uniform(-0.01, 0.01, (n_assets, 50))
    big = [4, 17, 29]
    weights[big, 1:] += [[0.3], [-0.25], [0.2]]  # held from row 1 on
    weights[7, 0] = 5.0  # row 0 is before the first trade: not counted in the ranking
    symbols = [f"S{i}" for i in range(n_assets)]

    longs, shorts, labels = weight_bands(weights, symbols)

    assert len(labels) == MAX_WEIGHT_BANDS == len(longs) == len(shorts)
    assert labels[:3] == ["S4", "S17", "S29"]
    assert "S7" not in labels[:3]
    assert labels[-1] == f"the other {n_assets - MAX_WEIGHT_BANDS + 1} assets"
    np.testing.assert_allclose(longs.sum(axis=0), weights.clip(0.0, None).sum(axis=0))
    np.testing.assert_allclose(shorts.sum(axis=0), weights.clip(None, 0.0).sum(axis=0))
    assert (longs >= 0).all() and (shorts <= 0).all()
