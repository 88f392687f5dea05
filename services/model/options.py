"""Configure the session's one model (the `model:` section) and name the algorithms it can be.

The registry here (each algorithm's SB3 class, the hyperparameters it accepts, the action modes it needs)
is the one the config, the docs and TradingModel read. Importing it loads neither torch nor SB3.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from services.model.schedule import LEARNING_RATE_SCHEDULES

# Hyperparameters each algorithm accepts from the config (SB3's constructor arguments).
_COMMON = {"learning_rate", "gamma", "verbose", "stats_window_size"}
_ON_POLICY = _COMMON | {
    "n_steps",
    "gae_lambda",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "normalize_advantage",
}
_OFF_POLICY = _COMMON | {
    "buffer_size",
    "learning_starts",
    "batch_size",
    "tau",
    "train_freq",
    "gradient_steps",
}
_PPO = _ON_POLICY | {"batch_size", "n_epochs", "clip_range", "clip_range_vf", "target_kl"}
ALGORITHM_HYPERPARAMS: dict[str, frozenset[str]] = {
    "ppo": frozenset(_PPO),
    "recurrent_ppo": frozenset(_PPO),
    "a2c": frozenset(_ON_POLICY | {"rms_prop_eps", "use_rms_prop"}),
    "dqn": frozenset(
        _OFF_POLICY
        | {
            "target_update_interval",
            "exploration_fraction",
            "exploration_initial_eps",
            "exploration_final_eps",
        }
    ),
    "sac": frozenset(_OFF_POLICY | {"ent_coef", "target_update_interval", "target_entropy", "use_sde"}),
    "td3": frozenset(_OFF_POLICY | {"policy_delay", "target_policy_noise", "target_noise_clip"}),
}
_REPLAY = {"buffer_size": 50_000, "learning_starts": 1_000, "gamma": 0.99}
ALGORITHM_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {
        "n_steps": 64,  # x 64 envs = 4,096 steps a rollout
        "batch_size": 1024,
        "n_epochs": 4,
        "learning_rate": 0.0003,
        "gamma": 0.9,  # a bar's reward is position x next return less costs: nearly a bandit
        "gae_lambda": 0.95,
        "ent_coef": 0.01,
    },
    "recurrent_ppo": {
        "n_steps": 64,
        "batch_size": 1024,
        "n_epochs": 4,
        "learning_rate": 0.0003,
        "gamma": 0.99,
        "gae_lambda": 0.95,
        "ent_coef": 0.01,
    },
    "a2c": {"n_steps": 8, "learning_rate": 0.0007, "gamma": 0.99, "gae_lambda": 0.95, "ent_coef": 0.01},
    "dqn": {
        **_REPLAY,
        "learning_rate": 0.0001,
        "batch_size": 64,
        "train_freq": 4,
        "target_update_interval": 1_000,
        "exploration_fraction": 0.1,
        "exploration_final_eps": 0.05,
    },
    "sac": {**_REPLAY, "learning_rate": 0.0003, "batch_size": 256, "tau": 0.005},
    "td3": {**_REPLAY, "learning_rate": 0.001, "batch_size": 256, "tau": 0.005},
}
"""The project's hyperparameters of each algorithm (RL-Zoo's hyperparams/<algo>.yml), merged under the
config's `model.hyperparams` when a config is loaded; replay buffers are kept to 50,000 transitions."""
DISCRETE_ONLY = frozenset({"dqn"})
"""Algorithms that need env.action discrete3 or discrete2."""
CONTINUOUS_ONLY = frozenset({"sac", "td3"})
"""Algorithms that need env.action continuous; a loaded config gets it when env.action is not set."""
OFF_POLICY = frozenset({"dqn", "sac", "td3"})
"""Algorithms that take one gradient step per step of all envs, so they learn more per sample on few envs."""
OFF_POLICY_MAX_ENVS = 8
"""The most envs suggested for an off-policy algorithm."""
ALGORITHM_CLASSES: dict[str, tuple[str, str]] = {
    "ppo": ("stable_baselines3", "PPO"),
    "recurrent_ppo": ("sb3_contrib", "RecurrentPPO"),
    "a2c": ("stable_baselines3", "A2C"),
    "dqn": ("stable_baselines3", "DQN"),
    "sac": ("stable_baselines3", "SAC"),
    "td3": ("stable_baselines3", "TD3"),
}
"""Module and class name of each algorithm's SB3 class, imported only by algorithm_class."""


def algorithm_class(name: str) -> type[Any]:
    """Import and return the SB3 class of an algorithm (this loads torch)."""
    module, attr = ALGORITHM_CLASSES[name]
    cls: type[Any] = getattr(importlib.import_module(module), attr)
    return cls


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelOptions:
    """The one model of the session: algorithm, network, device and hyperparameters."""

    algorithm: str = "ppo"
    """One of ppo, a2c, dqn, sac, td3, recurrent_ppo."""
    policy: str = "MlpPolicy"
    """SB3 policy name (recurrent_ppo uses MlpLstmPolicy whatever is set)."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda[:N]."""
    torch_threads: int = 1
    """Torch intra-op threads in the model process; small MLPs train fastest with 1."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy and value networks."""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the SB3 algorithm, over the algorithm's defaults (see below); checked against
    the algorithm's known arguments."""
    save_replay_buffer: bool = False
    """Put the replay buffer of off-policy algorithms into checkpoints (it can be large)."""
    learning_rate_schedule: str = "constant"
    """constant, or linear: the learning rate falls in a straight line from hyperparams.learning_rate to 0
    over the session's training budget (training.episodes x training.steps_per_episode steps, counted on
    the model's step counter, so a resume with more episodes goes on along the longer budget)."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHM_HYPERPARAMS:
            known = ", ".join(ALGORITHM_HYPERPARAMS)
            raise ValueError(f"algorithm must be one of {known}, got {self.algorithm!r}")
        unknown = set(self.hyperparams) - ALGORITHM_HYPERPARAMS[self.algorithm]
        if unknown:
            raise ValueError(f"hyperparams {sorted(unknown)} are not arguments of {self.algorithm}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {dev!r}")
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            known = " or ".join(LEARNING_RATE_SCHEDULES)
            raise ValueError(f"learning_rate_schedule must be {known}, got {self.learning_rate_schedule!r}")
        rate = self.hyperparams.get("learning_rate", 0.0)
        if self.learning_rate_schedule != "constant" and not (
            isinstance(rate, int | float) and not isinstance(rate, bool) and rate > 0
        ):
            raise ValueError(
                f"learning_rate_schedule {self.learning_rate_schedule} needs a positive number for "
                f"hyperparams.learning_rate, got {rate!r}"
            )
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1, got {self.torch_threads}")
        if not self.net_arch or any(n < 1 for n in self.net_arch):
            raise ValueError(f"net_arch must be positive layer sizes, got {list(self.net_arch)}")
