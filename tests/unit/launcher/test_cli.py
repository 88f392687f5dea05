"""Test the command line: subcommands, their help, the default command and one-line usage errors."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from launcher.cli import COMMANDS, main
from tests.sessions import ROOT

NAMES = ["train", "monitor", "predict", "audit", "tune", "seeds", "keys", "generate-data"]


def help_of(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run `run.py ARGS --help` in this process and return what it printed."""
    with pytest.raises(SystemExit) as info:
        main([*args, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_command_but_the_internal_actor(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of(capsys)

    assert out.startswith("usage: run.py")
    for name in NAMES:
        assert re.search(rf"^    {name}\b", out, re.MULTILINE), name
    assert "_actor" not in out
    assert list(COMMANDS) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_each_command_has_its_own_help_with_examples(capsys: pytest.CaptureFixture[str], name: str) -> None:
    out = help_of(capsys, name)

    assert out.startswith(f"usage: run.py {name} ")
    assert "examples:" in out
    assert f"run.py {name}" in out.split("examples:", 1)[1] or name == "train"


def test_set_has_help_text_naming_the_config_reference(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of(capsys, "train")

    assert "--set KEY.PATH=VALUE" in out
    assert "docs/CONFIG.md" in " ".join(out.split())


def test_generate_data_help_is_that_of_run_py(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_of(capsys, "generate-data")

    assert out.startswith("usage: run.py generate-data ")
    assert "--rows" in out


def test_an_unknown_command_is_refused_in_one_line_naming_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status = main(["foo"])

    assert status == 2
    assert capsys.readouterr().err == (
        "error: run.py: unknown command 'foo' "
        "(choose from train, monitor, predict, audit, tune, seeds, keys, generate-data)\n"
    )


@pytest.mark.parametrize(
    "args", [["--set", "training.episodes=0"], ["train", "--set", "training.episodes=0"]]
)
def test_a_command_line_without_a_command_or_with_train_trains(
    capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    status = main(args)

    assert status == 2
    assert capsys.readouterr().err == "error: --set: training.episodes must be at least 1, got 0\n"


def test_an_unknown_option_of_a_command_names_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["predict", "--run", "runs/x", "--bogus"])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("error: run.py predict: ") and "--bogus" in err
    assert len(err.splitlines()) == 1


def test_help_imports_no_command_module() -> None:
    code = (
        "import sys, contextlib, io\n"
        "from launcher.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "    main(['--help'])\n"
        "print(sorted(m for m in ('launcher.train', 'launcher.monitor', 'launcher.predict', 'pykka', 'zmq')"
        " if m in sys.modules))\n"
    )

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )

    assert result.stdout.strip() == "[]"
