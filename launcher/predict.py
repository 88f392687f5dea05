"""Use a trained model: load a run's last checkpoint with its normalisation and decide on the last bar."""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from launcher.logs import configure_logging
from launcher.usage import EXIT_OK, UsageError
from services.config import Config, ConfigError, config_from_dict, read_yaml
from services.data.bars import DataError
from services.data.splits import Normalizer
from services.model.checkpoint import CheckpointError, latest_checkpoint


@dataclass(frozen=True, slots=True)
class Prediction:
    """The position the model would take after the last bar of the data."""

    timestamp: str
    close: float
    position: float
    action: list[float]
    model_id: str
    checkpoint: str
    bars: int

    def as_dict(self) -> dict[str, Any]:
        """Return the prediction as JSON-safe data."""
        return {
            "timestamp": self.timestamp,
            "close": self.close,
            "position": self.position,
            "action": self.action,
            "model_id": self.model_id,
            "checkpoint": self.checkpoint,
            "bars": self.bars,
        }


class Predictor:
    """A trained model with the normalisation statistics of its run (read only from the run's own files)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        try:
            self.config: Config = config_from_dict(
                read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml")
            )
        except ConfigError:
            raise
        info = latest_checkpoint(run_dir / "checkpoints")
        if info is None:
            raise CheckpointError(f"{run_dir}: no checkpoint: train the run first")
        self.checkpoint = info
        norm_path = run_dir / "normalizer.json"
        try:
            raw = json.loads(norm_path.read_text())
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{norm_path}: cannot read the normalisation statistics ({exc})") from None
        raw.pop("episode", None)
        self.normalizer = Normalizer.from_dict(raw)

    def predict_frame(self, frame: Any) -> Prediction:
        """Decide the position after the last bar of an OHLCV DataFrame (lowercase or any-case columns)."""
        from services.data.features import compute_features

        ohlcv = frame.rename(columns=str.lower)
        features = compute_features(
            ohlcv[["open", "high", "low", "close", "volume"]], self.config.data.features
        )
        stamps = _timestamps(ohlcv)
        return self._predict(
            features,
            ohlcv["open"].to_numpy(np.float64),
            ohlcv["close"].to_numpy(np.float64),
            stamps,
        )

    def predict_source(self, path: str | None = None) -> Prediction:
        """Decide the position after the last bar of a data source (the run's own source by default)."""
        import dataclasses

        from services.data.store import process_source

        source = self.config.data.source
        if path is not None:
            source = dataclasses.replace(source, path=path)
        data = process_source(source, self.config.data.features)
        bars = data.bars
        return self._predict(data.features, bars.open, bars.close, bars.timestamp)

    def _predict(
        self, features: np.ndarray, open_: np.ndarray, close: np.ndarray, stamps: np.ndarray
    ) -> Prediction:
        from services.env.options import n_actions
        from services.env.vec_env import VecTradingEnv, action_position
        from services.model.remote_vec_env import LocalBackend, RemoteVecEnv
        from services.model.trading_model import TradingModel

        finite = np.isfinite(features).all(axis=1)
        if not finite.any():
            raise ValueError("too few bars: every row is inside the feature warm-up")
        first = int(np.argmax(finite))
        env_options = self.config.env
        env = VecTradingEnv(env_options, seed=self.config.training.seed, sequential=True)
        env.update_data(
            self.normalizer.apply(features[first:]),
            np.ascontiguousarray(open_[first:], dtype=np.float64),
            np.ascontiguousarray(close[first:], dtype=np.float64),
        )
        backend = LocalBackend(
            env,
            action=env_options.action,
            n_actions=n_actions(env_options.action),
            max_leverage=env_options.max_leverage,
        )
        vec = RemoteVecEnv(backend)
        model = TradingModel.create(
            self.config.model,
            vec,
            eval_env=vec,
            seed=self.config.training.seed,
            tensorboard_dir=None,
            on_values=lambda steps, values: None,
            checkpoint=self.checkpoint,
        )
        _, action = model.run_sequential(vec)
        return Prediction(
            timestamp=str(np.datetime64(int(stamps[-1]), "ns").astype("datetime64[s]")),
            close=float(close[-1]),
            position=action_position(env_options, action),
            action=[float(a) for a in np.asarray(action).reshape(-1)],
            model_id=model.model_id,
            checkpoint=str(self.checkpoint.path),
            bars=int(len(close) - first),
        )


def _timestamps(frame: Any) -> np.ndarray:
    import pandas as pd

    for column in frame.columns:
        if str(column).lower() in ("date", "time", "datetime", "timestamp"):
            return pd.to_datetime(frame[column]).to_numpy("datetime64[ns]").astype(np.int64)
    return pd.to_datetime(frame.index).to_numpy("datetime64[ns]").astype(np.int64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py predict`."""
    parser.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="a trained run folder")
    parser.add_argument("--data", help="data file (default: the run's own source)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def predict_main(args: argparse.Namespace) -> int:
    """Print the position a trained run's model would take after the last bar of the data."""
    configure_logging(None, stderr_level=logging.ERROR)
    if args.data is not None and not Path(args.data).exists():
        raise UsageError(f"--data: {args.data} does not exist")
    try:
        prediction = Predictor(args.run).predict_source(args.data)
    except (CheckpointError, ConfigError, DataError, ValueError) as exc:
        raise UsageError(f"predict: {exc}") from None
    if args.json:
        print(json.dumps(prediction.as_dict()))
        return EXIT_OK
    side = "long" if prediction.position > 0 else "short" if prediction.position < 0 else "flat"
    print(
        f"after {prediction.timestamp} (close {prediction.close:.2f}): {side} {prediction.position:+.2f}"
        f" (model {prediction.model_id}, {Path(prediction.checkpoint).name})"
    )
    return EXIT_OK
