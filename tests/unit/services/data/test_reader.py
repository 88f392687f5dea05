"""Tests of the streaming bar reader and its validation."""

from __future__ import annotations

import gzip
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from services.data.bars import Bars, DataError, infer_bars_per_year
from services.data.options import SourceOptions
from services.data.reader import SourceReader, list_source_files, read_bars

HEADER = "Date,Open,High,Low,Close,Volume\n"
GOOD_ROWS = [
    "2020-01-02,10,11,9,10.5,100\n",
    "2020-01-03,10.5,12,10,11,200\n",
    "2020-01-06,11,11.5,10.5,11.2,300\n",
    "2020-01-07,11.2,11.8,11,11.6,400\n",
]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def read_all(path: Path | str, **kwargs: object) -> Bars:
    return Bars.concat(list(read_bars(SourceOptions(path=str(path), **kwargs))))  # type: ignore[arg-type]


def ns(text: str) -> int:
    return int(pd.Timestamp(text).as_unit("ns").value)


def data_error(path: Path | str, **kwargs: object) -> str:
    with pytest.raises(DataError) as caught:
        read_all(path, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_the_embedded_dataset_reads_as_clean_daily_bars() -> None:
    bars = read_all("data/STOCKS_GOOGL.csv")

    assert len(bars) == 2335
    assert bars.timestamp.dtype == np.int64 and bars.close.dtype == np.float64
    assert bars.timestamp[0] == ns("2009-05-22")
    assert (np.diff(bars.timestamp) > 0).all()
    assert infer_bars_per_year(bars.timestamp) == 252.0


def test_chunks_never_exceed_chunk_rows_and_join_to_the_whole_file() -> None:
    chunks = list(read_bars(SourceOptions(chunk_rows=500)))

    assert [len(c) for c in chunks] == [500, 500, 500, 500, 335]
    assert np.array_equal(Bars.concat(chunks).close, read_all("data/STOCKS_GOOGL.csv").close)


@pytest.mark.parametrize(
    ("column", "values", "expected"),
    [
        ("Date", ["2009-05-22", "2009-05-26"], ["2009-05-22", "2009-05-26"]),
        ("Date", ["1/4/1999", "1/13/1999"], ["1999-01-04", "1999-01-13"]),
        (
            "Gmt time",
            ["01.01.2017 22:00:00.000", "02.01.2017 22:00:00.000"],
            ["2017-01-01 22:00", "2017-01-02 22:00"],
        ),
        (
            "Datetime",
            ["2017-01-01T22:00:00Z", "2017-01-01T23:00:00Z"],
            ["2017-01-01 22:00", "2017-01-01 23:00"],
        ),
        (
            "timestamp",
            ["2017-01-01 09:30:00", "2017-01-01 09:31:00"],
            ["2017-01-01 09:30", "2017-01-01 09:31"],
        ),
        ("Time", ["20090522", "20090526"], ["2009-05-22", "2009-05-26"]),
        ("timestamp", ["1483308000", "1483311600"], ["2017-01-01 22:00", "2017-01-01 23:00"]),
        ("timestamp", ["1483308000000", "1483311600000"], ["2017-01-01 22:00", "2017-01-01 23:00"]),
    ],
)
def test_usual_time_columns_and_formats_are_recognised(
    tmp_path: Path, column: str, values: list[str], expected: list[str]
) -> None:
    rows = "".join(f"{v},10,11,9,10.5,100\n" for v in values)
    path = write(tmp_path / "bars.csv", f"{column},Open,High,Low,Close,Volume\n{rows}")

    bars = read_all(path)

    assert bars.timestamp.tolist() == [ns(e) for e in expected]


def test_an_explicit_day_first_format_overrides_detection(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bars.csv", "Date,Open,High,Low,Close\n04/01/1999,10,11,9,10\n05/01/1999,10,11,9,10\n"
    )

    bars = read_all(path, timestamp_format="%d/%m/%Y")

    assert bars.timestamp.tolist() == [ns("1999-01-04"), ns("1999-01-05")]


def test_separate_date_and_time_columns_are_joined(tmp_path: Path) -> None:
    text = "Date,Time,Open,High,Low,Close\n2017.01.02,09:30,10,11,9,10\n2017.01.02,09:31,10,11,9,10\n"
    path = write(tmp_path / "bars.csv", text)

    bars = read_all(path)

    assert bars.timestamp.tolist() == [ns("2017-01-02 09:30"), ns("2017-01-02 09:31")]


def test_column_names_match_in_any_case_and_extra_columns_are_ignored(tmp_path: Path) -> None:
    header = "DATE,open,HIGH,Low,CLOSE,volume,Ticker\n"
    text = header + "2020-01-02,10,11,9,10.5,100,X\n2020-01-03,10,11,9,10.5,100,X\n"
    path = write(tmp_path / "bars.csv", text)

    bars = read_all(path)

    assert bars.close.tolist() == [10.5, 10.5]
    assert bars.volume.tolist() == [100.0, 100.0]


def test_the_time_can_come_from_an_unnamed_index_column(tmp_path: Path) -> None:
    path = write(
        tmp_path / "bars.csv", ",Open,High,Low,Close\n2020-01-02,10,11,9,10\n2020-01-03,10,11,9,10\n"
    )

    bars = read_all(path)

    assert bars.timestamp.tolist() == [ns("2020-01-02"), ns("2020-01-03")]


def test_a_missing_volume_column_reads_as_zero_volume(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", "Date,Open,High,Low,Close\n2020-01-02,10,11,9,10\n")

    bars = read_all(path)

    assert bars.volume.tolist() == [0.0]


def test_adj_close_replaces_close_and_scales_open_high_low(tmp_path: Path) -> None:
    text = "Date,Open,High,Low,Close,Adj Close,Volume\n2020-01-02,10,12,8,11,5.5,100\n"
    path = write(tmp_path / "bars.csv", text)

    bars = read_all(path, price="adj_close")

    assert bars.close[0] == pytest.approx(5.5)
    assert (bars.open[0], bars.high[0], bars.low[0]) == pytest.approx((5.0, 6.0, 4.0))


def test_gzip_csv_reads_like_plain_csv(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv.gz"
    with gzip.open(path, "wt") as stream:
        stream.write(HEADER + "".join(GOOD_ROWS))

    bars = read_all(path)

    assert len(bars) == 4 and bars.close[-1] == 11.6


def test_parquet_with_a_datetime_index_reads_like_csv(tmp_path: Path) -> None:
    frame = pd.read_csv("data/STOCKS_GOOGL.csv", parse_dates=["Date"]).set_index("Date")
    path = tmp_path / "googl.parquet"
    frame.to_parquet(path)

    bars = read_all(path, chunk_rows=1000)

    assert np.array_equal(bars.close, read_all("data/STOCKS_GOOGL.csv").close)
    assert bars.timestamp[0] == ns("2009-05-22")


def test_parquet_with_string_times_and_lowercase_columns_reads(tmp_path: Path) -> None:
    frame = pd.DataFrame({"timestamp": ["2020-01-02", "2020-01-03"], "open": [1.0, 2.0], "high": [1.0, 2.0]})
    frame = frame.assign(low=[1.0, 2.0], close=[1.0, 2.0], volume=[5, 6])
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path, index=False)

    bars = read_all(path)

    assert bars.timestamp.tolist() == [ns("2020-01-02"), ns("2020-01-03")]


def test_a_folder_of_files_is_read_in_time_order_not_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "bars"
    folder.mkdir()
    write(folder / "a.csv", HEADER + "".join(GOOD_ROWS[2:]))
    write(folder / "b.csv", HEADER + "".join(GOOD_ROWS[:2]))
    write(folder / "notes.md", "not data")

    bars = read_all(folder)

    assert bars.close.tolist() == [10.5, 11, 11.2, 11.6]
    assert [p.name for p in list_source_files(str(folder))] == ["a.csv", "b.csv"]


def test_a_glob_selects_files(tmp_path: Path) -> None:
    write(tmp_path / "x1.csv", HEADER + "".join(GOOD_ROWS[:2]))
    write(tmp_path / "x2.csv", HEADER + "".join(GOOD_ROWS[2:]))
    write(tmp_path / "y.csv", HEADER + "".join(GOOD_ROWS))

    bars = read_all(tmp_path / "x*.csv")

    assert len(bars) == 4


def test_a_missing_required_column_names_the_file_and_the_header_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", "Date,Open,High,Low,Volume\n2020-01-02,10,11,9,100\n")

    message = data_error(path)

    assert message.startswith(f"{path}, line 1: missing required column 'Close'")


def test_a_missing_adj_close_column_is_reported_when_asked_for(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0])

    message = data_error(path, price="adj_close")

    assert f"{path}, line 1: missing required column 'Adj Close'" in message


def test_a_file_without_a_time_column_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", "Open,High,Low,Close\n10,11,9,10\n")

    assert "missing a time column" in data_error(path)


def test_an_unparsable_timestamp_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + GOOD_ROWS[1] + "2020-13-45,10,11,9,10,1\n")

    message = data_error(path)

    assert message.startswith(f"{path}, line 4: unparsable timestamp '2020-13-45'")


def test_a_missing_timestamp_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + ",10,11,9,10,1\n")

    assert data_error(path).startswith(f"{path}, line 3: missing timestamp")


def test_a_duplicated_timestamp_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + GOOD_ROWS[1] + GOOD_ROWS[1])

    message = data_error(path)

    assert message.startswith(f"{path}, line 4: duplicated timestamp 2020-01-03")


def test_an_out_of_order_timestamp_across_a_chunk_boundary_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + GOOD_ROWS[2] + GOOD_ROWS[1] + GOOD_ROWS[3])

    message = data_error(path, chunk_rows=2)

    assert message.startswith(f"{path}, line 4: out-of-order timestamp 2020-01-03")
    assert f"{path}, line 3" in message


def test_overlapping_files_name_the_later_file_and_its_row(tmp_path: Path) -> None:
    first = write(tmp_path / "a.csv", HEADER + "".join(GOOD_ROWS[:3]))
    second = write(tmp_path / "b.csv", HEADER + GOOD_ROWS[2] + GOOD_ROWS[3])

    message = data_error(tmp_path)

    assert message.startswith(f"{second}, line 2: duplicated timestamp")
    assert f"{first}, line 4" in message


def test_a_non_positive_price_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "2020-01-03,10,11,0,10,1\n")

    assert data_error(path).startswith(f"{path}, line 3: non-positive low price 0.0")


def test_a_non_numeric_price_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "2020-01-03,10,abc,9,10,1\n")

    assert data_error(path).startswith(f"{path}, line 3: non-numeric high 'abc'")


def test_high_below_low_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "2020-01-03,10,9,11,10,1\n")

    assert data_error(path).startswith(f"{path}, line 3: high 9.0 is below low 11.0")


def test_an_open_above_high_is_an_error_unless_clipped(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "2020-01-03,12,11,9,10,1\n")

    message = data_error(path)
    bars = read_all(path, ohlc_policy="clip")

    assert message.startswith(f"{path}, line 3: open 12.0 or close 10.0 lies outside")
    assert bars.high[-1] == 12.0


def test_a_negative_volume_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "2020-01-03,10,11,9,10,-5\n")

    assert data_error(path).startswith(f"{path}, line 3: negative volume")


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "\n" + "2020-01-03,10,11,0,10,1\n")

    assert data_error(path).startswith(f"{path}, line 4:")


def test_parquet_errors_name_the_one_based_data_row(tmp_path: Path) -> None:
    frame = pd.DataFrame({"Date": ["2020-01-02", "2020-01-03", "2020-01-03"], "Close": [1.0, 2.0, 3.0]})
    frame = frame.assign(Open=frame.Close, High=frame.Close, Low=frame.Close)
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path, index=False)

    assert data_error(path).startswith(f"{path}, row 3: duplicated timestamp")


def test_nan_policy_drop_skips_rows_with_missing_values(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "2020-01-03,10,,9,10,1\n" + GOOD_ROWS[2])

    bars = read_all(path)

    assert bars.close.tolist() == [10.5, 11.2]


def test_nan_policy_ffill_carries_prices_across_a_chunk_boundary(tmp_path: Path) -> None:
    text = HEADER + GOOD_ROWS[0] + GOOD_ROWS[1] + "2020-01-06,11,11.5,10.5,,\n" + GOOD_ROWS[3]

    bars = read_all(write(tmp_path / "bars.csv", text), nan_policy="ffill", chunk_rows=2)

    assert bars.close.tolist() == [10.5, 11, 11, 11.6]
    assert bars.volume.tolist() == [100, 200, 0, 400]


def test_nan_policy_ffill_refuses_gaps_longer_than_its_limit(tmp_path: Path) -> None:
    gap = "".join(f"2020-02-0{d},10,11,9,,1\n" for d in range(3, 6))
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + gap)

    message = data_error(path, nan_policy="ffill", ffill_limit=2, chunk_rows=2)

    assert message.startswith(f"{path}, line 5: missing close for more than ffill_limit=2 bars")


def test_nan_policy_ffill_never_back_fills_the_first_bar(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + "2020-01-02,10,11,9,,1\n" + GOOD_ROWS[1])

    assert data_error(path, nan_policy="ffill").startswith(
        f"{path}, line 2: missing close with no earlier bar"
    )


def test_nan_policy_error_names_the_missing_field(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER + GOOD_ROWS[0] + "2020-01-03,10,11,9,10,\n")

    assert data_error(path, nan_policy="error").startswith(f"{path}, line 3: missing volume")


def test_a_path_that_does_not_exist_is_a_data_error(tmp_path: Path) -> None:
    assert "no such file or folder" in data_error(tmp_path / "absent.csv")


def test_a_folder_without_data_files_is_a_data_error(tmp_path: Path) -> None:
    assert "no CSV or Parquet files found" in data_error(tmp_path)


@pytest.mark.parametrize(
    ("field", "value"),
    [("price", "open"), ("chunk_rows", 0), ("nan_policy", "bfill"), ("ffill_limit", 0), ("ohlc_policy", "x")],
)
def test_invalid_source_options_name_the_field_and_value(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"SourceOptions\.{field} .*{value!r}"):
        SourceOptions(**{field: value})  # type: ignore[arg-type]


def every(freq: str, periods: int, start: str = "2021-01-04") -> np.ndarray:
    return pd.date_range(start, periods=periods, freq=freq).as_unit("ns").asi8


@pytest.mark.parametrize(
    ("timestamps", "expected"),
    [
        (every("B", 600), 252.0),
        (every("D", 600), 365.0),
        (every("h", 2000), 24 * 365.0),
        (every("W", 200), 52.0),
        (every("MS", 60), 12.0),
        (
            np.concatenate([every("min", 390, f"2021-01-{d:02d} 14:30") for d in (4, 5, 6, 7, 8, 11, 12)]),
            252.0 * 390,
        ),
    ],
)
def test_bars_per_year_follow_the_median_spacing(timestamps: np.ndarray, expected: float) -> None:
    assert infer_bars_per_year(timestamps) == expected


def test_bars_per_year_needs_two_timestamps() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        infer_bars_per_year(np.array([1], dtype=np.int64))


def test_bars_round_trip_through_a_frame() -> None:
    bars = read_all("data/STOCKS_GOOGL.csv")

    again = Bars.from_frame(bars.to_frame())

    assert np.array_equal(again.timestamp, bars.timestamp)
    assert np.array_equal(again.close, bars.close)


def test_the_data_services_never_import_torch_or_stable_baselines3() -> None:
    code = (
        "import sys\n"
        "import services.data.reader, services.data.features, services.data.splits\n"
        "import services.data.fingerprint, services.data.synthetic, services.data.store\n"
        "print(sorted(m for m in ('torch', 'stable_baselines3', 'sb3_contrib') if m in sys.modules))\n"
    )

    root = Path(__file__).resolve().parents[4]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)

    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_a_csv_with_another_separator_reads_like_a_comma_separated_one(
    tmp_path: Path, separator: str
) -> None:
    text = (HEADER + "".join(GOOD_ROWS)).replace(",", separator)

    bars = read_all(write(tmp_path / "bars.csv", text))

    assert bars.close.tolist() == [10.5, 11, 11.2, 11.6]


def test_an_excel_workbook_renamed_csv_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_bytes(b"PK\x03\x04" + bytes(100))

    assert (
        data_error(path) == f"{path}: this is an Excel workbook (.xlsx) or another zip file, not CSV text; "
        "save it as CSV"
    )


def test_an_old_excel_file_renamed_csv_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_bytes(bytes.fromhex("D0CF11E0A1B11AE1") + bytes(100))

    assert "Excel 97-2003 workbook (.xls)" in data_error(path)


def test_an_empty_file_is_named_empty(tmp_path: Path) -> None:
    assert data_error(write(tmp_path / "bars.csv", "")) == f"{tmp_path / 'bars.csv'}: the file is empty"


def test_a_file_with_only_a_header_says_it_has_no_data_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", HEADER)

    assert data_error(path) == f"{path}: the file has a header but no data rows"


@pytest.mark.parametrize("column", ["Close", "Price"])
def test_a_close_only_file_gives_flat_bars_at_each_close(tmp_path: Path, column: str) -> None:
    path = write(tmp_path / "bars.csv", f"Date,{column}\n2020-01-02,10\n2020-01-03,11\n2020-01-06,10.5\n")
    reader = SourceReader(SourceOptions(path=str(path)))

    bars = Bars.concat(list(reader))

    assert reader.close_only
    assert bars.close.tolist() == [10, 11, 10.5]
    assert bars.open.tolist() == bars.high.tolist() == bars.low.tolist() == bars.close.tolist()


def test_a_file_with_only_some_of_open_high_low_is_still_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "bars.csv", "Date,Open,Close\n2020-01-02,10,10.5\n")

    assert (
        data_error(path)
        == f"{path}, line 1: missing required column 'High'; columns are ['Date', 'Open', 'Close']"
    )


def test_ffill_keeps_a_filled_close_inside_the_bars_low_and_high(tmp_path: Path) -> None:
    text = HEADER + GOOD_ROWS[0] + "2020-01-03,11,12,10.9,,200\n" + GOOD_ROWS[2]

    bars = read_all(write(tmp_path / "bars.csv", text), nan_policy="ffill")

    assert bars.close.tolist() == [10.5, 10.9, 11.2]
    assert bars.high.tolist()[1] == 12 and bars.low.tolist()[1] == 10.9


def test_ffill_fills_missing_prices_from_the_previous_close_and_widens_a_filled_high(tmp_path: Path) -> None:
    text = HEADER + GOOD_ROWS[0] + "2020-01-03,,,10.6,11,200\n"

    bars = read_all(write(tmp_path / "bars.csv", text), nan_policy="ffill")

    assert (bars.open[1], bars.high[1], bars.low[1], bars.close[1]) == (10.6, 11, 10.6, 11)


def test_the_reader_counts_dropped_and_filled_rows_by_reason(tmp_path: Path) -> None:
    text = HEADER + GOOD_ROWS[0] + "2020-01-03,10,11,9,,1\n" + "2020-01-06,10,,9,10,1\n" + GOOD_ROWS[3]
    dropping = SourceReader(SourceOptions(path=str(write(tmp_path / "a.csv", text))))
    filling = SourceReader(SourceOptions(path=str(write(tmp_path / "b.csv", text)), nan_policy="ffill"))

    list(dropping), list(filling)

    assert dropping.report.dropped == {"missing close": 1, "missing high": 1}
    assert filling.report.filled == 2 and not filling.report.dropped
