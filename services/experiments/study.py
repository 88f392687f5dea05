"""Run an Optuna study whose trials are whole sessions over several seeds, then its lockbox.

A trial draws a configuration from the search space, trains it with S seeds (one session each, one after
another, under runs/<study>/trial-<k>/seed-<s>/) and reports after each episode's evaluation to a median
pruner. Its objective is the interquartile mean of the seeds' last-episode validation Sharpe ratios
(annualised, as the evaluation reports them; with fewer than 4 seeds the IQM is the mean). Every trial
sees the data without its lockbox (data.split.lockbox_fraction); after the search the top k trials are
trained on everything before the lockbox and evaluated on it once.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from messages import (
    SeedStarted,
    TrialCompleted,
    TrialFailed,
    TrialProgressed,
    TrialPruned,
    TrialReported,
    TrialStarted,
)
from messages.base import Event
from services.experiments.runner import (
    Evaluation,
    SessionFailed,
    SessionProgress,
    Stopped,
    mean_returns,
    read_equity,
    run_session,
)
from services.experiments.space import SearchSpace, choice_label, override
from services.experiments.stats import interquartile_mean
from services.experiments.storage import (
    StudySettings,
    sampler,
)
from services.forkserver import ForkClient
from services.session.commands import monitor_command

logger = logging.getLogger(__name__)

POLL_S = 1.0
"""How often a worker that waits for other workers' trials looks at the study."""
CLAIM_SETTLE_S = 2.0
"""How long a worker waits after claiming the lockbox before it reads the claim back."""
PROGRESS_EVERY_S = 1.0
"""Least interval between two TrialProgressed events of a trial."""
TRIAL_SESSION = "session.figures=false"
"""What a trial's sessions leave out: the report's PNGs (report.md, the events and the CSVs stay)."""


class _Surplus(Exception):
    """A trial started by a worker that lost a race for the last of the N trials."""


def retried_numbers(trials: Sequence[FrozenTrial]) -> set[int]:
    """Return the numbers of failed trials that were run again (their retry stands for them)."""
    numbers: set[int] = set()
    for trial in trials:
        numbers.update(trial.system_attrs.get("retry_history", []))
    return numbers


def counted(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Return the trials of the search: complete, pruned and failed ones, each configuration once.

    A failed trial that was retried is left out (its retry counts), and so is a surplus trial, one a
    worker started when the other workers had already claimed the last of the N trials.
    """
    retried = retried_numbers(trials)
    return [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        and t.number not in retried
        and not t.user_attrs.get("surplus")
    ]


def fail_stale(study: optuna.Study) -> None:
    """Fail the trials whose worker stopped beating (each is queued again by the retry callback)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def finished(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """Return the complete and pruned trials: the ones that count toward N."""
    return [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


Progress = Callable[[str], None]
"""Prints one progress line."""
SENDER = "study"
"""The role a study's events are signed as (services/experiments/broadcast.py)."""


class StudyEvents(Protocol):
    """Where a study's events go: the study's event hub, for monitors."""

    def publish(self, event: Event) -> None:
        """Publish one event (from any thread)."""
        ...

    def doing(self, text: str) -> None:
        """Say what the study is doing now (its heartbeats carry it)."""
        ...


class NoEvents:
    """A study that publishes nothing (tests, and the lockbox's own sessions)."""

    def publish(self, event: Event) -> None:
        """Drop the event."""

    def doing(self, text: str) -> None:
        """Forget the text."""


def best_so_far(study: optuna.Study) -> tuple[int, float]:
    """Return the best complete trial's number and value, (-1, 0.0) while none has completed."""
    try:
        best = study.best_trial
    except ValueError:
        return -1, 0.0
    return best.number, float(best.value if best.value is not None else 0.0)


class Worker:
    """Run trials of one study until it holds N finished trials; one per thread of `run.py tune`."""

    def __init__(
        self,
        settings: StudySettings,
        study: optuna.Study,
        stop: threading.Event,
        progress: Progress,
        index: int,
        fork: ForkClient | None = None,
        events: StudyEvents | None = None,
    ) -> None:
        self._settings = settings
        self._fork = fork
        self._events = events if events is not None else NoEvents()
        self._study = study
        self._stop = stop
        self._progress = progress
        self._index = index
        self.ran = 0
        """Trials this worker finished (complete or pruned)."""

    def run(self) -> None:
        """Run trials while fewer than N are finished; wait while the others' running trials fill N."""
        self._study.sampler = sampler(self._settings.sampler_seed + self._index)
        failures = 0
        while not self._stop.is_set():
            trials = self._study.get_trials(deepcopy=False)
            done = len(finished(trials))
            if done >= self._settings.trials:
                return
            running = sum(t.state == TrialState.RUNNING for t in trials)
            waiting = sum(t.state == TrialState.WAITING for t in trials)
            if done + running >= self._settings.trials and not waiting:
                fail_stale(self._study)
                self._stop.wait(POLL_S)
                continue
            state = self._one_trial()
            if state == TrialState.FAIL:
                failures += 1
                if failures >= self._settings.trials:
                    raise SessionFailed(f"{failures} trials failed in a row; see the trials' stderr logs")
            elif state is not None:
                failures = 0

    def _one_trial(self) -> TrialState | None:
        """Run one trial through optimize (so it has a heartbeat); return its state."""
        numbers: list[int] = []

        def objective(trial: optuna.Trial) -> float:
            numbers.append(trial.number)
            return self._objective(trial)

        self._study.optimize(objective, n_trials=1, catch=(_Surplus, SessionFailed, Stopped))
        if not numbers:
            return None
        trial = self._study.get_trials(deepcopy=False)[numbers[0]]
        if trial.user_attrs.get("interrupted"):
            # The same configuration runs again when the study is resumed.
            RetryHeartbeatStaleTrialCallback()(self._study, trial)
            return None
        if trial.user_attrs.get("surplus"):
            return None
        self._announce(trial)
        return trial.state

    def _objective(self, trial: optuna.Trial) -> float:
        """Train the trial's configuration over the seeds, reporting each evaluation to the pruner."""
        settings = self._settings
        self._check_surplus(trial)
        params = _suggest(trial, settings.space)
        retry = self._study.get_trials(deepcopy=False)[trial.number].system_attrs.get("failed_trial")
        again = f" (retry of trial {retry})" if retry is not None else ""
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("worker", self._index)
        trial.set_user_attr("pid", os.getpid())
        self._progress(f"trial {trial.number} started{again}: {params_text(params)}")
        self._events.publish(
            TrialStarted(
                number=trial.number,
                params=params,
                retry_of=retry if retry is not None else -1,
                sender=SENDER,
            )
        )
        folder = settings.folder / f"trial-{trial.number}"
        shutil.rmtree(folder, ignore_errors=True)
        overrides = [*settings.overrides, *trial_overrides(settings.space, params)]
        overrides.append(f"data.split.lockbox_fraction={settings.lockbox_fraction}")
        overrides.append(TRIAL_SESSION)
        sharpes, holds, curves = [], [], []
        shown = [-math.inf]  # when the trial's progress was last published
        for seed in range(settings.seeds):
            name = f"seed-{seed}"
            self._progress(f"trial {trial.number} seed {seed}: monitor: {monitor_command(folder / name)}")

            self._events.doing(f"trial {trial.number} seed {seed}")
            self._events.publish(
                SeedStarted(number=trial.number, seed=seed, run_dir=str(folder / name), sender=SENDER)
            )

            def report(evaluation: Evaluation, seed: int = seed) -> None:
                step = seed * settings.episodes + evaluation.episode - 1
                sharpe = float(evaluation.agent["sharpe"])
                trial.report(sharpe, step)
                self._events.publish(
                    TrialReported(
                        number=trial.number,
                        seed=seed,
                        episode=evaluation.episode,
                        sharpe=sharpe,
                        sender=SENDER,
                    )
                )
                if trial.should_prune():
                    raise Stopped(f"pruned at seed {seed} episode {evaluation.episode}")

            def progressed(progress: SessionProgress, seed: int = seed) -> None:
                now = time.monotonic()
                if now - shown[0] < PROGRESS_EVERY_S:
                    return
                shown[0] = now
                self._events.publish(
                    TrialProgressed(
                        number=trial.number,
                        seed=seed,
                        episode=progress.episode,
                        steps=progress.steps,
                        steps_total=progress.steps_total,
                        steps_per_s=progress.steps_per_s,
                        sender=SENDER,
                    )
                )

            try:
                result = run_session(
                    settings.config,
                    [*overrides, f"training.seed={settings.base_seed + seed}"],
                    folder,
                    name,
                    on_evaluation=report,
                    should_stop=self._stop.is_set,
                    fork=self._fork,
                    on_progress=progressed,
                )
            except Stopped as exc:
                if self._stop.is_set():
                    trial.set_user_attr("interrupted", True)
                    raise
                trial.set_user_attr("pruned_at", str(exc))
                raise optuna.TrialPruned(str(exc)) from None
            except SessionFailed as exc:
                trial.set_user_attr("error", str(exc))
                raise
            sharpes.append(float(result.last.agent["sharpe"]))
            holds.append(float(result.last.buy_and_hold["sharpe"]))
            curves.append(read_equity(result.run_dir, result.last.episode))
        stamps, agent, held = mean_returns(curves)
        trial.set_user_attr("seed_sharpes", sharpes)
        trial.set_user_attr("buy_and_hold_sharpe", holds[0])
        trial.set_user_attr("returns", agent)
        trial.set_user_attr("buy_and_hold_returns", held)
        trial.set_user_attr("bars", [stamps[0], stamps[-1], len(stamps)] if stamps else [])
        return interquartile_mean(sharpes)

    def _check_surplus(self, trial: optuna.Trial) -> None:
        """Fail this trial at once when the trials numbered before it already make N."""
        trials = self._study.get_trials(deepcopy=False)
        claims = [
            t.number
            for t in trials
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
            and not t.user_attrs.get("surplus")
        ]
        if sum(number < trial.number for number in claims) >= self._settings.trials:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number}: the study already holds {self._settings.trials} trials")

    def _announce(self, trial: FrozenTrial) -> None:
        """Print and publish the trial's end and the best so far."""
        done = len(finished(self._study.get_trials(deepcopy=False)))
        number, value = best_so_far(self._study)
        event: Event
        # What every trial-end event carries: the trial, the study's count and the best so far.
        common: dict[str, Any] = {
            "number": trial.number,
            "finished": done,
            "best_number": number,
            "best_value": value,
            "sender": SENDER,
        }
        if trial.state == TrialState.COMPLETE:
            self.ran += 1
            sharpes = tuple(float(s) for s in trial.user_attrs["seed_sharpes"])
            what = f"complete: value {trial.value:.3f} (IQM of {len(sharpes)} seeds' Sharpe)"
            objective = float(trial.value if trial.value is not None else 0.0)
            event = TrialCompleted(value=objective, seed_sharpes=sharpes, **common)
        elif trial.state == TrialState.PRUNED:
            self.ran += 1
            reason = str(trial.user_attrs.get("pruned_at", "by the median rule"))
            what = f"pruned ({reason})"
            event = TrialPruned(reason=reason, **common)
        else:
            error = str(trial.user_attrs.get("error", "see its stderr log"))
            what = f"failed: {error}"
            event = TrialFailed(error=error, **common)
        best_text = f"; best so far trial {number} value {value:.3f}" if number >= 0 else ""
        self._progress(f"trial {trial.number} {what} [{done}/{self._settings.trials} finished{best_text}]")
        self._events.publish(event)


def _suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Draw the trial's value of every dimension (lists of a categorical come back as YAML data)."""
    params: dict[str, Any] = {}
    for d in space.dimensions:
        if d.kind == "float":
            params[d.key] = trial.suggest_float(d.key, d.low, d.high)
        elif d.kind == "log_float":
            params[d.key] = trial.suggest_float(d.key, d.low, d.high, log=True)
        elif d.kind == "int":
            params[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high))
        else:
            label = trial.suggest_categorical(d.key, [choice_label(c) for c in d.choices])
            params[d.key] = next(c for c in d.choices if choice_label(c) == label)
    return params


def trial_params(trial: FrozenTrial, space: SearchSpace) -> dict[str, Any]:
    """Return a stored trial's configuration values, categorical lists decoded."""
    params: dict[str, Any] = {}
    for d in space.dimensions:
        if d.key not in trial.params:
            continue
        value = trial.params[d.key]
        if d.kind == "categorical":
            value = next((c for c in d.choices if choice_label(c) == value), value)
        params[d.key] = value
    return params


def trial_overrides(space: SearchSpace, params: dict[str, Any]) -> list[str]:
    """Return the --set overrides of a trial's configuration."""
    return [override(key, params[key]) for key in (d.key for d in space.dimensions) if key in params]


def params_text(params: dict[str, Any]) -> str:
    """Return a trial's configuration on one line."""
    return ", ".join(f"{key}={_short(value)}" for key, value in params.items())


def _short(value: Any) -> str:
    """Return a value shortly: floats with 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value)
