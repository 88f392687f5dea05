"""Read a search space: a YAML file mapping config keys to distributions, checked against the config.

    model.hyperparams.learning_rate: {log_float: [1.0e-5, 1.0e-3]}
    model.hyperparams.ent_coef: {float: [0.0, 0.05]}
    model.hyperparams.n_epochs: {int: [1, 8]}
    model.net_arch: {categorical: [[16], [64, 64]]}

Each key is a config key (docs/CONFIG.md); every value a distribution can take (both ends of a range,
every choice) must be one the config accepts for that key, so a trial never fails on its config.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.config import ConfigError, load_config, read_yaml
from services.errors import InputError

KINDS = ("float", "log_float", "int", "categorical")
"""The distributions a key can take."""
STUDY_KEYS = ("name", "session.", "training.seed", "data.split.")
"""Config keys (or prefixes) the study sets itself, so a space may not search them."""


class SpaceError(InputError, ValueError):
    """A search space that cannot be used; the text names the key and the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dimension:
    """One config key and the distribution a trial draws its value from."""

    key: str
    """The config key, e.g. model.hyperparams.learning_rate."""
    kind: str
    """One of KINDS."""
    low: float = 0.0
    """Lower end of a float, log_float or int range (included)."""
    high: float = 0.0
    """Upper end of a float, log_float or int range (included)."""
    choices: tuple[Any, ...] = ()
    """The values of a categorical key, as YAML data (lists allowed)."""

    def values(self) -> tuple[Any, ...]:
        """Return the values that bound what a trial may draw: both ends, or every choice."""
        if self.kind == "categorical":
            return self.choices
        if self.kind == "int":
            return (int(self.low), int(self.high))
        return (self.low, self.high)

    def describe(self) -> dict[str, Any]:
        """Return the dimension as plain data (stored with the study, compared on resume)."""
        if self.kind == "categorical":
            return {"key": self.key, "kind": self.kind, "choices": list(self.choices)}
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high}


@dataclass(frozen=True, slots=True, kw_only=True)
class SearchSpace:
    """The dimensions of a study, in file order."""

    dimensions: tuple[Dimension, ...]
    """One per config key."""
    source: str
    """The file it was read from."""

    def fingerprint(self) -> str:
        """Return a canonical JSON text of the space; two spaces are the same study's iff these match."""
        return json.dumps([d.describe() for d in self.dimensions], sort_keys=True)


def choice_label(value: Any) -> Any:
    """Return a categorical value as a sampler stores it: scalars as they are, lists as JSON text."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value)


def override(key: str, value: Any) -> str:
    """Return the --set text of one config value (YAML flow style: JSON is YAML)."""
    return f"{key}={json.dumps(value)}"


def read_space(path: Path, config: Path | None, overrides: Sequence[str] = ()) -> SearchSpace:
    """Read and check a search space against a config file and its overrides.

    Raises:
        SpaceError: one line naming the file and the key: not a config key, a key the study sets, an
            unknown distribution, a bad range, or a value the config refuses.
    """
    try:
        raw = read_yaml(path)
    except ConfigError as exc:
        raise SpaceError(str(exc).replace("cannot read config", "cannot read search space")) from None
    if not raw:
        raise SpaceError(f"{path}: the search space is empty: map config keys to distributions")
    dimensions = tuple(_dimension(path, str(key), spec) for key, spec in raw.items())
    for dimension in dimensions:
        for value in dimension.values():
            _check_value(path, config, overrides, dimension.key, value)
    return SearchSpace(dimensions=dimensions, source=str(path))


def _dimension(path: Path, key: str, spec: Any) -> Dimension:
    """Return one dimension from its YAML entry, or raise SpaceError naming it."""
    if any(key == p or (p.endswith(".") and key.startswith(p)) for p in STUDY_KEYS):
        raise SpaceError(f"{path}: {key} is set by the study itself and cannot be searched")
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise SpaceError(
            f"{path}: {key} must map to one distribution, e.g. {{log_float: [1.0e-5, 1.0e-3]}} "
            f"(one of {', '.join(KINDS)})"
        )
    kind, args = next(iter(spec.items()))
    if kind not in KINDS:
        raise SpaceError(f"{path}: {key} has unknown distribution {kind!r} (one of {', '.join(KINDS)})")
    if kind == "categorical":
        if not isinstance(args, list) or not args:
            raise SpaceError(f"{path}: {key}: categorical needs a non-empty list of choices, got {args!r}")
        labels = [choice_label(value) for value in args]
        if len(set(map(json.dumps, labels))) < len(labels):
            raise SpaceError(f"{path}: {key}: categorical repeats a choice in {args!r}")
        return Dimension(key=key, kind=kind, choices=tuple(args))
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(v) for v in args)):
        raise SpaceError(f"{path}: {key}: {kind} needs [low, high], two numbers, got {args!r}")
    low, high = float(args[0]), float(args[1])
    if not low < high:
        raise SpaceError(f"{path}: {key}: {kind} needs low < high, got [{args[0]}, {args[1]}]")
    if kind == "log_float" and low <= 0.0:
        raise SpaceError(f"{path}: {key}: log_float needs low > 0, got [{args[0]}, {args[1]}]")
    if kind == "int" and not all(float(v).is_integer() for v in args):
        raise SpaceError(f"{path}: {key}: int needs whole numbers, got [{args[0]}, {args[1]}]")
    return Dimension(key=key, kind=kind, low=low, high=high)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_value(path: Path, config: Path | None, overrides: Sequence[str], key: str, value: Any) -> None:
    """Raise SpaceError when the config refuses key=value, with the config's own reason."""
    try:
        load_config(config, [*overrides, override(key, value)])
    except ConfigError as exc:
        reason = str(exc).removeprefix("--set: ").removeprefix(f"--set {key}: ")
        if "unknown key" in reason or key.rsplit(".", 1)[-1] in reason:
            raise SpaceError(f"{path}: {reason}") from None
        raise SpaceError(f"{path}: {key}={value!r} is refused: {reason}") from None
