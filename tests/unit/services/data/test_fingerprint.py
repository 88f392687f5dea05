"""Tests of the data hash: it names the source files' contents and the feature options, nothing else."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import services.data.fingerprint as fingerprint
from services.data.fingerprint import cache_key
from services.data.options import FeatureOptions, SourceOptions
from services.data.synthetic import write_csv

FEATURES = FeatureOptions()


@pytest.fixture
def source(tmp_path: Path) -> SourceOptions:
    path = write_csv(tmp_path / "bars.csv", 300, seed=5)
    return SourceOptions(path=str(path))


def test_touching_the_file_keeps_the_key(source: SourceOptions) -> None:
    before = cache_key(source, FEATURES)
    stat = os.stat(source.path)
    os.utime(source.path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))

    assert cache_key(source, FEATURES) == before


def test_moving_the_file_keeps_the_key(tmp_path: Path, source: SourceOptions) -> None:
    before = cache_key(source, FEATURES)
    moved = tmp_path / "elsewhere" / "renamed.csv"
    moved.parent.mkdir()
    shutil.move(source.path, moved)

    assert cache_key(SourceOptions(path=str(moved)), FEATURES) == before


def test_a_remembered_digest_spares_reading_an_unchanged_file(
    tmp_path: Path, source: SourceOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    digests = tmp_path / "cache" / "digests.json"
    before = cache_key(source, FEATURES, digests=digests)
    read: list[Path] = []
    monkeypatch.setattr(fingerprint, "file_digest", lambda path: read.append(path) or "unused")

    again = cache_key(source, FEATURES, digests=digests)

    assert again == before and read == []
    assert json.loads(digests.read_text())


def test_a_remembered_digest_is_not_used_once_the_file_changed(tmp_path: Path, source: SourceOptions) -> None:
    digests = tmp_path / "digests.json"
    before = cache_key(source, FEATURES, digests=digests)
    stat = os.stat(source.path)
    text = Path(source.path).read_text()
    Path(source.path).write_text(text.replace("timestamp", "Timestamp", 1))
    os.utime(source.path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    assert cache_key(source, FEATURES, digests=digests) != before


def test_an_unreadable_digest_file_is_ignored(tmp_path: Path, source: SourceOptions) -> None:
    digests = tmp_path / "digests.json"
    digests.write_text("{not json")

    assert cache_key(source, FEATURES, digests=digests) == cache_key(source, FEATURES)
