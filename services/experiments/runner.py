"""Run one session of the actor system as a `run.py` subprocess and follow its events as they are written.

A study's trial and `run.py seeds` are made of such sessions: each is a whole session with its own run
folder, so everything a session guarantees holds inside a study. The session is stopped the way a user
stops one (SIGINT: finish the piece, checkpoint, exit), and dies with the process that started it.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from services.forkserver import ForkClient, die_with_parent

ROOT = Path(__file__).resolve().parents[2]
RUN_PY = ROOT / "run.py"
STOP_TIMEOUT_S = 60.0
"""How long a stopped session may take to checkpoint and exit before it is killed."""
POLL_S = 0.25
"""How often the events file of a running session is read."""


class SessionFailed(RuntimeError):
    """A session exited without completing; the text is its last line on stderr."""


class Stopped(Exception):
    """A session was stopped before it completed (pruned or interrupted)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    """What one episode's evaluation of a session gave: the agent's and buy-and-hold's metrics."""

    episode: int
    """The episode, counted from 1."""
    agent: dict[str, float]
    """The agent's metrics (docs/METRICS.md); sharpe is annualised."""
    buy_and_hold: dict[str, float]
    """Buy-and-hold's metrics on the same bars."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionProgress:
    """How far a running session's training is: its latest TrainingProgress."""

    episode: int
    steps: int
    """Steps done in this episode."""
    steps_total: int
    """Steps budgeted for this episode."""
    steps_per_s: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionResult:
    """A completed session: its run folder and every episode's evaluation."""

    run_dir: Path
    """runs/.../<name>/"""
    evaluations: tuple[Evaluation, ...]
    """One per episode, in order."""

    @property
    def last(self) -> Evaluation:
        """Return the last episode's evaluation."""
        return self.evaluations[-1]


class Process(Protocol):
    """A session's launcher process: a `subprocess.Popen` or a child of the fork server."""

    def poll(self) -> int | None:
        """Return the exit status if the process has ended, else None."""
        ...

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end and return the status; raise subprocess.TimeoutExpired past timeout."""
        ...

    def send_signal(self, sig: int) -> None:
        """Send a signal."""
        ...


def run_session(
    config: Path | None,
    overrides: Sequence[str],
    runs_dir: Path,
    name: str,
    *,
    on_evaluation: Callable[[Evaluation], None] = lambda _: None,
    should_stop: Callable[[], bool] = lambda: False,
    fork: ForkClient | None = None,
    on_progress: Callable[[SessionProgress], None] = lambda _: None,
) -> SessionResult:
    """Run one session to its end, calling on_evaluation after each episode's evaluation (and
    on_progress with its latest training progress, at most once per look at its events).

    With a fork server (fork), the session's launcher and its actors are forked from it, with their
    libraries already imported; without, each is a fresh interpreter.

    Raises:
        Stopped: should_stop (checked between polls) became true or on_evaluation raised Stopped; the
            session was stopped with SIGINT and has exited.
        SessionFailed: the session exited with another status than 0.
    """
    run_dir = runs_dir / name
    runs_dir.mkdir(parents=True, exist_ok=True)
    arguments = ["--config", str(config)] if config is not None else []
    for text in [*overrides, f"session.runs_dir={runs_dir}", "session.console=plain"]:
        arguments += ["--set", text]
    arguments += ["--name", name]
    with (
        (runs_dir / f"{name}.console.log").open("w") as console,
        (runs_dir / f"{name}.stderr.log").open("w+") as errors,
    ):
        process: Process
        if fork is not None:
            process = fork.spawn(
                arguments, cwd=ROOT, stdout=console, stderr=errors, new_session=True, die_with_server=True
            )
        else:
            process = subprocess.Popen(
                [sys.executable, str(RUN_PY), *arguments],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=errors,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        evaluations: list[Evaluation] = []
        try:
            for event in _follow(run_dir / "events.jsonl", process, should_stop):
                if isinstance(event, SessionProgress):
                    on_progress(event)
                    continue
                evaluations.append(event)
                on_evaluation(event)
        except BaseException:
            stop_session(process)
            raise
        status = process.wait()
        if status != 0:
            raise SessionFailed(f"session {run_dir} exited {status}: {_last_line(errors)}")
    evaluations.extend(_evaluations(run_dir / "events.jsonl")[len(evaluations) :])
    if not evaluations:
        raise SessionFailed(f"session {run_dir} completed without an evaluation")
    return SessionResult(run_dir=run_dir, evaluations=tuple(evaluations))


def stop_session(process: Process, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a session cleanly (SIGINT, then wait), a second SIGINT and then SIGKILL past the deadline."""
    for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGINT, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait_s)


def _follow(
    path: Path, process: Process, should_stop: Callable[[], bool]
) -> Iterator[Evaluation | SessionProgress]:
    """Yield each EvaluationFinished of a running session's events file as it is written, and the last
    TrainingProgress of each new stretch of the file."""
    offset = 0
    pending = ""
    while True:
        running = process.poll() is None
        if should_stop():
            raise Stopped("stopped")
        if path.exists():
            with path.open("r", encoding="utf-8") as events:
                events.seek(offset)
                chunk = events.read()
                offset = events.tell()
            pending += chunk
            *lines, pending = pending.split("\n")
            for line in lines:
                event = _parse(line)
                if event is not None:
                    yield event
            latest = next((p for p in map(_progress, reversed(lines)) if p is not None), None)
            if latest is not None:
                yield latest
        if not running:
            return
        # Waiting on the process rather than sleeping sees its exit at once.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=POLL_S)


def _parse(line: str) -> Evaluation | None:
    """Return the evaluation an events.jsonl line holds, or None for any other event."""
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("type") != "EvaluationFinished":
        return None
    return Evaluation(
        episode=int(event["episode"]), agent=dict(event["agent"]), buy_and_hold=dict(event["buy_and_hold"])
    )


def _progress(line: str) -> SessionProgress | None:
    """Return the training progress an events.jsonl line holds, or None for any other line."""
    if '"TrainingProgress"' not in line:
        return None
    try:
        event = json.loads(line)
        return SessionProgress(
            episode=int(event["episode"]),
            steps=int(event["steps"]),
            steps_total=int(event["steps_total"]),
            steps_per_s=float(event["steps_per_s"]),
        )
    except (ValueError, KeyError, TypeError):
        return None


def _evaluations(path: Path) -> list[Evaluation]:
    """Return every evaluation recorded in an events file."""
    if not path.exists():
        return []
    return [e for e in map(_parse, path.read_text(encoding="utf-8").splitlines()) if e is not None]


def _last_line(stream: TextIO) -> str:
    """Return the last non-empty line a stream holds."""
    stream.flush()
    stream.seek(0)
    lines = [line.strip() for line in stream.read().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


@dataclass(frozen=True, slots=True, kw_only=True)
class EquityCurve:
    """One evaluation's per-bar returns of the agent and of buy-and-hold, with the bars' timestamps."""

    timestamps: tuple[str, ...]
    """Timestamp of each return's bar (the later bar of each pair)."""
    agent: tuple[float, ...]
    """Agent bar returns equity[t] / equity[t - 1] - 1."""
    buy_and_hold: tuple[float, ...]
    """Buy-and-hold bar returns on the same bars."""


def read_equity(run_dir: Path, episode: int) -> EquityCurve:
    """Return the bar returns of an episode's eval-episode-<k>.csv."""
    with (run_dir / f"eval-episode-{episode}.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    stamps, agent, held = [], [], []
    for before, after in itertools.pairwise(rows):
        stamps.append(after["timestamp"])
        agent.append(_ratio(after["equity"], before["equity"]))
        held.append(_ratio(after["buy_and_hold_equity"], before["buy_and_hold_equity"]))
    return EquityCurve(timestamps=tuple(stamps), agent=tuple(agent), buy_and_hold=tuple(held))


def _ratio(after: str, before: str) -> float:
    """Return after / before - 1, 0.0 when before is not positive (a ruined account stays flat)."""
    low = float(before)
    value = float(after) / low - 1.0 if low > 0.0 else 0.0
    return value if math.isfinite(value) else 0.0


def mean_returns(curves: Sequence[EquityCurve]) -> tuple[tuple[str, ...], list[float], list[float]]:
    """Return the bars every curve shares and the per-bar mean of the agents' and buy-and-hold's returns.

    The mean of the seeds' bar returns is the return of holding the seeds' models in equal parts.
    """
    shared = set(curves[0].timestamps).intersection(*(c.timestamps for c in curves[1:]))
    stamps = tuple(t for t in curves[0].timestamps if t in shared)
    agent, held = [], []
    lookups = [
        {t: (a, b) for t, a, b in zip(c.timestamps, c.agent, c.buy_and_hold, strict=True)} for c in curves
    ]
    for stamp in stamps:
        agent.append(sum(lookup[stamp][0] for lookup in lookups) / len(lookups))
        held.append(sum(lookup[stamp][1] for lookup in lookups) / len(lookups))
    return stamps, agent, held
