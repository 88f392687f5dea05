"""The lockbox: the last part of the data no trial sees, where the best configurations are scored once."""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from services.experiments.runner import run_session
from services.experiments.stats import interquartile_mean
from services.experiments.storage import StudySettings
from services.experiments.study import (
    CLAIM_SETTLE_S,
    Progress,
    params_text,
    trial_overrides,
    trial_params,
)
from services.forkserver import ForkClient


@dataclass(frozen=True, slots=True, kw_only=True)
class LockboxResult:
    """One configuration trained on everything before the lockbox and evaluated on it, over the seeds."""

    trial: int
    """The trial whose configuration it is."""
    validation: float
    """The trial's objective on the validation window."""
    sharpes: tuple[float, ...]
    """Each seed's annualised Sharpe ratio on the lockbox."""
    total_returns: tuple[float, ...]
    """Each seed's total return on the lockbox."""
    buy_and_hold_sharpe: float
    """Buy-and-hold's annualised Sharpe ratio on the lockbox."""
    buy_and_hold_return: float
    """Buy-and-hold's total return on the lockbox."""

    @property
    def iqm(self) -> float:
        """Return the IQM of the seeds' lockbox Sharpe ratios (the objective's statistic)."""
        return interquartile_mean(self.sharpes)


def lockbox_overrides(settings: StudySettings) -> list[str]:
    """Return the split of a lockbox session: train on every bar before the lockbox, evaluate on it."""
    return [
        "data.split.mode=fraction",
        "data.split.walk_forward=false",
        f"data.split.train_fraction={1.0 - settings.lockbox_fraction!r}",
        "data.split.lockbox_fraction=0.0",
    ]


def run_lockbox(
    settings: StudySettings,
    study: optuna.Study,
    progress: Progress,
    stop: threading.Event,
    fork: ForkClient | None = None,
) -> list[LockboxResult] | None:
    """Train the top k complete trials on the data before the lockbox and evaluate them on it once.

    Several workers may end a study at once: each claims the lockbox in the study and only the one whose
    claim is read back runs it; the results are stored with the study (user attribute "lockbox"), so a
    rerun reports them without training again. Returns None when another worker runs it.
    """
    if "lockbox" in study.user_attrs:
        return [LockboxResult(**r) for r in study.user_attrs["lockbox"]]
    claim = f"{socket.gethostname()}:{os.getpid()}:{threading.get_native_id()}"
    study.set_user_attr("lockbox_claim", claim)
    stop.wait(CLAIM_SETTLE_S)
    if study.user_attrs.get("lockbox_claim") != claim:
        progress("lockbox: another worker evaluates it")
        return None
    complete = sorted(
        (t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE),
        key=lambda t: -(t.value if t.value is not None else -math.inf),
    )[: settings.top_k]
    results = []
    for trial in complete:
        params = trial_params(trial, settings.space)
        progress(
            f"lockbox: trial {trial.number} ({params_text(params)}) "
            f"on the last {settings.lockbox_fraction:.0%}"
        )
        sharpes, returns = [], []
        hold_sharpe = hold_return = 0.0
        for seed in range(settings.seeds):
            result = run_session(
                settings.config,
                [
                    *settings.overrides,
                    *trial_overrides(settings.space, params),
                    *lockbox_overrides(settings),
                    f"training.seed={settings.base_seed + seed}",
                ],
                settings.folder / "lockbox" / f"trial-{trial.number}",
                f"seed-{seed}",
                should_stop=stop.is_set,
                fork=fork,
            )
            sharpes.append(float(result.last.agent["sharpe"]))
            returns.append(float(result.last.agent["total_return"]))
            hold_sharpe = float(result.last.buy_and_hold["sharpe"])
            hold_return = float(result.last.buy_and_hold["total_return"])
        entry = LockboxResult(
            trial=trial.number,
            validation=float(trial.value or 0.0),
            sharpes=tuple(sharpes),
            total_returns=tuple(returns),
            buy_and_hold_sharpe=hold_sharpe,
            buy_and_hold_return=hold_return,
        )
        progress(
            f"lockbox: trial {trial.number} Sharpe IQM {entry.iqm:.3f} (validation {entry.validation:.3f}), "
            f"buy & hold {hold_sharpe:.3f}"
        )
        results.append(entry)
    with contextlib.suppress(ValueError):
        study.set_user_attr(
            "lockbox",
            [
                {
                    "trial": r.trial,
                    "validation": r.validation,
                    "sharpes": list(r.sharpes),
                    "total_returns": list(r.total_returns),
                    "buy_and_hold_sharpe": r.buy_and_hold_sharpe,
                    "buy_and_hold_return": r.buy_and_hold_return,
                }
                for r in results
            ],
        )
    return results
