"""Hold bars as parallel numpy arrays, and name bad input data in one line (`DataError`).

A bar time is int64 nanoseconds since the Unix epoch, naive times being taken as UTC (`bar_times`); a
column name means a field whatever its case and separators (`column_key`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.errors import InputError

if TYPE_CHECKING:
    import pandas as pd

PRICE_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close")
"""The price fields of a bar, in order."""

_NS_PER_DAY = 86_400 * 10**9


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


ErrorAt = Callable[[str, int | None], DataError]
"""Build the `DataError` of one file from a reason and a row (None for the file as a whole)."""


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

        columns = {column_key(str(c)): c for c in frame.columns}
        missing = [name for name in PRICE_COLUMNS if name not in columns]
        if missing:
            raise ValueError(f"frame has no column {missing[0]!r}; columns are {list(frame.columns)}")

        def values(name: str) -> np.ndarray:
            return np.ascontiguousarray(frame[columns[name]].to_numpy(dtype=np.float64))

        n = len(frame)
        volume = values("volume") if "volume" in columns else np.zeros(n, dtype=np.float64)
        time_key = next((k for k in ("timestamp", "datetime", "date") if k in columns), None)
        if time_key is not None:
            timestamp = bar_times(pd.DatetimeIndex(frame[columns[time_key]]))
        elif isinstance(frame.index, pd.DatetimeIndex):
            timestamp = bar_times(frame.index)
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


def bar_times(index: pd.DatetimeIndex) -> np.ndarray:
    """Return the times of a DatetimeIndex as int64 ns since the epoch (aware times converted to UTC)."""
    if index.tz is not None:
        index = index.tz_convert("UTC").tz_localize(None)
    return np.ascontiguousarray(index.as_unit("ns").asi8, dtype=np.int64)


def column_key(name: str) -> str:
    """Return a column name in lower case without spaces, underscores, hyphens, dots and colons."""
    return re.sub(r"[\s_\-.:]+", "", name.strip().lower())


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


def one_line(exc: BaseException) -> str:
    """Return an exception's text on one line of at most 300 characters, for a `DataError` reason."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
