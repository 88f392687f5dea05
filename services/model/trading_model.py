"""Wrap the session's one SB3 algorithm: create it once, train it in pieces, evaluate it deterministically.

Imported only in the model actor's process: it imports torch and stable_baselines3.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard.writer import FileWriter

from services.errors import InputError
from services.model.checkpoint import CheckpointInfo, save_checkpoint
from services.model.deterministic import DeterministicPolicy
from services.model.options import ModelOptions, algorithm_class
from services.model.remote_vec_env import RemoteBackend, RemoteVecEnv, rollout_hook
from services.model.schedule import BudgetSchedule

logger = logging.getLogger(__name__)

MODEL_FILE = "model.zip"
REPLAY_FILE = "replay_buffer.pkl"

_CREATE = object()
"""Token that only TradingModel.create holds: there is no second way to build the model."""

ValuesSink = Callable[[int, dict[str, float]], None]
"""Receives SB3's logger values after each rollout/update, with the model's step counter."""
StepTick = Callable[[int], bool]
"""Called after every vectorized env step with the step counter; False stops the current piece."""


@contextlib.contextmanager
def unchecked_distributions() -> Iterator[None]:
    """Turn off torch's argument checks of distributions while SB3 trains, and back on after.

    Every step of a rollout builds the policy's action distribution, and with the checks on torch
    tests its parameters and every sampled action against the distribution's support: about a tenth
    of PPO's training time at 16 envs (docs/BENCHMARKS.md, section 14). The checks change no value.
    What they would catch still stops a session: a policy gone to NaN makes a categorical sample fail
    in torch, and its NaN continuous actions are refused by the env's step.
    """
    checked = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        torch.distributions.Distribution.set_default_validate_args(checked)


class DeviceError(InputError):
    """model.device names a device this machine (or this build of torch) does not have."""


def resolve_device(device: str) -> str:
    """Turn 'auto' into cuda when a GPU is present, else cpu; check that an explicit cuda device exists.

    SB3 quietly falls back to the CPU when CUDA is missing; a session asked for cuda must not train on
    the CPU while its events say cuda, so that is refused here (the launcher exits with status 2).
    """
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"model.device is {device!r}, but torch {torch.__version__} sees no CUDA device "
                "(set model.device to auto or cpu)"
            )
        index = int(device.partition(":")[2] or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"model.device is {device!r}, but this machine has {count} CUDA device(s)")
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


class _TensorBoardScalars(KVWriter):
    """Write the numeric values SB3 dumps to TensorBoard: one event a dump, the file flushed by `flush`.

    SB3's own TensorBoardOutputFormat writes an event per value and flushes the file at every dump,
    about 1.2 ms a rollout here, 2 % of a 16-env session's training (docs/BENCHMARKS.md, section 14).
    TradingModel.learn flushes at the end of each piece, and closing the logger flushes too: a model
    actor killed mid-piece loses that piece's points here (the session's events.jsonl has them).
    """

    def __init__(self, folder: Path) -> None:
        self._writer = FileWriter(str(folder))

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        values = [
            Summary.Value(tag=key, simple_value=float(value))
            for key, value in sorted(key_values.items())
            if isinstance(value, int | float | np.number | np.bool_)
            and "tensorboard" not in (key_excluded.get(key) or ())
        ]
        if values:
            self._writer.add_summary(Summary(value=values), step)

    def flush(self) -> None:
        """Write what was dumped so far to the event file."""
        self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()


class _Tick(BaseCallback):
    def __init__(self, tick: StepTick, schedule: BudgetSchedule | None) -> None:
        super().__init__()
        self._tick = tick
        self._schedule = schedule

    def _on_step(self) -> bool:
        return self._tick(self.num_timesteps)

    def _on_rollout_start(self) -> None:
        # An on-policy rollout is a run of steps with nothing else between them: on a busy machine the
        # env actor's lease and this thread are then placed (services.transport.colocate). An
        # off-policy "rollout" is a step or a few between gradient steps, so those are left where the
        # scheduler puts them.
        if isinstance(self.model, OnPolicyAlgorithm):
            rollout_hook(self.training_env, "begin_rollout")

    def _on_rollout_end(self) -> None:
        if isinstance(self.model, OnPolicyAlgorithm):
            rollout_hook(self.training_env, "end_rollout")
        # The update that follows a rollout reads the schedule; it is measured on the model's counter.
        if self._schedule is not None:
            self._schedule.steps = self.num_timesteps


class SequentialPass:
    """A deterministic pass of a model over a sequential env, taken a piece at a time."""

    def __init__(self, algorithm: BaseAlgorithm, env: VecEnv) -> None:
        self._algorithm = algorithm
        # A recurrent policy carries its state through SB3's predict; any other decides through its own
        # forward pass, without predict's per-call checks and mode switch (about 2.5 times faster).
        recurrent = type(algorithm).__name__ == "RecurrentPPO"
        self._decide = algorithm.predict if recurrent else DeterministicPolicy(algorithm.policy).predict
        self._env = env
        self._obs: Any = env.reset()
        self._state: Any = None
        self._episode_start = np.ones((env.num_envs,), dtype=bool)
        self._terminal: np.ndarray | None = None
        self.steps = 0

    @property
    def done(self) -> bool:
        """Whether the pass has reached the env's last bar."""
        return self._terminal is not None

    def run(self, steps: int) -> bool:
        """Take up to `steps` more steps; return True once the pass has reached the last bar."""
        for _ in range(steps):
            if self.done:
                break
            action, self._state = self._decide(
                self._obs, state=self._state, episode_start=self._episode_start, deterministic=True
            )
            self._obs, _, dones, infos = self._env.step(action)
            self._episode_start = dones
            self.steps += 1
            if bool(dones[0]):
                self._terminal = infos[0]["terminal_observation"][None]
        return self.done

    def final_action(self) -> np.ndarray:
        """Return the action the model takes at the last bar of the finished pass."""
        if self._terminal is None:
            raise RuntimeError("the sequential pass has not reached its last bar")
        final, _ = self._decide(
            self._terminal, state=self._state, episode_start=np.zeros(1, dtype=bool), deterministic=True
        )
        return np.asarray(final)


class TradingModel:
    """The session's one trading model; build it only through `TradingModel.create`."""

    def __init__(
        self,
        algorithm: BaseAlgorithm,
        *,
        model_id: str,
        options: ModelOptions,
        eval_env: VecEnv,
        schedule: BudgetSchedule | None = None,
        token: object = None,
    ) -> None:
        if token is not _CREATE:
            raise TypeError("build the session's model only through TradingModel.create")
        self.algorithm = algorithm
        self.eval_env = eval_env
        self.schedule = schedule
        self.restored_from = ""
        self._evaluation: SequentialPass | None = None
        self._board: _TensorBoardScalars | None = None
        self.model_id = model_id
        self.options = options
        # What the algorithm really runs on (e.g. "cuda:0" for "cuda"), as events report it.
        self.device = str(algorithm.device)

    @classmethod
    def create(
        cls,
        options: ModelOptions,
        env: VecEnv,
        *,
        eval_env: VecEnv,
        seed: int,
        budget: int,
        tensorboard_dir: Path | None,
        on_values: ValuesSink,
        checkpoint: CheckpointInfo | None = None,
    ) -> TradingModel:
        """Build the algorithm on the envs (or restore it from a checkpoint) with its logger wired.

        This is the only way to obtain a TradingModel. A restored model keeps its id, weights, optimiser
        state, step counter and RNG states.

        Args:
            budget: the session's training steps (all episodes), over which a learning-rate schedule
                other than constant runs.
        """
        torch.set_num_threads(options.torch_threads)
        device = resolve_device(options.device)
        algo_cls: type[BaseAlgorithm] = algorithm_class(options.algorithm)
        schedule = None
        rates: dict[str, Any] = {}
        if options.learning_rate_schedule == "linear":
            schedule = BudgetSchedule(start=float(options.hyperparams["learning_rate"]), budget=budget)
            rates["learning_rate"] = schedule
        if checkpoint is None:
            policy = "MlpLstmPolicy" if options.algorithm == "recurrent_ppo" else options.policy
            kwargs: dict[str, Any] = {"verbose": 0, **options.hyperparams, **rates}
            algorithm = algo_cls(
                policy,
                env,
                seed=seed,
                device=device,
                policy_kwargs={"net_arch": list(options.net_arch)},
                **kwargs,
            )
            model_id, restored = uuid.uuid4().hex[:12], ""
        else:
            folder = checkpoint.path
            # The saved schedule's step count is stale: the restored model runs on this session's own.
            algorithm = algo_cls.load(folder / MODEL_FILE, env=env, device=device, custom_objects=rates)
            if schedule is not None:
                schedule.steps = int(algorithm.num_timesteps)
            replay = folder / REPLAY_FILE
            if replay.is_file() and hasattr(algorithm, "load_replay_buffer"):
                algorithm.load_replay_buffer(replay)
            _restore_rng(folder)
            model_id, restored = str(checkpoint.meta["model_id"]), str(folder)
        model = cls(
            algorithm, model_id=model_id, options=options, eval_env=eval_env, schedule=schedule, token=_CREATE
        )
        model.restored_from = restored
        formats: list[KVWriter] = [_ForwardValues(on_values, lambda: model.num_timesteps)]
        folder_name = ""
        if tensorboard_dir is not None:
            tensorboard_dir.mkdir(parents=True, exist_ok=True)
            model._board = _TensorBoardScalars(tensorboard_dir)
            formats.append(model._board)
            folder_name = str(tensorboard_dir)
        algorithm.set_logger(Logger(folder=folder_name or None, output_formats=formats))
        return model

    def save(self, folder: Path, *, replay_buffer: bool) -> None:
        """Write the model (weights and optimiser state), the replay buffer if asked, and the RNG states."""
        self.algorithm.save(folder / MODEL_FILE)
        if replay_buffer and getattr(self.algorithm, "replay_buffer", None) is not None:
            self.algorithm.save_replay_buffer(folder / REPLAY_FILE)  # type: ignore[attr-defined]
        np.save(folder / "torch_rng.npy", torch.get_rng_state().numpy(), allow_pickle=False)
        _, keys, pos, has_gauss, cached = np.random.get_state()
        meta = np.array([pos, has_gauss])
        np.savez(folder / "numpy_rng.npz", keys=keys, meta=meta, cached=np.array([cached]))
        (folder / "python_rng.json").write_text(json.dumps(random.getstate()[1]))

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
        try:
            with unchecked_distributions():
                self.algorithm.learn(
                    total_timesteps=steps,
                    reset_num_timesteps=False,
                    callback=_Tick(tick, self.schedule),
                    progress_bar=False,
                )
        finally:
            # A rollout stopped by the tick (or a fault) ends without SB3's on_rollout_end.
            if isinstance(self.algorithm, OnPolicyAlgorithm):
                rollout_hook(self.algorithm.get_env(), "end_rollout")
            if self._board is not None:
                self._board.flush()
        return self.num_timesteps - before

    def start_evaluation(self) -> None:
        """Start a deterministic pass over the sequential eval env, from its first bar."""
        self._evaluation = SequentialPass(self.algorithm, self.eval_env)

    def evaluate(self, steps: int) -> bool:
        """Take up to `steps` more steps of the evaluation pass; return True once it reached the last bar."""
        if self._evaluation is None:
            raise RuntimeError("start_evaluation() first")
        return self._evaluation.run(steps)

    def run_sequential(self, env: VecEnv) -> tuple[int, np.ndarray]:
        """Run a deterministic pass over a sequential env; return the steps and the action at its last bar."""
        run = SequentialPass(self.algorithm, env)
        run.run(sys.maxsize)
        return run.steps, run.final_action()


def _restore_rng(folder: Path) -> None:
    torch.set_rng_state(torch.from_numpy(np.load(folder / "torch_rng.npy", allow_pickle=False)))
    with np.load(folder / "numpy_rng.npz", allow_pickle=False) as saved:
        pos, has_gauss = (int(v) for v in saved["meta"])
        np.random.set_state(("MT19937", saved["keys"], pos, has_gauss, float(saved["cached"][0])))
    state = json.loads((folder / "python_rng.json").read_text())
    random.setstate((3, tuple(state), None))


class RemoteModelFactory:
    """The one way to build the session's model: SB3 on remote train and eval envs in the env actor.

    With a checkpoint, the model is restored from it instead (resume); either way it is built once.
    """

    def __init__(
        self,
        options: ModelOptions,
        *,
        seed: int,
        budget: int,
        tensorboard_dir: Path | None,
        checkpoint_root: Path,
        fingerprint: dict[str, str],
        resume: CheckpointInfo | None = None,
    ) -> None:
        self.algorithm = options.algorithm
        self._options = options
        self._seed = seed
        self._budget = budget
        self._tensorboard_dir = tensorboard_dir
        self._checkpoint_root = checkpoint_root
        self._fingerprint = fingerprint
        self._resume = resume

    @property
    def restores(self) -> bool:
        """Whether create() restores a checkpoint (a resumed session, or a model restarted mid-session)."""
        return self._resume is not None

    def create(self, env_client: Any, on_values: ValuesSink) -> TradingModel:
        """Describe the remote envs, wrap them as VecEnvs and build (or restore) the model on them."""
        train_env = RemoteVecEnv(RemoteBackend(env_client, "train"))
        eval_env = RemoteVecEnv(RemoteBackend(env_client, "eval"))
        return TradingModel.create(
            self._options,
            train_env,
            eval_env=eval_env,
            seed=self._seed,
            budget=self._budget,
            tensorboard_dir=self._tensorboard_dir,
            on_values=on_values,
            checkpoint=self._resume,
        )

    def checkpoint(self, model: TradingModel, episode: int, complete: bool) -> str:
        """Write an atomic checkpoint of the model after (or, if not complete, during) an episode."""
        meta = {
            "model_id": model.model_id,
            "algorithm": self.algorithm,
            "episode": episode,
            "complete": complete,
            "num_timesteps": model.num_timesteps,
            **self._fingerprint,
        }
        name = f"episode-{episode:04d}" + ("" if complete else "-partial")
        path = save_checkpoint(
            self._checkpoint_root,
            name,
            meta,
            lambda folder: model.save(folder, replay_buffer=self._options.save_replay_buffer),
        )
        return str(path)
