"""Use a trained model: load a run's last checkpoint with its normalisation and decide on the last bar.

The decision is the one the model takes at the last bar of a deterministic pass over the data, started
flat at the first full window after the feature warm-up, as in evaluation: the observation carries the
position the model holds and its unrealised PnL, so the decision depends on every earlier decision of
the pass, not on the last window alone. Only the policy is loaded (no optimiser, no envs for SB3, no
actors), and a Predictor keeps it, so a second decision in the same process costs only the pass.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from launcher.logs import configure_logging
from launcher.usage import EXIT_OK, UsageError
from services.config import Config, ConfigError, config_from_dict, read_yaml
from services.data.bars import Bars, DataError
from services.data.splits import Normalizer
from services.model.checkpoint import CheckpointError, CheckpointInfo, latest_checkpoint
from services.model.deterministic import DeterministicPolicy

if TYPE_CHECKING:
    from services.model.options import ModelOptions


class Policy(Protocol):
    """Maps observations to actions, as SB3's policies and algorithms do."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Return the actions for a batch of observations and the next recurrent state."""
        ...


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
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class PortfolioPrediction:
    """The target weights a portfolio model would trade to after the last bar of its universe."""

    timestamp: str
    weights: dict[str, float]
    """Target weight per symbol (an asset that cannot fill keeps the weight it holds)."""
    cash: float
    """1 - sum of the weights."""
    action: list[float]
    model_id: str
    checkpoint: str
    bars: int

    def as_dict(self) -> dict[str, Any]:
        """Return the prediction as JSON-safe data."""
        return dataclasses.asdict(self)


class Predictor:
    """A trained model with the normalisation statistics of its run (read only from the run's own files).

    Args:
        policy: decides instead of the checkpoint's policy (tests); by default the policy is loaded from
            the run's latest checkpoint on the first decision and kept.
    """

    def __init__(self, run_dir: Path, *, policy: Policy | None = None) -> None:
        self.run_dir = run_dir
        self.config: Config = config_from_dict(
            read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml")
        )
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
        self._policy = policy

    @property
    def policy(self) -> Policy:
        """Return the checkpoint's policy, loaded on first use."""
        if self._policy is None:
            self._policy = load_policy(self.checkpoint, self.config.model)
        return self._policy

    def predict_frame(self, frame: Any) -> Prediction:
        """Decide the position after the last bar of an OHLCV DataFrame (lowercase or any-case columns)."""
        from services.data.bars import infer_bars_per_year
        from services.data.features import FeaturePipeline

        bars = Bars.from_frame(frame)
        features = FeaturePipeline(self.config.data.features).update(bars)
        per_year = infer_bars_per_year(bars.timestamp) if len(bars) >= 2 else 0.0
        return self.predict_bars(bars, features, per_year)

    def predict_source(self, path: str | None = None) -> Prediction:
        """Decide the position after the last bar of a data source (the run's own source by default)."""
        from services.data.store import process_source

        source = self.config.data.source
        if path is not None:
            source = replace(source, path=path)
        data = process_source(source, self.config.data.features)
        return self.predict_bars(data.bars, data.features, data.bars_per_year)

    def predict_universe(self, path: str | None = None) -> PortfolioPrediction:
        """Decide the target weights after the last bar of a universe (the run's own source by default).

        The pass starts at the universe's first tradable bar, so the weights held at the last bar are the
        model's own; the target is `target_weights` of the last action from those weights.
        """
        from services.data.bars import infer_bars_per_year
        from services.data.universe import read_universe
        from services.env.portfolio import VecPortfolioEnv, target_weights

        config = self.config
        assert config.portfolio is not None and config.data.universe is not None
        source = config.data.source if path is None else replace(config.data.source, path=path)
        universe = read_universe(source, config.data.features, config.data.universe)
        first = universe.first_tradable_bar()
        if len(universe) - first <= config.env.window:
            raise ValueError(
                f"too few bars: {len(universe) - first} after the feature warm-up, a decision needs "
                f"env.window + 1 = {config.env.window + 1}"
            )
        env = VecPortfolioEnv(
            config.env,
            config.portfolio,
            bars_per_year=infer_bars_per_year(universe.timestamp),
            seed=config.training.seed,
            sequential=True,
        )
        tradable = universe.tradable[first:]
        env.update_data(
            self.normalizer.apply(universe.features[first:]),
            universe.open[first:],
            universe.close[first:],
            tradable,
        )
        action = last_bar_action(self.policy, env).reshape(1, -1)
        held = env.records().weights[-1:]
        weights = target_weights(
            config.portfolio, config.env.max_leverage, action, held, tradable[-1:].astype(np.float64)
        )[0]
        return PortfolioPrediction(
            timestamp=str(np.datetime64(int(universe.timestamp[-1]), "ns").astype("datetime64[s]")),
            weights={symbol: float(w) for symbol, w in zip(universe.symbols, weights, strict=True)},
            cash=float(1.0 - weights.sum()),
            action=[float(a) for a in action.reshape(-1)],
            model_id=str(self.checkpoint.meta.get("model_id", "")),
            checkpoint=str(self.checkpoint.path),
            bars=len(universe) - first,
        )

    def predict_bars(self, bars: Bars, features: np.ndarray, bars_per_year: float = 0.0) -> Prediction:
        """Decide the position after the last bar, given the bars and their (unnormalised) features.

        The leading rows whose features are not all finite (the warm-up) are cut before the pass.
        """
        from services.env.options import DEFAULT_BARS_PER_YEAR
        from services.env.vec_env import VecTradingEnv, action_position

        finite = np.isfinite(features).all(axis=1)
        if not finite.any():
            raise ValueError("too few bars: every row is inside the feature warm-up")
        first = int(np.argmax(finite))
        options = self.config.env
        if len(bars) - first <= options.window:
            raise ValueError(
                f"too few bars: {len(bars) - first} after the feature warm-up, a decision needs "
                f"env.window + 1 = {options.window + 1}"
            )
        env = VecTradingEnv(
            options,
            bars_per_year=bars_per_year if bars_per_year > 0 else DEFAULT_BARS_PER_YEAR,
            seed=self.config.training.seed,
            sequential=True,
        )
        env.update_data(
            self.normalizer.apply(features[first:]),
            np.ascontiguousarray(bars.open[first:], dtype=np.float64),
            np.ascontiguousarray(bars.close[first:], dtype=np.float64),
        )
        action = last_bar_action(self.policy, env)
        return Prediction(
            timestamp=str(np.datetime64(int(bars.timestamp[-1]), "ns").astype("datetime64[s]")),
            close=float(bars.close[-1]),
            position=action_position(options, action),
            action=[float(a) for a in action.reshape(-1)],
            model_id=str(self.checkpoint.meta.get("model_id", "")),
            checkpoint=str(self.checkpoint.path),
            bars=len(bars) - first,
        )


def last_bar_action(policy: Policy, env: Any) -> np.ndarray:
    """Run a deterministic pass of the policy over a sequential VecTradingEnv; return its last-bar action.

    The same steps as the model's evaluation pass over its VecEnv: the actions are cast as that VecEnv
    casts them, and the last action is taken on the observation of the last bar.
    """
    obs = env.reset().copy()
    state: Any = None
    episode_start = np.ones(1, dtype=bool)
    while True:
        action, state = policy.predict(obs, state=state, episode_start=episode_start, deterministic=True)
        actions = np.asarray(action)
        kind = np.float32 if actions.dtype.kind == "f" else np.int64
        # One action per env; a portfolio's is a row of raw weights.
        shape = (1, -1) if actions.size > 1 else (1,)
        result = env.step(actions.astype(kind, copy=False).reshape(shape))
        if result.terminated[0] or result.truncated[0]:
            final, _ = policy.predict(
                result.terminal_obs[:1].copy(),
                state=state,
                episode_start=np.zeros(1, dtype=bool),
                deterministic=True,
            )
            return np.asarray(final)
        obs = result.obs.copy()
        episode_start = np.zeros(1, dtype=bool)


class _NoOptimizer:
    """Stands in for the optimiser a policy builds: inference never steps it."""

    def __init__(self, params: Any, **kwargs: Any) -> None:
        del params, kwargs


def load_policy(checkpoint: CheckpointInfo, options: ModelOptions) -> Policy:
    """Load only the policy of a checkpoint's model, on the device and threads the model actor uses.

    The weights and the policy class are the checkpoint's, so decisions are the model's; the optimiser is
    training state and is not built (building a torch optimiser imports torch._dynamo, about a second).
    """
    import torch
    from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
    from stable_baselines3.common.policies import BasePolicy
    from stable_baselines3.common.save_util import load_from_zip_file

    from services.model.options import algorithm_class
    from services.model.trading_model import MODEL_FILE, resolve_device

    torch.set_num_threads(options.torch_threads)
    device = resolve_device(options.device)
    data, params, _ = load_from_zip_file(checkpoint.path / MODEL_FILE, device=device)
    if data is None or "policy" not in params:
        raise CheckpointError(f"{checkpoint.path / MODEL_FILE}: no policy in the model file")
    kwargs: dict[str, Any] = {**data.get("policy_kwargs", {}), "optimizer_class": _NoOptimizer}
    if issubclass(algorithm_class(options.algorithm), OnPolicyAlgorithm):
        # On-policy algorithms hand use_sde to their policy outside policy_kwargs.
        kwargs.setdefault("use_sde", bool(data.get("use_sde", False)))
    policy = data["policy_class"](data["observation_space"], data["action_space"], lambda _: 0.0, **kwargs)
    policy.load_state_dict(params["policy"])
    policy.to(device)
    if type(policy).predict is not BasePolicy.predict:
        # A policy with a predict of its own (recurrent: it carries state) is used as it is.
        policy.set_training_mode(False)
        return policy
    return DeterministicPolicy(policy)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py predict`."""
    parser.add_argument(
        "--run", dest="run_dir", type=Path, required=True, metavar="RUN_DIR", help="a trained run folder"
    )
    parser.add_argument("--data", help="data file (default: the run's own source)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def predict_main(args: argparse.Namespace) -> int:
    """Print the position a trained run's model would take after the last bar of the data."""
    configure_logging(None, stderr_level=logging.ERROR)
    if args.data is not None and not Path(args.data).exists():
        raise UsageError(f"--data: {args.data} does not exist")
    try:
        predictor = Predictor(args.run_dir)
        if predictor.config.portfolio is not None:
            return _print_weights(predictor.predict_universe(args.data), as_json=args.json)
        prediction = predictor.predict_source(args.data)
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


def _print_weights(prediction: PortfolioPrediction, *, as_json: bool) -> int:
    """Print a portfolio's target weights per symbol, one line each (or one JSON object)."""
    if as_json:
        print(json.dumps(prediction.as_dict()))
        return EXIT_OK
    print(
        f"after {prediction.timestamp}: target weights (model {prediction.model_id}, "
        f"{Path(prediction.checkpoint).name})"
    )
    for symbol, weight in prediction.weights.items():
        print(f"  {symbol:<12} {weight:+.4f}")
    print(f"  {'cash':<12} {prediction.cash:+.4f}")
    return EXIT_OK
