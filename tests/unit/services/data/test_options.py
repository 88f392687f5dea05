"""Tests of the data options module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_importing_the_data_options_loads_nothing_heavy() -> None:
    code = (
        "import sys\n"
        "import services.data.options\n"
        "heavy = ('numpy', 'pandas', 'pyarrow', 'gymnasium', 'yaml')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )

    root = Path(__file__).resolve().parents[4]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)

    assert done.stdout.strip() == "[]"
