"""Render a study's events and state as lines for people (the `run.py tune` progress, its monitor)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from messages import (
    Message,
    SeedStarted,
    StudyFinished,
    StudyStarted,
    TrialCompleted,
    TrialFailed,
    TrialProgressed,
    TrialPruned,
    TrialReported,
    TrialStarted,
)
from services.session.commands import monitor_command

RECENT_TRIALS_SHOWN = 12
"""Trials summed up when a monitor attaches to a study."""


def format_params(params: Mapping[str, Any]) -> str:
    """Return a trial's configuration on one line: floats with 4 significant digits."""
    return ", ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={json.dumps(value)}"
        for key, value in params.items()
    )


def _best(finished: int, trials: int, number: int, value: float) -> str:
    best = f"; best so far trial {number} value {value:.3f}" if number >= 0 else ""
    return f" [{finished}/{trials or '?'} finished{best}]"


def format_study_event(msg: Message, trials: int) -> str | None:
    """Return the line of a study's event (the `run.py tune` progress lines), None for other events.

    Args:
        trials: N of the study (from its state), for the finished count.
    """
    match msg:
        case StudyStarted():
            return (
                f"study {msg.name}: {msg.trials} trials x {msg.seeds} seed(s) x {msg.episodes} episode(s); "
                f"{msg.finished} finished before; storage {msg.storage}"
            )
        case TrialStarted():
            again = f" (retry of trial {msg.retry_of})" if msg.retry_of >= 0 else ""
            return f"trial {msg.number} started{again}: {format_params(msg.params)}"
        case SeedStarted():
            return f"trial {msg.number} seed {msg.seed}: monitor: {monitor_command(Path(msg.run_dir))}"
        case TrialProgressed():
            return f"trial {msg.number} seed {msg.seed}: {format_trial_progress(_fields_of(msg))}"
        case TrialReported():
            where = f"trial {msg.number} seed {msg.seed} episode {msg.episode}"
            return f"{where}: validation Sharpe {msg.sharpe:.3f}"
        case TrialCompleted():
            best = _best(msg.finished, trials, msg.best_number, msg.best_value)
            return f"trial {msg.number} complete: value {msg.value:.3f} ({len(msg.seed_sharpes)} seeds){best}"
        case TrialPruned():
            best = _best(msg.finished, trials, msg.best_number, msg.best_value)
            return f"trial {msg.number} pruned ({msg.reason}){best}"
        case TrialFailed():
            best = _best(msg.finished, trials, msg.best_number, msg.best_value)
            return f"trial {msg.number} failed: {msg.error}{best}"
        case StudyFinished():
            best = (
                f"; best trial {msg.best_number} value {msg.best_value:.3f}" if msg.best_number >= 0 else ""
            )
            why = f" ({msg.reason})" if msg.reason else ""
            report = f"; report {msg.report}" if msg.report else ""
            return f"study {msg.name} {msg.status}{why}: {msg.finished} trial(s) finished{best}{report}"
    return None


def _fields_of(msg: TrialProgressed) -> dict[str, Any]:
    return {name: getattr(msg, name) for name in ("episode", "steps", "steps_total", "steps_per_s")}


def format_trial_progress(progress: Mapping[str, Any]) -> str:
    """Return how far a trial's running session is: episode, steps and steps/s."""
    total = max(int(progress["steps_total"]), 1)
    return (
        f"episode {progress['episode']} {progress['steps']:,}/{progress['steps_total']:,} steps "
        f"({min(100.0, 100.0 * progress['steps'] / total):.0f}%), {progress['steps_per_s']:,.0f} steps/s"
    )


def study_lines(d: Mapping[str, Any]) -> list[str]:
    """Return the lines that sum up a study's state on attaching: its plan, best and latest trials."""
    study, s = d["study"], d["session"]
    best = study["best_number"]
    lines = [
        f"attached to study {study['name'] or '?'} ({s['status']}) at event {d['seq']}: "
        f"{study['finished']}/{study['trials']} trials finished"
        + (f"; best trial {best} value {study['best_value']:.3f}" if best >= 0 else "")
    ]
    for trial in study["recent"][-RECENT_TRIALS_SHOWN:]:
        value = f"value {trial['value']:.3f}" if trial.get("value") is not None else ""
        report, progress = trial.get("last_report"), trial.get("progress")
        if not value and progress:
            value = f"seed {progress['seed']} {format_trial_progress(progress)}"
        elif not value and report:
            value = f"seed {report['seed']} episode {report['episode']} Sharpe {report['sharpe']:.3f}"
        lines.append(
            f"trial {trial['number']} {trial['state']} {value}".rstrip()
            + f": {format_params(trial['params'])}"
        )
    return lines
