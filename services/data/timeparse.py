"""Read bar times: detect a file's one timestamp format from its first rows, then parse every row strictly."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from services.data.bars import ErrorAt, bar_times, one_line
from services.data.layout import Layout
from services.data.options import EPOCH_UNITS

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

SAMPLE_ROWS = 1000
"""Leading rows a file's timestamp format is detected from."""

# Candidate formats, tried in order on the first rows; the one that parses the most sampled values wins.
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
_NAT = np.iinfo(np.int64).min
_DIGITS = re.compile(r"^-?\d+(\.\d+)?$")


@dataclass(slots=True)
class TimeParser:
    """Parse the time column(s) of one file's chunks with the format its first rows show."""

    layout: Layout
    time_format: str
    """The format in use: given by the options, else detected on the first chunk."""
    name: str
    error: ErrorAt

    def parse(self, frame: pd.DataFrame, first: int) -> tuple[np.ndarray, np.ndarray]:
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
            return bar_times(pd.DatetimeIndex(series)), rows
        if pd.api.types.is_numeric_dtype(series.dtype) and series.dtype != bool:
            if not self.time_format:
                self.time_format = epoch_unit(series.to_numpy(dtype=np.float64)[:SAMPLE_ROWS]) or ""
            if self.time_format in EPOCH_UNITS:
                return epoch_to_ns(series, self.time_format), rows
            series = series.astype(np.int64).astype(str) if series.dtype.kind in "iu" else series.astype(str)
        series = series.astype(str)
        if series.iloc[:SAMPLE_ROWS].str.match(r"^\s|.*\s$").any():
            series = series.str.strip()
        if not self.time_format:
            self.time_format = self._detect_format(series.iloc[:SAMPLE_ROWS].tolist(), rows)
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
            unit = epoch_unit(np.array([float(v) for v in sample]))
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
        if fmt in EPOCH_UNITS:
            numbers = pd.to_numeric(series, errors="coerce")
            if numbers.isna().any():
                return np.where(numbers.isna().to_numpy(), _NAT, 0).astype(np.int64)
            return epoch_to_ns(numbers, fmt)
        try:
            parsed = pd.to_datetime(series, format=fmt, errors="coerce", utc=True)
            return bar_times(pd.DatetimeIndex(parsed))
        except (ValueError, OverflowError) as exc:
            raise self.error(f"timestamps out of range for format {fmt!r}: {one_line(exc)}", None) from exc


def epoch_unit(numbers: np.ndarray) -> str | None:
    """Name the epoch unit of numeric times by magnitude, or None when they look like %Y%m%d dates."""
    if numbers.size == 0 or not np.isfinite(numbers).all() or np.abs(numbers).min() < 1e8:
        return None
    biggest = float(np.abs(numbers).max())
    for unit, bound in (("epoch_s", 1e11), ("epoch_ms", 1e14), ("epoch_us", 1e17)):
        if biggest < bound:
            return unit
    return "epoch_ns"


def epoch_to_ns(numbers: pd.Series, unit: str) -> np.ndarray:
    """Return numeric epoch times in `unit` as int64 ns."""
    scale = EPOCH_UNITS[unit]
    if numbers.dtype.kind in "iu":
        return numbers.to_numpy(dtype=np.int64) * scale
    return np.round(numbers.to_numpy(dtype=np.float64) * scale).astype(np.int64)


def show_time(stamp_ns: int) -> str:
    """Return a bar time as people read it (UTC, ISO-like)."""
    import pandas as pd

    return str(pd.Timestamp(stamp_ns, unit="ns"))


def parse_instant(text: str) -> int:
    """Return an ISO date or time as int64 ns (converted to UTC when it has an offset)."""
    import pandas as pd

    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"SplitOptions.eval_start must be an ISO date, got {text!r}") from exc
    if stamp.tz is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return int(stamp.as_unit("ns").value)


def _parse_count(sample: list[str], fmt: str) -> int:
    import pandas as pd

    try:
        parsed = pd.to_datetime(sample, format=fmt, errors="coerce", utc=True)
    except (ValueError, OverflowError):
        return 0
    return int((~pd.isna(parsed)).sum())
