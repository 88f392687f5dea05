"""Serve the data actor: process the source once into a feature store, then cut each episode's windows."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from messages import DataLoaded
from services.config import DataOptions
from services.data.bars import infer_bars_per_year
from services.data.splits import Normalizer, split_ranges
from services.data.store import FeatureStore, store_folder
from services.env.options import min_bars, min_eval_bars

if TYPE_CHECKING:
    from services.data.universe import Universe

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SplitArrays:
    """Rows of a split as they travel: normalised float32 features and the prices the env trades at."""

    features: np.ndarray
    open: np.ndarray
    close: np.ndarray
    timestamp: np.ndarray

    def __len__(self) -> int:
        return len(self.close)

    def block(self, start: int, stop: int) -> SplitArrays:
        """Return rows [start, stop)."""
        return SplitArrays(
            self.features[start:stop],
            self.open[start:stop],
            self.close[start:stop],
            self.timestamp[start:stop],
        )

    def first_timestamp(self) -> int:
        """Time of the first bar, ns since the epoch."""
        return int(self.timestamp[0])

    def last_timestamp(self) -> int:
        """Time of the last bar, ns since the epoch."""
        return int(self.timestamp[-1])


class Split(Protocol):
    """A split the data actor streams block by block."""

    def __len__(self) -> int: ...

    def block(self, start: int, stop: int) -> SplitArrays | PortfolioArrays:
        """Return rows [start, stop) of the split."""
        ...

    def first_timestamp(self) -> int:
        """Time of the first bar."""
        ...

    def last_timestamp(self) -> int:
        """Time of the last bar."""
        ...


@dataclass(frozen=True, slots=True)
class StoredSplit:
    """Rows [start, stop) of a feature store, read and normalised one block at a time."""

    store: FeatureStore
    normalizer: Normalizer
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def block(self, start: int, stop: int) -> SplitArrays:
        """Read rows [start, stop) of the split from disk and normalise the features."""
        a, b = self.start + start, self.start + min(stop, len(self))
        return SplitArrays(
            features=self.normalizer.apply(self.store.read("features", a, b)),
            open=self.store.read("open", a, b),
            close=self.store.read("close", a, b),
            timestamp=self.store.read("timestamp", a, b),
        )

    def first_timestamp(self) -> int:
        """Time of the first bar of the split."""
        return int(self.store.read("timestamp", self.start, self.start + 1)[0])

    def last_timestamp(self) -> int:
        """Time of the last bar of the split."""
        return int(self.store.read("timestamp", self.stop - 1, self.stop)[0])


@dataclass(frozen=True, slots=True)
class PortfolioArrays:
    """Rows of a portfolio split as they travel: features [rows, M, F], prices and tradable [rows, M]."""

    features: np.ndarray
    open: np.ndarray
    close: np.ndarray
    timestamp: np.ndarray
    tradable: np.ndarray

    def __len__(self) -> int:
        return len(self.close)


@dataclass(frozen=True, slots=True)
class UniverseSplit:
    """Rows [start, stop) of a universe in memory, normalised one block at a time."""

    universe: Universe
    normalizer: Normalizer
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def assets(self) -> int:
        """Return the number of symbols of a row."""
        return len(self.universe.symbols)

    def block(self, start: int, stop: int) -> PortfolioArrays:
        """Return rows [start, stop) of the split with the features normalised (NaN stays NaN)."""
        a, b = self.start + start, self.start + min(stop, len(self))
        u = self.universe
        tradable = np.isfinite(u.close[a:b]) & np.isfinite(u.features[a:b]).all(axis=2)
        return PortfolioArrays(
            features=self.normalizer.apply(u.features[a:b]),
            open=u.open[a:b],
            close=u.close[a:b],
            timestamp=u.timestamp[a:b],
            tradable=tradable,
        )

    def first_timestamp(self) -> int:
        """Time of the first bar of the split."""
        return int(self.universe.timestamp[self.start])

    def last_timestamp(self) -> int:
        """Time of the last bar of the split."""
        return int(self.universe.timestamp[self.stop - 1])


@dataclass(frozen=True, slots=True)
class EpisodeSplit:
    """An episode's train and eval rows plus the key that identifies the windows."""

    key: tuple[int, int, int, int]
    """(train_start, train_end, eval_context_start, eval_end) bar indices."""
    train: Split
    eval: Split


@dataclass(slots=True)
class DatasetService:
    """Processes the configured source once into a feature store and serves episode splits from it.

    Args:
        data_hash: the session's data hash (`services.data.fingerprint.cache_key` of the source and
            feature options), computed once by the launcher; it names the store.
    """

    options: DataOptions
    _: KW_ONLY
    data_hash: str
    window: int
    episode_length: int
    cache_root: Path
    run_dir: Path | None = None
    built_for_this_run: bool = False
    """The launcher's preflight built the store just now: a store it opens then is not from the cache."""
    _store: FeatureStore | None = field(default=None, init=False)
    _universe: Universe | None = field(default=None, init=False)

    def load(self) -> DataLoaded:
        """Open the store of this source and feature config, or build it by streaming the source."""
        started = time.perf_counter()
        opts = self.options
        if opts.universe is not None:
            return self._load_universe(started)
        key = self.data_hash
        if opts.cache or self.run_dir is None:
            folder = store_folder(opts.cache_dir, key, root=self.cache_root)
        else:
            folder = self.run_dir / "features"
        store = FeatureStore.open(folder) if opts.cache else None
        cached = store is not None and not self.built_for_this_run
        if store is None:
            store = FeatureStore.build(folder, opts.source, opts.features, key=key)
        self._store = store
        return DataLoaded(
            source=opts.source.path,
            rows=len(store),
            features=store.info.names,
            bars_per_year=store.info.bars_per_year,
            data_hash=key,
            cached=cached,
            seconds=time.perf_counter() - started,
            close_only=store.info.close_only,
            dropped=dict(store.info.dropped),
            filled=store.info.filled,
            clipped=store.info.clipped,
        )

    def _load_universe(self, started: float) -> DataLoaded:
        """Open the universe the launcher's checks kept in the feature cache, or read the source."""
        from services.data.universe_cache import cached_universe, universe_key

        opts = self.options
        assert opts.universe is not None
        folder = None
        if opts.cache:
            folder = store_folder(
                opts.cache_dir, universe_key(self.data_hash, opts.universe), root=self.cache_root
            )
        universe, built = cached_universe(opts.source, opts.features, opts.universe, folder)
        self._universe = universe
        return DataLoaded(
            source=opts.source.path,
            rows=len(universe),
            features=universe.feature_names,
            bars_per_year=infer_bars_per_year(universe.timestamp),
            data_hash=self.data_hash,
            cached=folder is not None and not built and not self.built_for_this_run,
            seconds=time.perf_counter() - started,
            close_only=universe.close_only,
        )

    def episode(self, episode: int) -> EpisodeSplit:
        """Return episode `episode` (1-based): train and eval rows normalised with train statistics.

        The eval rows start window - 1 bars before the first eval bar, so the first eval observation has a
        full window; those context bars are earlier than every eval bar (no look-ahead).
        """
        if self._universe is not None:
            return self._universe_episode(episode)
        store = self._store
        if store is None:
            raise RuntimeError("load() must run before episode()")
        split = split_ranges(
            len(store),
            self.options.split,
            episode=episode - 1,
            timestamps_ns=store.timestamps(),
            warmup=store.info.warmup,
            min_train_bars=min_bars(self.window, self.episode_length),
            min_eval_bars=min_eval_bars(self.window),
        )
        normalizer = store.fit_normalizer(split.train)
        self._save_normalizer(normalizer, episode)
        context = max(split.eval.start - (self.window - 1), store.info.warmup)
        return EpisodeSplit(
            key=(split.train.start, split.train.stop, context, split.eval.stop),
            train=StoredSplit(store, normalizer, split.train.start, split.train.stop),
            eval=StoredSplit(store, normalizer, context, split.eval.stop),
        )

    def _universe_episode(self, episode: int) -> EpisodeSplit:
        """Split a universe as a single series is split; the warm-up ends at its first tradable bar."""
        universe = self._universe
        assert universe is not None
        warmup = universe.first_tradable_bar()
        split = split_ranges(
            len(universe),
            self.options.split,
            episode=episode - 1,
            timestamps_ns=universe.timestamp,
            warmup=warmup,
            min_train_bars=min_bars(self.window, self.episode_length),
            min_eval_bars=min_eval_bars(self.window),
        )
        normalizer = universe.fit_normalizer(split.train)
        self._save_normalizer(normalizer, episode)
        context = max(split.eval.start - (self.window - 1), warmup)
        return EpisodeSplit(
            key=(split.train.start, split.train.stop, context, split.eval.stop),
            train=UniverseSplit(universe, normalizer, split.train.start, split.train.stop),
            eval=UniverseSplit(universe, normalizer, context, split.eval.stop),
        )

    @property
    def symbols(self) -> tuple[str, ...]:
        """Return the loaded universe's symbols (empty for a single series)."""
        return () if self._universe is None else self._universe.symbols

    def _save_normalizer(self, normalizer: Normalizer, episode: int) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / "normalizer.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"episode": episode, **normalizer.to_dict()}, indent=1))
        os.replace(tmp, path)
