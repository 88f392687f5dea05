"""Tests of train/eval splitting and train-only normalisation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from services.data.bars import DataError
from services.data.features import available_features, compute_features
from services.data.options import FeatureOptions, SplitOptions
from services.data.splits import Normalizer, split_ranges, window_count
from services.data.synthetic import generate_bars


def business_days(n: int, start: str = "2020-01-01") -> np.ndarray:
    return pd.date_range(start, periods=n, freq="B").as_unit("ns").asi8


def test_fraction_mode_trains_on_the_first_share_after_the_warmup() -> None:
    split = split_ranges(1033, SplitOptions(train_fraction=0.8), warmup=33)

    assert split.train == range(33, 833)
    assert split.eval == range(833, 1033)


def test_the_gap_leaves_bars_out_between_train_and_eval() -> None:
    split = split_ranges(1000, SplitOptions(train_fraction=0.5, gap_bars=20))

    assert split.train == range(0, 500)
    assert split.eval == range(520, 1000)


def test_date_mode_starts_eval_at_the_first_bar_on_or_after_the_date() -> None:
    stamps = business_days(300)
    options = SplitOptions(mode="date", eval_start="2020-06-01", gap_bars=5)

    split = split_ranges(300, options, timestamps_ns=stamps, warmup=10)

    first_eval = int(np.searchsorted(stamps, pd.Timestamp("2020-06-01").value))
    assert split.eval == range(first_eval, 300)
    assert split.train == range(10, first_eval - 5)
    assert stamps[split.eval.start] >= pd.Timestamp("2020-06-01").value > stamps[split.eval.start - 1]


def test_date_mode_needs_timestamps() -> None:
    with pytest.raises(ValueError, match="timestamps"):
        split_ranges(300, SplitOptions(mode="date", eval_start="2020-06-01"))


def test_without_walk_forward_every_episode_gets_the_same_split() -> None:
    options = SplitOptions()

    assert split_ranges(500, options, episode=0).train == split_ranges(500, options, episode=7).train


def test_walk_forward_episode_k_trains_on_window_k_and_evaluates_on_the_next() -> None:
    options = SplitOptions(walk_forward=True, train_bars=100, eval_bars=50, gap_bars=2)

    splits = [split_ranges(1000, options, episode=k, warmup=10) for k in range(3)]

    assert [s.train for s in splits] == [range(10, 110), range(60, 160), range(110, 210)]
    assert [s.eval for s in splits] == [range(112, 162), range(162, 212), range(212, 262)]
    assert window_count(1000, options, warmup=10) == (1000 - 112) // 50


def test_walk_forward_in_date_mode_starts_the_first_eval_window_at_the_date() -> None:
    stamps = business_days(400)
    options = SplitOptions(
        mode="date", eval_start="2020-09-01", walk_forward=True, train_bars=100, eval_bars=20
    )

    first, second = (split_ranges(400, options, episode=k, timestamps_ns=stamps) for k in (0, 1))

    start = int(np.searchsorted(stamps, pd.Timestamp("2020-09-01").value))
    assert first.eval == range(start, start + 20) and first.train == range(start - 100, start)
    assert second.eval == range(start + 20, start + 40)


def test_a_walk_forward_episode_past_the_data_counts_episodes_from_one_and_says_how_many_fit() -> None:
    options = SplitOptions(walk_forward=True, train_bars=100, eval_bars=50)

    with pytest.raises(DataError, match=r"walk-forward episode 19 needs bars up to 1050") as caught:
        split_ranges(1000, options, episode=18)

    assert "only 18 episodes fit" in str(caught.value)
    assert "training.episodes" in str(caught.value)


def test_too_few_rows_for_the_split_is_a_data_error() -> None:
    with pytest.raises(DataError, match="too few rows for the split: 40 bars, 33 of them warm-up"):
        split_ranges(40, SplitOptions(), warmup=33, min_train_bars=5, min_eval_bars=5)


def test_five_years_of_daily_bars_fit_the_default_window_and_episode_length() -> None:
    split = split_ranges(1300, SplitOptions(), warmup=33, min_train_bars=32 + 256, min_eval_bars=32 + 1)

    assert len(split.train) == 1013 and len(split.eval) == 254


def test_a_short_eval_range_states_the_evaluation_minimum_and_the_key_to_change() -> None:
    with pytest.raises(DataError, match=r"19 eval bars .*evaluation needs at least 33") as caught:
        split_ranges(400, SplitOptions(train_fraction=0.95), warmup=33, min_train_bars=288, min_eval_bars=33)

    assert "data.split.train_fraction" in str(caught.value)
    assert "training needs" not in str(caught.value)


def test_a_short_train_range_states_the_training_minimum_and_the_keys_to_change() -> None:
    with pytest.raises(DataError, match=r"213 train bars .*training needs at least 288") as caught:
        split_ranges(300, SplitOptions(), warmup=33, min_train_bars=288, min_eval_bars=33)

    assert "env.episode_length" in str(caught.value)
    assert "evaluation needs" not in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("mode", "random"), ("train_fraction", 1.0), ("gap_bars", -1), ("train_bars", 1.5)],
)
def test_invalid_split_options_name_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SplitOptions\.{field} .*{value!r}"):
        SplitOptions(**{field: value})  # type: ignore[arg-type]


def test_walk_forward_needs_window_sizes() -> None:
    with pytest.raises(ValueError, match="train_bars and eval_bars"):
        SplitOptions(walk_forward=True)


def test_date_mode_needs_a_parseable_eval_start() -> None:
    with pytest.raises(ValueError, match="eval_start"):
        SplitOptions(mode="date", eval_start="not a date")


def test_the_normalizer_uses_the_train_range_only() -> None:
    features = np.vstack([np.full((100, 2), 1.0), np.full((50, 2), 1000.0)]).astype(np.float32)
    features[::2, 1] = 3.0

    normalizer = Normalizer.fit(features, range(0, 100))

    np.testing.assert_allclose(normalizer.mean, [1.0, 2.0])
    np.testing.assert_allclose(normalizer.std, [1e-8, 1.0])


def test_the_normalizer_ignores_nan_and_keeps_it() -> None:
    features = np.array([[np.nan, 1.0], [2.0, 3.0], [4.0, np.nan]], dtype=np.float32)

    normalizer = Normalizer.fit(features)
    out = normalizer.apply(features)

    np.testing.assert_allclose(normalizer.mean, [3.0, 2.0])
    assert out.dtype == np.float32
    assert np.isnan(out[0, 0]) and np.isnan(out[2, 1])
    np.testing.assert_allclose(out[1], [-1.0, 1.0])


def test_the_normalizer_round_trips_through_json() -> None:
    rng = np.random.default_rng(0)
    normalizer = Normalizer.fit(rng.normal(size=(200, 3)), names=("a", "b", "c"), clip=5.0)

    again = Normalizer.from_dict(json.loads(json.dumps(normalizer.to_dict())))

    assert again.names == ("a", "b", "c") and again.clip == 5.0
    np.testing.assert_array_equal(again.mean, normalizer.mean)
    np.testing.assert_array_equal(again.std, normalizer.std)


def test_a_normalizer_dict_with_bad_statistics_is_rejected() -> None:
    with pytest.raises(ValueError, match="std"):
        Normalizer.from_dict({"mean": [0.0], "std": [0.0]})


def test_clipping_bounds_standardised_values() -> None:
    normalizer = Normalizer.fit(np.array([[0.0], [2.0]]), clip=3.0)

    assert normalizer.apply(np.array([[100.0]]))[0, 0] == 3.0


def test_changing_the_eval_window_changes_nothing_training_sees() -> None:
    frame = generate_bars(2000, seed=11)
    options = FeatureOptions(names=available_features())
    features = compute_features(frame, options)
    split = split_ranges(len(frame), SplitOptions(train_fraction=0.7, gap_bars=5), warmup=60)
    changed = frame.copy()
    rng = np.random.default_rng(1)
    eval_rows = slice(split.eval.start, split.eval.stop)
    for name in ("open", "high", "low", "close"):
        changed.iloc[eval_rows, changed.columns.get_loc(name)] *= rng.uniform(0.3, 3.0, size=len(split.eval))
    changed.iloc[eval_rows, changed.columns.get_loc("volume")] = 1.0

    changed_features = compute_features(changed, options)
    train = slice(split.train.start, split.train.stop)

    np.testing.assert_array_equal(changed_features[train], features[train])
    before, after = Normalizer.fit(features, split.train), Normalizer.fit(changed_features, split.train)
    np.testing.assert_array_equal(after.mean, before.mean)
    np.testing.assert_array_equal(after.std, before.std)
    assert not np.array_equal(changed_features[eval_rows], features[eval_rows])
