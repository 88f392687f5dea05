"""What a session leaves for the person who ran it: the closing summary and the run's report."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from launcher.supervisor import ACTOR_KINDS
from services.session.console import format_duration, format_eval_table
from services.session.recorder import recorded_events
from services.session.report import write_report

logger = logging.getLogger(__name__)


class Evaluated(Protocol):
    """Anything that carries an episode's evaluation: its number and both sides' metrics."""

    @property
    def episode(self) -> int:
        """The episode evaluated."""
        ...

    @property
    def agent(self) -> Mapping[str, float]:
        """The agent's metrics."""
        ...

    @property
    def buy_and_hold(self) -> Mapping[str, float]:
        """Buy-and-hold's metrics over the same bars."""
        ...


def print_summary(
    *,
    name: str,
    run_dir: Path,
    status: str,
    reason: str,
    reports: Sequence[Evaluated],
    snapshot: Mapping[str, Any],
    seconds: float,
    launcher_rss: int,
) -> None:
    """Print each evaluation table, the model's history, every process's memory and the verdict."""
    print("", flush=True)
    for report in reports:
        print(format_eval_table(report.episode, report.agent, report.buy_and_hold))
        print("")
    model = snapshot["model"]
    print(
        f"model {model['model_id'] or '-'}: created {model['created']} time(s), "
        f"restored {model.get('restored', 0)} time(s), reused {model['reused']} time(s)"
    )
    memory = ", ".join(
        f"{kind} {snapshot['actors'].get(kind, {}).get('rss_bytes', 0) / 2**20:.0f} MB"
        for kind in ACTOR_KINDS
    )
    print(f"process RSS: launcher {launcher_rss / 2**20:.0f} MB, {memory}")
    why = f" ({reason})" if reason else ""
    print(f"session {name} {status}{why} in {format_duration(seconds)}; outputs in {run_dir}", flush=True)


def recorded_evaluations(events_path: Path) -> list[dict[str, Any]]:
    """Return the evaluations an earlier launch of this run recorded (read before a resume appends)."""
    return [
        {"episode": event["episode"], "agent": event["agent"], "buy_and_hold": event["buy_and_hold"]}
        for event in recorded_events(events_path, "EvaluationFinished")
    ]


def write_run_report(
    run_dir: Path,
    *,
    name: str,
    model_id: str,
    evaluations: Sequence[Mapping[str, Any]],
    figures: bool = True,
) -> bool:
    """Write report.md and its plots (figures) from every evaluation of the run, one per episode (the
    latest wins).

    Return False, having said why in one line on stderr (the traceback goes to the log file), when the
    report or a plot could not be written; True when it was written or there was nothing to report.
    """
    by_episode = {int(ev["episode"]): dict(ev) for ev in evaluations}
    if not by_episode:
        return True
    try:
        path = write_report(
            run_dir, name=name, model_id=model_id, evaluations=list(by_episode.values()), figures=figures
        )
    except Exception as exc:
        logger.info("report failed", exc_info=True)
        print(f"report: not written ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
        return False
    print(f"report: {path}", flush=True)
    return True
