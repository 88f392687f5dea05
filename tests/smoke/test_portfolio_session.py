"""Real portfolio sessions: the embedded 20-stock universe and tiny wide, long and per-symbol-file sources.

The embedded session's figures are recomputed from its eval CSV with the formulas of docs/METRICS.md
and docs/PORTFOLIO.md, section 5, independently of services/env/metrics.py and portfolio_metrics.py.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.sessions import ROOT, TINY, Session, events, run_py, start_session

pytestmark = pytest.mark.smoke

PORTFOLIO = ["--config", str(ROOT / "configs" / "portfolio.yaml")]
BARS_PER_YEAR = 252.0
SYMBOLS = ("AAA", "BBB", "CCC")
N_BARS = 420
LATE_START = 60
"""CCC's first bar: it is not tradable before it (nor during its own warm-up)."""


class Run:
    """A finished portfolio session: its status, console, events and eval CSV."""

    def __init__(self, run_dir: Path, proc: Session) -> None:
        self.out, self.err = proc.communicate(timeout=300)
        self.returncode = proc.returncode
        self.run_dir = run_dir
        self.events = events(run_dir)
        self.csv: dict[str, list[str]] = {}
        path = run_dir / "eval-episode-1.csv"
        if path.is_file():  # a failed session has none: its test reports the status and stderr
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            self.csv = {name: [row[name] for row in rows] for name in rows[0]}

    def column(self, name: str) -> np.ndarray:
        """Return one numeric column of the eval CSV."""
        return np.array([float(v) for v in self.csv[name]], dtype=np.float64)

    def per_asset(self, name: str) -> np.ndarray:
        """Return the [rows, M] columns `<name>:<symbol>` of the eval CSV, in column order."""
        names = [key for key in self.csv if key.startswith(f"{name}:")]
        return np.stack([self.column(key) for key in names], axis=1)

    @property
    def symbols(self) -> list[str]:
        """Return the symbols of the eval CSV, in column order."""
        return [key.split(":", 1)[1] for key in self.csv if key.startswith("weight:")]

    def evaluation(self) -> dict[str, Any]:
        """Return the one EvaluationFinished event."""
        finished = [e for e in self.events if e["type"] == "EvaluationFinished"]
        assert len(finished) == 1, self.err
        return finished[0]


def session(runs_dir: Path, name: str, *settings: str) -> Run:
    """Run a tiny PPO portfolio session to the end."""
    return Run(runs_dir / name, start_session([*PORTFOLIO, *TINY, *settings], runs_dir, name))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return session(tmp_path_factory.mktemp("runs"), "embedded")


def synthetic_bars(seed: int = 3) -> dict[str, dict[str, np.ndarray]]:
    """Return daily OHLCV bars of three symbols; CCC starts LATE_START bars after the others."""
    rng = np.random.default_rng(seed)
    days = np.arange(np.datetime64("2015-01-05"), np.datetime64("2015-01-05") + 2 * N_BARS)
    weekdays = days[np.is_busday(days)][:N_BARS]
    out = {}
    for j, symbol in enumerate(SYMBOLS):
        close = 50.0 * (1 + j) * np.exp(np.cumsum(rng.normal(0.0003, 0.015, N_BARS)))
        open_ = close * np.exp(rng.normal(0.0, 0.004, N_BARS))
        high = np.maximum(open_, close) * 1.005
        low = np.minimum(open_, close) * 0.995
        first = LATE_START if symbol == "CCC" else 0
        out[symbol] = {
            "date": weekdays[first:],
            "open": open_[first:],
            "high": high[first:],
            "low": low[first:],
            "close": close[first:],
            "volume": rng.integers(1_000, 9_000, N_BARS)[first:].astype(float),
        }
    return out


def write_long(path: Path) -> Path:
    """Write the synthetic bars as one long file: date, symbol and the bar fields."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Date", "Symbol", "Open", "High", "Low", "Close", "Volume"])
        for symbol, bars in synthetic_bars().items():
            for i in range(len(bars["date"])):
                fields = (bars[k][i] for k in ("open", "high", "low", "close", "volume"))
                writer.writerow([str(bars["date"][i]), symbol, *(repr(float(v)) for v in fields)])
    return path


def write_files(folder: Path) -> Path:
    """Write the synthetic bars as one file per symbol in a folder."""
    folder.mkdir()
    for symbol, bars in synthetic_bars().items():
        with (folder / f"{symbol}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["Date", "Open", "High", "Low", "Close", "Volume"])
            for i in range(len(bars["date"])):
                fields = (bars[k][i] for k in ("open", "high", "low", "close", "volume"))
                writer.writerow([str(bars["date"][i]), *(repr(float(v)) for v in fields)])
    return folder


def write_wide(path: Path) -> Path:
    """Write the synthetic closes as one wide file; CCC's cells before its start are empty."""
    bars = synthetic_bars()
    dates = bars["AAA"]["date"]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Date", *SYMBOLS])
        for day in dates:
            cells = []
            for symbol in SYMBOLS:
                at = np.flatnonzero(bars[symbol]["date"] == day)
                cells.append(repr(float(bars[symbol]["close"][at[0]])) if at.size else "")
            writer.writerow([str(day), *cells])
    return path


@pytest.mark.parametrize(
    ("form", "write"), [("long", write_long), ("files", write_files), ("wide", write_wide)]
)
def test_a_tiny_universe_of_each_source_form_trains_and_records_every_symbol(
    tmp_path: Path, form: str, write: Any
) -> None:
    source = write(tmp_path / ("bars" if form == "files" else f"{form}.csv"))
    features = [] if form != "wide" else ["--set", "data.features.names=[ret_1,ret_5,ret_20,vol_20]"]

    run = session(
        tmp_path / "runs",
        form,
        "--set",
        f"data.source.path={source}",
        "--set",
        f"data.universe.form={form}",
        "--set",
        "data.cache=false",
        *features,
    )

    assert run.returncode == 0, run.err
    assert run.symbols == list(SYMBOLS)
    weights = run.per_asset("weight")
    assert (weights >= 0).all() and (weights.sum(axis=1) <= 1 + 1e-9).all()
    assert (run.run_dir / "plots" / "weights-episode-1.png").is_file()


def test_the_embedded_universe_trains_checkpoints_and_writes_the_portfolio_outputs(embedded: Run) -> None:
    report = (embedded.run_dir / "report.md").read_text()

    assert embedded.returncode == 0, embedded.err
    assert len(embedded.symbols) == 20 and embedded.symbols[0] == "AAPL"
    assert (embedded.run_dir / "checkpoints" / "latest.json").is_file()
    assert "![Episode 1 weights](plots/weights-episode-1.png)" in report
    assert "| asset | contribution | costs | turnover | mean weight |" in report
    assert [e["type"] for e in embedded.events].count("ModelCreated") == 1


def test_a_resumed_portfolio_session_reuses_its_model_for_the_next_episode(embedded: Run) -> None:
    proc = run_py("--resume", str(embedded.run_dir), "--set", "training.episodes=2", timeout=300)

    assert proc.returncode == 0, proc.stderr
    assert (embedded.run_dir / "eval-episode-2.csv").is_file()
    after = events(embedded.run_dir)[len(embedded.events) :]
    created = [e for e in after if e["type"] == "ModelCreated"]
    assert len(created) == 1 and created[0]["restored_from"].endswith("episode-0001")
    first = next(e for e in embedded.events if e["type"] == "ModelCreated")
    assert created[0]["model_id"] == first["model_id"]


def test_the_portfolio_figures_follow_from_the_eval_csv(embedded: Run) -> None:
    agent = embedded.evaluation()["agent"]
    bench = embedded.evaluation()["buy_and_hold"]
    equity, gross = embedded.column("equity"), embedded.column("gross_exposure")
    weights, traded, costs = (embedded.per_asset(name) for name in ("weight", "traded", "cost"))
    close, tradable = embedded.per_asset("close"), embedded.per_asset("tradable") > 0
    n = len(equity) - 1
    years = n / BARS_PER_YEAR
    r = equity[1:] / equity[:-1] - 1
    std = float(np.std(r, ddof=1))
    peak = np.maximum.accumulate(equity)
    held = gross[1:] != 0
    annualised = math.expm1(math.log(equity[-1] / equity[0]) / years)
    chosen = tradable[0]
    equal_weight = (close[:, chosen] / close[0, chosen]).mean(axis=1)

    ours = {
        "bars": float(n),
        "total_return": equity[-1] / equity[0] - 1,
        "annualised_return": annualised,
        "annualised_volatility": std * math.sqrt(BARS_PER_YEAR),
        "sharpe": float(np.mean(r)) / std * math.sqrt(BARS_PER_YEAR),
        "max_drawdown": float(np.max(1 - equity / peak)),
        "turnover": float(traded.sum()),
        "costs_paid": float(costs.sum()),
        "trades": float(np.count_nonzero(traded[1:] > 0)),
        "exposure": float(np.mean(held)),
        "win_rate": float(np.mean(r[held] > 0)),
    }

    assert ours["trades"] > 0 and ours["costs_paid"] > 0, "a run that never trades checks too little"
    for key, value in ours.items():
        assert agent[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert np.allclose(gross, np.abs(weights).sum(axis=1), rtol=1e-12)
    assert np.allclose(embedded.column("equal_weight_equity"), equal_weight, rtol=1e-12)
    assert bench["total_return"] == pytest.approx(equal_weight[-1] - 1, rel=1e-9)


TINY_BOX = [
    "--set", "env.n_envs=2",
    "--set", "env.window=4",
    "--set", "env.episode_length=32",
    "--set", "model.net_arch=[8]",
    "--set", "training.steps_per_episode=256",
    "--set", "training.piece_steps=128",
    "--set", "session.figures=false",
    "--set", "session.console=off",
]  # fmt: skip
"""A portfolio session of 256 steps on 2 envs, small enough for every algorithm below; no figures."""
ALGORITHMS: dict[str, list[str]] = {
    "a2c": ["--set", "model.hyperparams.n_steps=8"],
    "sac": [
        "--set", "model.hyperparams.learning_starts=64",
        "--set", "model.hyperparams.batch_size=32",
        "--set", "model.hyperparams.buffer_size=1000",
    ],
    # Long-short too: TD3's deterministic actions become raw weights of M values instead of M + 1.
    "td3": [
        "--set", "portfolio.weights=long_short",
        "--set", "model.hyperparams.learning_starts=64",
        "--set", "model.hyperparams.batch_size=32",
        "--set", "model.hyperparams.buffer_size=1000",
    ],
    "recurrent_ppo": [
        "--set", "model.hyperparams.n_steps=32",
        "--set", "model.hyperparams.batch_size=64",
        "--set", "model.hyperparams.n_epochs=1",
    ],
}  # fmt: skip
"""The Box-action algorithms besides PPO (trained by the sessions above), each with a tiny budget."""


@pytest.fixture(scope="module")
def box_algorithms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Run one tiny embedded-universe session per algorithm, all at once (each is mostly start-up)."""
    runs_dir = tmp_path_factory.mktemp("algorithms")
    procs = {
        name: start_session(
            [*PORTFOLIO, *TINY_BOX, "--set", f"model.algorithm={name}", *settings], runs_dir, name
        )
        for name, settings in ALGORITHMS.items()
    }
    return {name: Run(runs_dir / name, proc) for name, proc in procs.items()}


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_each_box_action_algorithm_trains_on_the_embedded_universe(
    box_algorithms: dict[str, Run], algorithm: str
) -> None:
    run = box_algorithms[algorithm]

    assert run.returncode == 0, run.err
    created = [e for e in run.events if e["type"] == "ModelCreated"]
    assert [e["algorithm"] for e in created] == [algorithm]
    finished = [e for e in run.events if e["type"] == "EpisodeFinished"]
    assert [e["steps"] for e in finished] == [256]
    assert (run.run_dir / "checkpoints" / "latest.json").is_file()
    weights = run.per_asset("weight")
    assert weights.shape[1] == 20 and len(run.column("equity")) > 100
    if algorithm == "td3":
        assert (np.abs(weights).sum(axis=1) <= 1.0 + 1e-9).all() and (weights < 0).any()
    else:
        assert (weights >= 0).all() and (weights.sum(axis=1) <= 1.0 + 1e-9).all()


def test_dqn_on_a_portfolio_is_refused_in_one_line_with_status_2(tmp_path: Path) -> None:
    proc = run_py(
        *PORTFOLIO, "--set", "model.algorithm=dqn", "--set", f"session.runs_dir={tmp_path}", timeout=120
    )

    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.algorithm dqn needs discrete actions" in lines[0], proc.stderr
    assert not any(tmp_path.iterdir())


def test_predict_prints_the_target_weight_of_every_symbol_as_json(embedded: Run) -> None:
    proc = run_py("predict", "--run", str(embedded.run_dir), "--json", timeout=120)

    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert list(answer["weights"]) == embedded.symbols
    assert all(w >= 0 for w in answer["weights"].values())
    assert answer["cash"] == pytest.approx(1 - sum(answer["weights"].values()), abs=1e-12)
    assert answer["timestamp"].startswith("2022-12-28")


def write_wide_universe(path: Path, n_symbols: int, n_bars: int) -> Path:
    """Write a wide file of n_symbols random-walk closes over n_bars weekdays."""
    rng = np.random.default_rng(11)
    days = np.arange(np.datetime64("2015-01-05"), np.datetime64("2015-01-05") + 2 * n_bars)
    days = days[np.is_busday(days)][:n_bars]
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0003, 0.015, (n_bars, n_symbols)), axis=0))
    with path.open("w") as fh:
        fh.write(",".join(["Date", *(f"S{j:03d}" for j in range(n_symbols))]) + "\n")
        for day, row in zip(days, close, strict=True):
            fh.write(f"{day}," + ",".join(f"{v:.4f}" for v in row) + "\n")
    return path


def test_the_eval_records_of_500_assets_come_in_pieces_under_a_small_message_limit(tmp_path: Path) -> None:
    source = write_wide_universe(tmp_path / "wide.csv", 500, 300)

    settings = [
        "--set", f"data.source.path={source}",
        "--set", "data.universe.cross_sectional=[]",
        "--set", "data.features.names=[ret_1,ret_5]",
        "--set", "data.cache=false",
        "--set", "data.split.train_fraction=0.4",  # 180 eval bars, 20 kB a row
        "--set", "env.window=2",
        "--set", "session.max_message_bytes=1048576",
        "--set", "session.env_timeout_s=2",
        "--set", "session.figures=false",
        "--set", "training.steps_per_episode=256",
    ]  # fmt: skip
    proc = start_session([*PORTFOLIO, *TINY, *settings], tmp_path / "runs", "wide500")
    try:
        _, err = proc.communicate(timeout=150)
    except subprocess.TimeoutExpired:
        proc.kill()  # its actors stop when they find the launcher gone
        proc.communicate()
        log = (tmp_path / "runs" / "wide500" / "logs" / "session.log").read_text()
        raise AssertionError(f"the session hung; its log ends:\n{log[-3000:]}") from None

    assert proc.returncode == 0, err
    with (tmp_path / "runs" / "wide500" / "eval-episode-1.csv").open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert [name for name in rows[0] if name.startswith("weight:")] == [
        f"weight:S{j:03d}" for j in range(500)
    ]
    finished = [e for e in events(tmp_path / "runs" / "wide500") if e["type"] == "EvaluationFinished"]
    bars = int(finished[0]["agent"]["bars"])
    assert bars > 150, "the eval window of 180 bars less the features' warm-up"
    assert len(rows) == 1 + bars + 1, "the header, the start row and one row per eval bar, from every piece"
    # 1 MiB messages hold about 25 rows of 500 assets: the records came in several pieces.
    assert 1 + bars > 2 * (2**20 // 2) // (41 * 500 + 40)
