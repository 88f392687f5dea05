"""Tests of the TradingModel: one creation path, every algorithm, checkpoints that resume exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from services.env.options import EnvOptions, n_actions
from services.env.vec_env import VecTradingEnv
from services.model.checkpoint import latest_checkpoint
from services.model.options import ModelOptions
from services.model.remote_vec_env import LocalBackend, RemoteVecEnv
from services.model.trading_model import DeviceError, RemoteModelFactory, TradingModel, resolve_device


def market(n: int = 400, n_features: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.002, n))
    features = rng.normal(0, 1, (n, n_features)).astype(np.float32)
    return features, open_, close


def vec_env(options: EnvOptions, *, sequential: bool = False, seed: int = 0) -> RemoteVecEnv:
    env = VecTradingEnv(options, seed=seed, sequential=sequential)
    env.update_data(*market())
    backend = LocalBackend(
        env, action=options.action, n_actions=n_actions(options.action), max_leverage=options.max_leverage
    )
    return RemoteVecEnv(backend)


ENV = EnvOptions(n_envs=2, window=4, episode_length=32)
TINY = ModelOptions(net_arch=(8,), hyperparams={"n_steps": 32, "batch_size": 32, "n_epochs": 1})


def make_model(
    options: ModelOptions = TINY, env: EnvOptions = ENV, train: RemoteVecEnv | None = None, **kwargs: object
) -> TradingModel:
    arguments: dict[str, object] = {"tensorboard_dir": None, "budget": 1024, **kwargs}
    return TradingModel.create(
        options,
        train or vec_env(env),
        eval_env=vec_env(env, sequential=True),
        seed=3,
        on_values=lambda steps, values: None,
        **arguments,  # type: ignore[arg-type]
    )


def checkpointer(root: Path, options: ModelOptions = TINY) -> RemoteModelFactory:
    """A factory used only to write checkpoints of models built by make_model."""
    return RemoteModelFactory(
        options,
        seed=3,
        budget=1024,
        tensorboard_dir=None,
        checkpoint_root=root,
        fingerprint={"data_hash": "d", "config_hash": "c"},
    )


def weights(model: TradingModel) -> list[np.ndarray]:
    return [p.detach().cpu().numpy().copy() for p in model.algorithm.policy.parameters()]


def test_the_model_cannot_be_built_except_through_create() -> None:
    model = make_model()

    with pytest.raises(TypeError, match=r"only through TradingModel\.create"):
        TradingModel(model.algorithm, model_id="x", options=TINY, eval_env=model.eval_env)


def test_only_trading_model_constructs_sb3_algorithms() -> None:
    root = Path(__file__).resolve().parents[4]
    names = ("PPO(", "A2C(", "DQN(", "SAC(", "TD3(", "RecurrentPPO(", "algo_cls(")
    offenders = [
        str(path.relative_to(root))
        for folder in ("actors", "services", "messages")
        for path in (root / folder).rglob("*.py")
        if path.name != "trading_model.py" and any(n in path.read_text() for n in names)
    ]
    assert offenders == []


def test_learn_trains_whole_rollouts_and_the_counter_continues() -> None:
    model = make_model()

    first = model.learn(100, lambda steps: True)
    second = model.learn(64, lambda steps: True)

    assert first == 128
    assert second == 64
    assert model.num_timesteps == 192


def test_training_builds_distributions_unchecked_and_leaves_the_checks_as_they_were() -> None:
    model = make_model()
    seen: list[bool] = []

    def tick(steps: int) -> bool:
        seen.append(torch.distributions.Distribution._validate_args)
        return True

    checked = torch.distributions.Distribution._validate_args
    model.learn(64, tick)

    assert seen and not any(seen)
    assert torch.distributions.Distribution._validate_args is checked


def test_the_checks_come_back_when_training_fails() -> None:
    model = make_model()
    checked = torch.distributions.Distribution._validate_args

    def tick(steps: int) -> bool:
        raise RuntimeError("the env actor went away")

    with pytest.raises(RuntimeError, match="went away"):
        model.learn(64, tick)

    assert torch.distributions.Distribution._validate_args is checked


@pytest.mark.parametrize(
    ("algorithm", "action", "hyperparams", "error"),
    [
        ("ppo", "discrete3", {"n_steps": 32, "batch_size": 32, "n_epochs": 1}, RuntimeError),
        ("ppo", "continuous", {"n_steps": 32, "batch_size": 32, "n_epochs": 1}, ValueError),
    ],
)
def test_a_policy_gone_to_nan_still_stops_training_without_the_checks(
    algorithm: str, action: str, hyperparams: dict[str, object], error: type[Exception]
) -> None:
    options = ModelOptions(algorithm=algorithm, net_arch=(8,), hyperparams=hyperparams)
    model = make_model(options, dataclasses.replace(ENV, action=action))
    with torch.no_grad():
        for parameter in model.algorithm.policy.parameters():
            parameter.fill_(float("nan"))

    with pytest.raises(error):
        model.learn(64, lambda steps: True)


class RolloutLog(LocalBackend):
    """A LocalBackend that records the rollout hooks around its steps."""

    def __init__(self, env: VecTradingEnv, options: EnvOptions) -> None:
        super().__init__(
            env, action=options.action, n_actions=n_actions(options.action), max_leverage=options.max_leverage
        )
        self.events: list[str] = []

    def begin_rollout(self) -> None:
        self.events.append("begin")

    def step(self, actions: np.ndarray) -> object:
        if self.events[-1:] != ["step"]:
            self.events.append("step")
        return super().step(actions)

    def end_rollout(self) -> None:
        self.events.append("end")


def test_each_on_policy_rollout_is_framed_by_the_envs_rollout_hooks_even_when_stopped() -> None:
    env = VecTradingEnv(ENV, seed=0)
    env.update_data(*market())
    backend = RolloutLog(env, ENV)
    model = make_model(train=RemoteVecEnv(backend))

    model.learn(128, lambda steps: True)  # two rollouts of 2 envs x 32 steps
    # SB3 ends each rollout; learn's own end after them is one more, which changes nothing.
    assert backend.events == ["begin", "step", "end"] * 2 + ["end"]
    backend.events.clear()
    model.learn(128, lambda steps: steps < 150)  # the tick stops it within its first rollout

    assert backend.events == ["begin", "step", "end"], "a stopped rollout is ended by learn itself"


LINEAR = dataclasses.replace(
    TINY, hyperparams={**TINY.hyperparams, "learning_rate": 0.001}, learning_rate_schedule="linear"
)


def learning_rate(model: TradingModel) -> float:
    return float(model.algorithm.policy.optimizer.param_groups[0]["lr"])


def test_a_constant_schedule_passes_the_rate_to_sb3_as_a_number() -> None:
    model = make_model(dataclasses.replace(TINY, hyperparams={**TINY.hyperparams, "learning_rate": 0.001}))

    model.learn(128, lambda steps: True)

    assert model.schedule is None
    assert model.algorithm.learning_rate == 0.001
    assert learning_rate(model) == pytest.approx(0.001)


def test_a_linear_schedule_falls_to_zero_over_the_budget_across_pieces() -> None:
    model = make_model(LINEAR, budget=256)

    model.learn(128, lambda steps: True)
    halfway = learning_rate(model)
    model.learn(128, lambda steps: True)

    # The update after each 64-step rollout reads the rate at the model's step counter: at 128 of 256
    # steps it is half the start (SB3's own progress, measured per learn call, would be 0 there).
    assert model.algorithm.learning_rate is model.schedule
    assert halfway == pytest.approx(0.0005)
    assert learning_rate(model) == 0.0


def test_a_resumed_model_continues_its_linear_schedule_from_the_checkpoints_step(tmp_path: Path) -> None:
    first = make_model(LINEAR, budget=256)
    first.learn(128, lambda steps: True)
    checkpointer(tmp_path, LINEAR).checkpoint(first, 1, True)

    second = make_model(LINEAR, budget=256, checkpoint=latest_checkpoint(tmp_path))
    second.learn(64, lambda steps: True)

    assert second.schedule is not None and second.algorithm.learning_rate is second.schedule
    assert learning_rate(second) == pytest.approx(0.001 * (1 - 192 / 256))


def test_values_of_the_sb3_logger_reach_the_sink() -> None:
    seen: list[tuple[int, dict[str, float]]] = []
    model = TradingModel.create(
        TINY,
        vec_env(ENV),
        eval_env=vec_env(ENV, sequential=True),
        seed=3,
        budget=1024,
        tensorboard_dir=None,
        on_values=lambda steps, values: seen.append((steps, values)),
    )

    model.learn(128, lambda steps: True)

    assert seen
    keys = set().union(*(values for _, values in seen))
    assert {"train/value_loss", "train/entropy_loss", "time/fps"} <= keys


def test_a_restored_checkpoint_has_the_same_id_weights_counter_and_continues_identically(
    tmp_path: Path,
) -> None:
    factory = checkpointer(tmp_path)
    original = make_model()
    original.learn(64, lambda steps: True)
    factory.checkpoint(original, 1, True)
    info = latest_checkpoint(tmp_path)
    assert info is not None and info.meta["num_timesteps"] == 64 and info.meta["data_hash"] == "d"

    restored = make_model(checkpoint=info)

    assert restored.model_id == original.model_id
    assert restored.num_timesteps == 64
    for a, b in zip(weights(original), weights(restored), strict=True):
        np.testing.assert_array_equal(a, b)
    original_opt = original.algorithm.policy.optimizer.state_dict()["state"]
    restored_opt = restored.algorithm.policy.optimizer.state_dict()["state"]
    assert original_opt.keys() == restored_opt.keys()
    torch.testing.assert_close(original_opt[0]["exp_avg"], restored_opt[0]["exp_avg"])

    # Resuming is deterministic: two resumes from the same checkpoint train to the same weights.
    restored.learn(64, lambda steps: True)
    twin = make_model(checkpoint=info)
    twin.learn(64, lambda steps: True)
    assert twin.num_timesteps == restored.num_timesteps == 128
    for a, b in zip(weights(restored), weights(twin), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_loaded_checkpoint_predicts_the_same_actions_as_the_model_that_saved_it(tmp_path: Path) -> None:
    factory = checkpointer(tmp_path)
    model = make_model()
    model.learn(64, lambda steps: True)
    factory.checkpoint(model, 1, True)
    loaded = make_model(checkpoint=latest_checkpoint(tmp_path))
    obs = (
        np.random.default_rng(1)
        .normal(size=(50, *model.algorithm.observation_space.shape))
        .astype(np.float32)
    )

    a, _ = model.algorithm.predict(obs, deterministic=True)
    b, _ = loaded.algorithm.predict(obs, deterministic=True)

    np.testing.assert_array_equal(a, b)


def test_a_deterministic_evaluation_pass_reaches_the_last_bar_and_decides_on_it() -> None:
    model = make_model()
    env = vec_env(ENV, sequential=True)

    steps, last = model.run_sequential(env)

    assert steps == 400 - ENV.window
    assert last.shape == (1,)


@pytest.mark.parametrize(
    ("algorithm", "action", "hyperparams"),
    [
        ("ppo", "discrete3", {"n_steps": 16, "batch_size": 16, "n_epochs": 1}),
        ("a2c", "discrete2", {"n_steps": 8}),
        ("dqn", "discrete3", {"learning_starts": 16, "buffer_size": 500, "batch_size": 16}),
        ("sac", "continuous", {"learning_starts": 16, "buffer_size": 500, "batch_size": 16}),
        ("td3", "continuous", {"learning_starts": 16, "buffer_size": 500, "batch_size": 16}),
        ("recurrent_ppo", "discrete3", {"n_steps": 16, "batch_size": 16, "n_epochs": 1}),
    ],
)
def test_every_algorithm_trains_evaluates_and_checkpoints_with_a_tiny_budget(
    tmp_path: Path, algorithm: str, action: str, hyperparams: dict[str, object]
) -> None:
    options = ModelOptions(
        algorithm=algorithm, net_arch=(8,), hyperparams=hyperparams, save_replay_buffer=True
    )
    env = dataclasses.replace(ENV, action=action)
    factory = checkpointer(tmp_path, options)
    model = make_model(options, env)

    trained = model.learn(64, lambda steps: True)
    steps, _ = model.run_sequential(model.eval_env)
    factory.checkpoint(model, 1, True)
    restored = make_model(options, env, checkpoint=latest_checkpoint(tmp_path))

    assert trained >= 64
    assert steps == 400 - ENV.window
    assert restored.num_timesteps == model.num_timesteps
    if algorithm in ("dqn", "sac", "td3"):
        assert (tmp_path / "episode-0001" / "replay_buffer.pkl").is_file()
        assert restored.algorithm.replay_buffer.size() == model.algorithm.replay_buffer.size()


def test_tensorboard_steps_continue_across_a_resume_in_one_folder(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = tmp_path / "tensorboard"
    factory = RemoteModelFactory(
        TINY,
        seed=3,
        budget=1024,
        tensorboard_dir=board,
        checkpoint_root=tmp_path / "ck",
        fingerprint={"data_hash": "d"},
    )
    first = make_model(tensorboard_dir=board)
    first.learn(128, lambda steps: True)
    factory.checkpoint(first, 1, True)
    second = make_model(tensorboard_dir=board, checkpoint=latest_checkpoint(tmp_path / "ck"))
    second.learn(128, lambda steps: True)
    for model in (first, second):
        model.algorithm.logger.close()

    steps: list[int] = []
    for path in sorted(board.iterdir(), key=lambda p: p.stat().st_mtime):
        events = EventAccumulator(str(path))
        events.Reload()
        steps += [e.step for e in events.Scalars("time/fps")]

    assert len(list(board.iterdir())) == 2
    assert steps == sorted(steps) and steps[0] < 128 < steps[-1]
    assert steps[-1] == 256


def test_each_piece_leaves_its_tensorboard_points_on_disk_one_event_a_dump(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    board = tmp_path / "tensorboard"
    model = make_model(tensorboard_dir=board)
    model.learn(128, lambda steps: True)  # two rollouts of 64 steps; the logger is not closed

    [path] = board.iterdir()
    dumps = [event for event in EventFileLoader(str(path)).Load() if event.HasField("summary")]
    assert [event.step for event in dumps] == [64, 128]
    tags = [{value.tag for value in event.summary.value} for event in dumps]
    assert "time/fps" in tags[0]
    assert {"time/fps", "train/loss", "train/entropy_loss"} <= tags[1], "the update's values come with it"
    assert not any("time/iterations" in names for names in tags), "SB3 keeps it out of tensorboard"
    assert all(len(event.summary.value) == len(names) for event, names in zip(dumps, tags, strict=True))
    model.algorithm.logger.close()


# Devices.


def test_cuda_without_a_cuda_device_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    with pytest.raises(DeviceError, match=r"^model.device is 'cuda', but torch \S+ sees no CUDA device"):
        resolve_device("cuda")
    with pytest.raises(DeviceError):
        resolve_device("cuda:0")
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"


def test_a_cuda_index_beyond_the_machines_devices_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)

    assert resolve_device("auto") == "cuda"
    assert resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        resolve_device("cuda:2")


def test_a_model_reports_the_device_it_really_runs_on() -> None:
    model = make_model(dataclasses.replace(TINY, device="cpu"))

    assert model.device == "cpu"
    assert all(p.device.type == "cpu" for p in model.algorithm.policy.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run on a GPU machine)")
def test_a_model_trains_on_cuda_and_its_checkpoint_acts_the_same_on_the_cpu(tmp_path: Path) -> None:
    on_gpu = dataclasses.replace(TINY, device="cuda")
    model = make_model(on_gpu)
    assert model.device.startswith("cuda")
    assert all(p.is_cuda for p in model.algorithm.policy.parameters())
    assert make_model(dataclasses.replace(TINY, device="auto")).device.startswith("cuda")

    model.learn(128, lambda steps: True)
    checkpointer(tmp_path, on_gpu).checkpoint(model, 1, True)
    on_cpu = make_model(dataclasses.replace(TINY, device="cpu"), checkpoint=latest_checkpoint(tmp_path))
    obs = (
        np.random.default_rng(2)
        .normal(size=(64, *model.algorithm.observation_space.shape))
        .astype(np.float32)
    )

    assert on_cpu.device == "cpu" and on_cpu.num_timesteps == model.num_timesteps == 128
    np.testing.assert_array_equal(
        model.algorithm.predict(obs, deterministic=True)[0],
        on_cpu.algorithm.predict(obs, deterministic=True)[0],
    )
