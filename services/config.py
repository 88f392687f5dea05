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

from services.data.features import FeatureOptions
from services.data.reader import SourceOptions
from services.data.splits import SplitOptions
from services.env.trading_env import EnvOptions
from services.errors import InputError

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


class ConfigError(InputError, ValueError):
    """A configuration that cannot be used; the text names the key and the file."""


# Hyperparameters each algorithm accepts from the config (SB3's constructor arguments).
_COMMON = {"learning_rate", "gamma", "verbose", "stats_window_size"}
_ON_POLICY = _COMMON | {
    "n_steps",
    "gae_lambda",
    "ent_coef",
    "vf_coef",
    "max_grad_norm",
    "normalize_advantage",
}
_OFF_POLICY = _COMMON | {
    "buffer_size",
    "learning_starts",
    "batch_size",
    "tau",
    "train_freq",
    "gradient_steps",
}
ALGORITHM_HYPERPARAMS: dict[str, frozenset[str]] = {
    "ppo": frozenset(_ON_POLICY | {"batch_size", "n_epochs", "clip_range", "clip_range_vf", "target_kl"}),
    "recurrent_ppo": frozenset(
        _ON_POLICY | {"batch_size", "n_epochs", "clip_range", "clip_range_vf", "target_kl"}
    ),
    "a2c": frozenset(_ON_POLICY | {"rms_prop_eps", "use_rms_prop"}),
    "dqn": frozenset(
        _OFF_POLICY
        | {
            "target_update_interval",
            "exploration_fraction",
            "exploration_initial_eps",
            "exploration_final_eps",
        }
    ),
    "sac": frozenset(_OFF_POLICY | {"ent_coef", "target_update_interval", "target_entropy", "use_sde"}),
    "td3": frozenset(_OFF_POLICY | {"policy_delay", "target_policy_noise", "target_noise_clip"}),
}
DISCRETE_ONLY = frozenset({"dqn"})
CONTINUOUS_ONLY = frozenset({"sac", "td3"})


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
class ModelOptions:
    """The one model of the session: algorithm, network, device and hyperparameters."""

    algorithm: str = "ppo"
    """One of ppo, a2c, dqn, sac, td3, recurrent_ppo."""
    policy: str = "MlpPolicy"
    """SB3 policy name (recurrent_ppo uses MlpLstmPolicy whatever is set)."""
    device: str = "auto"
    """auto (CUDA when present), cpu or cuda[:N]."""
    torch_threads: int = 1
    """Torch intra-op threads in the model process; small MLPs train fastest with 1."""
    net_arch: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the policy and value networks."""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the SB3 algorithm (checked against the algorithm's known arguments)."""
    save_replay_buffer: bool = False
    """Put the replay buffer of off-policy algorithms into checkpoints (it can be large)."""

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHM_HYPERPARAMS:
            raise ValueError(f"algorithm {self.algorithm!r} is not one of {', '.join(ALGORITHM_HYPERPARAMS)}")
        unknown = set(self.hyperparams) - ALGORITHM_HYPERPARAMS[self.algorithm]
        if unknown:
            raise ValueError(f"hyperparams {sorted(unknown)} are not arguments of {self.algorithm}")
        dev = self.device
        if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {dev!r}")
        if self.torch_threads < 1:
            raise ValueError(f"torch_threads must be at least 1, got {self.torch_threads}")
        if not self.net_arch or any(n < 1 for n in self.net_arch):
            raise ValueError(f"net_arch must be positive layer sizes, got {list(self.net_arch)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingOptions:
    """The episode loop's budget and seed."""

    episodes: int = 1
    """Episodes to train and evaluate."""
    steps_per_episode: int = 500_000
    """Env steps (all envs together) per episode; training stops at the first whole rollout past it."""
    seed: int = 42
    """Seed of the model, the env offsets and everything else random."""
    piece_steps: int = 16_384
    """Steps per learn() piece; stop and status requests are served between pieces."""

    def __post_init__(self) -> None:
        for name in ("episodes", "steps_per_episode", "piece_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOptions:
    """Processes, sockets and timing of the session."""

    runs_dir: str = "runs"
    """Folder under which each run gets runs/<name>/."""
    monitor_host: str = "127.0.0.1"
    """Address the event and snapshot sockets bind; anything but loopback needs CURVE keys."""
    events_port: int = 0
    """Port of the event stream (0: any free port)."""
    session_port: int = 0
    """Port of the snapshot socket that monitors connect to (0: any free port)."""
    keys_dir: str = ""
    """Folder of CURVE keys made by `python run.py keys` (needed for a non-loopback monitor_host)."""
    console: str = "auto"
    """Local console view: auto (live when stdout is a terminal), live, plain or off."""
    request_timeout_s: float = 60.0
    """Timeout of every request between actors, except whole-episode training."""
    heartbeat_s: float = 1.0
    """Interval of every actor's heartbeat."""
    hang_timeout_s: float = 30.0
    """An actor without heartbeat for this long is treated as dead."""
    start_timeout_s: float = 120.0
    """Time allowed for every actor process to start."""
    max_restarts_per_minute: int = 3
    """Restarts of one actor allowed within a minute; one more stops the session with the reason."""
    env_timeout_s: float = 10.0
    """Timeout of the model actor's reset and step requests to the env actor (then it retries)."""
    max_message_bytes: int = 64 << 20
    """Largest message any socket accepts."""

    def __post_init__(self) -> None:
        if self.console not in ("auto", "live", "plain", "off"):
            raise ValueError(f"console must be auto, live, plain or off, got {self.console!r}")
        if self.max_restarts_per_minute < 0:
            raise ValueError(f"max_restarts_per_minute must be >= 0, got {self.max_restarts_per_minute}")
        for name in (
            "request_timeout_s",
            "heartbeat_s",
            "hang_timeout_s",
            "start_timeout_s",
            "env_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hang_timeout_s < 3 * self.heartbeat_s:
            raise ValueError("hang_timeout_s must be at least three heartbeats")
        if self.hang_timeout_s < 2 * self.env_timeout_s + 1:
            raise ValueError(
                "hang_timeout_s must exceed twice env_timeout_s plus a second (the model waits on the env)"
            )
        for name in ("events_port", "session_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be a port number, got {getattr(self, name)}")
        if self.max_message_bytes < 1 << 16:
            raise ValueError(f"max_message_bytes must be at least 65536, got {self.max_message_bytes}")


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
