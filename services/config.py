"""Load the session's configuration: frozen dataclasses from YAML plus --set overrides, validated once."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.data.options import FeatureOptions, SourceOptions, SplitOptions
from services.env.options import EnvOptions
from services.errors import InputError
from services.model.options import CONTINUOUS_ONLY, DISCRETE_ONLY, ModelOptions
from services.session.options import SessionOptions, TrainingOptions

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(InputError, ValueError):
    """A configuration that cannot be used; the text names the key and the file."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DataOptions:
    """Where the bars come from and how they become train and eval features."""

    source: SourceOptions = field(default_factory=SourceOptions)
    """The files to read."""
    features: FeatureOptions = field(default_factory=FeatureOptions)
    """The causal features computed from the bars."""
    split: SplitOptions = field(default_factory=SplitOptions)
    """How bars are split into train and eval windows."""
    cache: bool = True
    """Cache processed features by a hash of the source and the feature config."""
    cache_dir: str = ".cache/features"
    """Folder of the feature cache."""
    block_rows: int = 8192
    """Rows per data block streamed to the env actor."""

    def __post_init__(self) -> None:
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be at least 1, got {self.block_rows}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The whole configuration of a session."""

    name: str = ""
    """Run name; the run folder is runs/<name>/ (empty: a timestamp)."""
    data: DataOptions = field(default_factory=DataOptions)
    env: EnvOptions = field(default_factory=EnvOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    session: SessionOptions = field(default_factory=SessionOptions)

    def __post_init__(self) -> None:
        action, algo = self.env.action, self.model.algorithm
        if algo in DISCRETE_ONLY and action == "continuous":
            raise ValueError(f"algorithm {algo} needs discrete actions, but env.action is continuous")
        if algo in CONTINUOUS_ONLY and action != "continuous":
            raise ValueError(f"algorithm {algo} needs env.action: continuous, but it is {action}")


def _build(cls: type[Any], raw: Any, where: str, source: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types with their path."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where or 'top level'} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else str(unknown[0])
        raise ConfigError(f"{source}: unknown key {key} (known here: {', '.join(sorted(names))})")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else key
        values[key] = _coerce(hints[key], value, path, source)
    try:
        return cls(**values)
    except ValueError as exc:
        raise ConfigError(f"{source}: {where or 'config'}: {exc}") from None


def _coerce(hint: Any, value: Any, path: str, source: str) -> Any:
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {path} must be {expected}, got {value!r}")

    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path, source)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad("a list")
        return tuple(_coerce(args[0], v, f"{path}[{i}]", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise bad("a mapping")
        return dict(value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = next(a for a in args if a is not type(None))
        return _coerce(inner, value, path, source)
    raise ConfigError(f"{source}: {path} has an unsupported type {hint!r}")


def _set_path(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {dotted}: {part} is not a section")
        node = child
    node[parts[-1]] = value


class _YamlLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans: only true and false (any case) are booleans.

    PyYAML follows YAML 1.1, where the bare words yes, no, on and off are booleans too, so
    `console: off` would arrive as False and be refused as "not a string".
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def load_yaml(text: str) -> Any:
    """Parse YAML text the way every config of the project is read (see _YamlLoader)."""
    return yaml.load(text, Loader=_YamlLoader)  # a SafeLoader: builds plain data only


def parse_override(text: str) -> tuple[str, Any]:
    """Split one --set key.path=value; the value is read as YAML (numbers, booleans, lists)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a one-line error naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


def load_config(path: Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Load a config file (the default when None) and apply --set overrides."""
    path = path or DEFAULT_CONFIG
    raw = read_yaml(path)
    config = _build(Config, raw, "", str(path))
    if not overrides:
        return config
    for text in overrides:
        key, value = parse_override(text)
        _set_path(raw, key, value, f"--set {key}")
    # The file alone was valid, so what is wrong now came from the command line.
    return _build(Config, raw, "", "--set")


def config_fingerprint(config: Config) -> str:
    """Hash what a checkpoint depends on: everything but the name, the session and the episode count."""
    import hashlib
    import json

    data = config_to_dict(config)
    for key in ("name", "session"):
        data.pop(key, None)
    data["training"].pop("episodes", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def config_from_dict(raw: dict[str, Any], source: str = "config") -> Config:
    """Build a config from a plain dict (a resolved config.yaml)."""
    return _build(Config, raw, "", source)


def config_to_dict(config: Config) -> dict[str, Any]:
    """Return the config as plain YAML-safe data (tuples as lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))
