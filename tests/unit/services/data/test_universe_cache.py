"""Tests of the universe cache: the same arrays back, one read per source, damaged folders read again."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

import services.data.universe_cache as universe_cache
from services.config import DataOptions
from services.data.dataset import DatasetService
from services.data.fingerprint import cache_key
from services.data.options import FeatureOptions, SourceOptions, UniverseOptions
from services.data.store import store_folder
from services.data.universe import Universe, read_universe
from services.data.universe_cache import ARRAYS, cached_universe, open_universe, universe_key
from tests.unit.services.data.test_universe import symbol_frames, write_long

FEATURES = FeatureOptions(names=("ret_1", "ret_5", "vol_20"))
OPTIONS = UniverseOptions(form="long", cross_sectional=("ret_5",))


@pytest.fixture
def source(tmp_path: Path) -> SourceOptions:
    return SourceOptions(path=str(write_long(tmp_path / "long.csv", symbol_frames())))


def assert_same(a: Universe, b: Universe) -> None:
    """Assert two universes hold the same symbols, names, flag and arrays (NaN where NaN)."""
    assert (a.symbols, a.feature_names, a.close_only) == (b.symbols, b.feature_names, b.close_only)
    for name in ARRAYS:
        left, right = getattr(a, name), getattr(b, name)
        assert left.dtype == right.dtype, name
        np.testing.assert_array_equal(left, right, err_msg=name)


def refuse_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any read of the source fail, so a test knows the cache answered."""

    def refuse(*args: object, **kwargs: object) -> Universe:
        raise AssertionError("the source was read again")

    monkeypatch.setattr(universe_cache, "read_universe", refuse)


def test_the_cache_gives_back_exactly_the_universe_read_from_the_source(
    tmp_path: Path, source: SourceOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "cache" / universe_key("hash", OPTIONS)
    first, built = cached_universe(source, FEATURES, OPTIONS, folder)
    assert built
    refuse_reads(monkeypatch)
    second, built_again = cached_universe(source, FEATURES, OPTIONS, folder)

    assert not built_again
    assert_same(second, read_universe(source, FEATURES, OPTIONS))
    assert_same(second, first)
    assert second.first_tradable_bar() == first.first_tradable_bar()
    assert not list(folder.parent.glob(".tmp-*"))


def test_without_a_folder_the_source_is_read_every_time(tmp_path: Path, source: SourceOptions) -> None:
    _, built = cached_universe(source, FEATURES, OPTIONS, None)
    _, built_again = cached_universe(source, FEATURES, OPTIONS, None)

    assert built and built_again


def test_the_key_names_the_data_hash_and_every_universe_option() -> None:
    keys = {
        universe_key("hash", OPTIONS),
        universe_key("other", OPTIONS),
        universe_key("hash", UniverseOptions(form="long")),
        universe_key(
            "hash", UniverseOptions(form="long", symbol_column="Ticker", cross_sectional=("ret_5",))
        ),
    }

    assert len(keys) == 4
    assert universe_key("hash", OPTIONS) == universe_key(
        "hash", UniverseOptions(form="long", cross_sectional=["ret_5"])
    )


@pytest.mark.parametrize("damage", ["truncated", "wrong_shape", "old_version", "no_meta"])
def test_a_damaged_folder_is_read_again_from_the_source(
    tmp_path: Path, source: SourceOptions, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / universe_key("hash", OPTIONS)
    cached_universe(source, FEATURES, OPTIONS, folder)
    meta = json.loads((folder / "universe.json").read_text())
    if damage == "truncated":
        data = (folder / "features.npy").read_bytes()
        (folder / "features.npy").write_bytes(data[: len(data) // 2])
    elif damage == "wrong_shape":
        meta["symbols"] = meta["symbols"][:2]
        (folder / "universe.json").write_text(json.dumps(meta))
    elif damage == "old_version":
        meta["version"] = 0
        (folder / "universe.json").write_text(json.dumps(meta))
    else:
        (folder / "universe.json").unlink()

    with caplog.at_level(logging.WARNING, logger="services.data.universe_cache"):
        assert open_universe(folder) is None
        universe, built = cached_universe(source, FEATURES, OPTIONS, folder)

    assert built
    assert_same(universe, read_universe(source, FEATURES, OPTIONS))
    assert (damage == "no_meta") == (not caplog.records)
    assert open_universe(folder) is not None


def test_a_cache_folder_that_cannot_be_written_still_gives_the_universe(
    tmp_path: Path, source: SourceOptions, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder's parent should be")
    folder = blocker / universe_key("hash", OPTIONS)

    with caplog.at_level(logging.WARNING, logger="services.data.universe_cache"):
        universe, built = cached_universe(source, FEATURES, OPTIONS, folder)

    assert built
    assert_same(universe, read_universe(source, FEATURES, OPTIONS))
    assert "cannot keep the universe" in caplog.text


def test_the_data_actors_service_opens_the_universe_the_launcher_kept(
    tmp_path: Path, source: SourceOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = DataOptions(source=source, features=FEATURES, universe=OPTIONS, cache_dir=str(tmp_path / "cache"))
    data_hash = cache_key(data.source, data.features)
    folder = store_folder(data.cache_dir, universe_key(data_hash, OPTIONS), root=tmp_path)
    kept, _ = cached_universe(source, FEATURES, OPTIONS, folder)  # what the launcher's checks do

    def service(options: DataOptions, built_for_this_run: bool = False) -> DatasetService:
        return DatasetService(
            options,
            data_hash=data_hash,
            window=4,
            episode_length=32,
            cache_root=tmp_path,
            run_dir=tmp_path,
            built_for_this_run=built_for_this_run,
        )

    uncached = service(dataclasses.replace(data, cache=False))
    uncached.load()
    expected = uncached.episode(1)
    refuse_reads(monkeypatch)
    this_run = service(data, built_for_this_run=True)
    loaded = this_run.load()
    later = service(data).load()

    assert (loaded.cached, later.cached) == (False, True)
    assert loaded.rows == len(kept) and loaded.features == kept.feature_names
    split = this_run.episode(1)
    assert split.key == expected.key
    for part in ("train", "eval"):
        got, want = getattr(split, part), getattr(expected, part)
        assert len(got) == len(want)
        got_block, want_block = got.block(0, len(got)), want.block(0, len(want))
        for name in ("features", "open", "close"):
            np.testing.assert_array_equal(getattr(got_block, name), getattr(want_block, name), err_msg=name)
