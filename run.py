"""Train one stable-baselines3 trading model with an actor system; attach monitors; use the model.

    python run.py [train] [--config FILE | --default] [--data FILE] [--set key.path=value ...] [--name NAME]
    python run.py --resume runs/NAME [--force] [--set ...]
    python run.py monitor --run runs/NAME | --connect tcp://HOST:PORT --keys DIR [--json] [--once]
    python run.py predict --run runs/NAME [--data FILE] [--json]
    python run.py keys [--dir keys] [--clients N]
    python run.py generate-data --rows N --seed S --out FILE

`python run.py --help` lists the commands, `python run.py COMMAND --help` shows one. The launcher package
does the work (launcher/cli.py dispatches); this file is only the entry point.
"""

from __future__ import annotations

import importlib.util
import sys

NEEDED = ("numpy", "pandas", "pykka", "yaml", "zmq")
"""Packages of requirements.txt that every command imports, looked up without importing them."""


def main() -> int:
    """Say in one line how to run this when the interpreter lacks the packages; else dispatch."""
    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        print(
            f"error: {sys.executable} lacks {', '.join(missing)}: run `.venv/bin/python run.py ...` "
            "(`python3 dev.py run` makes .venv) or `python3 dev.py run ...`",
            file=sys.stderr,
        )
        return 2
    from launcher.cli import main as dispatch

    return dispatch()


if __name__ == "__main__":
    sys.exit(main())
