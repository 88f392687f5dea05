"""Shared step buffers: a step goes through, a torn or foreign buffer is refused, files are removed."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from services.env.options import EnvOptions
from services.env.vec_env import VecTradingEnv
from services.transport.shm import (
    SUFFIX,
    SharedFolder,
    SharedSteps,
    StepLayout,
    TornBuffer,
    remove_buffers,
    shared_folder,
)

ROOT = Path(__file__).resolve().parents[4]
N, OBS = 5, (14,)


def vec_env(n_envs: int = N) -> VecTradingEnv:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 300)))
    env = VecTradingEnv(EnvOptions(window=4, episode_length=6), n_envs=n_envs, seed=3)
    env.update_data(rng.normal(size=(300, 3)).astype(np.float32), close.copy(), close)
    env.reset()
    return env


def pair(folder: Path, action: str = "discrete3") -> tuple[SharedSteps, SharedSteps]:
    """Return the env actor's buffer and the model's mapping of it."""
    layout = StepLayout.of(N, OBS, action)
    owner = SharedSteps.create(folder, "train", layout)
    return owner, SharedSteps.attach(folder, owner.name, layout, layout.size)


def test_a_step_through_the_buffer_equals_the_step_in_process(tmp_path: Path) -> None:
    env, twin = vec_env(), vec_env()
    owner, model = pair(tmp_path)
    rng = np.random.default_rng(1)
    finished = 0

    for _ in range(20):
        actions = rng.integers(0, 3, size=N)
        step = model.put_actions(actions)
        owner.write(step, env.step(owner.take_actions(step)))
        got, expected = model.read(step), twin.step(actions).finished_only()
        for name, value in expected._asdict().items():
            if name in ("episode_return", "episode_length"):
                done = expected.terminated | expected.truncated
                np.testing.assert_array_equal(getattr(got, name)[done], value[done])
            else:
                np.testing.assert_array_equal(getattr(got, name), value, err_msg=name)
        finished += len(got.terminal_obs)

    assert finished >= N, "every env finished at least once"


def test_continuous_actions_travel_as_float32(tmp_path: Path) -> None:
    owner, model = pair(tmp_path, "continuous")

    step = model.put_actions(np.array([0.5, -1.0, 0.0, 0.25, 1.0], dtype=np.float32))

    actions = owner.take_actions(step)
    assert actions.dtype == np.float32 and actions.tolist() == [0.5, -1.0, 0.0, 0.25, 1.0]


def test_results_of_another_step_are_refused(tmp_path: Path) -> None:
    env = vec_env()
    owner, model = pair(tmp_path)
    step = model.put_actions(np.zeros(N, dtype=np.int64))
    owner.write(step, env.step(owner.take_actions(step)))

    with pytest.raises(TornBuffer, match=f"holds step {step}, not step {step + 1}"):
        model.read(step + 1)


def test_actions_of_another_step_are_refused(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    step = model.put_actions(np.zeros(N, dtype=np.int64))

    with pytest.raises(TornBuffer, match=f"actions of step {step}, not {step - 1}"):
        owner.take_actions(step - 1)


def test_a_writer_killed_mid_write_leaves_a_step_the_model_refuses(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    env = vec_env()
    first = model.put_actions(np.ones(N, dtype=np.int64))
    owner.write(first, env.step(owner.take_actions(first)))
    second = model.put_actions(np.ones(N, dtype=np.int64))
    # A second writer maps the buffer, starts the step's results and is killed before it finishes them.
    writer = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        import numpy as np
        sys.path.insert(0, {str(ROOT)!r})
        from services.transport.shm import SharedSteps, StepLayout
        layout = StepLayout.of({N}, {OBS!r}, "discrete3")
        steps = SharedSteps.attach(Path({str(tmp_path)!r}), {owner.name!r}, layout, layout.size)
        steps._header[5] = -1  # results being written
        steps._obs[:2] = 7.0  # half the observations
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )

    done = subprocess.run([sys.executable, "-c", writer], timeout=60)

    assert done.returncode == -signal.SIGKILL
    with pytest.raises(TornBuffer, match=f"holds half-written, not step {second}"):
        model.read(second)
    with pytest.raises(TornBuffer, match="half-written"):
        model.read(first)


def test_a_buffer_whose_size_does_not_match_the_spec_is_refused_in_one_line(tmp_path: Path) -> None:
    owner = SharedSteps.create(tmp_path, "train", StepLayout.of(N, OBS, "discrete3"))
    bigger = StepLayout.of(N + 1, OBS, "discrete3")

    with pytest.raises(
        ValueError, match=r"refused: it holds \d+ bytes .* the env spec \(6 envs x obs \(14,\)"
    ):
        SharedSteps.attach(tmp_path, owner.name, bigger, bigger.size)


def test_a_buffer_of_another_action_kind_is_refused_by_its_header(tmp_path: Path) -> None:
    owner = SharedSteps.create(tmp_path, "train", StepLayout.of(N, OBS, "discrete3"))
    continuous = StepLayout.of(N, OBS, "continuous")
    assert continuous.size == owner.layout.size  # 5 int64 or float32 actions take one aligned block

    with pytest.raises(ValueError, match=r"header .* does not describe the env spec"):
        SharedSteps.attach(tmp_path, owner.name, continuous, continuous.size)


@pytest.mark.parametrize("name", ["../train-1.shm", "train-1.sock", ".train.shm"])
def test_a_name_outside_the_folder_or_not_a_buffer_is_refused(tmp_path: Path, name: str) -> None:
    layout = StepLayout.of(N, OBS, "discrete3")

    with pytest.raises(ValueError, match="not a buffer file of the ipc folder"):
        SharedSteps.attach(tmp_path, name, layout, layout.size)


def test_buffer_files_are_private_to_their_owner(tmp_path: Path) -> None:
    owner, _ = pair(tmp_path)

    assert owner.path.stat().st_mode & 0o777 == 0o600


def test_the_folder_replaces_a_roles_buffer_and_removes_every_file_when_closed(tmp_path: Path) -> None:
    shared = SharedFolder(tmp_path)
    first, _ = shared.create("train", N, OBS, "discrete3")
    second, _ = shared.create("train", N, OBS, "discrete3")
    evaluation, _ = shared.create("eval", 1, OBS, "discrete3")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([second, evaluation])
    with pytest.raises(TornBuffer, match="attach again"):
        shared.get("train", first)
    shared.close()
    assert list(tmp_path.iterdir()) == []


def test_stale_buffers_of_a_killed_session_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / f"train-1-ab{SUFFIX}").write_bytes(b"x")
    (tmp_path / f"eval-1-cd{SUFFIX}").write_bytes(b"x")
    (tmp_path / "env.sock").write_bytes(b"")

    assert remove_buffers(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["env.sock"]


def test_only_an_ipc_endpoint_has_a_shared_folder() -> None:
    assert shared_folder("ipc:///run/x/ipc/env.sock") == Path("/run/x/ipc")
    assert shared_folder("tcp://127.0.0.1:5555") is None
    assert shared_folder("") is None
