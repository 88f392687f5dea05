"""Tests of close-only sources: flat bars, close-based features and fills at the next bar's close."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.data.bars import DataError
from services.data.options import FeatureOptions, SourceOptions
from services.data.store import FeatureStore, process_source
from services.env.options import EnvOptions
from services.env.vec_env import VecTradingEnv

CLOSES = [10.0, 11.0, 12.1, 9.68, 10.648]


def close_only_file(path: Path, column: str = "Close") -> SourceOptions:
    days = ["2020-01-02", "2020-01-03", "2020-01-06", "2020-01-07", "2020-01-08"]
    path.write_text(f"Date,{column}\n" + "".join(f"{d},{c}\n" for d, c in zip(days, CLOSES, strict=True)))
    return SourceOptions(path=str(path))


def test_the_default_features_of_a_close_only_source_read_only_closes(tmp_path: Path) -> None:
    data = process_source(close_only_file(tmp_path / "c.csv"), FeatureOptions())

    assert data.names == ("ret_1", "ret_5", "ret_20", "vol_20", "rsi_14", "macd_hist")


def test_a_feature_that_reads_high_and_low_is_refused_on_a_close_only_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.features.names: 'hl_range' reads open, high or low"):
        process_source(close_only_file(tmp_path / "c.csv"), FeatureOptions(names=("ret_1", "hl_range")))


def test_the_store_records_that_its_source_is_close_only(tmp_path: Path) -> None:
    source = close_only_file(tmp_path / "c.csv", column="Price")

    store = FeatureStore.build(tmp_path / "store", source, FeatureOptions(), key="k")

    assert store.info.close_only
    assert FeatureStore.open(tmp_path / "store").info.close_only  # type: ignore[union-attr]


def test_the_next_open_fill_on_close_only_data_fills_at_the_next_bars_close(tmp_path: Path) -> None:
    bars = process_source(close_only_file(tmp_path / "c.csv"), FeatureOptions(names=("ret_1",))).bars
    options = EnvOptions(window=1, episode_length=2, commission_bps=0.0, slippage_bps=0.0, ruin_equity=0.0)
    env = VecTradingEnv(options, sequential=True)
    env.update_data(np.zeros((len(bars), 1), dtype=np.float32), bars.open, bars.close)
    env.reset()

    rewards = [float(env.step(np.array([2])).reward[0]) for _ in range(len(bars) - 1)]

    # Long from bar 0's decision on: the order fills at bar 1's close, so bar 1 earns nothing.
    close = np.array(CLOSES)
    expected = np.log(np.concatenate(([1.0], close[2:] / close[1:-1])))
    np.testing.assert_allclose(rewards, expected, rtol=1e-6, atol=1e-7)
