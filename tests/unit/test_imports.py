"""Check that every actor module imports in a fresh interpreter without loading a heavy library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("zmq", "stable_baselines3", "torch", "gymnasium")
ACTOR_MODULES = (
    "actors.base",
    "actors.data",
    "actors.environment",
    "actors.model",
    "actors.monitor",
    "actors.session",
    "actors.ports",
)
PROBE = """
import importlib, sys
importlib.import_module(sys.argv[1])
print(" ".join(name for name in sys.argv[2:] if name in sys.modules))
"""


def loaded_by(module: str) -> list[str]:
    """Import a module in a fresh interpreter and return the heavy libraries it loaded."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module, *HEAVY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"import {module} failed:\n{done.stderr}"
    return done.stdout.split()


@pytest.mark.parametrize("module", ACTOR_MODULES)
def test_actor_module_loads_no_heavy_library(module: str) -> None:
    heavy = loaded_by(module)
    assert not heavy, f"import {module} loaded {', '.join(heavy)}"
