"""`run.py seeds`: train one configuration over S seeds and report the spread with bootstrap intervals.

Seed s trains with training.seed + s in its own session, runs/<name>/seed-<s>/; the summary is the IQM
and the mean of the seeds' last-episode validation Sharpe ratios (annualised) with percentile bootstrap
intervals (services/experiments/stats.py), printed and written to runs/<name>/report.md.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from launcher.forkserver import add_fork_argument, fork_server
from launcher.usage import EXIT_FAILURE, EXIT_OK, ROOT, UsageError, add_set_argument
from services.config import load_config
from services.errors import InputError
from services.experiments import stats
from services.experiments.runner import SessionFailed, SessionResult, run_session
from services.forkserver import ForkClient
from services.session.commands import monitor_command

INTERVAL_SEED = 0
"""Seed of the bootstrap resampling (the same seeds' results give the same intervals)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py seeds`."""
    parser.add_argument("--config", type=Path, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--seeds", type=int, default=3, help="S: sessions, one per seed (default: 3)")
    parser.add_argument("--name", help="run name: the seeds' folders are runs/NAME/seed-<s>")
    add_set_argument(parser, "set one config key for every seed's session (repeat it)")
    add_fork_argument(parser)


def seeds_main(args: argparse.Namespace) -> int:
    """Run the seeds' sessions one after another, then print and write their summary."""
    if args.seeds < 2:
        raise UsageError(f"run.py seeds: --seeds must be at least 2 (an interval needs 2), got {args.seeds}")
    overrides = tuple(args.overrides)
    try:
        config = load_config(args.config, overrides)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    name = args.name or f"seeds-{time.strftime('%Y%m%d-%H%M%S')}"
    runs = Path(config.session.runs_dir)
    folder = (runs if runs.is_absolute() else ROOT / runs) / name
    if folder.exists():
        raise UsageError(f"run.py seeds: {folder} already exists: choose another --name")
    with fork_server(args, lambda line: print(line, flush=True)) as fork:
        return _run_seeds(args, config.training.seed, overrides, folder, fork)


def _run_seeds(
    args: argparse.Namespace,
    base_seed: int,
    overrides: tuple[str, ...],
    folder: Path,
    fork: ForkClient | None,
) -> int:
    """Run the seeds' sessions one after another, then print and write their summary."""
    name = folder.name
    results: list[SessionResult] = []
    for seed in range(args.seeds):
        value = base_seed + seed
        print(
            f"seed {seed} (training.seed={value}): monitor: {monitor_command(folder / f'seed-{seed}')}",
            flush=True,
        )
        try:
            result = run_session(
                args.config, [*overrides, f"training.seed={value}"], folder, f"seed-{seed}", fork=fork
            )
        except SessionFailed as exc:
            print(f"error: {exc}", flush=True)
            return EXIT_FAILURE
        results.append(result)
        print(
            f"seed {seed}: validation Sharpe {result.last.agent['sharpe']:.3f} "
            f"(buy & hold {result.last.buy_and_hold['sharpe']:.3f})",
            flush=True,
        )
    lines = summary_lines(name, results)
    for line in lines[2:]:
        print(line)
    report = folder / "report.md"
    tmp = report.with_name(f".report.md.{os.getpid()}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(report)
    print(f"report: {report}")
    return EXIT_OK


def summary_lines(name: str, results: list[SessionResult]) -> list[str]:
    """Return the markdown of the seeds' spread: each seed, the IQM and the mean with intervals."""
    sharpes = [float(r.last.agent["sharpe"]) for r in results]
    returns = [float(r.last.agent["total_return"]) for r in results]
    summary = stats.seed_summary(sharpes, seed=INTERVAL_SEED)
    hold = results[0].last.buy_and_hold
    lines = [f"# Seeds of {name}", ""]
    lines += ["| seed | validation Sharpe | total return | run |", "| --- | --- | --- | --- |"]
    lines += [
        f"| {i} | {s:.3f} | {x:+.2%} | `{r.run_dir}` |"
        for i, (s, x, r) in enumerate(zip(sharpes, returns, results, strict=True))
    ]
    iqm, mean = summary.iqm, summary.mean
    lines += [
        "",
        f"- IQM of the Sharpe ratios {iqm.estimate:.3f}, {iqm.confidence:.0%} interval "
        f"[{iqm.low:.3f}, {iqm.high:.3f}]",
        f"- mean {mean.estimate:.3f}, {mean.confidence:.0%} interval [{mean.low:.3f}, {mean.high:.3f}]",
        f"- buy & hold on the same bars: Sharpe {hold['sharpe']:.3f}, "
        f"total return {hold['total_return']:+.2%}",
        f"- percentile bootstrap over {summary.n_seeds} seeds, {summary.resamples:,} resamples; "
        "with few seeds the interval is too narrow (docs/STATISTICS.md)",
    ]
    return lines
