"""Keep a read universe on disk, so a launch reads and aligns a multi-symbol source once, not per process.

The launcher's checks read the universe before any process starts and the data actor needs the same
arrays; a study launches the same source for every trial and seed. With `data.cache` on, the first
read writes the aligned universe (its arrays as .npy files, read back with ``allow_pickle=False``, and a
JSON file with the symbols, the feature names and the shapes) to a folder of the feature cache named by
`universe_key`: the session's data hash (the source files' bytes and the feature options) and the
universe options. Every later read of the same source and options opens it. The folder is written
whole under a temporary name and renamed, so a reader never sees half of one; a damaged folder is
logged and read again from the source.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

from services.data.options import FeatureOptions, SourceOptions, UniverseOptions
from services.data.universe import Universe, read_universe

logger = logging.getLogger(__name__)

UNIVERSE_CACHE_VERSION = 1
"""Bump when the arrays written for the same source and options change."""
META = "universe.json"
ARRAYS: dict[str, str] = {
    "timestamp": "<i8",
    "open": "<f8",
    "high": "<f8",
    "low": "<f8",
    "close": "<f8",
    "volume": "<f8",
    "features": "<f4",
}
"""The Universe fields kept as .npy files, with their dtypes."""


def universe_key(data_hash: str, options: UniverseOptions) -> str:
    """Return the name of a universe's cache folder: the data hash and every universe option."""
    payload = {
        "version": UNIVERSE_CACHE_VERSION,
        "data_hash": data_hash,
        "universe": dataclasses.asdict(options),
    }
    text = json.dumps(payload, sort_keys=True, default=list)
    return "universe-" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def cached_universe(
    source: SourceOptions,
    features: FeatureOptions,
    options: UniverseOptions,
    folder: Path | None,
) -> tuple[Universe, bool]:
    """Return the universe of the source and whether it was read from the source now.

    Args:
        folder: the cache folder of this source and these options (`universe_key` in the feature
            cache), or None to read the source without a cache.
    """
    if folder is not None:
        universe = open_universe(folder)
        if universe is not None:
            logger.info(
                "universe: %d symbols, %d bars from the cache %s",
                len(universe.symbols),
                len(universe),
                folder.name,
            )
            return universe, False
    universe = read_universe(source, features, options)
    if folder is not None:
        save_universe(folder, universe)
    return universe, True


def save_universe(folder: Path, universe: Universe) -> None:
    """Write the universe to `folder` atomically; a failure to write is logged and leaves no folder."""
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        shapes = {}
        for name, dtype in ARRAYS.items():
            values = np.ascontiguousarray(getattr(universe, name), dtype=dtype)
            np.save(tmp / f"{name}.npy", values, allow_pickle=False)
            shapes[name] = list(values.shape)
        meta = {
            "version": UNIVERSE_CACHE_VERSION,
            "symbols": list(universe.symbols),
            "feature_names": list(universe.feature_names),
            "close_only": universe.close_only,
            "shapes": shapes,
        }
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as exc:
        # Another process may have renamed its copy into place first; either way the source was read.
        logger.warning("cannot keep the universe in %s: %s", folder, exc)
        shutil.rmtree(tmp, ignore_errors=True)


def open_universe(folder: Path) -> Universe | None:
    """Open a complete cached universe, or return None when it is absent or damaged (logged)."""
    meta_path = folder / META
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta["version"] != UNIVERSE_CACHE_VERSION:
            raise ValueError(f"cache version {meta['version']}")
        symbols = tuple(str(s) for s in meta["symbols"])
        names = tuple(str(s) for s in meta["feature_names"])
        arrays = {}
        for name, dtype in ARRAYS.items():
            values = np.load(folder / f"{name}.npy", allow_pickle=False)
            if values.dtype != np.dtype(dtype) or list(values.shape) != meta["shapes"][name]:
                raise ValueError(f"{name}.npy is {values.dtype} {values.shape}")
            arrays[name] = values
        n_bars, n_symbols = len(arrays["timestamp"]), len(symbols)
        for name in ARRAYS:
            expected: tuple[int, ...] = (n_bars, n_symbols)
            if name == "timestamp":
                expected = (n_bars,)
            elif name == "features":
                expected = (n_bars, n_symbols, len(names))
            if arrays[name].shape != expected:
                raise ValueError(f"{name}.npy has shape {arrays[name].shape}, expected {expected}")
        return Universe(
            symbols=symbols,
            feature_names=names,
            close_only=bool(meta["close_only"]),
            **arrays,
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cached universe %s is damaged (%s); reading the source again", folder, exc)
        return None
