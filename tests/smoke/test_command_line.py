"""Smoke tests of the command line: run.py under a bare python, checks before any process starts, and
one tiny session of an algorithm switched with one key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from launcher.cli import parser
from launcher.preflight import check_model, resolve_config
from services.model.options import ALGORITHM_DEFAULTS
from tests.sessions import ROOT

pytestmark = pytest.mark.smoke

BASE_PYTHON = Path(sys.base_prefix) / "bin" / "python3"
"""The interpreter the venv was made from; it lacks the project's packages on a clean machine."""
TINY_A2C = [
    "--set", "model.algorithm=a2c",
    "--set", "training.piece_steps=512",
    "--set", "training.steps_per_episode=512",
    "--set", "env.n_envs=4",
    "--set", "env.window=8",
    "--set", "env.episode_length=64",
    "--set", "model.net_arch=[8]",
]  # fmt: skip


def run_py(
    *args: str, python: Path = Path(sys.executable), timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), str(ROOT / "run.py"), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_run_py_under_a_python_without_the_packages_says_in_one_line_how_to_run_it() -> None:
    if subprocess.run([str(BASE_PYTHON), "-c", "import pykka"], capture_output=True).returncode == 0:
        pytest.skip(f"{BASE_PYTHON} has the project's packages")

    result = run_py("--set", "training.episodes=1", python=BASE_PYTHON)

    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert ".venv/bin/python run.py" in result.stderr and "python3 dev.py run" in result.stderr
    assert "pykka" in result.stderr and "Traceback" not in result.stderr


def test_generate_data_help_names_run_py() -> None:
    result = run_py("generate-data", "--help")

    assert result.returncode == 0
    assert result.stdout.startswith("usage: run.py generate-data ")


def test_a_cuda_device_this_machine_lacks_is_refused_before_the_run_folder_is_made(tmp_path: Path) -> None:
    if _torch_sees_cuda():
        pytest.skip("this machine has a CUDA device")

    result = run_py("--set", "model.device=cuda", "--set", f"session.runs_dir={tmp_path}", "--name", "gpu")

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "model.device is 'cuda'" in result.stderr
    assert not (tmp_path / "gpu").exists()


def _torch_sees_cuda() -> bool:
    """Ask a child process, so this test process does not import torch."""
    probe = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return probe.stdout.strip() == "True"


def test_sac_switched_with_one_key_passes_preflight_with_continuous_actions_and_a_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parser("train").parse_args(["train", "--set", "model.algorithm=sac"])

    config = resolve_config(args)
    check_model(config)

    assert config.env.action == "continuous"
    assert config.model.hyperparams == ALGORITHM_DEFAULTS["sac"]
    out = capsys.readouterr().out
    assert out.startswith("note: model.algorithm sac is off-policy") and "--set env.n_envs=8" in out


def test_a2c_switched_with_one_key_trains_and_its_run_folder_shows_what_it_used(tmp_path: Path) -> None:
    result = run_py(*TINY_A2C, "--set", f"session.runs_dir={tmp_path}", "--name", "a2c", timeout=180)

    assert result.returncode == 0, result.stderr
    used = yaml.safe_load((tmp_path / "a2c" / "config.yaml").read_text())
    assert used["model"]["algorithm"] == "a2c"
    assert used["model"]["hyperparams"] == ALGORITHM_DEFAULTS["a2c"]
    assert (tmp_path / "a2c" / "eval-episode-1.csv").is_file()
