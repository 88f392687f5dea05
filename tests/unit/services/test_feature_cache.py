"""Tests of the processed-feature cache."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest

from services.data_source import SourceOptions
from services.feature_cache import FeatureCache, cache_key, file_digest, load_features, process_source
from services.features import FeatureOptions
from services.synthetic import write_csv

FEATURES = FeatureOptions()


@pytest.fixture
def source(tmp_path: Path) -> SourceOptions:
    path = write_csv(tmp_path / "bars.csv", 600, seed=5)
    return SourceOptions(path=str(path))


def test_a_second_load_hits_the_cache_and_returns_the_same_data(
    tmp_path: Path, source: SourceOptions
) -> None:
    cache = FeatureCache(tmp_path / "cache")

    first = cache.load_or_build(source, FEATURES)
    second = cache.load_or_build(source, FEATURES)

    assert (cache.misses, cache.hits) == (1, 1)
    np.testing.assert_array_equal(second.features, first.features)
    np.testing.assert_array_equal(second.bars.timestamp, first.bars.timestamp)
    np.testing.assert_array_equal(second.bars.close, first.bars.close)
    assert second.names == first.names and second.warmup == first.warmup == 33
    assert second.bars_per_year == first.bars_per_year == 252.0


def test_the_cached_data_equals_processing_without_a_cache(tmp_path: Path, source: SourceOptions) -> None:
    cached = load_features(source, FEATURES, tmp_path / "cache")

    direct = process_source(source, FEATURES)

    np.testing.assert_array_equal(cached.features, direct.features)
    assert cached.features.dtype == np.float32


def test_changing_the_file_misses_the_cache(tmp_path: Path, source: SourceOptions) -> None:
    cache = FeatureCache(tmp_path / "cache")
    cache.load_or_build(source, FEATURES)
    write_csv(source.path, 600, seed=6)

    data = cache.load_or_build(source, FEATURES)

    assert (cache.misses, cache.hits) == (2, 0)
    assert len(data) == 600


def test_changing_the_bytes_but_not_size_or_mtime_misses_the_cache(
    tmp_path: Path, source: SourceOptions
) -> None:
    before = cache_key(source, FEATURES)
    stat = os.stat(source.path)
    text = Path(source.path).read_text()
    Path(source.path).write_text(text.replace("timestamp", "Timestamp", 1))
    os.utime(source.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert cache_key(source, FEATURES) != before


def test_changing_the_feature_options_misses_the_cache(tmp_path: Path, source: SourceOptions) -> None:
    cache = FeatureCache(tmp_path / "cache")
    cache.load_or_build(source, FEATURES)

    data = cache.load_or_build(source, FeatureOptions(names=("ret_1", "vol_20")))

    assert (cache.misses, cache.hits) == (2, 0)
    assert data.features.shape == (600, 2)


def test_the_read_chunk_size_does_not_change_the_key(source: SourceOptions) -> None:
    other = SourceOptions(path=source.path, chunk_rows=10)

    assert cache_key(other, FEATURES) == cache_key(source, FEATURES)


@pytest.mark.parametrize("garbage", [b"", b"not a zip file", b"PK\x03\x04 truncated"])
def test_a_corrupt_cache_file_is_logged_and_rebuilt(
    tmp_path: Path, source: SourceOptions, garbage: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    good = cache.load_or_build(source, FEATURES)
    cache.path_for(good.key).write_bytes(garbage)

    with caplog.at_level(logging.WARNING, logger="services.feature_cache"):
        rebuilt = cache.load_or_build(source, FEATURES)

    assert "corrupt" in caplog.text
    assert cache.misses == 2
    np.testing.assert_array_equal(rebuilt.features, good.features)
    assert cache.load(good.key) is not None


def test_the_cache_file_loads_without_pickle_and_leaves_no_temporary_files(
    tmp_path: Path, source: SourceOptions
) -> None:
    cache = FeatureCache(tmp_path / "cache")
    data = cache.load_or_build(source, FEATURES)

    with np.load(cache.path_for(data.key), allow_pickle=False) as archive:
        names = set(archive.files)

    assert {"features", "timestamp", "close", "meta"} <= names
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{data.key}.npz"]


def test_the_file_digest_hashes_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"x" * (3 << 20))
    before = file_digest(path)
    path.write_bytes(b"x" * (3 << 20) + b"y")

    assert file_digest(path) != before
