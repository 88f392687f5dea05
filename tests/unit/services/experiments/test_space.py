"""Tests of the search space: distributions read from YAML and checked against the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.experiments.space import SpaceError, choice_label, override, read_space

ROOT = Path(__file__).resolve().parents[4]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_the_shipped_example_space_is_valid() -> None:
    space = read_space(ROOT / "configs" / "tune.yaml", None)

    kinds = {d.key: d.kind for d in space.dimensions}
    assert kinds["model.hyperparams.learning_rate"] == "log_float"
    assert kinds["model.net_arch"] == "categorical"


def test_each_distribution_kind_is_read(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "model.hyperparams.learning_rate: {log_float: [1.0e-5, 1.0e-3]}\n"
        "model.hyperparams.ent_coef: {float: [0.0, 0.05]}\n"
        "model.hyperparams.n_epochs: {int: [1, 8]}\n"
        "model.net_arch: {categorical: [[16], [64, 64]]}\n",
    )

    space = read_space(path, None)

    assert [d.kind for d in space.dimensions] == ["log_float", "float", "int", "categorical"]
    assert space.dimensions[2].values() == (1, 8)
    assert space.dimensions[3].choices == ([16], [64, 64])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("model.net_archx: {categorical: [[8]]}\n", "unknown key model.net_archx"),
        ("model.hyperparams.foo: {float: [0, 1]}\n", "foo"),
        ("env.n_envs: {int: [0, 4]}\n", "env.n_envs must be >= 1"),
        ("model.hyperparams.ent_coef: {float: [0.5, 0.1]}\n", "needs low < high"),
        ("model.hyperparams.learning_rate: {log_float: [0.0, 0.1]}\n", "log_float needs low > 0"),
        ("model.hyperparams.n_epochs: {int: [1.5, 4]}\n", "int needs whole numbers"),
        ("model.hyperparams.n_epochs: {normal: [1, 4]}\n", "unknown distribution 'normal'"),
        ("model.net_arch: {categorical: []}\n", "non-empty list"),
        ("model.net_arch: {categorical: [[8], [8]]}\n", "repeats a choice"),
        ("training.seed: {int: [1, 4]}\n", "set by the study itself"),
        ("data.split.train_fraction: {float: [0.5, 0.7]}\n", "set by the study itself"),
        ("model.hyperparams.n_epochs: 3\n", "must map to one distribution"),
    ],
)
def test_a_bad_space_is_refused_in_one_line_naming_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(SpaceError) as caught:
        read_space(path, None)

    message = str(caught.value)
    assert expected in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_an_empty_space_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "")

    with pytest.raises(SpaceError, match="empty"):
        read_space(path, None)


def test_two_spaces_with_the_same_dimensions_have_the_same_fingerprint(tmp_path: Path) -> None:
    first = read_space(write(tmp_path, "model.hyperparams.n_epochs: {int: [1, 8]}\n"), None)
    second = read_space(write(tmp_path, "model.hyperparams.n_epochs: {int: [1, 8]}\n"), None)
    other = read_space(write(tmp_path, "model.hyperparams.n_epochs: {int: [1, 9]}\n"), None)

    assert first.fingerprint() == second.fingerprint()
    assert first.fingerprint() != other.fingerprint()


def test_list_choices_are_stored_as_json_text_and_set_as_yaml() -> None:
    assert choice_label([64, 64]) == "[64, 64]"
    assert choice_label(32) == 32
    assert override("model.net_arch", [64, 64]) == "model.net_arch=[64, 64]"
