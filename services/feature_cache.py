"""Process a source into float32 features once, and cache the result in a pickle-free .npz file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.data_source import Bars, SourceOptions, infer_bars_per_year, list_source_files, read_bars
from services.features import FEATURE_VERSION, FeatureOptions, FeaturePipeline

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the cache file layout changes."""

_HASH_BLOCK = 1 << 20
# Source options that cannot change the processed result stay out of the key.
_KEY_EXCLUDED_SOURCE_FIELDS = ("path", "chunk_rows")
_ARRAYS = ("timestamp", "open", "high", "low", "close", "volume", "features")


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


def file_digest(path: Path) -> str:
    """Return the blake2b hex digest of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.blake2b(digest_size=20)
    buffer = bytearray(_HASH_BLOCK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as stream:
        while True:
            size = stream.readinto(buffer)
            if not size:
                break
            digest.update(view[:size])
    return digest.hexdigest()


def cache_key(source: SourceOptions, features: FeatureOptions) -> str:
    """Return a key naming the source files (path, size, mtime, content hash) and the options."""
    files = []
    for path in list_source_files(source.path):
        stat = path.stat()
        files.append(
            {
                "path": str(path.resolve()),
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "blake2b": file_digest(path),
            }
        )
    source_fields = {
        f.name: getattr(source, f.name)
        for f in dataclasses.fields(source)
        if f.name not in _KEY_EXCLUDED_SOURCE_FIELDS
    }
    feature_fields = {f.name: getattr(features, f.name) for f in dataclasses.fields(features)}
    payload = {
        "cache_version": CACHE_VERSION,
        "feature_version": FEATURE_VERSION,
        "files": files,
        "source": source_fields,
        "features": feature_fields,
    }
    text = json.dumps(payload, sort_keys=True, default=list)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def process_source(source: SourceOptions, features: FeatureOptions, *, key: str = "") -> ProcessedData:
    """Read and validate every bar of the source and compute its features, without any cache."""
    pipeline = FeaturePipeline(features)
    fields = ("timestamp", "open", "high", "low", "close", "volume")
    columns: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    blocks: list[np.ndarray] = []
    started = time.perf_counter()
    for chunk in read_bars(source):
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


class FeatureCache:
    """Keep processed features in `<folder>/<key>.npz`, rebuilding a missing or corrupt entry."""

    def __init__(self, folder: str | Path = ".cache/features") -> None:
        self.folder = Path(folder)
        self.hits = 0
        """Loads served from the cache."""
        self.misses = 0
        """Loads that had to process the source."""

    def path_for(self, key: str) -> Path:
        """Return the cache file of a key."""
        return self.folder / f"{key}.npz"

    def load_or_build(self, source: SourceOptions, features: FeatureOptions) -> ProcessedData:
        """Return the processed source from the cache, processing and storing it on a miss."""
        key = cache_key(source, features)
        cached = self.load(key)
        if cached is not None:
            self.hits += 1
            logger.info("feature cache hit: %s (%d bars)", self.path_for(key), len(cached))
            return cached
        self.misses += 1
        logger.info("feature cache miss: processing %s", source.path)
        data = process_source(source, features, key=key)
        try:
            self.store(data)
        except OSError as exc:
            logger.warning("feature cache: cannot write %s: %s", self.path_for(key), exc)
        return data

    def load(self, key: str) -> ProcessedData | None:
        """Return the cached data of a key, or None when absent or unreadable (a corrupt file is logged)."""
        path = self.path_for(key)
        if not path.is_file():
            return None
        try:
            return _read(path, key)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("feature cache: ignoring corrupt %s (%s); rebuilding", path, exc)
            return None

    def store(self, data: ProcessedData) -> Path:
        """Write the data under its key atomically (temporary file, then rename)."""
        if not data.key:
            raise ValueError("ProcessedData.key is empty; build it with a cache key")
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path_for(data.key)
        meta = {
            "key": data.key,
            "names": list(data.names),
            "warmup": data.warmup,
            "bars_per_year": data.bars_per_year,
            "cache_version": CACHE_VERSION,
        }
        handle, temp_name = tempfile.mkstemp(prefix=f".{data.key}.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(handle, "wb") as stream:
                np.savez(
                    stream,
                    meta=np.array(json.dumps(meta)),
                    timestamp=data.bars.timestamp,
                    open=data.bars.open,
                    high=data.bars.high,
                    low=data.bars.low,
                    close=data.bars.close,
                    volume=data.bars.volume,
                    features=data.features,
                )
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        logger.info("feature cache: stored %s (%d bars)", path, len(data.bars))
        return path


def load_features(
    source: SourceOptions, features: FeatureOptions, cache_dir: str | Path | None = ".cache/features"
) -> ProcessedData:
    """Return the processed source, through the cache in `cache_dir` (None processes without a cache)."""
    if cache_dir is None:
        return process_source(source, features)
    return FeatureCache(cache_dir).load_or_build(source, features)


def _read(path: Path, key: str) -> ProcessedData:
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(str(archive["meta"][()]))
        arrays = {name: archive[name] for name in _ARRAYS}
    if meta.get("key") != key or meta.get("cache_version") != CACHE_VERSION:
        raise ValueError("key or version does not match")
    n = len(arrays["timestamp"])
    names = tuple(str(name) for name in meta["names"])
    table = arrays["features"]
    if table.dtype != np.float32 or table.shape != (n, len(names)):
        raise ValueError(
            f"features have shape {table.shape} and dtype {table.dtype}, expected ({n}, {len(names)})"
        )
    if arrays["timestamp"].dtype != np.int64:
        raise ValueError("timestamps are not int64")
    bars = Bars(
        timestamp=arrays["timestamp"],
        open=arrays["open"].astype(np.float64, copy=False),
        high=arrays["high"].astype(np.float64, copy=False),
        low=arrays["low"].astype(np.float64, copy=False),
        close=arrays["close"].astype(np.float64, copy=False),
        volume=arrays["volume"].astype(np.float64, copy=False),
    )
    return ProcessedData(
        bars=bars,
        features=table,
        names=names,
        warmup=int(meta["warmup"]),
        bars_per_year=float(meta["bars_per_year"]),
        key=key,
    )
