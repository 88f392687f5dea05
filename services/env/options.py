"""Configure the trading envs: EnvOptions, their choices and the one action table.

Imports nothing heavy: the config, the data actor and the launcher read these rules without loading numpy
or gymnasium. Gymnasium is imported only when spaces are built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from services.validation import require

if TYPE_CHECKING:
    from gymnasium import spaces

ACTION_POSITIONS: dict[str, tuple[float, ...]] = {
    "discrete3": (-1.0, 0.0, 1.0),
    "discrete2": (0.0, 1.0),
    "continuous": (),
}
"""The one action table: the position (in units of max_leverage) of each discrete action, by action mode.

A continuous mode has no table: its action is a target in [-1, 1], scaled by max_leverage.
"""
ACTIONS = tuple(ACTION_POSITIONS)
FILLS = ("next_open", "close")
REWARDS = ("log_return", "dsr", "drawdown_penalty")

DEFAULT_BARS_PER_YEAR = 252.0
"""Bars in a year of daily data: what an env assumes unless it is told the data's rate."""


def n_actions(action: str) -> int:
    """Return the number of discrete actions of an action mode (0 for continuous)."""
    return len(ACTION_POSITIONS[action])


def build_action_space(action: str) -> spaces.Space[Any]:
    """Return the action space of one env of an action mode."""
    # Imported here so that importing the options (and the vectorized env) stays free of gymnasium.
    import numpy as np
    from gymnasium import spaces

    count = n_actions(action)
    if count:
        return spaces.Discrete(count)
    return spaces.Box(low=-1.0, high=1.0, shape=(1,), dtype=np.float32)


def build_observation_space(obs_shape: tuple[int, ...]) -> spaces.Box:
    """Return the observation space of one env: unbounded float32 (features are normalised, not clipped)."""
    import numpy as np
    from gymnasium import spaces

    return spaces.Box(low=-np.inf, high=np.inf, shape=obs_shape, dtype=np.float32)


def min_bars(window: int, episode_length: int) -> int:
    """Return the fewest bars a training env can trade: a full window, then one whole episode."""
    return window + episode_length


def min_eval_bars(window: int) -> int:
    """Return the fewest bars an evaluation can run on: a full window, then one step to the next bar."""
    return window + 1


def check_bars_per_year(options: EnvOptions, bars_per_year: float) -> None:
    """Raise ValueError unless the data's bars per year give a usable per-bar borrow fee."""
    if not (isinstance(bars_per_year, int | float) and math.isfinite(bars_per_year) and bars_per_year > 0):
        raise ValueError(f"bars_per_year must be > 0, got {bars_per_year!r}")
    if options.borrow_bps_per_year / 1e4 / bars_per_year * options.max_leverage >= 1:
        raise ValueError(
            "EnvOptions.borrow_bps_per_year would take a whole bar's equity, got "
            f"{options.borrow_bps_per_year!r}"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class EnvOptions:
    """Configure the trading envs (the `env:` section of the config)."""

    n_envs: int = 64
    """Number of parallel training envs."""
    window: int = 32
    """Bars of features in one observation."""
    episode_length: int = 256
    """Steps in one training episode; it is then truncated."""
    action: str = "discrete3"
    """"discrete3" (short/flat/long), "discrete2" (flat/long) or "continuous" (target in [-1, 1])."""
    max_leverage: float = 1.0
    """Size of a full position; actions are scaled by it."""
    fill: str = "next_open"
    """"next_open" fills at the next bar's open; "close" fills at the decision bar's close (optimistic)."""
    commission_bps: float = 1.0
    """Commission in basis points of the traded notional (|position change| times equity)."""
    slippage_bps: float = 2.0
    """Slippage in basis points of the traded notional."""
    borrow_bps_per_year: float = 0.0
    """Yearly borrow fee in basis points of short exposure, charged pro rata every bar."""
    reward: str = "log_return"
    """"log_return", "dsr" (differential Sharpe ratio) or "drawdown_penalty"."""
    dsr_eta: float = 0.01
    """Adaptation rate of the moving moments of the differential Sharpe ratio, in (0, 1)."""
    drawdown_penalty: float = 0.5
    """Weight of the increase in drawdown subtracted from the log return by "drawdown_penalty"."""
    ruin_equity: float = 0.5
    """Equity (it starts at 1.0) at or below which an episode terminates."""

    def __post_init__(self) -> None:
        """Coerce ints given for floats and reject impossible values."""
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"EnvOptions.{spec.name} must be an int, got {value!r}")
            if spec.type == "float":
                if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                    raise ValueError(f"EnvOptions.{spec.name} must be a finite number, got {value!r}")
                object.__setattr__(self, spec.name, float(value))
            if spec.type == "str" and not isinstance(value, str):
                raise ValueError(f"EnvOptions.{spec.name} must be a string, got {value!r}")
        choices = {"action": ACTIONS, "fill": FILLS, "reward": REWARDS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"EnvOptions.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        require(self, ("n_envs", "window", "episode_length"), lambda value: value >= 1, ">= 1")
        require(self, ("max_leverage",), lambda value: value > 0, "> 0")
        costs = ("commission_bps", "slippage_bps", "borrow_bps_per_year", "drawdown_penalty")
        require(self, costs, lambda value: value >= 0, ">= 0")
        if (self.commission_bps + self.slippage_bps) * 2 * self.max_leverage >= 1e4:
            raise ValueError(
                "EnvOptions.commission_bps + slippage_bps must be below 5000 / max_leverage bps, got "
                f"{self.commission_bps + self.slippage_bps!r}"
            )
        # The data's rate is known only at run time (the env checks again then); refusing a fee that no
        # daily data could carry here turns it into a config error before any process starts.
        check_bars_per_year(self, DEFAULT_BARS_PER_YEAR)
        if not 0 < self.dsr_eta < 1:
            raise ValueError(f"EnvOptions.dsr_eta must be in (0, 1), got {self.dsr_eta!r}")
        if not 0 <= self.ruin_equity < 1:
            raise ValueError(f"EnvOptions.ruin_equity must be in [0, 1), got {self.ruin_equity!r}")

    @property
    def positions(self) -> tuple[float, ...]:
        """Return the target position of each discrete action (empty for continuous)."""
        return tuple(unit * self.max_leverage for unit in ACTION_POSITIONS[self.action])

    @property
    def min_bars(self) -> int:
        """Return the fewest bars of training data the envs can trade (see min_bars)."""
        return min_bars(self.window, self.episode_length)

    @property
    def min_eval_bars(self) -> int:
        """Return the fewest bars of evaluation data the sequential env can run on (see min_eval_bars)."""
        return min_eval_bars(self.window)


WEIGHT_MODES = ("long_only", "long_short")
"""How raw actions become target weights (see the module docstring)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PortfolioOptions:
    """Choose how the portfolio env turns raw actions into target weights."""

    weights: str = "long_only"
    """'long_only' (softmax over the assets and cash, weights >= 0, sum <= 1) or 'long_short'
    (weights in [-1, 1] scaled so that sum |w| <= max_leverage)."""
    logit_scale: float = 5.0
    """long_only: raw outputs in [-1, 1] are multiplied by this before the softmax, so that one asset or
    cash can take over 99 % of the equity."""

    def __post_init__(self) -> None:
        if self.weights not in WEIGHT_MODES:
            raise ValueError(f"PortfolioOptions.weights must be one of {WEIGHT_MODES}, got {self.weights!r}")
        require(
            self,
            ("logit_scale",),
            lambda v: isinstance(v, int | float) and math.isfinite(v) and v > 0,
            "a finite number > 0",
        )
