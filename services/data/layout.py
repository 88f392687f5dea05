"""Map a file's column names to bar fields and its time column(s), whatever their spelling.

A file needs a close (a `Close` column, else a `Price` column) and either all of open, high and low or
none of them: a close-only file (`Date,Close`, `Date,Price`), whose bars the cleaner makes flat.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.data.bars import PRICE_COLUMNS, ErrorAt, column_key
from services.data.options import SourceOptions

# Column key (see column_key) -> field.
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
# Time column keys in order of preference.
_TIME_NAMES: tuple[str, ...] = ("timestamp", "datetime", "date", "time", "gmttime", "localtime", "ts")
# Keys of an index written as a column: pandas' unnamed first column, Parquet's stored index.
_INDEX_NAMES: tuple[str, ...] = ("unnamed0", "", "indexlevel0")


@dataclass(slots=True)
class Layout:
    """Map a file's columns to bar fields."""

    time_columns: tuple[str, ...]
    """One time column, or a date and a time column to join."""
    fields: dict[str, str]
    """Bar field (open, high, low, close, adj_close, volume) -> column name."""

    @property
    def close_only(self) -> bool:
        """Return True when the file has closes but no open, high and low."""
        return not any(name in self.fields for name in PRICE_COLUMNS[:3])

    def columns(self) -> list[str]:
        """Return every column to read, time first, each once."""
        return list(dict.fromkeys([*self.time_columns, *self.fields.values()]))


def detect_layout(
    columns: list[str], options: SourceOptions, error: ErrorAt, header_row: int | None
) -> Layout:
    """Return the layout of a file with these column names.

    Raises:
        DataError: (built by `error`, at `header_row`) when two columns name one field, a required
            price column is missing or no time column is found.
    """
    normal: dict[str, str] = {}
    for column in columns:
        key = column_key(column)
        if key in normal and (key in _FIELD_ALIASES or key in _TIME_NAMES):
            raise error(f"columns {normal[key]!r} and {column!r} name the same field", header_row)
        normal.setdefault(key, column)
    fields: dict[str, str] = {}
    for key, column in normal.items():
        target = _FIELD_ALIASES.get(key)
        if target is None:
            continue
        if target in fields:
            raise error(f"columns {fields[target]!r} and {column!r} both give {target}", header_row)
        fields[target] = column
    if "close" not in fields and "price" in normal:
        fields["close"] = normal["price"]
    # A file with none of open, high and low is close-only (each bar is flat at its close).
    close_only = not any(name in fields for name in PRICE_COLUMNS[:3])
    required = ["close"] if close_only else list(PRICE_COLUMNS)
    if options.price == "adj_close":
        required.append("adj_close")
    for name in required:
        if name not in fields:
            shown = "Adj Close" if name == "adj_close" else name.capitalize()
            raise error(f"missing required column {shown!r}; columns are {columns}", header_row)
    return Layout(time_columns=_time_columns(normal, columns, options, error, header_row), fields=fields)


def _time_columns(
    normal: dict[str, str], columns: list[str], options: SourceOptions, error: ErrorAt, header_row: int | None
) -> tuple[str, ...]:
    wanted = options.timestamp_column
    if wanted:
        key = column_key(wanted)
        if key not in normal:
            raise error(f"missing timestamp column {wanted!r}; columns are {columns}", header_row)
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
    raise error(
        f"missing a time column (Date, Time, Datetime or Timestamp); columns are {columns}", header_row
    )
