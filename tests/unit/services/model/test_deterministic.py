"""DeterministicPolicy decides exactly as SB3's own deterministic predict, for discrete and Box actions."""

from __future__ import annotations

import numpy as np
import pytest
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm

from services.model.deterministic import DeterministicPolicy


def algorithms() -> list[tuple[str, BaseAlgorithm]]:
    tiny = {"net_arch": [8]}
    return [
        ("ppo discrete", PPO("MlpPolicy", "CartPole-v1", policy_kwargs=tiny, seed=1, device="cpu")),
        ("ppo box", PPO("MlpPolicy", "Pendulum-v1", policy_kwargs=tiny, seed=2, device="cpu")),
        (
            "sac squashed box",
            SAC("MlpPolicy", "Pendulum-v1", buffer_size=64, policy_kwargs=tiny, seed=3, device="cpu"),
        ),
    ]


@pytest.mark.parametrize(("label", "algorithm"), algorithms(), ids=lambda v: v if isinstance(v, str) else "")
def test_the_fast_path_gives_sb3s_deterministic_actions(label: str, algorithm: BaseAlgorithm) -> None:
    rng = np.random.default_rng(0)
    space = algorithm.observation_space
    observations = rng.uniform(-2, 2, size=(40, *space.shape)).astype(np.float32)
    fast = DeterministicPolicy(algorithm.policy)

    for obs in observations:
        expected, _ = algorithm.predict(obs[None], deterministic=True)
        got, _ = fast.predict(obs[None], deterministic=True)

        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=label)
        assert got.shape == expected.shape and got.dtype == expected.dtype, label
