"""Set up the project on a fresh machine and run it: `python3 dev.py run` or `python3 dev.py test`.

Needs only Python 3.11 and pip. Creates .venv if missing, installs requirements.txt (the one place
where versions are pinned) whenever it changed, then runs the main job or the test suite.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".requirements.sha256"
REQUIREMENTS = ROOT / "requirements.txt"


def ensure_venv() -> None:
    """Create .venv and install the pinned requirements if they are missing or changed."""
    if not PYTHON.exists():
        print("creating .venv", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == digest:
        return
    print("installing requirements.txt into .venv", flush=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(REQUIREMENTS)], check=True)
    STAMP.write_text(digest + "\n")


def ensure_postgresql() -> None:
    """Install PostgreSQL from the OS packages for the multi-host study test, when missing and possible.

    Only as root on a Debian-like system; elsewhere the test that needs it says it is skipped.
    """
    if shutil.which("initdb") or list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        return
    if not Path("/etc/debian_version").exists() or os.geteuid() != 0:
        return
    print("installing postgresql (apt-get) for the multi-host study test", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "postgresql"]):
        subprocess.run(step, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


def main(argv: list[str]) -> int:
    """Dispatch `run [run.py args]`, `test [pytest args]` (ruff, mypy, then pytest) or `lint`."""
    if not argv or argv[0] not in ("run", "test", "lint"):
        print(
            "usage: python3 dev.py run [run.py arguments] | test [pytest arguments] | lint", file=sys.stderr
        )
        return 2
    ensure_venv()
    os.chdir(ROOT)
    command, rest = argv[0], argv[1:]
    if command == "run":
        return subprocess.call([str(PYTHON), "run.py", *rest])
    lint = subprocess.call([str(PYTHON), "-m", "ruff", "check", "."])
    if lint == 0:
        packages = ["actors", "messages", "services", "launcher", "run.py"]
        lint = subprocess.call([str(PYTHON), "-m", "mypy", *packages])
    if command == "lint" or lint != 0:
        return lint
    ensure_postgresql()
    # One line per test file as it finishes, so a long smoke file does not look like a hang.
    progress = ["--file-progress", "-o", "console_output_style=classic"]
    return subprocess.call([str(PYTHON), "-m", "pytest", *progress, *rest])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
