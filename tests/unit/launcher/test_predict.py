"""Tests of the Predictor: decisions of known policies, the warm-up trim, and the checkpoint's own policy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from launcher.predict import Predictor
from services.config import config_from_dict, config_to_dict, load_config
from services.data.features import compute_features, feature_warmup
from services.model.checkpoint import save_checkpoint

ROOT = Path(__file__).resolve().parents[3]
FEATURES = ["ret_1", "sma_ratio_20"]
WINDOW = 4
SHORT, FLAT, LONG = 0, 1, 2


def write_run(run_dir: Path, *, window: int = WINDOW, net_arch: list[int] | None = None) -> dict[str, Any]:
    """Write a run folder's config.yaml and normalizer.json (identity) and return the config dict."""
    raw = config_to_dict(load_config())
    raw["data"]["features"]["names"] = FEATURES
    raw["env"]["window"] = window
    raw["model"]["device"] = "cpu"
    raw["model"]["net_arch"] = net_arch or [8]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    normalizer = {
        "episode": 1,
        "names": FEATURES,
        "mean": [0.0] * len(FEATURES),
        "std": [1.0] * len(FEATURES),
    }
    (run_dir / "normalizer.json").write_text(json.dumps({**normalizer, "clip": 0.0}))
    return raw


def write_checkpoint(run_dir: Path, write_files: Any = None) -> Path:
    meta = {"model_id": "m-known", "algorithm": "ppo", "episode": 1, "complete": True, "num_timesteps": 0}
    return save_checkpoint(
        run_dir / "checkpoints", "episode-0001", meta, write_files or (lambda folder: None)
    )


def frame(closes: np.ndarray, start: str = "2020-01-01") -> pd.DataFrame:
    """Return daily OHLCV bars whose close follows `closes` (opens at the previous close)."""
    opens = np.concatenate(([closes[0]], closes[:-1]))
    return pd.DataFrame(
        {
            "Date": pd.date_range(start, periods=len(closes), freq="D"),
            "Open": opens,
            "High": np.maximum(opens, closes) * 1.01,
            "Low": np.minimum(opens, closes) * 0.99,
            "Close": closes,
            "Volume": np.full(len(closes), 1000.0),
        }
    )


class LastReturnSign:
    """Goes long when the last bar's one-bar return (feature 0 of the window's last row) is up, else short."""

    def __init__(self, n_features: int, window: int) -> None:
        self.column = (window - 1) * n_features
        self.observations: list[np.ndarray] = []

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        self.observations.append(np.array(observation))
        return np.array([LONG if observation[0, self.column] > 0 else SHORT]), state


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "run"
    write_run(folder)
    write_checkpoint(folder)
    return folder


@pytest.mark.parametrize(("last_move", "position"), [(+1.0, 1.0), (-1.0, -1.0)])
def test_the_decision_follows_the_last_bars_return_and_is_stamped_with_the_last_bar(
    run_dir: Path, last_move: float, position: float
) -> None:
    closes = 100.0 + np.sin(np.arange(80) / 3.0)
    closes[-1] = closes[-2] + last_move
    policy = LastReturnSign(len(FEATURES), WINDOW)

    prediction = Predictor(run_dir, policy=policy).predict_frame(frame(closes))

    assert prediction.position == position
    assert prediction.timestamp == "2020-03-20T00:00:00"  # the 80th day
    assert prediction.close == pytest.approx(closes[-1])
    assert prediction.model_id == "m-known"
    assert Path(prediction.checkpoint).name == "episode-0001"


def test_a_constant_policy_would_not_pass_as_the_decision_changes_with_the_data(run_dir: Path) -> None:
    closes = 100.0 + np.sin(np.arange(80) / 3.0)
    predictor = Predictor(run_dir, policy=LastReturnSign(len(FEATURES), WINDOW))

    decisions = {predictor.predict_frame(frame(closes[:n])).position for n in range(60, 80)}

    assert decisions == {-1.0, 1.0}


def test_the_warm_up_bars_are_cut_before_the_first_window(run_dir: Path) -> None:
    closes = 100.0 + np.cos(np.arange(50) / 2.0)
    policy = LastReturnSign(len(FEATURES), WINDOW)
    predictor = Predictor(run_dir, policy=policy)
    warmup = feature_warmup(predictor.config.data.features)
    bars_frame = frame(closes)
    features = compute_features(bars_frame.rename(columns=str.lower), predictor.config.data.features)

    prediction = predictor.predict_frame(bars_frame)

    assert warmup == 19 and np.isnan(features[warmup - 1]).any()
    assert prediction.bars == len(closes) - warmup
    first = policy.observations[0][0]
    window = features[warmup : warmup + WINDOW, :].reshape(-1)
    np.testing.assert_array_equal(first[: WINDOW * len(FEATURES)], window)
    assert np.isfinite(first).all() and first[-2:].tolist() == [0.0, 0.0]  # flat, no unrealised PnL
    assert len(policy.observations) == len(closes) - warmup - WINDOW + 1  # a decision at every bar


def test_data_inside_the_warm_up_is_refused_with_the_reason(run_dir: Path) -> None:
    predictor = Predictor(run_dir, policy=LastReturnSign(len(FEATURES), WINDOW))

    with pytest.raises(ValueError, match="warm-up"):
        predictor.predict_frame(frame(np.linspace(100.0, 110.0, 15)))


def test_a_run_without_a_checkpoint_is_refused(tmp_path: Path) -> None:
    from services.model.checkpoint import CheckpointError

    write_run(tmp_path / "run")

    with pytest.raises(CheckpointError, match="no checkpoint"):
        Predictor(tmp_path / "run")


# The checkpoint's own policy (a tiny untrained SB3 model: no training in unit tests).


@pytest.fixture(scope="module")
def sb3_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, np.ndarray]:
    """Return a run folder with a saved tiny PPO model, data, and the action of the model's own pass."""
    from services.env.options import n_actions
    from services.env.vec_env import VecTradingEnv
    from services.model.remote_vec_env import LocalBackend, RemoteVecEnv
    from services.model.trading_model import TradingModel

    run_dir = tmp_path_factory.mktemp("sb3") / "run"
    config = config_from_dict(write_run(run_dir, window=8, net_arch=[16]))
    rng = np.random.default_rng(7)
    bars = frame(100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, 300))))
    features = compute_features(bars.rename(columns=str.lower), config.data.features)
    first = int(np.argmax(np.isfinite(features).all(axis=1)))
    env = VecTradingEnv(config.env, bars_per_year=365.0, sequential=True)
    env.update_data(features[first:], bars["Open"].to_numpy()[first:], bars["Close"].to_numpy()[first:])
    options = config.env
    vec = RemoteVecEnv(
        LocalBackend(
            env, action=options.action, n_actions=n_actions(options.action), max_leverage=options.max_leverage
        )
    )
    model = TradingModel.create(
        config.model,
        vec,
        eval_env=vec,
        seed=3,
        budget=1024,
        tensorboard_dir=None,
        on_values=lambda steps, values: None,
    )
    write_checkpoint(run_dir, lambda folder: model.save(folder, replay_buffer=False))
    _, action = model.run_sequential(vec)
    positions = env.records().position
    assert len(set(positions[1:].tolist())) > 1, "the tiny model should change its position"
    return run_dir, bars, action


def test_the_checkpoints_policy_decides_exactly_as_the_models_own_sequential_pass(
    sb3_run: tuple[Path, pd.DataFrame, np.ndarray],
) -> None:
    run_dir, bars, model_action = sb3_run

    prediction = Predictor(run_dir).predict_frame(bars)

    assert prediction.action == [float(a) for a in np.asarray(model_action).reshape(-1)]
    assert prediction.model_id == "m-known"


def test_predict_from_the_command_line_starts_no_actor_system(
    sb3_run: tuple[Path, pd.DataFrame, np.ndarray], tmp_path: Path
) -> None:
    run_dir, bars, _ = sb3_run
    data = tmp_path / "bars.csv"
    bars.to_csv(data, index=False)
    script = (
        "import sys, json\n"
        "from launcher.cli import main\n"
        f"status = main(['predict', '--run', {str(run_dir)!r}, '--data', {str(data)!r}, '--json'])\n"
        "system = ('zmq', 'pykka', 'actors', 'launcher.train')\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith(system))))\n"
        "sys.exit(status)\n"
    )

    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )

    assert done.returncode == 0, done.stderr

    prediction_line, modules_line = done.stdout.strip().splitlines()
    assert json.loads(prediction_line)["bars"] == len(bars) - feature_warmup(
        config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text())).data.features
    )
    assert json.loads(modules_line) == []
