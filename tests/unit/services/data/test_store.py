"""Tests of the cache key and the on-disk feature store the data actor streams from."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest

import services.data.store as fs
from services.config import DataOptions
from services.data.dataset import DatasetService
from services.data.fingerprint import cache_key, file_digest
from services.data.options import FeatureOptions, SourceOptions
from services.data.splits import Normalizer, split_ranges
from services.data.store import FeatureStore, process_source
from services.data.synthetic import write_csv

FEATURES = FeatureOptions()


@pytest.fixture
def source(tmp_path: Path) -> SourceOptions:
    path = write_csv(tmp_path / "bars.csv", 600, seed=5)
    return SourceOptions(path=str(path), chunk_rows=128)


def service(tmp_path: Path, source: SourceOptions, **options: object) -> DatasetService:
    data = DataOptions(source=source, cache_dir=str(tmp_path / "cache"), **options)  # type: ignore[arg-type]
    return DatasetService(
        data,
        data_hash=cache_key(data.source, data.features),
        window=8,
        episode_length=32,
        cache_root=tmp_path,
        run_dir=tmp_path,
    )


def test_the_store_holds_exactly_what_processing_in_memory_gives(
    tmp_path: Path, source: SourceOptions
) -> None:
    store = FeatureStore.build(tmp_path / "s", source, FEATURES, key="k")
    direct = process_source(source, FEATURES)

    np.testing.assert_array_equal(store.read("features", 0, len(store)), direct.features)
    np.testing.assert_array_equal(store.read("close", 100, 250), direct.bars.close[100:250])
    np.testing.assert_array_equal(store.read("timestamp", 0, len(store)), direct.bars.timestamp)
    assert (store.info.warmup, store.info.bars_per_year, store.info.names) == (
        direct.warmup,
        direct.bars_per_year,
        direct.names,
    )


def test_blockwise_normalisation_statistics_equal_the_whole_array_ones(
    tmp_path: Path, source: SourceOptions
) -> None:
    store = FeatureStore.build(tmp_path / "s", source, FEATURES, key="k")
    features = store.read("features", 0, len(store))
    rows = range(40, 480)

    fs.BLOCK_ROWS, saved = 37, fs.BLOCK_ROWS  # many uneven blocks
    try:
        blockwise = store.fit_normalizer(rows)
    finally:
        fs.BLOCK_ROWS = saved
    whole = Normalizer.fit(features, rows)

    np.testing.assert_allclose(blockwise.mean, whole.mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(blockwise.std, whole.std, rtol=1e-9, atol=1e-12)


def test_a_second_load_opens_the_store_instead_of_processing_again(
    tmp_path: Path, source: SourceOptions
) -> None:
    first = service(tmp_path, source).load()
    second = service(tmp_path, source).load()

    assert (first.cached, second.cached) == (False, True)
    assert first.data_hash == second.data_hash == cache_key(source, FEATURES)
    assert second.rows == 600


def test_changing_the_file_or_the_features_processes_again(tmp_path: Path, source: SourceOptions) -> None:
    service(tmp_path, source).load()
    others = FeatureOptions(names=("ret_1", "vol_20"))
    other_features = DatasetService(
        DataOptions(source=source, features=others, cache_dir=str(tmp_path / "c")),
        data_hash=cache_key(source, others),
        window=8,
        episode_length=32,
        cache_root=tmp_path,
    ).load()
    write_csv(source.path, 600, seed=6)
    changed = service(tmp_path, source).load()

    assert other_features.cached is False and other_features.features == ("ret_1", "vol_20")
    assert changed.cached is False


def test_changing_the_bytes_but_not_size_or_mtime_changes_the_key(source: SourceOptions) -> None:
    before = cache_key(source, FEATURES)
    stat = os.stat(source.path)
    text = Path(source.path).read_text()
    Path(source.path).write_text(text.replace("timestamp", "Timestamp", 1))
    os.utime(source.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert cache_key(source, FEATURES) != before


def test_the_read_chunk_size_does_not_change_the_key(source: SourceOptions) -> None:
    other = SourceOptions(path=source.path, chunk_rows=10)

    assert cache_key(other, FEATURES) == cache_key(source, FEATURES)


def test_a_damaged_store_is_logged_and_rebuilt(
    tmp_path: Path, source: SourceOptions, caplog: pytest.LogCaptureFixture
) -> None:
    first = service(tmp_path, source).load()
    folder = tmp_path / "cache" / first.data_hash
    with (folder / "features").open("r+b") as fh:
        fh.truncate(100)

    with caplog.at_level(logging.WARNING, logger="services.data.store"):
        again = service(tmp_path, source).load()

    assert "damaged" in caplog.text
    assert again.cached is False and again.rows == 600
    assert FeatureStore.open(folder) is not None
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_episode_splits_stream_normalised_blocks_with_eval_context(
    tmp_path: Path, source: SourceOptions
) -> None:
    svc = service(tmp_path, source)
    svc.load()
    direct = process_source(source, FEATURES)
    split = split_ranges(600, DataOptions().split, warmup=direct.warmup, min_train_bars=40)

    episode = svc.episode(1)
    train = episode.train.block(0, len(episode.train))
    evaluation = episode.eval.block(0, len(episode.eval))

    normalizer = Normalizer.fit(direct.features, split.train)
    np.testing.assert_allclose(
        train.features, normalizer.apply(direct.features[split.train.start : split.train.stop]), rtol=1e-6
    )
    assert len(evaluation) == len(split.eval) + 7  # window - 1 bars of context before the first eval bar
    assert evaluation.timestamp[7] == direct.bars.timestamp[split.eval.start]
    assert (tmp_path / "normalizer.json").is_file()


def test_the_file_digest_hashes_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (3 << 20))
    before = file_digest(path)
    path.write_bytes(b"x" * (3 << 20) + b"y")

    assert file_digest(path) != before


def test_a_store_the_preflight_built_for_this_run_is_not_reported_as_cached(
    tmp_path: Path, source: SourceOptions
) -> None:
    built_now = service(tmp_path, source)
    built_now.load()  # the preflight's build
    fresh = dataclasses.replace(service(tmp_path, source), built_for_this_run=True)

    loaded = fresh.load()
    again = service(tmp_path, source).load()

    assert loaded.cached is False, "the store was made by this launch, not found in the cache"
    assert again.cached is True
