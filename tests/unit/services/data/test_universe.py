"""Tests of the multi-symbol reader: the three source forms, alignment, features, ranks, normalisation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.data.bars import DataError
from services.data.features import compute_features
from services.data.options import FeatureOptions, SourceOptions
from services.data.synthetic import generate_bars
from services.data.universe import (
    UniverseOptions,
    cross_sectional_rank,
    detect_form,
    read_universe,
)

ROOT = Path(__file__).resolve().parents[4]
FEATURES = FeatureOptions(names=("ret_1", "ret_5", "vol_20", "hl_range"))
WARMUP = 20


def symbol_frames() -> dict[str, pd.DataFrame]:
    """Return three symbols' bars: AAA whole, BBB listed 50 bars later, CCC ending early with a hole."""
    frames = {}
    for seed, name in enumerate(("AAA", "BBB", "CCC")):
        frames[name] = generate_bars(300, seed=seed + 1)
    frames["BBB"] = frames["BBB"].iloc[50:]
    ccc = frames["CCC"].iloc[:250]
    frames["CCC"] = ccc.drop(ccc.index[100:103])
    return frames


def write_long(path: Path, frames: dict[str, pd.DataFrame]) -> Path:
    """Write the frames as one long CSV, rows interleaved by time, in another spelling."""
    parts = [frame.assign(Ticker=name) for name, frame in frames.items()]
    joined = pd.concat(parts).sort_values(["timestamp", "Ticker"], kind="stable")
    joined = joined.rename(columns={"timestamp": "DATE", "open": "Open", "high": "HIGH", "close": "Close"})
    joined["DATE"] = joined["DATE"].dt.strftime("%Y-%m-%d")
    joined.to_csv(path, index=False)
    return path


def write_folder(folder: Path, frames: dict[str, pd.DataFrame]) -> Path:
    """Write one CSV per symbol into a folder."""
    folder.mkdir()
    for name, frame in frames.items():
        out = frame.assign(timestamp=frame["timestamp"].dt.strftime("%Y-%m-%d"))
        out.to_csv(folder / f"{name}.csv.gz", index=False)
    return folder


def test_a_long_file_is_aligned_by_time_without_filling_missing_bars(tmp_path: Path) -> None:
    frames = symbol_frames()
    path = write_long(tmp_path / "long.csv", frames)

    universe = read_universe(SourceOptions(path=str(path)), FEATURES)

    assert universe.symbols == ("AAA", "BBB", "CCC")
    assert len(universe) == 300
    present = universe.present
    assert present[:, 0].all()
    assert not present[:50, 1].any() and present[50:, 1].all()
    assert not present[100:103, 2].any() and not present[250:, 2].any()
    np.testing.assert_array_equal(universe.close[50:, 1], frames["BBB"]["close"].to_numpy())
    assert np.isnan(universe.close[100:103, 2]).all()
    assert np.isnan(universe.features[100:103, 2]).all()


def test_each_symbols_features_are_computed_over_its_own_bars(tmp_path: Path) -> None:
    frames = symbol_frames()
    path = write_long(tmp_path / "long.csv", frames)

    universe = read_universe(SourceOptions(path=str(path), chunk_rows=97), FEATURES)

    for j, name in enumerate(universe.symbols):
        own = compute_features(frames[name], FEATURES)
        rows = universe.present[:, j]
        np.testing.assert_allclose(universe.features[rows, j], own, rtol=2e-6, atol=1e-7)


def test_a_symbol_is_tradable_from_its_first_bar_with_complete_features(tmp_path: Path) -> None:
    path = write_long(tmp_path / "long.csv", symbol_frames())

    universe = read_universe(SourceOptions(path=str(path)), FEATURES)

    tradable = universe.tradable
    assert not tradable[:WARMUP, 0].any() and tradable[WARMUP:, 0].all()
    assert not tradable[: 50 + WARMUP, 1].any() and tradable[50 + WARMUP :, 1].all()
    assert not tradable[100:103, 2].any() and not tradable[250:, 2].any()
    assert universe.first_tradable_bar() == WARMUP


def test_a_folder_of_files_reads_like_the_long_file(tmp_path: Path) -> None:
    frames = symbol_frames()
    long_file = write_long(tmp_path / "long.csv", frames)
    folder = write_folder(tmp_path / "bars", frames)

    from_long = read_universe(SourceOptions(path=str(long_file)), FEATURES)
    from_folder = read_universe(SourceOptions(path=str(folder)), FEATURES)

    assert detect_form(str(folder), UniverseOptions()) == "files"
    assert from_folder.symbols == from_long.symbols
    np.testing.assert_array_equal(from_folder.timestamp, from_long.timestamp)
    np.testing.assert_array_equal(from_folder.close, from_long.close)
    np.testing.assert_array_equal(from_folder.features, from_long.features)


def test_a_wide_file_is_close_only_and_an_empty_cell_is_no_bar(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("Date,AAA,BBB\n2020-01-01,10,\n2020-01-02,11,20\n2020-01-03,,21\n2020-01-06,12,22\n")

    universe = read_universe(SourceOptions(path=str(path)), FeatureOptions(names=("ret_1",)))

    assert detect_form(str(path), UniverseOptions()) == "wide"
    assert universe.close_only
    np.testing.assert_array_equal(universe.open, universe.close)
    np.testing.assert_array_equal(universe.close[:, 0], [10.0, 11.0, np.nan, 12.0])
    np.testing.assert_array_equal(universe.close[:, 1], [np.nan, 20.0, 21.0, 22.0])
    # AAA's return at its next bar spans the hole: log(12 / 11).
    assert universe.features[3, 0, 0] == pytest.approx(np.log(12 / 11), rel=1e-6)
    np.testing.assert_array_equal(universe.tradable[:, 0], [False, True, False, True])


def test_a_long_close_only_file_gets_flat_bars(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("date,symbol,close\n2020-01-01,X,1\n2020-01-01,Y,2\n2020-01-02,X,1.5\n2020-01-02,Y,2.5\n")

    universe = read_universe(SourceOptions(path=str(path)), FeatureOptions(names=("ret_1",)))

    assert universe.close_only
    np.testing.assert_array_equal(universe.high, universe.close)
    np.testing.assert_array_equal(universe.close[1], [1.5, 2.5])


def test_bad_data_names_the_file_line_and_symbol(tmp_path: Path) -> None:
    long_file = tmp_path / "long.csv"
    long_file.write_text(
        "date,symbol,close\n2020-01-01,X,1\n2020-01-01,Y,2\n2020-01-02,X,1.5\n2020-01-02,Y,-3\n"
    )
    wide_file = tmp_path / "wide.csv"
    wide_file.write_text("Date,AAA,BBB\n2020-01-01,10,20\n2020-01-02,11,abc\n")

    with pytest.raises(DataError) as long_error:
        read_universe(SourceOptions(path=str(long_file)), FeatureOptions(names=("ret_1",)))
    with pytest.raises(DataError) as wide_error:
        read_universe(SourceOptions(path=str(wide_file)), FeatureOptions(names=("ret_1",)))

    assert str(long_error.value).startswith(f"{long_file}, line 5: symbol Y: non-positive")
    assert str(wide_error.value).startswith(f"{wide_file}, line 3: symbol BBB: non-numeric")


def test_out_of_order_rows_of_one_symbol_are_refused_with_the_symbol(tmp_path: Path) -> None:
    path = tmp_path / "long.csv"
    path.write_text("date,symbol,close\n2020-01-02,X,1\n2020-01-01,Y,2\n2020-01-01,X,1.5\n")

    with pytest.raises(DataError, match=r"line 4: symbol X: out-of-order timestamp"):
        read_universe(SourceOptions(path=str(path)), FeatureOptions(names=("ret_1",)))


def test_the_embedded_universe_holds_twenty_close_only_stocks() -> None:
    source = SourceOptions(path=str(ROOT / "data" / "SP500_20_STOCKS_DAILY.csv.gz"))

    universe = read_universe(source, FeatureOptions(names=("ret_1",)))

    assert len(universe.symbols) == 20 and universe.symbols[0] == "AAPL"
    assert len(universe) == 8313 and universe.close_only


def test_ranks_are_in_minus_one_to_one_over_the_valid_values_of_each_row() -> None:
    values = np.array([[3.0, 1.0, 2.0, 9.0], [5.0, 5.0, 1.0, np.nan], [7.0, 0.0, 0.0, 0.0]])
    valid = np.array([[True, True, True, False], [True, True, True, False], [True, False, False, False]])

    ranks = cross_sectional_rank(values, valid)

    np.testing.assert_allclose(ranks[0, :3], [1.0, -1.0, 0.0])
    np.testing.assert_allclose(ranks[1, :3], [0.5, 0.5, -1.0])
    assert ranks[2, 0] == 0.0
    assert np.isnan(ranks[~valid]).all()


def test_rank_features_rank_a_feature_across_the_tradable_symbols(tmp_path: Path) -> None:
    path = write_long(tmp_path / "long.csv", symbol_frames())
    options = UniverseOptions(cross_sectional=("ret_5",))

    universe = read_universe(SourceOptions(path=str(path)), FEATURES, options)

    assert universe.feature_names[-1] == "rank:ret_5"
    row = 200  # all three tradable
    order = np.argsort(universe.features[row, :, 1])
    np.testing.assert_allclose(universe.features[row, order, -1], [-1.0, 0.0, 1.0])
    assert np.isnan(universe.features[60, 1, -1])  # BBB in its warm-up


def test_no_feature_at_or_before_a_cut_depends_on_a_later_bar(tmp_path: Path) -> None:
    frames = symbol_frames()
    cut = 160
    options = UniverseOptions(cross_sectional=("ret_1", "vol_20"))
    changed = {}
    rng = np.random.default_rng(5)
    for name, frame in frames.items():
        later = frame["timestamp"] > frames["AAA"]["timestamp"].iloc[cut]
        scale = np.where(later, rng.uniform(0.5, 2.0, len(frame)), 1.0)
        changed[name] = frame.assign(**{c: frame[c] * scale for c in ("open", "high", "low", "close")})
    changed["BBB"] = changed["BBB"].drop(changed["BBB"].index[-30:])

    before = read_universe(SourceOptions(path=str(write_long(tmp_path / "a.csv", frames))), FEATURES, options)
    after = read_universe(SourceOptions(path=str(write_long(tmp_path / "b.csv", changed))), FEATURES, options)

    np.testing.assert_array_equal(before.features[: cut + 1], after.features[: cut + 1])
    np.testing.assert_array_equal(before.tradable[: cut + 1], after.tradable[: cut + 1])
    assert not np.allclose(
        np.nan_to_num(before.features[cut + 1 :]), np.nan_to_num(after.features[cut + 1 :])
    )


def test_the_normalizer_sees_only_the_train_rows_pooled_over_symbols(tmp_path: Path) -> None:
    path = write_long(tmp_path / "long.csv", symbol_frames())
    universe = read_universe(SourceOptions(path=str(path)), FEATURES)
    train = range(WARMUP, 150)

    normalizer = universe.fit_normalizer(train)

    pooled = universe.features[train.start : train.stop].reshape(-1, len(FEATURES.names)).astype(np.float64)
    np.testing.assert_allclose(normalizer.mean, np.nanmean(pooled, axis=0), rtol=1e-10)
    np.testing.assert_allclose(normalizer.std, np.nanstd(pooled, axis=0), rtol=1e-10)
    assert normalizer.names == FEATURES.names
