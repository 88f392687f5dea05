"""Tests of the causal feature pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import services.data.features as features_module
from services.data.bars import Bars
from services.data.features import (
    FeatureContext,
    FeaturePipeline,
    available_features,
    compute_features,
    register_feature,
)
from services.data.options import DEFAULT_FEATURES, FeatureOptions, SourceOptions
from services.data.reader import read_bars
from services.data.synthetic import generate_bars, write_csv

ALL = FeatureOptions(names=available_features())
ALL_WARMUP = 200  # ema_ratio_200 sets the warm-up of the full set.


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return generate_bars(3000, seed=7)


def column(table: np.ndarray, name: str, options: FeatureOptions = ALL) -> np.ndarray:
    return table[:, options.names.index(name)]


def test_the_default_set_has_eight_features_and_a_33_bar_warmup(frame: pd.DataFrame) -> None:
    pipeline = FeaturePipeline(FeatureOptions())

    table = pipeline.update(Bars.from_frame(frame))

    assert pipeline.names == DEFAULT_FEATURES == FeatureOptions().names
    assert pipeline.warmup == 33
    assert table.dtype == np.float32 and table.shape == (3000, 8)
    assert np.isnan(table[:33]).all()
    assert np.isfinite(table[33:]).all()


def test_every_registered_feature_is_finite_after_the_warmup(frame: pd.DataFrame) -> None:
    pipeline = FeaturePipeline(ALL)

    table = pipeline.update(Bars.from_frame(frame))

    assert np.isnan(table[: pipeline.warmup]).all()
    assert np.isfinite(table[pipeline.warmup :]).all()


def test_log_returns_compare_the_close_with_k_bars_before(frame: pd.DataFrame) -> None:
    table = compute_features(frame, ALL)

    log_close = np.log(frame["close"].to_numpy())
    for k in (1, 5, 20):
        expected = log_close[ALL_WARMUP:] - log_close[ALL_WARMUP - k : len(log_close) - k]
        np.testing.assert_allclose(column(table, f"ret_{k}")[ALL_WARMUP:], expected, rtol=1e-5, atol=1e-7)


def test_rolling_features_match_pandas_rolling_windows(frame: pd.DataFrame) -> None:
    table = compute_features(frame, ALL)

    returns = np.log(frame["close"]).diff()
    log_volume = np.log1p(frame["volume"])
    volume_z = (log_volume - log_volume.rolling(20).mean()) / log_volume.rolling(20).std()
    sma = frame["close"].rolling(20).mean()
    np.testing.assert_allclose(
        column(table, "vol_20")[ALL_WARMUP:], returns.rolling(20).std()[ALL_WARMUP:], rtol=1e-5
    )
    np.testing.assert_allclose(
        column(table, "vol_z_20")[ALL_WARMUP:], volume_z[ALL_WARMUP:], rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        column(table, "sma_ratio_20")[ALL_WARMUP:], (frame["close"] / sma - 1)[ALL_WARMUP:], atol=1e-6
    )
    high_low = (frame["high"] - frame["low"]) / frame["close"]
    np.testing.assert_allclose(column(table, "hl_range")[ALL_WARMUP:], high_low[ALL_WARMUP:], rtol=1e-6)


def test_rsi_matches_wilders_recursion(frame: pd.DataFrame) -> None:
    close = frame["close"].to_numpy()
    gain = loss = 0.0
    expected = np.full(len(close), np.nan)
    for t in range(1, len(close)):
        change = close[t] - close[t - 1]
        up, down = max(change, 0.0), max(-change, 0.0)
        gain, loss = (up, down) if t == 1 else (gain + (up - gain) / 14, loss + (down - loss) / 14)
        rsi = 100.0 if loss == 0 else 100 - 100 / (1 + gain / loss)
        expected[t] = (rsi - 50) / 50

    table = compute_features(frame, ALL)

    np.testing.assert_allclose(
        column(table, "rsi_14")[ALL_WARMUP:], expected[ALL_WARMUP:], rtol=1e-5, atol=1e-6
    )


def test_macd_histogram_matches_pandas_exponential_averages(frame: pd.DataFrame) -> None:
    close = frame["close"]
    macd = close.ewm(span=12, adjust=False).mean() - close.ewm(span=26, adjust=False).mean()
    expected = (macd - macd.ewm(span=9, adjust=False).mean()) / close

    table = compute_features(frame, ALL)

    np.testing.assert_allclose(
        column(table, "macd_hist")[ALL_WARMUP:], expected[ALL_WARMUP:], rtol=1e-5, atol=1e-8
    )


def test_ema_ratios_compare_the_close_with_pandas_exponential_averages(frame: pd.DataFrame) -> None:
    close = frame["close"]

    table = compute_features(frame, ALL)

    for span in (50, 100, 200):
        expected = close / close.ewm(span=span, adjust=False).mean() - 1
        np.testing.assert_allclose(
            column(table, f"ema_ratio_{span}")[ALL_WARMUP:], expected[ALL_WARMUP:], rtol=1e-5, atol=1e-7
        )


def test_features_from_1000_row_chunks_equal_those_from_one_read(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bars.csv", 12_345, seed=3, freq="1h")

    def features(chunk_rows: int) -> np.ndarray:
        pipeline = FeaturePipeline(ALL)
        blocks = [pipeline.update(b) for b in read_bars(SourceOptions(path=str(path), chunk_rows=chunk_rows))]
        return np.concatenate(blocks)

    chunked, whole = features(1000), features(100_000)

    assert chunked.shape == whole.shape == (12_345, len(ALL.names))
    np.testing.assert_array_equal(np.isnan(chunked), np.isnan(whole))
    np.testing.assert_allclose(chunked, whole, rtol=2e-6, atol=1e-7)


def test_tiny_chunks_smaller_than_the_lookback_give_the_same_features(frame: pd.DataFrame) -> None:
    bars = Bars.from_frame(frame)
    pipeline = FeaturePipeline(ALL)
    sizes = [1, 2, 3, 7, 30, 1, 500]

    parts, start = [], 0
    while start < len(bars):
        for size in sizes:
            parts.append(pipeline.update(bars.slice(start, start + size)))
            start += size

    np.testing.assert_allclose(np.concatenate(parts)[: len(bars)], compute_features(frame, ALL), rtol=2e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_changing_bars_after_t_changes_no_feature_at_or_before_t(frame: pd.DataFrame, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = int(rng.integers(40, len(frame) - 2))
    changed = frame.copy()
    factor = rng.uniform(0.5, 2.0, size=len(frame) - t - 1)
    for name in ("open", "high", "low", "close"):
        changed.loc[t + 1 :, name] = changed.loc[t + 1 :, name].to_numpy() * factor
    changed.loc[t + 1 :, "volume"] = rng.uniform(1, 1e7, size=len(frame) - t - 1)

    before, after = compute_features(frame, ALL), compute_features(changed, ALL)

    np.testing.assert_array_equal(before[: t + 1], after[: t + 1])
    assert not np.array_equal(before[t + 1 :], after[t + 1 :])


def test_compute_features_accepts_a_frame_without_volume(frame: pd.DataFrame) -> None:
    table = compute_features(frame.drop(columns="volume"))

    assert table.shape == (len(frame), len(DEFAULT_FEATURES))
    assert np.isfinite(column(table, "vol_z_20", FeatureOptions())[40:]).all()


def test_a_new_feature_is_one_registered_function(
    monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame
) -> None:
    monkeypatch.setattr(features_module, "_REGISTRY", dict(features_module._REGISTRY))

    @register_feature("close_change_3", warmup=3)
    def close_change(ctx: FeatureContext) -> np.ndarray:
        """Close change over 3 bars."""
        out = np.full(len(ctx), np.nan)
        out[3:] = ctx.close[3:] - ctx.close[:-3]
        return out

    table = compute_features(frame, FeatureOptions(names=("close_change_3",)))

    close = frame["close"].to_numpy()
    np.testing.assert_allclose(table[3:, 0], close[3:] - close[:-3], rtol=1e-6)
    assert np.isnan(table[:3, 0]).all()


def test_unknown_feature_names_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"FeatureOptions.names has unknown feature 'nope'; known: .*ret_1"):
        FeatureOptions(names=("ret_1", "nope"))


@pytest.mark.parametrize("names", [(), ("ret_1", "ret_1"), "ret_1"])
def test_empty_repeated_or_string_names_are_rejected(names: object) -> None:
    with pytest.raises(ValueError, match=r"FeatureOptions\.names"):
        FeatureOptions(names=names)  # type: ignore[arg-type]


def test_names_given_as_a_list_become_a_tuple() -> None:
    options = FeatureOptions(names=["ret_1", "vol_20"])  # type: ignore[arg-type]

    assert options.names == ("ret_1", "vol_20")


def test_a_flat_volume_window_gives_a_zero_volume_zscore(frame: pd.DataFrame) -> None:
    changed = frame.copy()
    changed.loc[200:, "volume"] = 12_345.0

    z = compute_features(changed, FeatureOptions(names=("vol_z_20",)))[:, 0]

    assert (z[219:] == 0.0).all()
    assert (z[200:219] != 0.0).all()
