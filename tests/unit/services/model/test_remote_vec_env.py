"""The remote VecEnv rebuilds SB3's per-env infos from the finished rows the env actor sends."""

from __future__ import annotations

import numpy as np

from messages import EnvSpec, EnvsStepped
from services.model.remote_vec_env import RemoteVecEnv

N, D = 4, 3


class Backend:
    spec = EnvSpec(role="train", n_envs=N, obs_shape=(D,), action="discrete3", n_actions=3, max_leverage=1.0)

    def reset(self, seed: int) -> np.ndarray:
        return np.zeros((N, D), dtype=np.float32)

    def step(self, actions: np.ndarray) -> EnvsStepped:
        return EnvsStepped(
            obs=np.zeros((N, D), dtype=np.float32),
            reward=np.arange(N, dtype=np.float32),
            terminated=np.array([False, True, False, False]),
            truncated=np.array([False, False, False, True]),
            terminal_obs=np.array([[1, 1, 1], [3, 3, 3]], dtype=np.float32),  # envs 1 and 3 only
            episode_return=np.array([0.0, 0.5, 0.0, 0.25]),
            episode_length=np.array([0, 7, 0, 9]),
        )


def test_finished_rows_map_to_their_envs_with_gymnasium_truncation_semantics() -> None:
    env = RemoteVecEnv(Backend())
    env.reset()

    _, rewards, dones, infos = env.step(np.zeros(N, dtype=np.int64))

    assert dones.tolist() == [False, True, False, True]
    assert infos[0] == {} and infos[2] == {}
    np.testing.assert_array_equal(infos[1]["terminal_observation"], [1, 1, 1])
    np.testing.assert_array_equal(infos[3]["terminal_observation"], [3, 3, 3])
    assert infos[1]["TimeLimit.truncated"] is False and infos[3]["TimeLimit.truncated"] is True
    assert infos[3]["episode"]["r"] == 0.25 and infos[3]["episode"]["l"] == 9
    np.testing.assert_array_equal(rewards, [0, 1, 2, 3])


def test_a_local_backend_gives_each_finished_env_its_own_terminal_observation() -> None:
    from services.env.options import EnvOptions
    from services.env.vec_env import VecTradingEnv
    from services.model.remote_vec_env import LocalBackend

    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, 200)))
    features = rng.normal(size=(200, 2)).astype(np.float32)
    options = EnvOptions(n_envs=5, window=3, episode_length=4)
    local, twin = (VecTradingEnv(options, seed=7) for _ in range(2))
    for env in (local, twin):
        env.update_data(features, close.copy(), close)
    remote = RemoteVecEnv(LocalBackend(local, action="discrete3", n_actions=3, max_leverage=1.0))
    remote.reset()
    twin.reset()

    checked = 0
    for _ in range(12):
        actions = rng.integers(0, 3, size=5)
        expected = twin.step(actions)
        _, _, dones, infos = remote.step(actions)
        for i in np.flatnonzero(dones):
            np.testing.assert_array_equal(infos[i]["terminal_observation"], expected.terminal_obs[i])
            checked += 1
    assert checked >= 10, "every env finished at least twice"
