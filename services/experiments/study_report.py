"""Write a study's report.md and figures: trials, importances, seeds, DSR, PBO, lockbox and the verdict.

Everything comes from the study's storage (each trial keeps its seeds' Sharpe ratios and its validation
bar returns), so a report is the same on every host of a shared study. The statistics are those of
services/experiments/stats.py (docs/STATISTICS.md); Sharpe ratios in its formulas are per bar.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from services.experiments import stats
from services.experiments.lockbox import LockboxResult
from services.experiments.storage import StudySettings
from services.experiments.study import counted, trial_params

SEED_INTERVAL_SEED = 0
"""Seed of the bootstrap resampling of the seed intervals (the same study gives the same report)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StudyStatistics:
    """The numbers a study report states: DSR of the best trial, PBO of the search, seed intervals."""

    n_trials: int
    """N of the DSR: every configuration tried, pruned and failed ones included, retries once."""
    best: FrozenTrial | None
    """The complete trial with the highest objective."""
    dsr: stats.DeflatedSharpe | None
    """The best trial's deflated Sharpe ratio, when two complete trials have returns (or N is 1)."""
    pbo: stats.BacktestOverfitting | None
    """The search's probability of backtest overfitting, when two complete trials share enough bars."""
    seeds: stats.SeedSummary | None
    """IQM and mean of the best trial's seed Sharpe ratios with their intervals (2 seeds or more)."""
    line: str
    """The one-line verdict, or why there is none."""


def compute_statistics(trials: Sequence[FrozenTrial]) -> StudyStatistics:
    """Return the DSR, PBO, seed intervals and the verdict of a study's trials."""
    searched = counted(trials)
    complete = [
        t for t in searched if t.state == TrialState.COMPLETE and len(t.user_attrs.get("returns", [])) > 2
    ]
    best = max(complete, key=lambda t: t.value if t.value is not None else -math.inf, default=None)
    if best is None:
        return StudyStatistics(
            n_trials=len(searched), best=None, dsr=None, pbo=None, seeds=None, line="no trial completed yet"
        )
    sharpes = [stats.sharpe_ratio(t.user_attrs["returns"]) for t in complete]
    dsr = None
    if len(complete) >= 2 or len(searched) == 1:
        dsr = stats.deflated_sharpe_ratio(best.user_attrs["returns"], sharpes, n_trials=len(searched))
    pbo = _pbo(complete)
    scores = best.user_attrs.get("seed_sharpes", [])
    seeds = stats.seed_summary(scores, seed=SEED_INTERVAL_SEED) if len(scores) >= 2 else None
    if dsr is None:
        line = f"no verdict: the DSR needs 2 complete trials of the {len(searched)} (their Sharpe's variance)"
    else:
        line = stats.verdict(dsr.dsr, dsr.n_trials, pbo.pbo if pbo is not None else None)
    return StudyStatistics(n_trials=len(searched), best=best, dsr=dsr, pbo=pbo, seeds=seeds, line=line)


def _pbo(complete: Sequence[FrozenTrial]) -> stats.BacktestOverfitting | None:
    """Return the PBO over the bars every complete trial shares, blocks as many as the bars allow."""
    if len(complete) < 2:
        return None
    length = min(len(t.user_attrs["returns"]) for t in complete)
    matrix = np.array([t.user_attrs["returns"][-length:] for t in complete]).T
    blocks = stats.DEFAULT_BLOCKS
    while blocks > 2 and length // blocks * (blocks // 2) < 2 * stats.DEFAULT_BLOCKS:
        blocks -= 2
    if length // blocks * (blocks // 2) < 2:
        return None
    return stats.probability_of_backtest_overfitting(matrix, n_blocks=blocks)


def write_study_report(
    settings: StudySettings,
    study: optuna.Study,
    lockbox: Sequence[LockboxResult] | None,
    storage_text: str,
) -> Path:
    """Write runs/<study>/report.md with its PNGs and return its path."""
    folder = settings.folder
    folder.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    numbers = compute_statistics(trials)
    figures = _figures(folder, trials, numbers)
    lines = [
        f"# Study {settings.name}",
        "",
        f"Verdict: {numbers.line}.",
        "",
        f"- storage: `{storage_text}`; space: `{settings.space.source}`; "
        f"config: `{settings.config or 'configs/default.yaml'}`",
        f"- trials: {_state_counts(trials)}; N = {numbers.n_trials} for the DSR (every configuration tried, "
        "pruned and failed ones included, a retried one once)",
        f"- objective: the interquartile mean of the {settings.seeds} seeds' annualised validation Sharpe "
        "ratios of the last episode (the mean below 4 seeds); higher is better",
        f"- lockbox: the last {settings.lockbox_fraction:.0%} of the usable bars, never seen by a trial",
        "",
        "## Trials",
        "",
        "| trial | state | value | seeds' Sharpe | buy & hold Sharpe | parameters |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for trial in trials:
        if trial.user_attrs.get("surplus"):
            continue
        value = f"{trial.value:.3f}" if trial.value is not None else ""
        seeds = ", ".join(f"{s:.2f}" for s in trial.user_attrs.get("seed_sharpes", []))
        hold = trial.user_attrs.get("buy_and_hold_sharpe")
        params = ", ".join(f"`{k}={_short(v)}`" for k, v in trial_params(trial, settings.space).items())
        note = trial.user_attrs.get("pruned_at") or trial.user_attrs.get("error", "")
        state = trial.state.name.lower() + (f" ({note})" if note else "")
        if trial.system_attrs.get("failed_trial") is not None:
            state += f", retry of {trial.system_attrs['failed_trial']}"
        hold_text = f"{hold:.2f}" if hold is not None else ""
        lines.append(f"| {trial.number} | {state} | {value} | {seeds} | {hold_text} | {params} |")
    lines += ["", "## Parameter importances", "", *_importances(study), ""]
    lines += ["## Seeds", "", *_seed_lines(numbers, settings.seeds), *figures.get("seeds", []), ""]
    lines += ["## Deflated Sharpe ratio of the best trial", "", *_dsr_lines(numbers), ""]
    lines += ["## Probability of backtest overfitting", "", *_pbo_lines(numbers), *figures.get("pbo", []), ""]
    lines += ["## Lockbox", "", *_lockbox_lines(lockbox, settings), ""]
    path = folder / "report.md"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    tmp.replace(path)
    return path


def _state_counts(trials: Sequence[FrozenTrial]) -> str:
    """Return how many trials are in each state, surplus ones left out."""
    counts: dict[str, int] = {}
    for trial in trials:
        if not trial.user_attrs.get("surplus"):
            counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "none"


def _short(value: Any) -> str:
    """Return a value shortly: floats with 4 significant digits."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _importances(study: optuna.Study) -> list[str]:
    """Return the parameter importances (optuna.importance) as table lines, when 2 trials completed."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2:
        return ["Needs 2 complete trials."]
    try:
        importances = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError) as exc:
        return [f"Not computed: {exc}."]
    rows = ["| parameter | importance |", "| --- | --- |"]
    rows += [f"| `{name}` | {value:.3f} |" for name, value in importances.items()]
    return rows


def _seed_lines(numbers: StudyStatistics, n_seeds: int) -> list[str]:
    """Return the best trial's seed spread with its bootstrap intervals."""
    if numbers.best is None:
        return ["No complete trial."]
    scores = numbers.best.user_attrs.get("seed_sharpes", [])
    lines = [
        f"Best trial {numbers.best.number}: seeds' validation Sharpe {', '.join(f'{s:.3f}' for s in scores)}."
    ]
    if numbers.seeds is None:
        return [*lines, f"Intervals need 2 seeds or more ({n_seeds} per trial)."]
    iqm, mean = numbers.seeds.iqm, numbers.seeds.mean
    lines += [
        "",
        f"- IQM {iqm.estimate:.3f}, {iqm.confidence:.0%} interval [{iqm.low:.3f}, {iqm.high:.3f}]",
        f"- mean {mean.estimate:.3f}, {mean.confidence:.0%} interval [{mean.low:.3f}, {mean.high:.3f}]",
        f"- percentile bootstrap over {numbers.seeds.n_seeds} seeds, {numbers.seeds.resamples:,} resamples "
        "(with few seeds the interval is too narrow: docs/STATISTICS.md)",
    ]
    return lines


def _dsr_lines(numbers: StudyStatistics) -> list[str]:
    """Return the DSR and what it was computed from."""
    d = numbers.dsr
    if d is None:
        return [numbers.line + "."]
    return [
        f"DSR {d.dsr:.4f} (threshold {stats.DSR_THRESHOLD}): the best trial's per-bar Sharpe {d.sharpe:.4f} "
        f"over {d.n_returns} validation bars (the seeds' mean bar return) against SR* = {d.benchmark:.4f}, "
        f"the expected best of N = {d.n_trials} unskilled trials with V[SR] = {d.sharpe_variance:.3g} "
        f"(per bar, over the complete trials); skew {d.skew:.3f}, kurtosis {d.kurtosis:.3f}.",
    ]


def _pbo_lines(numbers: StudyStatistics) -> list[str]:
    """Return the PBO and its details."""
    p = numbers.pbo
    if p is None:
        return ["Needs 2 complete trials with validation returns."]
    return [
        f"PBO {p.pbo:.3f} (threshold {stats.PBO_THRESHOLD}) by CSCV over {p.n_trials} complete trials x "
        f"{p.bars_used} validation bars in {p.n_blocks} blocks ({p.n_splits:,} splits); probability of loss "
        f"{p.probability_of_loss:.3f}.",
    ]


def _lockbox_lines(lockbox: Sequence[LockboxResult] | None, settings: StudySettings) -> list[str]:
    """Return validation and lockbox side by side, with buy-and-hold."""
    if settings.lockbox_fraction <= 0.0:
        return ["No lockbox (--lockbox 0)."]
    if not lockbox:
        return ["Not evaluated yet (it runs once the study holds its N trials)."]
    rows = [
        "Each configuration trained on every bar before the lockbox, evaluated on the lockbox once "
        f"({settings.seeds} seeds; Sharpe annualised).",
        "",
        "| trial | validation value | lockbox Sharpe IQM | seeds' lockbox Sharpe | seeds' lockbox return | "
        "buy & hold Sharpe | buy & hold return |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in lockbox:
        rows.append(
            f"| {r.trial} | {r.validation:.3f} | {r.iqm:.3f} | {', '.join(f'{s:.2f}' for s in r.sharpes)} | "
            f"{', '.join(f'{x:+.2%}' for x in r.total_returns)} | {r.buy_and_hold_sharpe:.3f} | "
            f"{r.buy_and_hold_return:+.2%} |"
        )
    return rows


def _figures(folder: Path, trials: Sequence[FrozenTrial], numbers: StudyStatistics) -> dict[str, list[str]]:
    """Draw the seeds' spread and the PBO logits; return the markdown lines that show them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out: dict[str, list[str]] = {}
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("seed_sharpes")]
    if complete:
        fig = Figure(figsize=(8, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for i, trial in enumerate(complete):
            scores = trial.user_attrs["seed_sharpes"]
            ax.scatter([i] * len(scores), scores, color="tab:blue", s=18)
            ax.scatter([i], [float(trial.value or 0.0)], color="black", marker="_", s=200)
        ax.set_xticks(range(len(complete)), [str(t.number) for t in complete])
        ax.set_xlabel("trial")
        ax.set_ylabel("validation Sharpe (annualised)")
        ax.set_title("seeds' validation Sharpe per complete trial (bar: the objective)")
        _save(fig, folder / "seeds.png")
        out["seeds"] = ["", "![seeds](seeds.png)"]
    if numbers.pbo is not None:
        fig = Figure(figsize=(6, 3.5))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.hist(numbers.pbo.logits, bins=30, color="tab:gray")
        ax.axvline(0.0, color="tab:red")
        ax.set_xlabel("logit of the in-sample winner's out-of-sample rank")
        ax.set_ylabel("splits")
        ax.set_title(f"CSCV logits: PBO {numbers.pbo.pbo:.2f} (share at or left of 0)")
        _save(fig, folder / "pbo.png")
        out["pbo"] = ["", "![pbo](pbo.png)"]
    return out


def _save(fig: Any, path: Path) -> None:
    """Write a figure as PNG atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    tmp.replace(path)
