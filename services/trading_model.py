"""Wrap the session's one SB3 algorithm: create it once, train it in pieces, evaluate it deterministically.

Imported only in the model actor's process: it imports torch and stable_baselines3.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat
from stable_baselines3.common.vec_env import VecEnv

from services.config import ModelOptions

logger = logging.getLogger(__name__)

_CREATE = object()
"""Token that only TradingModel.create holds: there is no second way to build the model."""

ValuesSink = Callable[[int, dict[str, float]], None]
"""Receives SB3's logger values after each rollout/update, with the model's step counter."""
StepTick = Callable[[int], bool]
"""Called after every vectorized env step with the step counter; False stops the current piece."""


def _algorithm_class(name: str) -> type[BaseAlgorithm]:
    if name == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO  # type: ignore[no-any-return]
    classes: dict[str, type[BaseAlgorithm]] = {"ppo": PPO, "a2c": A2C, "dqn": DQN, "sac": SAC, "td3": TD3}
    return classes[name]


def resolve_device(device: str) -> str:
    """Turn 'auto' into cuda when a GPU is present, else cpu; keep explicit devices."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class _ForwardValues(KVWriter):
    """Forward the values SB3 dumps to a sink (they become TrainingMetrics events)."""

    def __init__(self, sink: ValuesSink, steps: Callable[[], int]) -> None:
        self._sink = sink
        self._steps = steps

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        values = {
            k: float(v)
            for k, v in key_values.items()
            if isinstance(v, int | float | np.floating | np.integer) and math.isfinite(float(v))
        }
        if values:
            self._sink(self._steps(), values)

    def close(self) -> None:
        """Nothing to release."""


class _Tick(BaseCallback):
    def __init__(self, tick: StepTick) -> None:
        super().__init__()
        self._tick = tick

    def _on_step(self) -> bool:
        return self._tick(self.num_timesteps)


class TradingModel:
    """The session's one trading model; build it only through `TradingModel.create`."""

    def __init__(
        self,
        algorithm: BaseAlgorithm,
        *,
        model_id: str,
        options: ModelOptions,
        device: str,
        eval_env: VecEnv,
        token: object = None,
    ) -> None:
        if token is not _CREATE:
            raise TypeError("build the session's model only through TradingModel.create")
        self.algorithm = algorithm
        self.eval_env = eval_env
        self.model_id = model_id
        self.options = options
        self.device = device

    @classmethod
    def create(
        cls,
        options: ModelOptions,
        env: VecEnv,
        *,
        eval_env: VecEnv,
        seed: int,
        tensorboard_dir: Path | None,
        on_values: ValuesSink,
    ) -> TradingModel:
        """Build the algorithm on the envs, with its logger forwarding values and writing TensorBoard."""
        torch.set_num_threads(options.torch_threads)
        device = resolve_device(options.device)
        algo_cls = _algorithm_class(options.algorithm)
        policy = "MlpLstmPolicy" if options.algorithm == "recurrent_ppo" else options.policy
        kwargs: dict[str, Any] = {"verbose": 0, **options.hyperparams}
        algorithm = algo_cls(
            policy,
            env,
            seed=seed,
            device=device,
            policy_kwargs={"net_arch": list(options.net_arch)},
            **kwargs,
        )
        model = cls(
            algorithm,
            model_id=uuid.uuid4().hex[:12],
            options=options,
            device=device,
            eval_env=eval_env,
            token=_CREATE,
        )
        formats: list[KVWriter] = [_ForwardValues(on_values, lambda: model.num_timesteps)]
        folder = ""
        if tensorboard_dir is not None:
            tensorboard_dir.mkdir(parents=True, exist_ok=True)
            formats.append(TensorBoardOutputFormat(str(tensorboard_dir)))
            folder = str(tensorboard_dir)
        algorithm.set_logger(Logger(folder=folder or None, output_formats=formats))
        return model

    @property
    def num_timesteps(self) -> int:
        """The model's step counter (all envs together), continuous across episodes."""
        return int(self.algorithm.num_timesteps)

    @property
    def parameters(self) -> int:
        """Number of trainable parameters of the policy."""
        return int(sum(p.numel() for p in self.algorithm.policy.parameters() if p.requires_grad))

    @property
    def rollout_steps(self) -> int:
        """Steps of one whole rollout (n_steps x n_envs) for on-policy algorithms, else the env count."""
        n_steps = getattr(self.algorithm, "n_steps", 1)
        return int(n_steps) * int(self.algorithm.n_envs)

    def learn(self, steps: int, tick: StepTick) -> int:
        """Train for at least `steps` more steps (whole rollouts); return the steps actually trained."""
        before = self.num_timesteps
        self.algorithm.learn(
            total_timesteps=steps, reset_num_timesteps=False, callback=_Tick(tick), progress_bar=False
        )
        return self.num_timesteps - before

    def evaluate(self) -> int:
        """Run one deterministic pass over the sequential eval env until it is done; return the steps."""
        env = self.eval_env
        obs = env.reset()
        state: Any = None
        episode_start = np.ones((env.num_envs,), dtype=bool)
        steps = 0
        while True:
            action, state = self.algorithm.predict(
                obs,  # type: ignore[arg-type]
                state=state,
                episode_start=episode_start,
                deterministic=True,
            )
            obs, _, dones, _ = env.step(action)
            episode_start = dones
            steps += 1
            if bool(dones[0]):
                return steps


class RemoteModelFactory:
    """The one way to build the session's model: SB3 on remote train and eval envs in the env actor."""

    def __init__(self, options: ModelOptions, *, seed: int, tensorboard_dir: Path | None) -> None:
        self.algorithm = options.algorithm
        self._options = options
        self._seed = seed
        self._tensorboard_dir = tensorboard_dir

    def create(self, env_client: Any, on_values: ValuesSink) -> TradingModel:
        """Describe the remote envs, wrap them as VecEnvs and build the model on them."""
        from services.remote_vec_env import RemoteVecEnv

        train_env = RemoteVecEnv(env_client, "train")
        eval_env = RemoteVecEnv(env_client, "eval")
        return TradingModel.create(
            self._options,
            train_env,
            eval_env=eval_env,
            seed=self._seed,
            tensorboard_dir=self._tensorboard_dir,
            on_values=on_values,
        )
