"""Read and write a run folder's files for the report: CSV columns as strings, numbers from them, and
files replaced whole (written under a temporary name, then renamed)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def atomic_text(path: Path, text: str) -> None:
    """Write text to path whole: a reader sees the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_csv(path: Path) -> dict[str, list[str]]:
    """Return the columns of a CSV file as lists of strings (empty when the file is missing).

    A short row's missing cells read as empty strings, as csv.DictReader gives them.
    """
    if not path.is_file():
        return {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        names = next(reader, [])
        width = len(names)
        rows = [row if len(row) == width else (row + [""] * width)[:width] for row in reader]
    # zip(*rows) turns the rows into columns in C; one dict per row (csv.DictReader) costs seconds on
    # the eval CSV of a universe of hundreds of assets.
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    return {name: list(values) for name, values in zip(names, columns, strict=True)}


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # an empty cell: SB3 did not log this value on that update
        return math.nan


def floats(values: Sequence[str]) -> np.ndarray:
    """Return a CSV column's cells as float64; an empty cell is NaN."""
    try:
        return np.array(values, dtype=np.float64)
    except ValueError:  # an empty cell among them
        return np.array([_float(v) for v in values], dtype=np.float64)


def save_png(fig: Any, path: Path) -> None:
    """Write a matplotlib figure to path as a PNG, whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, path)
