"""What every command shares: exit statuses, the usage error, the argument parser and project paths."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
"""The project folder; relative paths in a config (runs, keys, feature cache) are relative to it."""
RUN_PY = ROOT / "run.py"
"""The entry point; actor processes are started through it."""
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Bad command line, config or data: exit status 2 with one line."""


class Parser(argparse.ArgumentParser):
    """An argument parser that raises UsageError instead of exiting."""

    def error(self, message: str) -> NoReturn:
        """Raise the parser's complaint as a one-line UsageError."""
        raise UsageError(f"{self.prog}: {message}")


def project_path(path: str | Path) -> Path:
    """Return a config path as an absolute path: relative ones are relative to the project folder."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def add_set_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """Add the repeatable `--set KEY.PATH=VALUE` option (its values land in `overrides`)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help=help
    )
