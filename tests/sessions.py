"""Settings shared by the tests that run real sessions: a tiny network and budget."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def start_session(
    settings: list[str], runs_dir: Path, name: str, *extra: str, **popen: Any
) -> subprocess.Popen[str]:
    """Start `run.py` with the given settings in its own run folder, stdout and stderr piped."""
    return subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run.py"),
            *settings,
            "--set",
            f"session.runs_dir={runs_dir}",
            "--name",
            name,
            *extra,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def events(run_dir: Path) -> list[dict[str, Any]]:
    """Read a run's events.jsonl, skipping a last line still being written."""
    path = run_dir / "events.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out
