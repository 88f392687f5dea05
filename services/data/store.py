"""Hold a processed source: on disk in column files read back in bounded blocks, or whole in memory.

Building a `FeatureStore` streams the source chunk by chunk through the causal feature pipeline and
appends each chunk to the column files, so the data actor's memory stays bounded whatever the size of
the source. The folder is named by the cache key (the source files' bytes and the feature options): a
second session on the same data opens it instead of processing again. Only raw little-endian numbers
and a JSON file are written, never pickle. `process_source` is the in-memory form (inference): every
bar and feature kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.data.bars import Bars, DataError, infer_bars_per_year
from services.data.features import FeaturePipeline, source_features
from services.data.options import FeatureOptions, SourceOptions
from services.data.reader import SourceReader
from services.data.splits import Normalizer

logger = logging.getLogger(__name__)

STORE_VERSION = 2
META = "meta.json"
COLUMNS: dict[str, str] = {"timestamp": "<i8", "open": "<f8", "close": "<f8", "features": "<f4"}
"""Column files and their dtypes; features hold n_features values per row."""
FREQUENCY_SAMPLE = 100_000
"""Leading timestamps used to infer the bar frequency."""
BLOCK_ROWS = 1 << 16
"""Rows per block when scanning a column (normalisation statistics)."""


def store_folder(cache_dir: str, key: str, *, root: Path) -> Path:
    """Return the folder of the store named `key` in `cache_dir` (taken from `root` when relative)."""
    folder = Path(cache_dir)
    return (folder if folder.is_absolute() else root / folder) / key


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What a store holds, and what cleaning the source dropped or changed."""

    rows: int
    names: tuple[str, ...]
    warmup: int
    bars_per_year: float
    key: str
    close_only: bool = False
    """The source had closes only: every bar is flat at its close (open = high = low = close)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Rows nan_policy=drop left out, by reason."""
    filled: int = 0
    """Rows nan_policy=ffill filled."""
    clipped: int = 0
    """Bars ohlc_policy=clip widened."""


class FeatureStore:
    """A processed source on disk; rows are read back in blocks, never all at once."""

    def __init__(self, folder: Path, info: StoreInfo) -> None:
        self.folder = folder
        self.info = info
        self._timestamps: np.memmap[Any, np.dtype[np.int64]] | None = None

    def __len__(self) -> int:
        return self.info.rows

    @classmethod
    def open(cls, folder: Path) -> FeatureStore | None:
        """Open a complete store, or return None when it is absent or damaged (logged)."""
        meta_path = folder / META
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta["version"] != STORE_VERSION:
                raise ValueError(f"store version {meta['version']}")
            info = StoreInfo(
                rows=int(meta["rows"]),
                names=tuple(meta["names"]),
                warmup=int(meta["warmup"]),
                bars_per_year=float(meta["bars_per_year"]),
                key=str(meta["key"]),
                close_only=bool(meta["close_only"]),
                dropped={str(k): int(v) for k, v in meta["dropped"].items()},
                filled=int(meta["filled"]),
                clipped=int(meta["clipped"]),
            )
            for column, dtype in COLUMNS.items():
                width = len(info.names) if column == "features" else 1
                expected = info.rows * width * np.dtype(dtype).itemsize
                if (folder / column).stat().st_size != expected:
                    raise ValueError(f"column {column} has the wrong size")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            logger.warning("feature store %s is damaged (%s); processing the source again", folder, exc)
            return None
        return cls(folder, info)

    @classmethod
    def build(
        cls, folder: Path, source: SourceOptions, features: FeatureOptions, *, key: str
    ) -> FeatureStore:
        """Stream the source through the feature pipeline into a new store at `folder` (atomically)."""
        started = time.perf_counter()
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            reader = SourceReader(source)
            pipeline = FeaturePipeline(
                source_features(features, close_only=reader.close_only, has_volume=reader.has_volume)
            )
            rows = 0
            sample: list[np.ndarray] = []
            sampled = 0
            files = {column: (tmp / column).open("wb") for column in COLUMNS}
            try:
                for bars in reader:
                    block = pipeline.update(bars)
                    for column, dtype in COLUMNS.items():
                        values = block if column == "features" else getattr(bars, column)
                        np.ascontiguousarray(values, dtype=dtype).tofile(files[column])
                    if sampled < FREQUENCY_SAMPLE:
                        sample.append(bars.timestamp[: FREQUENCY_SAMPLE - sampled])
                        sampled += len(sample[-1])
                    rows += len(bars)
            finally:
                for fh in files.values():
                    fh.flush()
                    os.fsync(fh.fileno())
                    fh.close()
            if rows < 2:
                raise DataError(f"too few rows: {rows} bar(s)", path=source.path)
            info = StoreInfo(
                rows=rows,
                names=tuple(pipeline.names),
                warmup=pipeline.warmup,
                bars_per_year=infer_bars_per_year(np.concatenate(sample)),
                key=key,
                close_only=reader.close_only,
                dropped=dict(reader.report.dropped),
                filled=reader.report.filled,
                clipped=reader.report.clipped,
            )
            meta = {"version": STORE_VERSION, **{f: getattr(info, f) for f in StoreInfo.__slots__}}
            (tmp / META).write_text(json.dumps(meta, indent=1))
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logger.info(
            "processed %s: %d bars, %d features in %.2f s",
            source.path,
            rows,
            len(info.names),
            time.perf_counter() - started,
        )
        return cls(folder, info)

    def read(self, column: str, start: int, stop: int) -> np.ndarray:
        """Read rows [start, stop) of a column from disk (a fresh array; nothing stays mapped)."""
        if not 0 <= start <= stop <= self.info.rows:
            raise IndexError(f"rows {start}..{stop} outside 0..{self.info.rows}")
        dtype = np.dtype(COLUMNS[column])
        width = len(self.info.names) if column == "features" else 1
        values = np.fromfile(
            self.folder / column,
            dtype=dtype,
            count=(stop - start) * width,
            offset=start * width * dtype.itemsize,
        )
        return values.reshape(-1, width) if column == "features" else values

    def timestamps(self) -> np.ndarray:
        """All timestamps as a read-only memory map (searching touches only the pages it needs)."""
        if self._timestamps is None:
            self._timestamps = np.memmap(
                self.folder / "timestamp", dtype="<i8", mode="r", shape=(self.info.rows,)
            )
        return self._timestamps

    def fit_normalizer(self, rows: range, *, std_floor: float = 1e-8) -> Normalizer:
        """Measure per-feature mean and std over `rows` block by block (Chan's parallel update)."""
        n_features = len(self.info.names)
        count = np.zeros(n_features)
        mean = np.zeros(n_features)
        m2 = np.zeros(n_features)
        for start in range(rows.start, rows.stop, BLOCK_ROWS):
            block = self.read("features", start, min(start + BLOCK_ROWS, rows.stop)).astype(np.float64)
            finite = np.isfinite(block)
            n_b = finite.sum(axis=0).astype(np.float64)
            safe = np.where(finite, block, 0.0)
            mean_b = np.divide(safe.sum(axis=0), n_b, out=np.zeros(n_features), where=n_b > 0)
            m2_b = np.where(finite, (block - mean_b) ** 2, 0.0).sum(axis=0)
            total = count + n_b
            delta = mean_b - mean
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(total > 0, mean + delta * n_b / np.maximum(total, 1), mean)
                m2 = m2 + m2_b + delta**2 * count * n_b / np.maximum(total, 1)
            count = total
        var = np.divide(m2, count, out=np.ones(n_features), where=count > 0)
        std = np.maximum(np.sqrt(var), std_floor)
        if (count == 0).any():
            missing = [self.info.names[i] for i in np.flatnonzero(count == 0)]
            logger.warning("normalizer: no finite train values for %s; using mean 0, std 1", missing)
            std = np.where(count == 0, 1.0, std)
        return Normalizer(mean=mean, std=std, names=self.info.names)


@dataclass(frozen=True, slots=True, eq=False)
class ProcessedData:
    """Hold a whole source after validation and feature processing."""

    bars: Bars
    """Every validated bar in time order."""
    features: np.ndarray
    """Float32 features [len(bars), len(names)]; the first `warmup` rows are NaN."""
    names: tuple[str, ...]
    """Feature names, in column order."""
    warmup: int
    """Leading rows whose features are not valid."""
    bars_per_year: float
    """Bars per year inferred from the timestamps (0 when there are fewer than two bars)."""
    key: str
    """The cache key of the source and options that produced this data."""

    def __len__(self) -> int:
        return len(self.bars)


def process_source(source: SourceOptions, features: FeatureOptions, *, key: str = "") -> ProcessedData:
    """Read and validate every bar of the source and compute its features in memory, storing nothing."""
    reader = SourceReader(source)
    pipeline = FeaturePipeline(
        source_features(features, close_only=reader.close_only, has_volume=reader.has_volume)
    )
    fields = ("timestamp", "open", "high", "low", "close", "volume")
    columns: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    blocks: list[np.ndarray] = []
    started = time.perf_counter()
    for chunk in reader:
        for name in fields:
            columns[name].append(getattr(chunk, name))
        blocks.append(pipeline.update(chunk))
    # Join one field at a time, freeing its chunks, so the peak stays near one copy of the data.
    merged: dict[str, np.ndarray] = {}
    for name in fields:
        parts = columns.pop(name)
        merged[name] = (
            np.concatenate(parts) if parts else np.empty(0, np.int64 if name == "timestamp" else np.float64)
        )
        parts.clear()
    bars = Bars(**merged)
    table = np.concatenate(blocks) if blocks else np.empty((0, len(pipeline.names)), dtype=np.float32)
    blocks.clear()
    elapsed = time.perf_counter() - started
    logger.info(
        "processed %d bars into %d features in %.2f s (%.0f bars/s)",
        len(bars),
        len(pipeline.names),
        elapsed,
        len(bars) / elapsed if elapsed > 0 else 0.0,
    )
    return ProcessedData(
        bars=bars,
        features=table,
        names=pipeline.names,
        warmup=pipeline.warmup,
        bars_per_year=infer_bars_per_year(bars.timestamp) if len(bars) >= 2 else 0.0,
        key=key,
    )
