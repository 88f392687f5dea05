"""Name a source and its feature options by one hash: the data hash of a session.

The key (the source files' bytes and the feature options, never their names or times) names the on-disk
feature store (services/data/store.py) the data actor streams from, and goes into every checkpoint so
that a resume on other data is refused. The launcher computes it once per session and hands it on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

from services.data.features import FEATURE_VERSION
from services.data.options import FeatureOptions, SourceOptions
from services.data.reader import list_source_files

logger = logging.getLogger(__name__)

CACHE_VERSION = 2
"""Bump when the processed result of the same source and options changes."""

DIGESTS = "digests.json"
"""The digest memo's file name in the feature-cache folder."""

_HASH_BLOCK = 1 << 20
# Source options that cannot change the processed result stay out of the key.
_KEY_EXCLUDED_SOURCE_FIELDS = ("path", "chunk_rows")
_REMEMBERED_FILES = 256


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


def cache_key(source: SourceOptions, features: FeatureOptions, *, digests: Path | None = None) -> str:
    """Return a key naming the source files' contents and the options that can change the result.

    Args:
        digests: a JSON file that remembers each file's digest by its path and stat (size, mtime, ctime,
            inode), so a file nobody touched is not read again; the key never depends on it.
    """
    memo = _load_memo(digests)
    contents = sorted(_digest(path, memo) for path in list_source_files(source.path))
    if digests is not None:
        _save_memo(digests, memo)
    source_fields = {
        f.name: getattr(source, f.name)
        for f in dataclasses.fields(source)
        if f.name not in _KEY_EXCLUDED_SOURCE_FIELDS
    }
    feature_fields = {f.name: getattr(features, f.name) for f in dataclasses.fields(features)}
    payload = {
        "cache_version": CACHE_VERSION,
        "feature_version": FEATURE_VERSION,
        "contents": contents,
        "source": source_fields,
        "features": feature_fields,
    }
    text = json.dumps(payload, sort_keys=True, default=list)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _digest(path: Path, memo: dict[str, dict[str, object]]) -> str:
    stat = path.stat()
    seen = [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]
    name = str(path.resolve())
    entry = memo.pop(name, None)
    if entry is not None and entry.get("stat") == seen and isinstance(entry.get("blake2b"), str):
        digest = str(entry["blake2b"])
    else:
        digest = file_digest(path)
    memo[name] = {"stat": seen, "blake2b": digest}  # re-inserted last: the memo keeps the newest files
    return digest


def _load_memo(digests: Path | None) -> dict[str, dict[str, object]]:
    if digests is None:
        return {}
    try:
        memo = json.loads(digests.read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _save_memo(digests: Path, memo: dict[str, dict[str, object]]) -> None:
    kept = dict(list(memo.items())[-_REMEMBERED_FILES:])
    tmp = digests.with_name(f".{digests.name}.{os.getpid()}.tmp")
    try:
        digests.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(kept))
        os.replace(tmp, digests)
    except OSError as exc:
        logger.warning("cannot remember file digests in %s: %s", digests, exc)
