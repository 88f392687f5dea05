"""Settings shared by the tests that run real sessions: a tiny network and budget."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY_MODEL = [
    "--set", "training.piece_steps=512",
    "--set", "env.n_envs=4",
    "--set", "env.window=8",
    "--set", "env.episode_length=64",
    "--set", "model.net_arch=[8]",
    "--set", "model.hyperparams.n_steps=64",
    "--set", "model.hyperparams.batch_size=64",
    "--set", "model.hyperparams.n_epochs=1",
]  # fmt: skip
"""A tiny PPO on 4 envs; add a budget."""
TINY = [*TINY_MODEL, "--set", "training.steps_per_episode=1024"]
"""A tiny PPO session of 1,024 steps per episode."""
