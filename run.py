"""Train one stable-baselines3 trading model with an actor system; attach monitors; use the model.

    python run.py [--config FILE | --default] [--data FILE] [--set key.path=value ...] [--name NAME]
    python run.py --resume runs/NAME [--force] [--set ...]
    python run.py monitor --connect tcp://HOST:PORT [--json] [--once] [--keys DIR]
    python run.py predict --run runs/NAME [--data FILE] [--json]
    python run.py keys [--dir keys] [--clients N]
    python run.py generate-data --rows N --seed S --out FILE

The launcher package does the work (launcher/cli.py dispatches); this file is only the entry point.
"""

from __future__ import annotations

import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
