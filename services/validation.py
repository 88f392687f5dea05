"""Check option values in one line each, with one wording for every options class."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def require(options: object, names: Iterable[str], test: Callable[[Any], bool], rule: str) -> None:
    """Raise ValueError naming the first field of `options` among `names` whose value fails `test`.

    The message reads `<Class>.<field> must be <rule>, got <value!r>`.
    """
    for name in names:
        value = getattr(options, name)
        if not test(value):
            raise ValueError(f"{type(options).__name__}.{name} must be {rule}, got {value!r}")
