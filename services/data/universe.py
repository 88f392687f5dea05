"""Read many symbols' bars into one time-aligned universe, with per-symbol causal features.

Three source forms (docs/PORTFOLIO.md, section 1):

- wide: one file, a time column and one close column per symbol (close-only);
- long: one file, a time column, a symbol column and the bar fields in any usual spelling;
- files: a folder or glob, one file per symbol (the symbol is the file name up to its first dot), each
  read by `services.data.reader.read_bars`.

Files stream in chunks of `SourceOptions.chunk_rows` rows; each symbol's bars go through its own
`FeaturePipeline` (state carried across chunks), so a feature at a symbol's bar uses that symbol's
earlier bars only. Alignment is by time over the union of every symbol's bar times: a symbol without a
bar at a time is absent there (NaN prices and features, never filled from any other bar); a symbol is
tradable at a bar where it has a bar and complete features (so not before it starts, nor in its
warm-up). Close-only sources get open = high = low = close, so next-open fills become next-close fills.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from services.data.bars import Bars, DataError, ErrorAt, column_key, one_line
from services.data.cleaning import Cleaner, CleanReport, StreamState
from services.data.features import FeaturePipeline
from services.data.layout import Layout, detect_layout
from services.data.options import SYMBOL_COLUMNS, FeatureOptions, SourceOptions, UniverseOptions
from services.data.reader import list_source_files, read_bars
from services.data.splits import Normalizer
from services.data.timeparse import TimeParser

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

RANK_PREFIX = "rank:"
"""Prefix of a cross-sectional rank column's name: rank:ret_20 ranks ret_20 across symbols."""
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(frozen=True, slots=True, eq=False)
class Universe:
    """Hold every symbol's bars and features on one time line; NaN where a symbol has no bar."""

    symbols: tuple[str, ...]
    """Symbol names, in column order (sorted)."""
    feature_names: tuple[str, ...]
    """Feature names, per-symbol features first, then the rank: columns."""
    timestamp: np.ndarray
    """int64 ns [T]: the union of every symbol's bar times."""
    open: np.ndarray
    """float64 [T, M]; NaN where the symbol has no bar."""
    high: np.ndarray
    """float64 [T, M]; NaN where the symbol has no bar."""
    low: np.ndarray
    """float64 [T, M]; NaN where the symbol has no bar."""
    close: np.ndarray
    """float64 [T, M]; NaN where the symbol has no bar."""
    volume: np.ndarray
    """float64 [T, M]; NaN where the symbol has no bar."""
    features: np.ndarray
    """float32 [T, M, F]; NaN where the symbol has no bar or is in its warm-up."""
    close_only: bool
    """True when every bar has open = high = low = close (the source had closes only)."""

    def __len__(self) -> int:
        return len(self.timestamp)

    @property
    def present(self) -> np.ndarray:
        """Return bool [T, M]: the symbol has a bar at that time."""
        return np.isfinite(self.close)

    @property
    def tradable(self) -> np.ndarray:
        """Return bool [T, M]: the symbol has a bar and complete features at that time."""
        return self.present & np.isfinite(self.features).all(axis=2)

    def first_tradable_bar(self) -> int:
        """Return the first bar at which any symbol is tradable (the universe's warm-up)."""
        rows = np.flatnonzero(self.tradable.any(axis=1))
        if rows.size == 0:
            raise DataError("no symbol has a bar with complete features")
        return int(rows[0])

    def fit_normalizer(self, rows: range, *, std_floor: float = 1e-8) -> Normalizer:
        """Measure each feature's mean and std over the train rows, pooled over the symbols present.

        One feature at a time, so the float64 working set is one [rows, M] column, not the whole window.
        """
        n_features = len(self.feature_names)
        mean, std = np.zeros(n_features), np.ones(n_features)
        empty = []
        for f in range(n_features):
            column = self.features[rows.start : rows.stop, :, f]
            values = column[np.isfinite(column)].astype(np.float64)
            if values.size == 0:
                empty.append(self.feature_names[f])
                continue
            mean[f] = values.mean()
            values -= mean[f]
            std[f] = max(float(np.sqrt(np.dot(values, values) / values.size)), std_floor)
        if empty:
            logger.warning("normalizer: no finite train values for %s; using mean 0, std 1", empty)
        return Normalizer(mean=mean, std=std, names=self.feature_names)


def read_universe(
    source: SourceOptions, features: FeatureOptions, options: UniverseOptions | None = None
) -> Universe:
    """Read, validate and align every symbol of the source and compute its features.

    Raises:
        DataError: naming the file, the row and the symbol of the first bad value met.
    """
    options = options or UniverseOptions()
    unknown = [name for name in options.cross_sectional if name not in features.names]
    if unknown:
        raise ValueError(
            f"UniverseOptions.cross_sectional names {unknown[0]!r}, which is not a chosen feature"
        )
    form = detect_form(source.path, options)
    series: dict[str, _SymbolSeries] = {}
    if form == "files":
        _read_files(source, features, series)
    else:
        path = list_source_files(source.path)[0]
        reader = _WideReader if form == "wide" else _LongReader
        reader(path, source, features, options).read(series)
    if not series:
        raise DataError("the source has no symbols", path=source.path)
    universe = _align(series, features)
    if options.cross_sectional:
        universe = _with_ranks(universe, options.cross_sectional)
    logger.info(
        "universe: %d symbols, %d bars, %d features (%s form)",
        len(universe.symbols),
        len(universe),
        len(universe.feature_names),
        form,
    )
    return universe


def detect_form(path: str, options: UniverseOptions) -> str:
    """Return the form of a source: the option, else files for a folder or glob, else by the header."""
    if options.form != "auto":
        return options.form
    files = list_source_files(path)
    if len(files) > 1 or Path(path).is_dir() or any(ch in path for ch in "*?["):
        return "files"
    columns = _header(files[0], _file_error(str(files[0]), files[0]))
    keys = {column_key(c) for c in columns}
    if _symbol_column(columns, options) is not None:
        return "long"
    return "files" if "close" in keys or "adjclose" in keys else "wide"


def cross_sectional_rank(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Return each value's rank among the valid values of its row, scaled to [-1, 1]; NaN elsewhere.

    The lowest value of a row gets -1, the highest +1, ties their average rank, and a row with one
    valid value 0. Each row uses that row only.
    """
    import pandas as pd

    masked = np.where(valid, values, np.nan)
    ranks = pd.DataFrame(masked).rank(axis=1, method="average").to_numpy(dtype=np.float64)
    count = valid.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(count > 1, 2.0 * (ranks - 1.0) / (count - 1.0) - 1.0, 0.0)
    return np.where(valid, scaled, np.nan).astype(np.float32)


class _SymbolSeries:
    """Collect one symbol's validated bars and their features, chunk by chunk."""

    def __init__(self, features: FeatureOptions) -> None:
        self.pipeline = FeaturePipeline(features)
        self.bars: list[Bars] = []
        self.features: list[np.ndarray] = []

    def add(self, bars: Bars) -> None:
        self.bars.append(bars)
        self.features.append(self.pipeline.update(bars))


def _file_error(name: str, path: Path, symbol: str = "") -> ErrorAt:
    unit = "row" if path.name.lower().endswith(_PARQUET_SUFFIXES) else "line"
    prefix = f"symbol {symbol}: " if symbol else ""

    def error(reason: str, row: int | None = None) -> DataError:
        return DataError(prefix + reason, path=name, line=row, unit=unit)

    return error


def _header(path: Path, error: ErrorAt) -> list[str]:
    import pandas as pd

    try:
        if path.name.lower().endswith(_PARQUET_SUFFIXES):
            import pyarrow.parquet as pq

            return [str(name) for name in pq.ParquetFile(path).schema_arrow.names]
        return [str(name) for name in pd.read_csv(path, nrows=0, skipinitialspace=True).columns]
    except Exception as exc:
        raise error(f"cannot read the header: {one_line(exc)}", None) from exc


def _symbol_column(columns: list[str], options: UniverseOptions) -> str | None:
    by_key = {column_key(c): c for c in columns}
    if options.symbol_column:
        return by_key.get(column_key(options.symbol_column))
    return next((by_key[key] for key in SYMBOL_COLUMNS if key in by_key), None)


def _symbol_of(path: Path) -> str:
    return path.name.split(".", 1)[0]


def _read_files(source: SourceOptions, features: FeatureOptions, series: dict[str, _SymbolSeries]) -> None:
    for path in list_source_files(source.path):
        symbol = _symbol_of(path)
        if symbol in series:
            raise DataError(f"two files give symbol {symbol!r}", path=str(path))
        one = _SymbolSeries(features)
        try:
            for bars in read_bars(replace(source, path=str(path))):
                one.add(bars)
        except DataError as exc:
            raise DataError(
                f"symbol {symbol}: {exc.reason}", path=exc.path, line=exc.line, unit=exc.unit
            ) from exc
        series[symbol] = one


class _TableReader:
    """Stream one wide or long file in chunks of rows: the parts both forms share."""

    def __init__(self, path: Path, source: SourceOptions, features: FeatureOptions) -> None:
        self.path = path
        self.name = str(path)
        self.source = source
        self.features = features
        self.is_parquet = path.name.lower().endswith(_PARQUET_SUFFIXES)
        self.unit = "row" if self.is_parquet else "line"
        self.error = _file_error(self.name, path)
        self.header_row = None if self.is_parquet else 1
        self.columns = _header(path, self.error)
        self.cleaners: dict[str, Cleaner] = {}
        self.states: dict[str, StreamState] = {}
        self.report = CleanReport()

    def frames(self, columns: list[str]) -> Iterator[tuple[pd.DataFrame, int]]:
        """Yield (frame, row number of its first row) for chunks of at most chunk_rows rows."""
        import pandas as pd

        first = 1 if self.is_parquet else 2
        try:
            if self.is_parquet:
                import pyarrow.parquet as pq

                parquet = pq.ParquetFile(self.path)
                for batch in parquet.iter_batches(batch_size=self.source.chunk_rows, columns=columns):
                    frame = batch.to_pandas(date_as_object=False, ignore_metadata=True)
                    yield frame, first
                    first += len(frame)
                return
            reader = pd.read_csv(
                self.path,
                usecols=columns,
                chunksize=self.source.chunk_rows,
                skipinitialspace=True,
                skip_blank_lines=False,
            )
            with reader:
                for frame in reader:
                    yield frame, first
                    first += len(frame)
        except DataError:
            raise
        except Exception as exc:
            raise self.error(f"cannot parse the file: {one_line(exc)}", None) from exc

    def clean(
        self,
        symbol: str,
        fields: dict[str, str],
        frame: pd.DataFrame,
        stamps: np.ndarray,
        rows: np.ndarray,
        series: dict[str, _SymbolSeries],
    ) -> None:
        """Validate one symbol's rows of a chunk (no blank row among them) and add its bars."""
        cleaner = self.cleaners.get(symbol)
        if cleaner is None:
            error = _file_error(self.name, self.path, symbol)
            cleaner = Cleaner(self.source, fields, name=self.name, unit=self.unit, error=error)
            self.cleaners[symbol] = cleaner
            self.states[symbol] = StreamState()
            series[symbol] = _SymbolSeries(self.features)
        bars = cleaner.clean(frame, stamps, rows, self.states[symbol], self.report)
        if bars is not None and len(bars):
            series[symbol].add(bars)


class _WideReader(_TableReader):
    """Read a wide file: a time column and one close column per symbol; an empty cell is no bar."""

    def __init__(
        self, path: Path, source: SourceOptions, features: FeatureOptions, options: UniverseOptions
    ) -> None:
        # A missing cell means the symbol has no bar there: it is skipped, never filled.
        super().__init__(path, replace(source, nan_policy="drop", price="close"), features)
        # The time column follows the single-asset rules, which also want a close: one is added for the
        # look-up only.
        probe = [*self.columns, "close"]
        times = detect_layout(probe, self.source, self.error, self.header_row).time_columns
        self.time_columns = times
        self.symbols = [c for c in self.columns if c not in times]
        if not self.symbols:
            raise self.error(
                f"no symbol columns beside the time column; columns are {self.columns}", self.header_row
            )

    def read(self, series: dict[str, _SymbolSeries]) -> None:
        layout = Layout(time_columns=self.time_columns, fields={})
        parser = TimeParser(layout, self.source.timestamp_format, self.name, self.error)
        for frame, first in self.frames([*self.time_columns, *self.symbols]):
            stamps, rows = parser.parse(frame, first)
            frame = frame.loc[~frame.isna().all(axis=1).to_numpy()]
            for symbol in self.symbols:
                has = frame[symbol].notna().to_numpy()
                if has.any():
                    fields = {"close": symbol}
                    part = frame.loc[has, [*layout.time_columns, symbol]]
                    self.clean(symbol, fields, part, stamps[has], rows[has], series)


class _LongReader(_TableReader):
    """Read a long file: one row per symbol and time, the symbol in its own column."""

    def __init__(
        self, path: Path, source: SourceOptions, features: FeatureOptions, options: UniverseOptions
    ) -> None:
        super().__init__(path, source, features)
        symbol_column = _symbol_column(self.columns, options)
        if symbol_column is None:
            wanted = options.symbol_column or "Symbol, Ticker, Tic or Asset"
            raise self.error(
                f"missing the symbol column ({wanted}); columns are {self.columns}", self.header_row
            )
        self.symbol_column = symbol_column
        rest = [c for c in self.columns if c != symbol_column]
        self.layout = detect_layout(rest, source, self.error, self.header_row)

    def read(self, series: dict[str, _SymbolSeries]) -> None:
        layout = self.layout
        parser = TimeParser(layout, self.source.timestamp_format, self.name, self.error)
        for frame, first in self.frames([*layout.columns(), self.symbol_column]):
            stamps, rows = parser.parse(frame, first)
            frame = frame.loc[~frame.isna().all(axis=1).to_numpy()]
            if len(frame) == 0:
                continue
            raw = frame[self.symbol_column]
            missing = raw.isna().to_numpy()
            if missing.any():
                raise self.error("missing symbol", int(rows[np.argmax(missing)]))
            names = raw.astype(str).str.strip().to_numpy()
            symbols, inverse = np.unique(names, return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            bounds = np.concatenate(([0], np.cumsum(np.bincount(inverse, minlength=len(symbols)))))
            columns = layout.columns()
            for k, symbol in enumerate(symbols.tolist()):
                at = order[bounds[k] : bounds[k + 1]]
                part = frame.iloc[at][columns]
                self.clean(str(symbol), layout.fields, part, stamps[at], rows[at], series)
        if self.report.dropped_rows:
            logger.warning(
                "%s: dropped %d rows with missing values (nan_policy=drop)",
                self.name,
                self.report.dropped_rows,
            )


def _align(series: dict[str, _SymbolSeries], features: FeatureOptions) -> Universe:
    symbols = tuple(sorted(series))
    joined = {s: Bars.concat(series[s].bars) for s in symbols}
    timestamp = np.unique(np.concatenate([joined[s].timestamp for s in symbols]))
    n, m, f = len(timestamp), len(symbols), len(features.names)
    prices = {name: np.full((n, m), np.nan) for name in ("open", "high", "low", "close", "volume")}
    table = np.full((n, m, f), np.nan, dtype=np.float32)
    close_only = True
    for j, symbol in enumerate(symbols):
        bars = joined[symbol]
        at = np.searchsorted(timestamp, bars.timestamp)
        for name, column in prices.items():
            column[at, j] = getattr(bars, name)
        blocks = series[symbol].features
        table[at, j] = np.concatenate(blocks) if blocks else np.empty((0, f), dtype=np.float32)
        close_only = close_only and bool(
            (bars.open == bars.close).all()
            and (bars.high == bars.low).all()
            and (bars.high == bars.close).all()
        )
        series[symbol].bars.clear()
        series[symbol].features.clear()
    return Universe(
        symbols=symbols,
        feature_names=tuple(features.names),
        timestamp=timestamp,
        features=table,
        close_only=close_only,
        **prices,
    )


def _with_ranks(universe: Universe, names: tuple[str, ...]) -> Universe:
    tradable = universe.tradable
    ranks = [
        cross_sectional_rank(universe.features[:, :, universe.feature_names.index(name)], tradable)
        for name in names
    ]
    return replace(
        universe,
        feature_names=(*universe.feature_names, *(RANK_PREFIX + name for name in names)),
        features=np.concatenate([universe.features, np.stack(ranks, axis=2)], axis=2),
    )
