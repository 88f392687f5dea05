"""Rerun the default session and rewrite the README's example console output between its markers.

    .venv/bin/python bench/readme_example.py            # runs `run.py --name readme-demo` (20-60 s)
    .venv/bin/python bench/readme_example.py --from OUT # uses a console output saved from such a run

The session runs with the default config in /tmp/demo-runs (its folder readme-demo is replaced). The
example keeps the console's lines up to the first evaluation line; tests/unit/test_readme.py checks that
every line still has the form the console prints.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUNS_DIR = Path("/tmp/demo-runs")
NAME = "readme-demo"
START = "<!-- readme-example: start (bench/readme_example.py rewrites this block) -->"
END = "<!-- readme-example: end -->"
LAST_LINE = " evaluated: "
"""The example ends with the first line that contains this (the one-line evaluation)."""


def run_session() -> str:
    """Run the default session as `run.py --name readme-demo` and return its console output."""
    shutil.rmtree(RUNS_DIR / NAME, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, "run.py", "--name", NAME, "--set", f"session.runs_dir={RUNS_DIR}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"the session failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return done.stdout


def example_block(output: str) -> str:
    """Return the fenced example: the console's lines up to the first evaluation line, then an ellipsis."""
    lines = []
    for line in output.splitlines():
        lines.append(line.rstrip())
        if LAST_LINE in line:
            break
    else:
        raise ValueError("the console output has no evaluation line")
    return "\n".join(["```text", *lines, "...", "```"])


def replace_block(readme: str, block: str) -> str:
    """Return the README text with the example between the markers replaced by `block`."""
    head, start, rest = readme.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise ValueError(f"README.md lacks the markers {START!r} and {END!r}")
    return f"{head}{START}\n{block}\n{END}{tail}"


def read_block(readme: str) -> list[str]:
    """Return the lines of the example between the markers, without the fence."""
    _, _, rest = readme.partition(START)
    inside, end, _ = rest.partition(END)
    if not end:
        raise ValueError("README.md lacks the example markers")
    lines = inside.strip().splitlines()
    return lines[1:-1] if lines[:1] == ["```text"] and lines[-1:] == ["```"] else lines


def main() -> None:
    """Run (or read) the session's output and rewrite the README block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", type=Path, help="a saved console output of the session")
    args = parser.parse_args()
    output = args.source.read_text() if args.source else run_session()
    README.write_text(replace_block(README.read_text(), example_block(output)))
    print(f"README.md example rewritten ({len(read_block(README.read_text()))} lines)")


if __name__ == "__main__":
    main()
