"""Stream market bars from CSV or Parquet files in bounded, validated chunks.

Row numbers in `DataError` follow one convention per format: for CSV they are physical 1-based line
numbers in the file, the header being line 1 (so the first bar is line 2; blank lines are counted);
for Parquet they are 1-based data rows (the first bar is row 1).
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
"""The price fields of a bar, in order."""

_NS_PER_DAY = 86_400 * 10**9
_SAMPLE_ROWS = 1000
# Suffixes taken from a folder; a file named directly is read whatever its suffix (as Parquet or CSV).
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".csv.zip")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")

# Normalised column name (lower case, without spaces, underscores, hyphens and dots) -> field.
_FIELD_ALIASES: dict[str, str] = {
    "open": "open",
    "high": "high",
    "low": "low",
    "close": "close",
    "adjclose": "adj_close",
    "adjustedclose": "adj_close",
    "volume": "volume",
    "vol": "volume",
}
# Time column names in order of preference.
_TIME_NAMES: tuple[str, ...] = ("timestamp", "datetime", "date", "time", "gmttime", "localtime", "ts")
_INDEX_NAMES: tuple[str, ...] = ("unnamed0", "", "indexlevel0")

# Candidate formats, tried in order on the first rows; the first that parses every sampled value wins.
# Month-first comes before day-first for slashes (US exports); dots are read day-first (European).
_FORMATS: tuple[str, ...] = (
    "%Y-%m-%d",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%d %H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%dT%H:%M:%S.%f",
    "%Y-%m-%dT%H:%M:%S%z",
    "%Y-%m-%dT%H:%M:%S.%f%z",
    "%Y-%m-%d %H:%M:%S%z",
    "%Y-%m-%d %H:%M:%S.%f%z",
    "%Y/%m/%d",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M",
    "%Y.%m.%d",
    "%Y.%m.%d %H:%M:%S",
    "%Y.%m.%d %H:%M",
    "%Y%m%d",
    "%Y%m%d %H:%M:%S",
    "%Y%m%d %H%M%S",
    "%m/%d/%Y",
    "%m/%d/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y",
    "%d/%m/%Y %H:%M:%S",
    "%d/%m/%Y %H:%M",
    "%d.%m.%Y",
    "%d.%m.%Y %H:%M:%S",
    "%d.%m.%Y %H:%M:%S.%f",
    "%d.%m.%Y %H:%M",
    "%d-%m-%Y",
    "%d-%b-%Y",
    "%d %b %Y",
    "%b %d, %Y",
)
_EPOCH_UNITS: dict[str, int] = {"epoch_s": 10**9, "epoch_ms": 10**6, "epoch_us": 10**3, "epoch_ns": 1}
_NAT = np.iinfo(np.int64).min
_DIGITS = re.compile(r"^-?\d+(\.\d+)?$")
_PANDAS_LINE = re.compile(r"line (\d+)")


class DataError(InputError):
    """Report bad input data on one line naming the file, the row and what is wrong."""

    def __init__(self, reason: str, *, path: str = "", line: int | None = None, unit: str = "line") -> None:
        self.reason = " ".join(str(reason).split())
        self.path = path
        self.line = line
        self.unit = unit
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "data"
        if self.line is not None:
            where = f"{where}, {self.unit} {self.line}"
        return f"{where}: {self.reason}"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_data_error, (self.reason, self.path, self.line, self.unit))


def _rebuild_data_error(reason: str, path: str, line: int | None, unit: str) -> DataError:
    return DataError(reason, path=path, line=line, unit=unit)


@dataclass(frozen=True, slots=True, eq=False)
class Bars:
    """Hold a chunk of bars as parallel numpy arrays."""

    timestamp: np.ndarray
    """Bar times as int64 nanoseconds since the Unix epoch (naive times are taken as UTC)."""
    open: np.ndarray
    """Opening prices, float64."""
    high: np.ndarray
    """Highest prices, float64."""
    low: np.ndarray
    """Lowest prices, float64."""
    close: np.ndarray
    """Closing prices (adjusted when the source asks for it), float64."""
    volume: np.ndarray
    """Traded volume, float64; zeros when the source has no volume column."""

    def __post_init__(self) -> None:
        n = len(self.timestamp)
        for name in ("open", "high", "low", "close", "volume"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Bars.{name} has {len(getattr(self, name))} rows, timestamp has {n}")

    def __len__(self) -> int:
        return len(self.timestamp)

    def slice(self, start: int, stop: int) -> Bars:
        """Return the bars in [start, stop) as views."""
        return Bars(
            timestamp=self.timestamp[start:stop],
            open=self.open[start:stop],
            high=self.high[start:stop],
            low=self.low[start:stop],
            close=self.close[start:stop],
            volume=self.volume[start:stop],
        )

    @staticmethod
    def concat(chunks: list[Bars]) -> Bars:
        """Join chunks into one `Bars` (an empty list gives empty bars)."""
        if not chunks:
            return Bars.empty()
        return Bars(
            timestamp=np.concatenate([c.timestamp for c in chunks]),
            open=np.concatenate([c.open for c in chunks]),
            high=np.concatenate([c.high for c in chunks]),
            low=np.concatenate([c.low for c in chunks]),
            close=np.concatenate([c.close for c in chunks]),
            volume=np.concatenate([c.volume for c in chunks]),
        )

    @staticmethod
    def empty() -> Bars:
        """Return bars with no rows."""
        prices = np.empty(0, dtype=np.float64)
        return Bars(np.empty(0, dtype=np.int64), prices, prices, prices, prices, prices)

    @staticmethod
    def from_frame(frame: pd.DataFrame) -> Bars:
        """Build bars from a DataFrame with open, high, low, close and optional volume columns.

        Column names are matched in any case. Times come from a `timestamp` (or `date`, `datetime`)
        column or a DatetimeIndex; without either the bars are numbered 0..n-1. No validation is done.
        """
        import pandas as pd

        columns = {_normalise(str(c)): c for c in frame.columns}
        missing = [name for name in PRICE_COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"frame has no column {missing[0]!r}; columns are {list(frame.columns)}")

        def values(name: str) -> np.ndarray:
            return np.ascontiguousarray(frame[columns[name]].to_numpy(dtype=np.float64))

        n = len(frame)
        volume = values("volume") if "volume" in columns else np.zeros(n, dtype=np.float64)
        time_key = next((k for k in ("timestamp", "datetime", "date") if k in columns), None)
        if time_key is not None:
            timestamp = _datetimes_to_ns(pd.DatetimeIndex(frame[columns[time_key]]))
        elif isinstance(frame.index, pd.DatetimeIndex):
            timestamp = _datetimes_to_ns(frame.index)
        else:
            timestamp = np.arange(n, dtype=np.int64)
        return Bars(timestamp, values("open"), values("high"), values("low"), values("close"), volume)

    def to_frame(self) -> pd.DataFrame:
        """Return a DataFrame with a UTC-naive `timestamp` column and lowercase price columns."""
        import pandas as pd

        return pd.DataFrame(
            {
                "timestamp": pd.to_datetime(self.timestamp, unit="ns"),
                "open": self.open,
                "high": self.high,
                "low": self.low,
                "close": self.close,
                "volume": self.volume,
            }
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceOptions:
    """Say where the bars are and how to read and clean them."""

    path: str = "data/STOCKS_GOOGL.csv"
    """A CSV file (optionally gzip), a Parquet file, a folder of them or a glob; read in time order."""
    price: str = "close"
    """'close', or 'adj_close' to use Adj Close as close and scale open, high and low by adj_close/close."""
    timestamp_column: str = ""
    """Name of the time column (any case); empty finds Timestamp, Datetime, Date, Time or the index."""
    timestamp_format: str = ""
    """A strftime format such as '%d.%m.%Y %H:%M:%S.%f', or epoch_s/ms/us/ns; empty detects it."""
    chunk_rows: int = 100_000
    """Rows per chunk read from a file; bounds the reader's memory."""
    nan_policy: str = "drop"
    """'drop' rows with a missing value, 'ffill' prices from the previous bar, or 'error'."""
    ffill_limit: int = 3
    """Most consecutive bars 'ffill' may fill; a longer gap is an error. Nothing is ever back-filled."""
    ohlc_policy: str = "error"
    """'error' when open or close lies outside [low, high], or 'clip' to widen high and low to them."""

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"SourceOptions.path must be a non-empty string, got {self.path!r}")
        if self.price not in ("close", "adj_close"):
            raise ValueError(f"SourceOptions.price must be 'close' or 'adj_close', got {self.price!r}")
        if self.timestamp_format and not (
            "%" in self.timestamp_format or self.timestamp_format in _EPOCH_UNITS
        ):
            raise ValueError(
                "SourceOptions.timestamp_format must be a strftime format or one of "
                f"{sorted(_EPOCH_UNITS)}, got {self.timestamp_format!r}"
            )
        if not isinstance(self.chunk_rows, int) or self.chunk_rows < 1:
            raise ValueError(f"SourceOptions.chunk_rows must be an integer >= 1, got {self.chunk_rows!r}")
        if self.nan_policy not in ("drop", "ffill", "error"):
            raise ValueError(
                f"SourceOptions.nan_policy must be 'drop', 'ffill' or 'error', got {self.nan_policy!r}"
            )
        if not isinstance(self.ffill_limit, int) or self.ffill_limit < 1:
            raise ValueError(f"SourceOptions.ffill_limit must be an integer >= 1, got {self.ffill_limit!r}")
        if self.ohlc_policy not in ("error", "clip"):
            raise ValueError(f"SourceOptions.ohlc_policy must be 'error' or 'clip', got {self.ohlc_policy!r}")


def list_source_files(path: str) -> list[Path]:
    """Return the files a source path names (a file, a folder or a glob), sorted by name."""
    if any(ch in path for ch in "*?["):
        found = [Path(p) for p in glob.glob(path, recursive=True)]
        files = sorted(p for p in found if p.is_file())
    else:
        target = Path(path)
        if target.is_dir():
            files = sorted(p for p in target.iterdir() if p.is_file() and _is_supported(p))
        elif target.is_file():
            files = [target]
        else:
            raise DataError("no such file or folder", path=path)
    if not files:
        raise DataError("no CSV or Parquet files found", path=path)
    return files


def read_bars(options: SourceOptions) -> Iterator[Bars]:
    """Yield validated chunks of at most `options.chunk_rows` bars from every file, in time order.

    Raises:
        DataError: naming the file and row of the first bad value met.
    """
    files = list_source_files(options.path)
    readers = [_FileReader(path, options) for path in files]
    if len(readers) > 1:
        readers.sort(key=lambda r: (r.first_timestamp(), str(r.path)))
        logger.info("reading %d files in time order, first %s", len(readers), readers[0].path)
    state = _StreamState()
    for reader in readers:
        yield from reader.chunks(state)


def infer_bars_per_year(timestamps_ns: np.ndarray) -> float:
    """Estimate how many bars make a year from the median spacing of the timestamps.

    The rule: a median spacing of at least 300 days gives 1, 80 days 4, 25 days 12, 5 days 52. Daily bars
    (spacing from 20 hours to 5 days) give 252 trading days when under 5 % of the bars fall on a
    weekend, else 365 (markets that trade every day). Intraday bars give those trading days times the
    median number of bars per calendar day (UTC): 390 one-minute bars a day give 98,280.
    """
    ts = np.asarray(timestamps_ns, dtype=np.int64)
    if ts.size < 2:
        raise ValueError(f"infer_bars_per_year needs at least 2 timestamps, got {ts.size}")
    spacing = float(np.median(np.diff(ts)))
    if spacing <= 0:
        raise ValueError("infer_bars_per_year needs increasing timestamps")
    days = spacing / _NS_PER_DAY
    for min_days, per_year in ((300.0, 1.0), (80.0, 4.0), (25.0, 12.0), (5.0, 52.0)):
        if days >= min_days:
            return per_year
    day_number = ts // _NS_PER_DAY
    weekday = (day_number + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0.
    weekend_share = float(np.mean(weekday >= 5))
    trading_days = 252.0 if weekend_share < 0.05 else 365.0
    if days >= 20.0 / 24.0:
        return trading_days
    _, per_day = np.unique(day_number, return_counts=True)
    return trading_days * float(np.median(per_day))


@dataclass(slots=True)
class _StreamState:
    """Carry what validation needs across chunk and file boundaries."""

    last_timestamp: int | None = None
    last_where: str = ""
    last_values: dict[str, float] = field(default_factory=dict)
    missing_run: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Layout:
    """Map a file's columns to bar fields."""

    time_columns: tuple[str, ...]
    fields: dict[str, str]


class _FileReader:
    """Read one file chunk by chunk, validating every chunk."""

    def __init__(self, path: Path, options: SourceOptions) -> None:
        self.path = path
        self.name = str(path)
        self.options = options
        self.is_parquet = _is_parquet(path)
        self.unit = "row" if self.is_parquet else "line"
        # CSV: line of the first data row (header is line 1). Parquet: 1-based data rows.
        self.first_row = 1 if self.is_parquet else 2
        self.header_row = None if self.is_parquet else 1
        self.layout = self._layout(self._column_names())
        self.time_format = options.timestamp_format
        self._first_timestamp: int | None = None

    def error(self, reason: str, row: int | None = None) -> DataError:
        return DataError(reason, path=self.name, line=row, unit=self.unit)

    def first_timestamp(self) -> int:
        """Return the first bar's time, reading only the first chunk."""
        if self._first_timestamp is None:
            for frame, first in self._frames(limit=_SAMPLE_ROWS):
                stamps, _ = self._parse_times(frame, first)
                if len(stamps):
                    self._first_timestamp = int(stamps[0])
                    break
            else:
                raise self.error("the file has no data rows")
        return self._first_timestamp

    def chunks(self, state: _StreamState) -> Iterator[Bars]:
        dropped = 0
        clipped = 0
        rows = 0
        for frame, first in self._frames():
            bars, n_dropped, n_clipped = self._clean(frame, first, state)
            dropped += n_dropped
            clipped += n_clipped
            if bars is not None and len(bars):
                rows += len(bars)
                yield bars
        if rows == 0:
            raise self.error("the file has no valid data rows")
        if dropped:
            logger.warning("%s: dropped %d rows with missing values (nan_policy=drop)", self.name, dropped)
        if clipped:
            logger.warning(
                "%s: widened high/low of %d bars to open/close (ohlc_policy=clip)", self.name, clipped
            )
        logger.debug("%s: read %d bars", self.name, rows)

    def _column_names(self) -> list[str]:
        import pandas as pd

        try:
            if self.is_parquet:
                import pyarrow.parquet as pq

                return [str(name) for name in pq.ParquetFile(self.path).schema_arrow.names]
            header = pd.read_csv(self.path, nrows=0, skipinitialspace=True)
        except DataError:
            raise
        except Exception as exc:
            raise self.error(f"cannot read the header: {_one_line(exc)}", None) from exc
        return [str(name) for name in header.columns]

    def _layout(self, columns: list[str]) -> _Layout:
        normal: dict[str, str] = {}
        for column in columns:
            key = _normalise(column)
            if key in normal and (key in _FIELD_ALIASES or key in _TIME_NAMES):
                raise self.error(
                    f"columns {normal[key]!r} and {column!r} name the same field", self.header_row
                )
            normal.setdefault(key, column)
        fields: dict[str, str] = {}
        for key, column in normal.items():
            target = _FIELD_ALIASES.get(key)
            if target is None:
                continue
            if target in fields:
                raise self.error(
                    f"columns {fields[target]!r} and {column!r} both give {target}", self.header_row
                )
            fields[target] = column
        required = list(PRICE_COLUMNS) + (["adj_close"] if self.options.price == "adj_close" else [])
        for name in required:
            if name not in fields:
                shown = "Adj Close" if name == "adj_close" else name.capitalize()
                raise self.error(f"missing required column {shown!r}; columns are {columns}", self.header_row)
        return _Layout(time_columns=self._time_columns(normal, columns), fields=fields)

    def _time_columns(self, normal: dict[str, str], columns: list[str]) -> tuple[str, ...]:
        wanted = self.options.timestamp_column
        if wanted:
            key = _normalise(wanted)
            if key not in normal:
                raise self.error(
                    f"missing timestamp column {wanted!r}; columns are {columns}", self.header_row
                )
            return (normal[key],)
        if "date" in normal and "time" in normal and not any(k in normal for k in ("timestamp", "datetime")):
            return (normal["date"], normal["time"])
        for key in _TIME_NAMES:
            if key in normal:
                return (normal[key],)
        for key in _INDEX_NAMES:
            if key in normal:
                return (normal[key],)
        if columns and (columns[0] == "" or columns[0].startswith("Unnamed:")):
            return (columns[0],)
        raise self.error(
            f"missing a time column (Date, Time, Datetime or Timestamp); columns are {columns}",
            self.header_row,
        )

    def _frames(self, limit: int | None = None) -> Iterator[tuple[pd.DataFrame, int]]:
        """Yield (frame, row number of its first row) for bounded chunks of the file."""
        import pandas as pd

        size = self.options.chunk_rows if limit is None else min(limit, self.options.chunk_rows)
        columns = list(dict.fromkeys([*self.layout.time_columns, *self.layout.fields.values()]))
        first = self.first_row
        try:
            if self.is_parquet:
                import pyarrow.parquet as pq

                for batch in pq.ParquetFile(self.path).iter_batches(batch_size=size, columns=columns):
                    frame = batch.to_pandas(date_as_object=False, ignore_metadata=True)
                    yield frame, first
                    first += len(frame)
                    if limit is not None:
                        return
                return
            reader = pd.read_csv(
                self.path,
                usecols=columns,
                chunksize=size,
                skipinitialspace=True,
                skip_blank_lines=False,
            )
            with reader:
                for frame in reader:
                    yield frame, first
                    first += len(frame)
                    if limit is not None:
                        return
        except DataError:
            raise
        except Exception as exc:
            match = _PANDAS_LINE.search(str(exc))
            row = int(match.group(1)) if match and not self.is_parquet else None
            raise self.error(f"cannot parse the file: {_one_line(exc)}", row) from exc

    def _parse_times(self, frame: pd.DataFrame, first: int) -> tuple[np.ndarray, np.ndarray]:
        """Return int64 ns times and the row numbers of the non-blank rows of `frame`."""
        import pandas as pd

        rows = np.arange(first, first + len(frame), dtype=np.int64)
        blank = frame.isna().all(axis=1).to_numpy()
        if blank.any():
            frame = frame.loc[~blank]
            rows = rows[~blank]
        if len(frame) == 0:
            return np.empty(0, dtype=np.int64), rows
        columns = self.layout.time_columns
        series = frame[columns[0]]
        if len(columns) == 2 and series.astype(str).str.contains(":").any():
            # The date column already holds the time of day: read it alone.
            self.layout.time_columns = columns = columns[:1]
        if len(columns) == 2:
            series = series.astype(str).str.strip() + " " + frame[columns[1]].astype(str).str.strip()
            series[frame[columns[0]].isna().to_numpy() | frame[columns[1]].isna().to_numpy()] = None
        missing = series.isna().to_numpy()
        if missing.any():
            raise self.error("missing timestamp", int(rows[np.argmax(missing)]))
        if pd.api.types.is_datetime64_any_dtype(series.dtype):
            return _datetimes_to_ns(pd.DatetimeIndex(series)), rows
        if pd.api.types.is_numeric_dtype(series.dtype) and series.dtype != bool:
            if not self.time_format:
                self.time_format = _epoch_unit(series.to_numpy(dtype=np.float64)[:_SAMPLE_ROWS]) or ""
            if self.time_format in _EPOCH_UNITS:
                return _epoch_to_ns(series, self.time_format), rows
            series = series.astype(np.int64).astype(str) if series.dtype.kind in "iu" else series.astype(str)
        series = series.astype(str)
        if series.iloc[:_SAMPLE_ROWS].str.match(r"^\s|.*\s$").any():
            series = series.str.strip()
        if not self.time_format:
            self.time_format = self._detect_format(series.iloc[:_SAMPLE_ROWS].tolist(), rows)
        stamps = self._strings_to_ns(series)
        bad = stamps == _NAT
        if bad.any():
            at = int(np.argmax(bad))
            raise self.error(
                f"unparsable timestamp {series.iloc[at]!r} (expected format {self.time_format!r})",
                int(rows[at]),
            )
        return stamps, rows

    def _detect_format(self, sample: list[str], rows: np.ndarray) -> str:
        if all(_DIGITS.match(v) for v in sample):
            unit = _epoch_unit(np.array([float(v) for v in sample]))
            if unit:
                return unit
        # The format that parses the most sampled values wins (the first listed on a tie); the strict
        # parse that follows then names any row it does not fit.
        best, best_count = "", 0
        for fmt in _FORMATS:
            count = _parse_count(sample, fmt)
            if count > best_count:
                best, best_count = fmt, count
            if count == len(sample):
                break
        if best:
            logger.debug("%s: timestamp format %s", self.name, best)
            return best
        raise self.error(
            f"unparsable timestamp {sample[0]!r}: no known format fits; set timestamp_format", int(rows[0])
        )

    def _strings_to_ns(self, series: pd.Series) -> np.ndarray:
        import pandas as pd

        fmt = self.time_format
        if fmt in _EPOCH_UNITS:
            numbers = pd.to_numeric(series, errors="coerce")
            if numbers.isna().any():
                return np.where(numbers.isna().to_numpy(), _NAT, 0).astype(np.int64)
            return _epoch_to_ns(numbers, fmt)
        try:
            parsed = pd.to_datetime(series, format=fmt, errors="coerce", utc=True)
            return _datetimes_to_ns(pd.DatetimeIndex(parsed))
        except (ValueError, OverflowError) as exc:
            raise self.error(f"timestamps out of range for format {fmt!r}: {_one_line(exc)}") from exc

    def _clean(self, frame: pd.DataFrame, first: int, state: _StreamState) -> tuple[Bars | None, int, int]:
        """Validate one chunk; return its bars, the rows dropped and the bars clipped."""
        blank = frame.isna().all(axis=1).to_numpy()
        stamps, rows = self._parse_times(frame, first)
        if blank.any():
            frame = frame.loc[~blank]
        if len(frame) == 0:
            return None, 0, 0
        values = {
            name: self._numeric(frame[column], name, rows) for name, column in self.layout.fields.items()
        }
        if "volume" not in values:
            values["volume"] = np.zeros(len(frame), dtype=np.float64)
        stamps, rows, values, dropped = self._apply_nan_policy(stamps, rows, values, state)
        if len(stamps) == 0:
            return None, dropped, 0
        for name, array in values.items():
            finite = np.isfinite(array)
            if not finite.all():
                at = int(np.argmin(finite))
                raise self.error(f"non-finite {name} {_num(array[at])}", int(rows[at]))
        for name in (*PRICE_COLUMNS, "adj_close"):
            if name in values and (values[name] <= 0).any():
                at = int(np.argmax(values[name] <= 0))
                raise self.error(f"non-positive {name} price {_num(values[name][at])}", int(rows[at]))
        if (values["volume"] < 0).any():
            at = int(np.argmax(values["volume"] < 0))
            raise self.error(f"negative volume {_num(values['volume'][at])}", int(rows[at]))
        if self.options.price == "adj_close":
            factor = values["adj_close"] / values["close"]
            for name in PRICE_COLUMNS:
                values[name] = values[name] * factor
        clipped = self._check_ohlc(values, rows)
        self._check_order(stamps, rows, state)
        bars = Bars(
            timestamp=_owned(stamps),
            open=_owned(values["open"]),
            high=_owned(values["high"]),
            low=_owned(values["low"]),
            close=_owned(values["close"]),
            volume=_owned(values["volume"]),
        )
        return bars, dropped, clipped

    def _numeric(self, column: pd.Series, name: str, rows: np.ndarray) -> np.ndarray:
        import pandas as pd

        if pd.api.types.is_numeric_dtype(column.dtype) and column.dtype != bool:
            return column.to_numpy(dtype=np.float64, na_value=np.nan)
        numbers = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        raw = column.to_numpy(dtype=object)
        present = ~pd.isna(raw)
        bad = np.isnan(numbers) & present
        if bad.any():
            at = int(np.argmax(bad))
            raise self.error(f"non-numeric {name} {raw[at]!r}", int(rows[at]))
        return numbers

    def _apply_nan_policy(
        self,
        stamps: np.ndarray,
        rows: np.ndarray,
        values: dict[str, np.ndarray],
        state: _StreamState,
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], int]:
        missing = {name: np.isnan(array) for name, array in values.items()}
        any_missing = np.logical_or.reduce(list(missing.values()))
        policy = self.options.nan_policy
        if policy == "ffill":
            for name, array in values.items():
                values[name] = self._forward_fill(name, array, missing[name], rows, state)
            return stamps, rows, values, 0
        if not any_missing.any():
            return stamps, rows, values, 0
        if policy == "error":
            at = int(np.argmax(any_missing))
            name = next(n for n, m in missing.items() if m[at])
            raise self.error(f"missing {name} (nan_policy=error)", int(rows[at]))
        keep = ~any_missing
        return stamps[keep], rows[keep], {k: v[keep] for k, v in values.items()}, int(any_missing.sum())

    def _forward_fill(
        self, name: str, array: np.ndarray, missing: np.ndarray, rows: np.ndarray, state: _StreamState
    ) -> np.ndarray:
        n = len(array)
        carried_run = state.missing_run.get(name, 0)
        if name == "volume":
            # A filled bar traded nothing; volume is never carried forward.
            out = np.where(missing, 0.0, array)
        elif missing.any():
            index = np.arange(n)
            last = np.maximum.accumulate(np.where(missing, -1, index))
            run = np.where(last >= 0, index - last, index + 1 + carried_run)
            over = missing & (run > self.options.ffill_limit)
            if over.any():
                at = int(np.argmax(over))
                raise self.error(
                    f"missing {name} for more than ffill_limit={self.options.ffill_limit} bars", int(rows[at])
                )
            no_previous = missing & (last < 0) & (name not in state.last_values)
            if no_previous.any():
                at = int(np.argmax(no_previous))
                raise self.error(f"missing {name} with no earlier bar to fill from", int(rows[at]))
            carried = state.last_values.get(name, np.nan)
            out = np.where(last >= 0, array[np.maximum(last, 0)], carried)
        else:
            out = array
        if n:
            if missing.all():
                state.missing_run[name] = carried_run + n
            else:
                state.missing_run[name] = n - 1 - int(np.flatnonzero(~missing)[-1])
                state.last_values[name] = float(out[-1])
        return out

    def _check_ohlc(self, values: dict[str, np.ndarray], rows: np.ndarray) -> int:
        high, low, open_, close = values["high"], values["low"], values["open"], values["close"]
        inverted = high < low
        if inverted.any():
            at = int(np.argmax(inverted))
            raise self.error(f"high {_num(high[at])} is below low {_num(low[at])}", int(rows[at]))
        upper = np.maximum(open_, close)
        lower = np.minimum(open_, close)
        outside = (upper > high) | (lower < low)
        if not outside.any():
            return 0
        if self.options.ohlc_policy == "clip":
            values["high"] = np.maximum(high, upper)
            values["low"] = np.minimum(low, lower)
            return int(outside.sum())
        at = int(np.argmax(outside))
        raise self.error(
            f"open {_num(open_[at])} or close {_num(close[at])} lies outside "
            f"[low {_num(low[at])}, high {_num(high[at])}] (set ohlc_policy=clip to widen high/low)",
            int(rows[at]),
        )

    def _check_order(self, stamps: np.ndarray, rows: np.ndarray, state: _StreamState) -> None:
        if state.last_timestamp is not None and stamps[0] <= state.last_timestamp:
            raise self.error(
                _order_reason(int(stamps[0]), state.last_timestamp, state.last_where), int(rows[0])
            )
        if len(stamps) > 1:
            step = np.diff(stamps)
            bad = step <= 0
            if bad.any():
                at = int(np.argmax(bad)) + 1
                previous = f"{self.unit} {int(rows[at - 1])}"
                raise self.error(_order_reason(int(stamps[at]), int(stamps[at - 1]), previous), int(rows[at]))
        state.last_timestamp = int(stamps[-1])
        state.last_where = f"{self.name}, {self.unit} {int(rows[-1])}"


def _order_reason(stamp: int, previous: int, where: str) -> str:
    kind = "duplicated" if stamp == previous else "out-of-order"
    return f"{kind} timestamp {_show_time(stamp)}: not after {_show_time(previous)} ({where})"


def _show_time(stamp_ns: int) -> str:
    import pandas as pd

    return str(pd.Timestamp(stamp_ns, unit="ns"))


def _epoch_unit(numbers: np.ndarray) -> str | None:
    """Name the epoch unit of numeric times by magnitude, or None when they look like %Y%m%d dates."""
    if numbers.size == 0 or not np.isfinite(numbers).all() or np.abs(numbers).min() < 1e8:
        return None
    biggest = float(np.abs(numbers).max())
    for unit, bound in (("epoch_s", 1e11), ("epoch_ms", 1e14), ("epoch_us", 1e17)):
        if biggest < bound:
            return unit
    return "epoch_ns"


def _epoch_to_ns(numbers: pd.Series, unit: str) -> np.ndarray:
    scale = _EPOCH_UNITS[unit]
    if numbers.dtype.kind in "iu":
        return numbers.to_numpy(dtype=np.int64) * scale
    return np.round(numbers.to_numpy(dtype=np.float64) * scale).astype(np.int64)


def _parse_count(sample: list[str], fmt: str) -> int:
    import pandas as pd

    try:
        parsed = pd.to_datetime(sample, format=fmt, errors="coerce", utc=True)
    except (ValueError, OverflowError):
        return 0
    return int((~pd.isna(parsed)).sum())


def _datetimes_to_ns(index: pd.DatetimeIndex) -> np.ndarray:
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return np.ascontiguousarray(index.as_unit("ns").asi8, dtype=np.int64)


def _normalise(name: str) -> str:
    return re.sub(r"[\s_\-.:]+", "", name.strip().lower())


def _is_parquet(path: Path) -> bool:
    return path.name.lower().endswith(_PARQUET_SUFFIXES)


def _is_supported(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_CSV_SUFFIXES) or name.endswith(_PARQUET_SUFFIXES)


def _owned(array: np.ndarray) -> np.ndarray:
    """Return the array, copied when it is a view that would keep a whole parsed chunk alive."""
    return array if array.base is None and array.flags.c_contiguous else np.ascontiguousarray(array).copy()


def _num(value: float) -> str:
    return repr(float(value))


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
