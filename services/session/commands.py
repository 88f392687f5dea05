"""The command lines a session, a study or a seeds run prints for its user, as a shell in the working
folder takes them: the interpreter that runs this process (a virtual environment's, not a bare `python`
that may lack the packages) and paths relative to the working folder where they lie below it."""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"


def monitor_command(run_dir: Path, *, endpoint: str = "", kit: Path | None = None) -> str:
    """Return the command line that attaches a monitor on this host, as a shell would take it: `--run`, or
    for a session with CURVE keys `--connect endpoint --keys kit` (the session's own monitor's kit)."""
    parts = [shown_path(Path(sys.executable), absolute=False), shown_path(RUN_PY), "monitor"]
    if kit is not None:
        return shlex.join([*parts, "--connect", endpoint, "--keys", shown_path(kit)])
    return shlex.join([*parts, "--run", shown_path(run_dir)])


def shown_path(path: Path, *, absolute: bool = True) -> str:
    """Return a path relative to the working folder when it lies below it (a relative path as given; any
    other resolved when absolute)."""
    if not path.is_absolute():
        return str(path)
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path.resolve() if absolute else path)
