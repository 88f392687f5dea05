"""Tests of the seeded synthetic bar generator."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.data.bars import Bars, infer_bars_per_year
from services.data.options import SourceOptions
from services.data.reader import read_bars
from services.data.synthetic import SyntheticOptions, SyntheticStream, generate_bars, main, write_csv


def test_the_same_seed_gives_the_same_bars() -> None:
    pd.testing.assert_frame_equal(generate_bars(2000, seed=4), generate_bars(2000, seed=4))


def test_different_seeds_give_different_bars() -> None:
    assert not generate_bars(200, seed=1)["close"].equals(generate_bars(200, seed=2)["close"])


def test_chunk_sizes_do_not_change_the_bars() -> None:
    stream = SyntheticStream(seed=9)

    pieces = pd.concat(
        [stream.next(1), stream.next(333), stream.next(0), stream.next(1666)], ignore_index=True
    )

    pd.testing.assert_frame_equal(pieces, generate_bars(2000, seed=9))


def test_bars_are_consistent_and_positive() -> None:
    frame = generate_bars(20_000, seed=3, freq="1h")

    assert (frame[["open", "high", "low", "close"]] > 0).all().all()
    assert (frame["high"] >= frame[["open", "close"]].max(axis=1)).all()
    assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
    assert (frame["volume"] >= 1).all()
    assert frame["timestamp"].is_monotonic_increasing and frame["timestamp"].is_unique


def test_volatility_switches_regime_and_volume_follows_it() -> None:
    frame = generate_bars(20_000, seed=8)
    returns = np.log(frame["close"]).diff().abs()
    volatility = returns.rolling(20).mean()

    assert volatility.quantile(0.95) > 2 * volatility.quantile(0.05)
    assert np.corrcoef(volatility[20:], np.log(frame["volume"])[20:])[0, 1] > 0.3


def test_daily_volatility_is_near_the_annual_setting() -> None:
    options = SyntheticOptions(vol_low=0.2, vol_high=0.2)

    frame = generate_bars(5000, seed=2, options=options)

    annual = np.log(frame["close"]).diff().std() * np.sqrt(261)
    assert 0.17 < annual < 0.23


def test_written_csv_passes_the_readers_validation(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bars.csv", 5000, seed=1, chunk_rows=700, freq="1min")

    bars = Bars.concat(list(read_bars(SourceOptions(path=str(path)))))

    expected = generate_bars(5000, seed=1, freq="1min")
    assert len(bars) == 5000
    np.testing.assert_allclose(bars.close, expected["close"], atol=5e-5)
    assert bars.timestamp[1] - bars.timestamp[0] == 60 * 10**9


def test_written_daily_bars_read_back_at_252_bars_a_year(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "bars.csv.gz", 1000, seed=1)

    bars = Bars.concat(list(read_bars(SourceOptions(path=str(path)))))

    with gzip.open(path, "rt") as stream:
        assert stream.readline() == "timestamp,open,high,low,close,volume\n"
        assert stream.readline().startswith("2000-01-03,")
    assert infer_bars_per_year(bars.timestamp) == 252.0


def test_bars_past_year_2262_are_refused() -> None:
    with pytest.raises(ValueError, match="2262"):
        generate_bars(100_000, seed=0)


def test_invalid_options_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"SyntheticOptions\.p_to_high"):
        SyntheticOptions(p_to_high=1.5)


def test_the_command_line_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.csv"

    status = main(["--rows", "300", "--seed", "2", "--out", str(out)])

    assert status == 0
    assert len(out.read_text().splitlines()) == 301
    assert "wrote 300 bars" in capsys.readouterr().out
