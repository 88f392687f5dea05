"""Test config loading: defaults, --set overrides, and errors that name the key and the file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from services.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    algorithm_notes,
    config_fingerprint,
    config_from_dict,
    config_to_dict,
    load_config,
    parse_override,
)
from services.model.options import (
    ALGORITHM_DEFAULTS,
    ALGORITHM_HYPERPARAMS,
    CONTINUOUS_ONLY,
    ModelOptions,
)


def write_config(tmp_path: Path, text: str) -> Path:
    """Write a YAML config file and return its path."""
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def config_error(path: Path | None, overrides: tuple[str, ...] = ()) -> str:
    """Load a config that must fail and return the error text."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


def test_the_default_config_loads() -> None:
    config = load_config()

    assert isinstance(config, Config)
    assert config == load_config(DEFAULT_CONFIG)
    assert config.model.algorithm == "ppo"
    assert config.model.net_arch == (64, 64)
    assert config.model.hyperparams["n_steps"] == 64
    assert config.model.learning_rate_schedule == "linear"
    assert config.env.n_envs == 64
    assert config.data.source.path == "data/STOCKS_GOOGL.csv"
    assert config.session.monitor_host == "127.0.0.1"


def test_an_empty_file_gives_the_built_in_defaults_with_the_algorithms_hyperparameters(
    tmp_path: Path,
) -> None:
    expected = dataclasses.replace(Config(), model=ModelOptions(hyperparams=ALGORITHM_DEFAULTS["ppo"]))

    assert load_config(write_config(tmp_path, "")) == expected


def test_set_overrides_are_read_as_yaml_values() -> None:
    config = load_config(
        None,
        [
            "training.steps_per_episode=2048",
            "model.hyperparams.learning_rate=0.001",
            "data.cache=false",
            "model.net_arch=[8, 16]",
            "name=my-run",
            "env.commission_bps=0",
            "data.source.path=other.csv",
        ],
    )

    assert config.training.steps_per_episode == 2048
    assert type(config.training.steps_per_episode) is int
    assert config.model.hyperparams["learning_rate"] == 0.001
    assert config.model.hyperparams["n_steps"] == 64, "an override replaces one key, not the section"
    assert config.data.cache is False
    assert config.model.net_arch == (8, 16)
    assert config.name == "my-run"
    assert config.env.commission_bps == 0.0
    assert type(config.env.commission_bps) is float
    assert config.data.source.path == "other.csv"


def test_later_overrides_win() -> None:
    config = load_config(None, ["training.episodes=2", "training.episodes=5"])

    assert config.training.episodes == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a.b=1", ("a.b", 1)),
        ("a.b=1.5", ("a.b", 1.5)),
        ("a.b=true", ("a.b", True)),
        ("a.b=[1, 2]", ("a.b", [1, 2])),
        ("a.b='7'", ("a.b", "7")),
        ("a.b=", ("a.b", "")),
        (" a.b =x=y", ("a.b", "x=y")),
    ],
)
def test_parse_override_splits_key_and_yaml_value(text: str, expected: tuple[str, object]) -> None:
    assert parse_override(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=1", " =1"])
def test_an_override_without_key_and_value_is_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        parse_override(text)


def test_an_override_below_a_value_that_is_not_a_section_is_rejected() -> None:
    text = config_error(None, ("training.episodes.count=1",))

    assert "--set training.episodes.count" in text
    assert "not a section" in text


@pytest.mark.parametrize(
    ("yaml_text", "dotted"),
    [
        ("bogus: 1\n", "bogus"),
        ("training:\n  bogus: 1\n", "training.bogus"),
        ("env:\n  n_env: 4\n", "env.n_env"),
        ("env:\n  bars_per_year: 52\n", "env.bars_per_year"),
        ("data:\n  source:\n    bogus: 1\n", "data.source.bogus"),
        ("data:\n  split:\n    walkforward: true\n", "data.split.walkforward"),
        ("data:\n  features:\n    name: [ret_1]\n", "data.features.name"),
    ],
)
def test_an_unknown_key_names_the_dotted_key_and_the_file(
    tmp_path: Path, yaml_text: str, dotted: str
) -> None:
    path = write_config(tmp_path, yaml_text)

    text = config_error(path)

    assert str(path) in text
    assert f"unknown key {dotted}" in text


def test_an_unknown_key_given_with_set_names_the_dotted_key() -> None:
    assert "unknown key training.bogus" in config_error(None, ("training.bogus=1",))


def test_an_unknown_key_given_with_set_is_blamed_on_set_not_on_the_file() -> None:
    text = config_error(None, ("training.bogus=1",))

    assert "--set" in text
    assert str(DEFAULT_CONFIG) not in text


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        ("training:\n  episodes: three\n", ["training.episodes must be an integer", "'three'"]),
        ("training:\n  episodes: true\n", ["training.episodes must be an integer", "True"]),
        ("training:\n  episodes: 2.5\n", ["training.episodes must be an integer"]),
        ("training: [1, 2]\n", ["training must be a mapping", "list"]),
        ("data:\n  source: [a.csv]\n", ["data.source must be a mapping", "list"]),
        ("data: 3\n", ["data must be a mapping", "int"]),
        ("model:\n  hyperparams: [1]\n", ["model.hyperparams must be a mapping"]),
        ("model:\n  net_arch: 64\n", ["model.net_arch must be a list"]),
        ("model:\n  net_arch: [64, wide]\n", ["model.net_arch[1] must be an integer"]),
        ("model:\n  device: 0\n", ["model.device must be a string"]),
        ("env:\n  commission_bps: cheap\n", ["env.commission_bps must be a number"]),
        ("env:\n  commission_bps: false\n", ["env.commission_bps must be a number"]),
        ("data:\n  cache: 1\n", ["data.cache must be true or false"]),
        ("data:\n  features:\n    names: ret_1\n", ["data.features.names must be a list"]),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_and_the_file(
    tmp_path: Path, yaml_text: str, fragments: list[str]
) -> None:
    path = write_config(tmp_path, yaml_text)

    text = config_error(path)

    assert str(path) in text
    for fragment in fragments:
        assert fragment in text


def test_a_top_level_that_is_not_a_mapping_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "- a\n- b\n")

    text = config_error(path)

    assert str(path) in text
    assert "top level must be a mapping" in text


@pytest.mark.parametrize(
    ("yaml_text", "fragments"),
    [
        ("training:\n  steps_per_episode: -5\n", ["steps_per_episode", "-5"]),
        ("training:\n  episodes: 0\n", ["episodes", "at least 1"]),
        ("env:\n  n_envs: 0\n", ["n_envs", "0"]),
        ("env:\n  window: -1\n", ["window"]),
        ("env:\n  action: sideways\n", ["action", "sideways"]),
        ("model:\n  algorithm: foo\n", ["model.algorithm", "'foo'"]),
        ("model:\n  algorithm: dqn\n  hyperparams: {}\nenv:\n  action: continuous\n", ["dqn", "discrete"]),
        ("model:\n  algorithm: sac\nenv:\n  action: discrete3\n", ["sac", "continuous"]),
        ("model:\n  algorithm: td3\n  hyperparams: {}\nenv:\n  action: discrete2\n", ["td3", "continuous"]),
        ("model:\n  algorithm: a2c\n  hyperparams:\n    n_epochs: 4\n", ["n_epochs", "a2c"]),
        ("model:\n  algorithm: ppo\n  hyperparams:\n    buffer_size: 100\n", ["buffer_size", "ppo"]),
        ("model:\n  device: gpu\n", ["device", "'gpu'"]),
        ("model:\n  device: 'cuda:'\n", ["device", "'cuda:'"]),
        ("model:\n  device: cuda:x\n", ["device", "'cuda:x'"]),
        ("model:\n  device: CPU\n", ["device", "'CPU'"]),
        ("model:\n  net_arch: [64, 0]\n", ["net_arch"]),
        ("model:\n  torch_threads: 0\n", ["torch_threads"]),
        (
            "model:\n  learning_rate_schedule: cosine\n",
            ["model.learning_rate_schedule must be constant or linear", "'cosine'"],
        ),
        (
            "model:\n  learning_rate_schedule: linear\n  hyperparams:\n    learning_rate: 0\n",
            ["model.learning_rate_schedule linear needs a positive number", "learning_rate"],
        ),
        ("session:\n  heartbeat_s: 0\n", ["heartbeat_s"]),
        ("session:\n  heartbeat_s: 5\n  hang_timeout_s: 10\n", ["hang_timeout_s"]),
        ("session:\n  events_port: 70000\n", ["events_port"]),
        ("session:\n  console: fancy\n", ["console", "fancy"]),
        ("data:\n  block_rows: 0\n", ["block_rows"]),
    ],
)
def test_an_impossible_value_is_rejected_naming_the_file(
    tmp_path: Path, yaml_text: str, fragments: list[str]
) -> None:
    path = write_config(tmp_path, yaml_text)

    text = config_error(path)

    assert str(path) in text
    for fragment in fragments:
        assert fragment in text


@pytest.mark.parametrize(
    "yaml_text",
    [
        "model:\n  algorithm: dqn\n  hyperparams: {buffer_size: 1000, exploration_fraction: 0.2}\n",
        "model:\n  algorithm: sac\n  hyperparams: {tau: 0.01}\nenv:\n  action: continuous\n",
        "model:\n  algorithm: td3\n  hyperparams: {}\nenv:\n  action: continuous\n",
        "model:\n  algorithm: recurrent_ppo\n  hyperparams: {n_epochs: 2}\n",
        "model:\n  algorithm: a2c\n  hyperparams: {use_rms_prop: false}\n",
        "model:\n  device: 'cuda:1'\n",
        "model:\n  device: cpu\n",
    ],
)
def test_possible_combinations_are_accepted(tmp_path: Path, yaml_text: str) -> None:
    assert isinstance(load_config(write_config(tmp_path, yaml_text)), Config)


def test_yes_no_on_off_are_words_and_only_true_false_are_booleans(tmp_path: Path) -> None:
    path = write_config(tmp_path, "session:\n  console: off\ndata:\n  cache: false\n")

    assert load_config(path).session.console == "off"
    assert load_config(path).data.cache is False
    assert load_config(None, ("session.console=off",)).session.console == "off"
    assert load_config(None, ("data.cache=TRUE",)).data.cache is True
    assert "data.cache must be true or false, got 'yes'" in config_error(None, ("data.cache=yes",))


def test_malformed_yaml_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = write_config(tmp_path, "training:\n  episodes: 1\n  seed: 42: 43\n")

    text = config_error(path)

    assert str(path) in text
    assert "not valid YAML" in text
    assert "line 3" in text


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    text = config_error(path)

    assert str(path) in text
    assert "cannot read config" in text


def custom_config() -> Config:
    """Return a config that differs from the defaults in every section."""
    raw = {
        "name": "custom",
        "data": {
            "source": {"path": "a.parquet", "chunk_rows": 500, "nan_policy": "drop"},
            "features": {"names": ["ret_1", "vol_20"]},
            "split": {"mode": "date", "eval_start": "2020-01-01", "gap_bars": 5},
            "cache": False,
            "block_rows": 128,
        },
        "env": {"n_envs": 2, "window": 8, "action": "continuous", "commission_bps": 0.5, "fill": "close"},
        "model": {
            "algorithm": "sac",
            "device": "cpu",
            "net_arch": [8],
            "hyperparams": {"buffer_size": 1000, "learning_starts": 10, "tau": 0.02},
        },
        "training": {"episodes": 3, "steps_per_episode": 256, "seed": 7, "piece_steps": 64},
        "session": {"console": "off", "request_timeout_s": 5, "max_message_bytes": 1 << 20},
    }
    return config_from_dict(raw, "custom")


@pytest.mark.parametrize(
    "make", [load_config, Config, custom_config], ids=["default-file", "built-in", "custom"]
)
def test_config_to_dict_and_back_gives_an_equal_config(make: object) -> None:
    config = make()  # type: ignore[operator]

    assert config_from_dict(config_to_dict(config)) == config


@pytest.mark.parametrize("make", [load_config, custom_config], ids=["default-file", "custom"])
def test_a_config_survives_being_written_as_yaml_and_json(make: object) -> None:
    config = make()  # type: ignore[operator]
    raw = config_to_dict(config)

    from_yaml = config_from_dict(yaml.safe_load(yaml.safe_dump(raw, sort_keys=False)), "config.yaml")
    from_json = config_from_dict(json.loads(json.dumps(raw)), "config.json")

    assert from_yaml == config
    assert from_json == config


def test_config_to_dict_is_plain_data() -> None:
    raw = config_to_dict(custom_config())

    assert raw["model"]["net_arch"] == [8]
    assert raw["data"]["features"]["names"] == ["ret_1", "vol_20"]
    assert set(raw) == {f.name for f in dataclasses.fields(Config)}


def test_config_from_dict_names_its_source_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"runs/x/config\.yaml: unknown key model\.layers"):
        config_from_dict({"model": {"layers": 3}}, "runs/x/config.yaml")


def set_error(*overrides: str) -> str:
    """Load the default config with --set overrides that must fail and return the error text."""
    return config_error(None, overrides)


def test_a_yaml_date_for_a_string_key_becomes_its_iso_string() -> None:
    config = load_config(None, ["data.split.mode=date", "data.split.eval_start=2017-01-02"])

    assert config.data.split.eval_start == "2017-01-02"


def test_a_yaml_time_for_a_string_key_becomes_its_iso_string() -> None:
    config = load_config(None, ["data.split.mode=date", "data.split.eval_start=2017-01-02 09:30:00"])

    assert config.data.split.eval_start == "2017-01-02T09:30:00"


@pytest.mark.parametrize(("text", "expected"), [("1e5", 100_000), ("2.5e4", 25_000), ("4096.0", 4096)])
def test_a_whole_float_literal_for_an_integer_key_becomes_an_integer(text: str, expected: int) -> None:
    config = load_config(None, [f"training.steps_per_episode={text}"])

    assert config.training.steps_per_episode == expected
    assert type(config.training.steps_per_episode) is int


def test_a_float_with_a_fraction_for_an_integer_key_is_refused_naming_the_key() -> None:
    text = set_error("training.steps_per_episode=1.5")

    assert "training.steps_per_episode must be an integer, got 1.5" in text


def test_an_exponent_without_a_dot_is_read_as_a_number() -> None:
    config = load_config(None, ["model.hyperparams.learning_rate=3e-4"])

    assert config.model.hyperparams["learning_rate"] == pytest.approx(3e-4)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHM_HYPERPARAMS))
def test_switching_algorithm_with_one_key_gives_that_algorithms_defaults(algorithm: str) -> None:
    config = load_config(None, [f"model.algorithm={algorithm}"])

    assert config.model.algorithm == algorithm
    assert config.model.hyperparams == ALGORITHM_DEFAULTS[algorithm]
    assert set(config.model.hyperparams) <= ALGORITHM_HYPERPARAMS[algorithm]


def test_every_algorithm_has_defaults_it_accepts() -> None:
    assert set(ALGORITHM_DEFAULTS) == set(ALGORITHM_HYPERPARAMS)
    for algorithm, defaults in ALGORITHM_DEFAULTS.items():
        assert set(defaults) <= ALGORITHM_HYPERPARAMS[algorithm], algorithm


def test_set_hyperparams_override_the_algorithms_defaults_key_by_key() -> None:
    config = load_config(None, ["model.algorithm=dqn", "model.hyperparams.batch_size=32"])

    assert config.model.hyperparams == {**ALGORITHM_DEFAULTS["dqn"], "batch_size": 32}


@pytest.mark.parametrize("algorithm", sorted(CONTINUOUS_ONLY))
def test_a_continuous_only_algorithm_gets_continuous_actions_when_env_action_is_not_set(
    algorithm: str,
) -> None:
    config = load_config(None, [f"model.algorithm={algorithm}"])

    assert config.env.action == "continuous"


def test_a_continuous_only_algorithm_with_a_discrete_env_action_is_refused_naming_both_keys() -> None:
    text = set_error("model.algorithm=sac", "env.action=discrete2")

    assert "model.algorithm sac" in text and "env.action" in text and "discrete2" in text
    assert len(text.splitlines()) == 1


def test_a_discrete_only_algorithm_with_continuous_actions_is_refused_naming_both_keys() -> None:
    text = set_error("model.algorithm=dqn", "env.action=continuous")

    assert "model.algorithm dqn" in text and "env.action" in text and "continuous" in text


def test_an_off_policy_algorithm_on_many_envs_gets_a_note_suggesting_fewer() -> None:
    notes = algorithm_notes(load_config(None, ["model.algorithm=sac"]))

    assert len(notes) == 1
    assert "env.n_envs" in notes[0] and "64" in notes[0] and "sac" in notes[0]


def test_an_on_policy_algorithm_or_few_envs_get_no_note() -> None:
    assert algorithm_notes(load_config()) == []
    assert algorithm_notes(load_config(None, ["model.algorithm=td3", "env.n_envs=4"])) == []


def test_the_default_session_trains_ppo_with_the_projects_defaults() -> None:
    config = load_config()

    assert config.model.hyperparams == ALGORITHM_DEFAULTS["ppo"]
    assert config.model.hyperparams["n_steps"] == 64


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("env.action=sideways", "env.action must be one of"),
        ("env.n_envs=0", "env.n_envs must be >= 1"),
        ("data.source.price=open", "data.source.price must be"),
        ("data.split.train_fraction=1.5", "data.split.train_fraction must be in (0, 1)"),
        ("data.features.names=[bogus]", "data.features.names has unknown feature"),
        ("training.episodes=0", "training.episodes must be at least 1"),
        ("session.console=fancy", "session.console must be"),
        ("model.device=gpu", "model.device must be"),
        ("model.algorithm=foo", "model.algorithm must be one of"),
        ("model.torch_threads=0", "model.torch_threads must be"),
        ("data.block_rows=0", "data.block_rows must be"),
    ],
)
def test_an_impossible_value_is_named_by_its_config_key_not_its_class(override: str, expected: str) -> None:
    text = set_error(override)

    assert expected in text
    assert "Options." not in text


def test_the_config_fingerprint_ignores_where_the_data_lies_but_not_what_trains() -> None:
    base = load_config(None, [])
    moved = load_config(None, ['data.source.path="/elsewhere/STOCKS_GOOGL.csv"'])
    other_model = load_config(None, ["model.net_arch=[32]"])

    assert config_fingerprint(moved) == config_fingerprint(base)
    assert config_fingerprint(other_model) != config_fingerprint(base)


def test_the_learning_rate_schedule_changes_the_fingerprint_and_constant_hashes_as_before_the_key() -> None:
    constant = load_config(None, ["model.learning_rate_schedule=constant"])
    linear = load_config(None, ["model.learning_rate_schedule=linear"])
    data = config_to_dict(constant)
    del data["model"]["learning_rate_schedule"]
    for key in ("name", "session"):
        data.pop(key)
    data["training"].pop("episodes")
    data["data"]["source"].pop("path")
    data.pop("portfolio")
    data["data"].pop("universe")
    before = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    assert config_fingerprint(linear) != config_fingerprint(constant)
    assert config_fingerprint(constant) == before
