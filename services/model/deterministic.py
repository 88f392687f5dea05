"""Decide with a policy deterministically, one flat batch at a time, as SB3's predict does but cheaper."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces


class DeterministicPolicy:
    """SB3's BasePolicy.predict on one flat observation, without the mode switch and checks of every call."""

    def __init__(self, policy: Any) -> None:
        policy.set_training_mode(False)
        self._policy = policy
        self._box = isinstance(policy.action_space, spaces.Box)

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Return the policy's actions for a batch of observations, as BasePolicy.predict does."""
        policy = self._policy
        with torch.no_grad():
            tensor = torch.as_tensor(observation, device=policy.device)
            actions = policy._predict(tensor, deterministic=deterministic).cpu().numpy()
        actions = actions.reshape((-1, *policy.action_space.shape))
        if self._box:
            space = policy.action_space
            actions = (
                policy.unscale_action(actions)
                if policy.squash_output
                else np.clip(actions, space.low, space.high)
            )
        return actions, state
