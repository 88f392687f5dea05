"""Schedule episodes: where each env is in its episode and how its start bars are drawn.

One rule for every env: the vectorized envs (VecTradingEnv, VecPortfolioEnv) step on an EpisodeClock, and
the single envs (TradingEnv, PortfolioEnv) draw their start bars with the same `draw_start`.
"""

from __future__ import annotations

import numpy as np


def draw_start(rng: np.random.Generator, bounds: tuple[int, int]) -> int:
    """Draw an episode's start bar; the one rule both envs use."""
    low, high = bounds
    return int(rng.integers(low, high + 1))


class EpisodeClock:
    """Where each of N envs is in its episode, and how episodes are drawn: the rule both vectorized envs
    (VecTradingEnv, VecPortfolioEnv) step on.

    Env i draws its start bars from np.random.default_rng(seed + i); a training episode is truncated
    `episode_length` steps after its start, a sequential one runs to the last bar. `t`, `start` and `end`
    are the envs' arrays themselves (the envs step `t` in place).
    """

    def __init__(self, n_envs: int, seed: int, *, sequential: bool, episode_length: int) -> None:
        self.n_envs = n_envs
        self.sequential = sequential
        self.episode_length = episode_length
        self.rngs = [np.random.default_rng(seed + i) for i in range(n_envs)]
        self.t = np.zeros(n_envs, dtype=np.int64)
        """The bar each env's last observation ends at."""
        self.start = np.zeros(n_envs, dtype=np.int64)
        """Each env's episode start bar (its first decision bar)."""
        self.end = np.zeros(n_envs, dtype=np.int64)
        """Each env's last bar of the episode: truncated on reaching it."""

    def reseed(self, seed: int) -> None:
        """Make env i draw from np.random.default_rng(seed + i) from now on."""
        self.rngs = [np.random.default_rng(seed + i) for i in range(self.n_envs)]

    def begin(self, envs: np.ndarray, bounds: tuple[int, int], n_bars: int) -> None:
        """Start the given envs' next episodes: draw their starts within bounds, set their bars."""
        for i in envs.tolist():
            self.start[i] = draw_start(self.rngs[i], bounds)
        self.t[envs] = self.start[envs]
        self.end[envs] = n_bars - 1 if self.sequential else self.start[envs] + self.episode_length

    def lengths(self, envs: np.ndarray) -> np.ndarray:
        """Return the given envs' steps in their episodes so far."""
        return self.t[envs] - self.start[envs]
