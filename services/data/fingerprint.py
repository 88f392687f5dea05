"""Name a source and its feature options by one hash: the data hash of a session.

The key (the source files' bytes and the feature options) names the on-disk feature store
(services/data/store.py) the data actor streams from, and goes into every checkpoint so that a resume
on other data is refused. The launcher computes it once per session and hands it on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from services.data.features import FEATURE_VERSION
from services.data.options import FeatureOptions, SourceOptions
from services.data.reader import list_source_files

CACHE_VERSION = 1
"""Bump when the processed result of the same source and options changes."""

_HASH_BLOCK = 1 << 20
# Source options that cannot change the processed result stay out of the key.
_KEY_EXCLUDED_SOURCE_FIELDS = ("path", "chunk_rows")


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
