"""Load the session's configuration: frozen dataclasses from YAML plus --set overrides, validated once."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.data.options import FeatureOptions, SourceOptions, SplitOptions, UniverseOptions
from services.env.options import EnvOptions, PortfolioOptions
from services.errors import InputError
from services.model.options import (
    ALGORITHM_DEFAULTS,
    CONTINUOUS_ONLY,
    DISCRETE_ONLY,
    OFF_POLICY,
    OFF_POLICY_MAX_ENVS,
    ModelOptions,
)
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
    """Rows per data block streamed to the env actor (a portfolio: bars x symbols)."""
    universe: UniverseOptions | None = None
    """A multi-symbol source (docs/PORTFOLIO.md): how it is laid out. Set (even to {}) to train a portfolio
    of every symbol of the source; unset reads the source as one series."""

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
    portfolio: PortfolioOptions | None = None
    """How a portfolio's raw actions become target weights (docs/PORTFOLIO.md); set with data.universe,
    which either one alone implies."""

    def __post_init__(self) -> None:
        action, algo = self.env.action, self.model.algorithm
        if self.portfolio is not None or self.data.universe is not None:
            if self.portfolio is None:
                object.__setattr__(self, "portfolio", PortfolioOptions())
            if self.data.universe is None:
                object.__setattr__(self, "data", dataclasses.replace(self.data, universe=UniverseOptions()))
            if algo in DISCRETE_ONLY:
                raise ValueError(
                    f"model.algorithm {algo} needs discrete actions, but a portfolio's target weights are "
                    "continuous: use ppo, a2c, sac, td3 or recurrent_ppo"
                )
            if action != "continuous":
                raise ValueError(
                    "env.action must be continuous with a portfolio (its actions are target weights; leave "
                    f"env.action unset to get it), got {action}"
                )
        if algo in DISCRETE_ONLY and action == "continuous":
            raise ValueError(
                f"model.algorithm {algo} needs discrete actions: set env.action to discrete3 or discrete2, "
                f"got {action}"
            )
        if algo in CONTINUOUS_ONLY and action != "continuous":
            raise ValueError(
                f"model.algorithm {algo} needs env.action continuous (leave env.action unset to get it), "
                f"got {action}"
            )


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
        raise ConfigError(f"{source}: {_keyed(str(exc), cls, where, names)}") from None


def _keyed(message: str, cls: type[Any], where: str, names: set[str]) -> str:
    """Re-word an options class's complaint to name config keys (`env.action`), not the class."""
    if not where:
        return message
    message = message.replace(f"{cls.__name__}.", f"{where}.")
    if message.startswith(f"{where}."):
        return message
    if message.split(" ", 1)[0] in names:
        return f"{where}.{message}"
    return f"{where}: {message}"


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
        # 1e5 reads as a float; a whole one is the integer users mean by it.
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if hint is str:
        # YAML reads 2019-01-01 as a date; a string key means its ISO text.
        if isinstance(value, dt.date):
            return value.isoformat()
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
    """PyYAML's safe loader with YAML 1.2's booleans and floats.

    PyYAML follows YAML 1.1, where the bare words yes, no, on and off are booleans too, so
    `console: off` would arrive as False and be refused as "not a string"; and a float needs a dot and
    a signed exponent, so 1e5 and 3e-4 would arrive as strings.
    """


_BOOL_TAG = "tag:yaml.org,2002:bool"
_YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_YamlLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
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
    """Load a config file (the default when None), apply --set overrides and the algorithm's defaults."""
    path = path or DEFAULT_CONFIG
    raw = read_yaml(path)
    config = _build(Config, _with_algorithm_defaults(raw), "", str(path))
    if not overrides:
        return config
    for text in overrides:
        key, value = parse_override(text)
        _set_path(raw, key, value, f"--set {key}")
    # The file alone was valid, so what is wrong now came from the command line.
    return _build(Config, _with_algorithm_defaults(raw), "", "--set")


def _with_algorithm_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Return the raw config with the algorithm's hyperparameters under its own and the actions it needs.

    Only env.action continuous for sac, td3 and portfolios is applied, and only when env.action is not
    set; what is malformed is left for _build to name.
    """
    raw = _with_portfolio_action(raw)
    model = raw.get("model", {})
    if not isinstance(model, dict):
        return raw
    algorithm = model.get("algorithm", ModelOptions().algorithm)
    hyperparams = model.get("hyperparams", {})
    if (
        not isinstance(algorithm, str)
        or algorithm not in ALGORITHM_DEFAULTS
        or not isinstance(hyperparams, dict)
    ):
        return raw
    resolved = {**raw, "model": {**model, "hyperparams": {**ALGORITHM_DEFAULTS[algorithm], **hyperparams}}}
    env = raw.get("env", {})
    if algorithm in CONTINUOUS_ONLY and isinstance(env, dict) and "action" not in env:
        resolved["env"] = {**env, "action": "continuous"}
    return resolved


def _with_portfolio_action(raw: dict[str, Any]) -> dict[str, Any]:
    """Return the raw config with env.action continuous when it has a portfolio and env.action is unset."""
    data, env = raw.get("data", {}), raw.get("env", {})
    universe = data.get("universe") if isinstance(data, dict) else None
    if (raw.get("portfolio") is None and universe is None) or not isinstance(env, dict) or "action" in env:
        return raw
    return {**raw, "env": {**env, "action": "continuous"}}


def algorithm_notes(config: Config) -> list[str]:
    """Return one-line suggestions of env settings the config's algorithm trains better with."""
    algorithm, n_envs = config.model.algorithm, config.env.n_envs
    if algorithm in OFF_POLICY and n_envs > OFF_POLICY_MAX_ENVS:
        return [
            f"model.algorithm {algorithm} is off-policy: it takes one gradient step per step of all "
            f"{n_envs} envs (env.n_envs); 4-{OFF_POLICY_MAX_ENVS} envs learn more per sample "
            f"(--set env.n_envs={OFF_POLICY_MAX_ENVS})"
        ]
    return []


def config_fingerprint(config: Config) -> str:
    """Hash what a checkpoint depends on: everything but the name, the session and the episode count.

    The source's path is left out too: the data hash names the data by its contents, so data that moved
    is the same data.
    """
    import hashlib
    import json

    data = config_to_dict(config)
    for key in ("name", "session"):
        data.pop(key, None)
    data["training"].pop("episodes", None)
    data["data"]["source"].pop("path", None)
    # A constant learning rate hashes as before the schedule key existed, so those checkpoints still resume.
    if config.model.learning_rate_schedule == "constant":
        data["model"].pop("learning_rate_schedule")
    # A single-asset config hashes as it did before portfolios existed, so its checkpoints still resume.
    if config.portfolio is None:
        data.pop("portfolio")
        data["data"].pop("universe")
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
