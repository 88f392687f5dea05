"""Shared fixtures: every test ends with no pykka actor left running; the test run's fork server
(tests/sessions.py) stops at its end; --file-progress prints per file."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Generator, Iterator
from typing import Any

import pykka
import pytest

from tests.sessions import close_fork_server


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=10)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the fork server the sessions of this test run were forked from, if one was started."""
    close_fork_server()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add --file-progress (used by `dev.py test`)."""
    parser.addoption(
        "--file-progress",
        action="store_true",
        help="print one line per test file as it finishes (its result counts and time) instead of dots",
    )


class FileProgress:
    """Print `FILE: N passed, M failed in T s` when the last test of a file finishes."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._left: Counter[str] = Counter()
        self._counts: dict[str, Counter[str]] = {}
        self._started: dict[str, float] = {}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Count the tests of each file."""
        self._left = Counter(item.location[0] for item in session.items)

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        """Note when a file's first test starts."""
        self._started.setdefault(location[0], time.monotonic())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Count the outcome of a test phase under its file, as pytest's summary words it."""
        category = self._config.hook.pytest_report_teststatus(report=report, config=self._config)[0]
        if category:
            self._counts.setdefault(report.location[0], Counter())[category] += 1

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        """Print the file's line once its last test finished."""
        path = location[0]
        self._left[path] -= 1
        if self._left[path] > 0:
            return
        counts = ", ".join(f"{n} {word}" for word, n in self._counts.get(path, Counter()).items())
        elapsed = time.monotonic() - self._started.get(path, time.monotonic())
        reporter = self._config.pluginmanager.getplugin("terminalreporter")
        reporter.write_line(f"{path}: {counts or 'nothing run'} in {elapsed:.1f} s")

    @pytest.hookimpl(wrapper=True)
    def pytest_report_teststatus(self, report: pytest.TestReport) -> Generator[None, Any, Any]:
        """Keep the outcome of each test but print no dot or letter for it."""
        category, _, word = yield
        return category, "", word


def pytest_configure(config: pytest.Config) -> None:
    """Print per file instead of per test when --file-progress is given."""
    if config.getoption("--file-progress"):
        config.pluginmanager.register(FileProgress(config), "file-progress")
