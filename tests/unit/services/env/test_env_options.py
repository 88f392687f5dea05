"""Tests of the env options: validation, the one action table and the minimum data length."""

from __future__ import annotations

import pytest
from gymnasium import spaces

from services.env.options import (
    ACTIONS,
    EnvOptions,
    build_action_space,
    build_observation_space,
    min_bars,
    min_eval_bars,
    n_actions,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_envs", 0),
        ("window", 0),
        ("episode_length", 0),
        ("window", 2.5),
        ("action", "buy"),
        ("fill", "vwap"),
        ("reward", "sharpe"),
        ("max_leverage", 0.0),
        ("commission_bps", -1.0),
        ("slippage_bps", -0.5),
        ("commission_bps", 6000.0),
        ("borrow_bps_per_year", -1.0),
        ("dsr_eta", 1.0),
        ("drawdown_penalty", -0.1),
        ("ruin_equity", 1.0),
        ("ruin_equity", float("nan")),
    ],
)
def test_impossible_options_are_rejected_naming_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"EnvOptions.{field}") as error:
        EnvOptions(**{field: value})  # type: ignore[arg-type]

    assert repr(value) in str(error.value) or field == "commission_bps"


def test_options_accept_ints_for_float_fields() -> None:
    options = EnvOptions(max_leverage=2, commission_bps=0)

    assert options.max_leverage == 2.0 and isinstance(options.max_leverage, float)


def test_the_action_table_scales_each_discrete_position_by_the_leverage() -> None:
    assert EnvOptions(action="discrete3", max_leverage=2.0).positions == (-2.0, 0.0, 2.0)
    assert EnvOptions(action="discrete2", max_leverage=0.5).positions == (0.0, 0.5)
    assert EnvOptions(action="continuous").positions == ()


@pytest.mark.parametrize("action", ACTIONS)
def test_the_action_space_has_one_action_per_table_row_or_a_unit_box(action: str) -> None:
    space = build_action_space(action)

    if n_actions(action):
        assert space == spaces.Discrete(len(EnvOptions(action=action).positions))
    else:
        assert isinstance(space, spaces.Box) and space.shape == (1,)
        assert space.low.tolist() == [-1.0] and space.high.tolist() == [1.0]


def test_the_observation_space_is_unbounded_float32() -> None:
    space = build_observation_space((10,))

    assert space.shape == (10,) and space.dtype == "float32"
    assert not space.is_bounded()


def test_training_data_needs_a_window_and_one_whole_episode() -> None:
    assert min_bars(32, 256) == 288
    assert EnvOptions(window=4, episode_length=10).min_bars == 14


def test_evaluation_data_needs_a_window_and_one_step() -> None:
    assert min_eval_bars(32) == 33
    assert EnvOptions(window=4, episode_length=10).min_eval_bars == 5
