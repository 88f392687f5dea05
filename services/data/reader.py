"""Stream market bars from CSV or Parquet files in bounded, validated chunks.

Row numbers in `DataError` follow one convention per format: for CSV they are physical 1-based line
numbers in the file, the header being line 1 (so the first bar is line 2; blank lines are counted);
for Parquet they are 1-based data rows (the first bar is row 1). Each file's columns are mapped by
`layout`, its times read by `timeparse` and its rows checked by `cleaning`.
"""

from __future__ import annotations

import glob
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from services.data.bars import Bars, DataError, one_line
from services.data.cleaning import Cleaner, CleanReport, StreamState
from services.data.layout import detect_layout
from services.data.options import SourceOptions
from services.data.timeparse import SAMPLE_ROWS, TimeParser

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

# Suffixes taken from a folder; a file named directly is read whatever its suffix (as Parquet or CSV).
_CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".csv.zip")
_PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")
_PANDAS_LINE = re.compile(r"line (\d+)")
_COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".tar")
_SEPARATORS = (";", "\t", "|")
_ZIP_MAGIC = b"PK\x03\x04"
_OLE_MAGIC = bytes.fromhex("D0CF11E0A1B11AE1")


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
    return iter(SourceReader(options))


class SourceReader:
    """Read a source's files in time order, in validated chunks, and count what cleaning changed.

    Making one reads every file's header (so a bad header is found before any row is read) and says
    whether the source is close-only; iterating streams the bars and fills `report`.
    """

    def __init__(self, options: SourceOptions) -> None:
        self._readers = [_FileReader(path, options) for path in list_source_files(options.path)]
        kinds = {reader.layout.close_only for reader in self._readers}
        if len(kinds) > 1:
            mixed = next(r for r in self._readers if r.layout.close_only)
            raise DataError(
                "this file has only closes while others have open, high and low; use one kind",
                path=mixed.name,
            )
        self.close_only = kinds == {True}
        """True when the files have closes but no open, high and low: every bar is flat at its close."""
        self.has_volume = all("volume" in reader.layout.fields for reader in self._readers)
        """True when every file has a volume column."""
        self.report = CleanReport()
        """What cleaning dropped or changed so far."""

    def __iter__(self) -> Iterator[Bars]:
        readers = self._readers
        if len(readers) > 1:
            readers = sorted(readers, key=lambda r: (r.first_timestamp(), str(r.path)))
            logger.info("reading %d files in time order, first %s", len(readers), readers[0].path)
        state = StreamState()
        for reader in readers:
            yield from reader.chunks(state, self.report)


class _FileReader:
    """Read one file chunk by chunk, validating every chunk."""

    def __init__(self, path: Path, options: SourceOptions) -> None:
        self.path = path
        self.name = str(path)
        self.options = options
        self.is_parquet = path.name.lower().endswith(_PARQUET_SUFFIXES)
        self.unit = "row" if self.is_parquet else "line"
        # CSV: line of the first data row (header is line 1). Parquet: 1-based data rows.
        self.first_row = 1 if self.is_parquet else 2
        header_row = None if self.is_parquet else 1
        self.separator = ","
        self.layout = detect_layout(self._column_names(), options, self.error, header_row)
        self.times = TimeParser(self.layout, options.timestamp_format, self.name, self.error)
        self.cleaner = Cleaner(options, self.layout.fields, name=self.name, unit=self.unit, error=self.error)
        self._first_timestamp: int | None = None

    def error(self, reason: str, row: int | None = None) -> DataError:
        return DataError(reason, path=self.name, line=row, unit=self.unit)

    def first_timestamp(self) -> int:
        """Return the first bar's time, reading only the first chunk."""
        if self._first_timestamp is None:
            for frame, first in self._frames(limit=SAMPLE_ROWS):
                stamps, _ = self.times.parse(frame, first)
                if len(stamps):
                    self._first_timestamp = int(stamps[0])
                    break
            else:
                raise self.error("the file has a header but no data rows")
        return self._first_timestamp

    def chunks(self, state: StreamState, report: CleanReport) -> Iterator[Bars]:
        dropped_before, clipped_before = report.dropped_rows, report.clipped
        rows = 0
        lines = 0
        for frame, first in self._frames():
            lines += len(frame)
            stamps, numbers = self.times.parse(frame, first)
            bars = self.cleaner.clean(frame, stamps, numbers, state, report)
            if bars is not None and len(bars):
                rows += len(bars)
                yield bars
        dropped = report.dropped_rows - dropped_before
        clipped = report.clipped - clipped_before
        if rows == 0 and dropped:
            raise self.error(f"the file has no valid data rows: all {dropped} were dropped (nan_policy=drop)")
        if rows == 0:
            raise self.error(
                "the file has a header but no data rows" if not lines else "the file has no data rows"
            )
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
            self._check_text()
            header = pd.read_csv(self.path, nrows=0, skipinitialspace=True)
            names = [str(name) for name in header.columns]
            separator = _other_separator(names)
            if separator:
                self.separator = separator
                header = pd.read_csv(self.path, nrows=0, sep=separator, skipinitialspace=True)
        except DataError:
            raise
        except pd.errors.EmptyDataError:
            raise self.error("the file is empty", None) from None
        except Exception as exc:
            raise self.error(f"cannot read the header: {one_line(exc)}", None) from exc
        return [str(name) for name in header.columns]

    def _check_text(self) -> None:
        """Refuse a spreadsheet saved under a CSV name, naming what it is."""
        if self.path.name.lower().endswith(_COMPRESSED_SUFFIXES):
            return
        with self.path.open("rb") as fh:
            magic = fh.read(8)
        if not magic:
            raise self.error("the file is empty", None)
        if magic.startswith(_ZIP_MAGIC):
            raise self.error(
                "this is an Excel workbook (.xlsx) or another zip file, not CSV text; save it as CSV", None
            )
        if magic.startswith(_OLE_MAGIC):
            raise self.error("this is an Excel 97-2003 workbook (.xls), not CSV text; save it as CSV", None)

    def _frames(self, limit: int | None = None) -> Iterator[tuple[pd.DataFrame, int]]:
        """Yield (frame, row number of its first row) for bounded chunks of the file."""
        import pandas as pd

        size = self.options.chunk_rows if limit is None else min(limit, self.options.chunk_rows)
        columns = self.layout.columns()
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
                sep=self.separator,
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
            raise self.error(f"cannot parse the file: {one_line(exc)}", row) from exc


def _other_separator(names: list[str]) -> str:
    """Return the separator a header read as one column shows (';', tab or '|'), or '' for commas."""
    if len(names) != 1:
        return ""
    counts = {sep: names[0].count(sep) for sep in _SEPARATORS}
    best = max(counts, key=lambda sep: counts[sep])
    return best if counts[best] else ""


def _is_supported(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(_CSV_SUFFIXES) or name.endswith(_PARQUET_SUFFIXES)
