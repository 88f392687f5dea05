"""Shared step buffers: a step goes through, a torn or foreign buffer is refused, files are removed."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from services.env.options import EnvOptions
from services.env.vec_env import VecTradingEnv
from services.transport import shm_waits
from services.transport.shm import SharedSteps, StepLayout, TornBuffer
from services.transport.shm_files import SUFFIX, remove_buffers, shared_folder
from services.transport.shm_folder import SharedFolder
from services.transport.shm_layout import ACTION, ENV_SLEEPING, FINISHED, RESULT, SERVING
from services.transport.shm_waits import CHECK_S

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
        steps._header[{RESULT}] = -1  # results being written
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

    bells = [name + bell for name in (second, evaluation) for bell in (".env-bell", ".model-bell")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([second, evaluation, *bells])
    with pytest.raises(TornBuffer, match="attach again"):
        shared.get("train", first)
    shared.close()
    assert list(tmp_path.iterdir()) == []


def test_stale_buffers_of_a_killed_session_are_removed_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / f"train-1-ab{SUFFIX}").write_bytes(b"x")
    (tmp_path / f"eval-1-cd{SUFFIX}").write_bytes(b"x")
    os.mkfifo(tmp_path / f"eval-1-cd{SUFFIX}.model-bell")
    (tmp_path / "env.sock").write_bytes(b"")

    assert remove_buffers(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["env.sock"]


def test_only_an_ipc_endpoint_has_a_shared_folder() -> None:
    assert shared_folder("ipc:///run/x/ipc/env.sock") == Path("/run/x/ipc")
    assert shared_folder("tcp://127.0.0.1:5555") is None
    assert shared_folder("") is None


class CountingEnv:
    """A VecTradingEnv that counts its steps, so a step taken twice or lost shows."""

    def __init__(self, fail_at: int = 0) -> None:
        self.env = vec_env()
        self.steps = 0
        self.fail_at = fail_at

    def step(self, actions: np.ndarray) -> Any:
        if self.steps + 1 == self.fail_at:
            self.fail_at = 0
            raise ValueError("step: actions must be in [0, 3)")
        self.steps += 1
        return self.env.step(actions)


def lease_in_thread(
    owner: SharedSteps, env: CountingEnv, **limits: Any
) -> tuple[threading.Thread, list[int]]:
    served: list[int] = []
    thread = threading.Thread(target=lambda: served.append(owner.serve(env.step, **limits)), daemon=True)
    thread.start()
    return thread, served


def wait_serving(model: SharedSteps) -> None:
    deadline = time.monotonic() + 10
    while not model._words[SERVING]:
        assert time.monotonic() < deadline, "the lease never started"
        time.sleep(0.001)


def test_a_lease_serves_steps_without_tokens_exactly_as_in_process(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    env, twin = CountingEnv(), vec_env()
    rng = np.random.default_rng(2)
    first = model.put_actions(np.zeros(N, dtype=np.int64))
    owner.serve_token(first, env.step)
    twin.step(np.zeros(N, dtype=np.int64))
    thread, served = lease_in_thread(owner, env, idle_s=5.0)
    wait_serving(model)

    for _ in range(50):
        actions = rng.integers(0, 3, size=N)
        step = model.put_actions(actions)
        assert model.wait(step), "a serving env actor answers through the buffer"
        got, expected = model.read(step), twin.step(actions).finished_only()
        np.testing.assert_array_equal(got.obs, expected.obs)
        np.testing.assert_array_equal(got.reward, expected.reward)
        np.testing.assert_array_equal(got.terminal_obs, expected.terminal_obs)

    assert model.leased == 50 and env.steps == 51
    owner._words[ACTION] = -5  # not the next step: the lease ends and leaves it to a token
    thread.join(10)
    assert served == [50] and not model._words[SERVING]


def test_a_lease_ends_when_steps_stop_coming_and_the_next_goes_by_token(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    env = CountingEnv()
    started = time.monotonic()

    assert owner.serve(env.step, idle_s=0.02) == 0

    assert time.monotonic() - started >= 0.02
    step = model.put_actions(np.ones(N, dtype=np.int64))
    assert not model.wait(step), "no lease: the model sends the token"
    owner.serve_token(step, env.step)
    assert env.steps == 1 and model.read(step).obs.shape == (N, *OBS)


def test_a_lease_that_checks_for_other_work_outlasts_a_pause_and_ends_once_work_waits(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    env = CountingEnv()
    work = threading.Event()
    asked: list[float] = []

    def interrupted() -> bool:
        asked.append(time.monotonic())
        return work.is_set()

    thread, served = lease_in_thread(owner, env, interrupted=interrupted, idle_s=60.0, max_s=60.0)
    wait_serving(model)
    for _ in range(3):
        step = model.put_actions(np.ones(N, dtype=np.int64))
        assert model.wait(step), "the lease serves the step"
        time.sleep(0.1)  # an update phase five times LEASE_IDLE_S: the lease holds

    assert model._words[SERVING] and thread.is_alive()
    work.set()
    thread.join(10)
    assert not thread.is_alive(), "other work ends the lease (its limits were a minute)"
    assert served == [3] and not model._words[SERVING]
    gaps = np.diff(asked[:-1])
    assert len(asked) > 20 and gaps.min() >= 0.5 * CHECK_S, "asked again and again, every CHECK_S at most"


def test_a_lease_asleep_on_its_socket_asks_rarely_and_a_request_ends_it_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shm_waits, "ASLEEP_CHECK_S", 30.0)  # only the socket can end it soon
    monkeypatch.setattr(shm_waits, "COLOCATE", False)
    owner, model = pair(tmp_path)
    env = CountingEnv()
    context = zmq.Context.instance()
    socket, client = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    socket.bind("inproc://lease-socket-test")
    client.connect("inproc://lease-socket-test")
    asked: list[float] = []

    def interrupted() -> bool:  # the actor's check: a request waits on its socket
        asked.append(time.monotonic())
        return bool(socket.poll(0))

    try:
        thread, served = lease_in_thread(
            owner, env, interrupted=interrupted, woken_by=socket, idle_s=60.0, max_s=60.0
        )
        wait_serving(model)
        step = model.put_actions(np.ones(N, dtype=np.int64))
        assert model.wait(step), "the lease serves the step"
        time.sleep(0.3)  # an update phase: asleep on the bell and the socket
        quiet = len(asked)

        sent = time.monotonic()
        client.send(b"request")
        thread.join(10)
        assert not thread.is_alive() and served == [1], "the request ended the lease"
        assert time.monotonic() - sent < 10.0, "at once, not after ASLEEP_CHECK_S"
        assert quiet <= 5, f"asked {quiet} times in 0.3 s asleep (every CHECK_S would be about 150)"
    finally:
        socket.close(0)
        client.close(0)


def test_the_start_of_a_rollout_wakes_a_sleeping_lease_and_it_spins_for_the_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shm_waits, "ENV_SPIN_S", (0.2, 0.2))  # spun out before the update ends, then asleep
    monkeypatch.setattr(shm_waits, "COLOCATE", False)
    owner, model = pair(tmp_path)
    env = CountingEnv()
    thread, served = lease_in_thread(owner, env, interrupted=lambda: False, idle_s=60.0, max_s=60.0)
    wait_serving(model)
    deadline = time.monotonic() + 10
    while not model._words[ENV_SLEEPING]:  # the update phase: the lease sleeps
        assert time.monotonic() < deadline, "the lease never slept"
        time.sleep(0.001)
    sleeps = owner._env_bell.sleeps

    model.begin_rollout()
    while model._words[ENV_SLEEPING]:
        assert time.monotonic() < deadline, "the wake-up call did not wake the lease"
        time.sleep(0.001)
    awake = []
    for _ in range(25):  # the first forward pass, across a dozen of the lease's checks (CHECK_S)
        time.sleep(0.002)
        awake.append(not model._words[ENV_SLEEPING])
    step = model.put_actions(np.ones(N, dtype=np.int64))

    assert model.wait(step)
    assert all(awake) and owner._env_bell.sleeps == sleeps, "the first step found the lease spinning"
    owner._words[ACTION] = -5
    thread.join(10)
    assert served == [1]


def test_a_step_written_as_other_work_ends_the_lease_is_served_before_the_lease_returns(
    tmp_path: Path,
) -> None:
    owner, model = pair(tmp_path)
    env = CountingEnv()
    written: list[int] = []

    def interrupted() -> bool:  # the model writes its next step just as other work arrives
        if not written:
            written.append(model.put_actions(np.ones(N, dtype=np.int64)))
        return True

    assert owner.serve(env.step, interrupted=interrupted) == 1

    assert env.steps == 1 and owner._words[RESULT] == written[0]
    assert model.read(written[0]).obs.shape == (N, *OBS)


def test_a_token_for_a_step_the_lease_served_does_not_step_again(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    env = CountingEnv()
    thread, served = lease_in_thread(owner, env, idle_s=0.2)
    wait_serving(model)
    step = model.put_actions(np.ones(N, dtype=np.int64))
    thread.join(10)  # no step comes after this one: the lease ends
    assert served == [1]

    # The model gave up spinning just before the result came and sent the token anyway.
    finished = owner.serve_token(step, env.step)

    assert env.steps == 1 and finished == owner._words[FINISHED]
    assert model.read(step).reward.shape == (N,)


def test_a_failed_step_ends_the_lease_and_its_token_reports_the_error(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    env = CountingEnv(fail_at=1)
    thread, served = lease_in_thread(owner, env, idle_s=5.0)
    wait_serving(model)
    step = model.put_actions(np.ones(N, dtype=np.int64))

    assert not model.wait(step), "the lease stopped serving without this step"
    thread.join(10)
    assert served == [0] and env.steps == 0
    env.fail_at = 1
    with pytest.raises(ValueError, match="actions must be in"):
        owner.serve_token(step, env.step)


def test_a_model_spinning_on_a_killed_env_actor_gives_up_and_sends_the_token(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    owner._words[SERVING] = 1  # a lease whose env actor was killed: nobody clears the word
    step = model.put_actions(np.ones(N, dtype=np.int64))
    started = time.monotonic()

    assert not model.wait(step, deadline_s=0.05)

    assert 0.05 <= time.monotonic() - started < 5.0
    with pytest.raises(TornBuffer, match=f"not step {step}"):
        model.read(step)


def test_the_models_default_deadline_is_read_when_it_waits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner, model = pair(tmp_path)
    owner._words[SERVING] = 1
    step = model.put_actions(np.ones(N, dtype=np.int64))
    monkeypatch.setattr(shm_waits, "SPIN_DEADLINE_S", 0.05)  # after the buffer was made: read at the wait
    started = time.monotonic()

    assert not model.wait(step)

    assert time.monotonic() - started < 0.9, "gave up at the deadline set, not the 1 s it was"


def test_a_portfolio_buffer_holds_a_row_of_weights_per_env(tmp_path: Path) -> None:
    layout = StepLayout.of(N, OBS, "discrete3", action_size=4)
    owner = SharedSteps.create(tmp_path, "train", layout)
    model = SharedSteps.attach(tmp_path, owner.name, layout, layout.size)
    weights = np.arange(N * 4, dtype=np.float32).reshape(N, 4) / 10

    step = model.put_actions(weights)

    assert not layout.discrete and "of 4 weights" in layout.describe()
    np.testing.assert_array_equal(owner.take_actions(step), weights)
    single = dataclasses.replace(layout, action_size=0)
    with pytest.raises(ValueError, match=r"refused: .* needs \d+"):
        SharedSteps.attach(tmp_path, owner.name, single, layout.size)
