"""Process a whole source into float32 features in memory, and name it by a cache key.

The key (the source files' bytes and the feature options) names the on-disk feature store
(services/data/store.py) that the data actor streams from; process_source serves inference.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.data.features import FEATURE_VERSION, FeatureOptions, FeaturePipeline
from services.data.reader import Bars, SourceOptions, infer_bars_per_year, list_source_files, read_bars

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when the processed result of the same source and options changes."""

_HASH_BLOCK = 1 << 20
# Source options that cannot change the processed result stay out of the key.
_KEY_EXCLUDED_SOURCE_FIELDS = ("path", "chunk_rows")


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
