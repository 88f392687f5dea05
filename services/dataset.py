"""Serve the data actor: load and process the source once, then cut and normalise each episode's windows."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.config import DataOptions
from services.feature_cache import FeatureCache, ProcessedData, process_source
from services.splits import Normalizer, split_ranges

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SplitArrays:
    """The arrays of one split as streamed: normalised features and the prices the env trades at."""

    features: np.ndarray
    open: np.ndarray
    close: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.close)


@dataclass(frozen=True, slots=True)
class EpisodeSplit:
    """An episode's train and eval arrays plus the key that identifies the windows."""

    key: tuple[int, int, int, int]
    """(train_start, train_end, eval_start, eval_end) bar indices."""
    train: SplitArrays
    eval: SplitArrays


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """What loading found: published as DataLoaded."""

    source: str
    rows: int
    features: tuple[str, ...]
    bars_per_year: float
    data_hash: str
    cached: bool
    seconds: float


class DatasetService:
    """Loads the configured source once (through the feature cache) and serves episode splits."""

    def __init__(
        self,
        options: DataOptions,
        *,
        window: int,
        episode_length: int,
        cache_root: Path,
        run_dir: Path | None = None,
    ) -> None:
        self._options = options
        self._window = window
        self._episode_length = episode_length
        self._cache_root = cache_root
        self._run_dir = run_dir
        self._data: ProcessedData | None = None

    def load(self) -> LoadSummary:
        """Read, validate and process the source, or take it from the cache; once per session."""
        started = time.perf_counter()
        opts = self._options
        cached = False
        if opts.cache:
            folder = Path(opts.cache_dir)
            cache = FeatureCache(folder if folder.is_absolute() else self._cache_root / folder)
            data = cache.load_or_build(opts.source, opts.features)
            cached = cache.hits > 0
        else:
            data = process_source(opts.source, opts.features)
        self._data = data
        return LoadSummary(
            source=opts.source.path,
            rows=len(data),
            features=data.names,
            bars_per_year=data.bars_per_year,
            data_hash=data.key,
            cached=cached,
            seconds=time.perf_counter() - started,
        )

    def episode(self, episode: int) -> EpisodeSplit:
        """Return episode `episode` (1-based): train and eval arrays normalised with train statistics.

        The eval arrays start window - 1 bars before the first eval bar, so the first eval observation
        has a full window; those context bars are earlier than every eval bar (no look-ahead).
        """
        data = self._data
        if data is None:
            raise RuntimeError("load() must run before episode()")
        bars = data.bars
        split = split_ranges(
            len(data),
            self._options.split,
            episode=episode - 1,
            timestamps_ns=bars.timestamp,
            warmup=data.warmup,
            min_bars=self._window + max(self._episode_length, 1),
        )
        normalizer = Normalizer.fit(data.features, split.train, names=data.names)
        self._save_normalizer(normalizer, episode)
        context = max(split.eval.start - (self._window - 1), data.warmup)

        def arrays(start: int, stop: int) -> SplitArrays:
            return SplitArrays(
                features=normalizer.apply(data.features[start:stop]),
                open=np.ascontiguousarray(bars.open[start:stop], dtype=np.float64),
                close=np.ascontiguousarray(bars.close[start:stop], dtype=np.float64),
                timestamp=np.ascontiguousarray(bars.timestamp[start:stop], dtype=np.int64),
            )

        return EpisodeSplit(
            key=(split.train.start, split.train.stop, context, split.eval.stop),
            train=arrays(split.train.start, split.train.stop),
            eval=arrays(context, split.eval.stop),
        )

    def _save_normalizer(self, normalizer: Normalizer, episode: int) -> None:
        if self._run_dir is None:
            return
        path = self._run_dir / "normalizer.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"episode": episode, **normalizer.to_dict()}, indent=1))
        os.replace(tmp, path)
