"""`run.py tune`: search a config's hyperparameters with an Optuna study of whole sessions over seeds.

The study lives in runs/<study>/study.db (SQLite) unless --storage names another SQLAlchemy URL; with a
PostgreSQL URL, `run.py tune` processes on several hosts share it. Rerunning the same command resumes it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from pathlib import Path

import optuna
import zmq
from optuna.trial import TrialState

from launcher.forkserver import add_fork_argument, fork_server
from launcher.usage import EXIT_FAILURE, EXIT_OK, ROOT, UsageError, add_set_argument
from messages import StudyFinished, StudyStarted
from services.config import load_config
from services.errors import InputError
from services.experiments import storage as stores
from services.experiments import study as studies
from services.experiments.broadcast import StudyBroadcast
from services.experiments.lockbox import run_lockbox
from services.experiments.space import read_space
from services.experiments.study_report import write_study_report
from services.forkserver import ForkClient
from services.session.commands import monitor_command

logger = logging.getLogger(__name__)

JOIN_POLL_S = 0.5
"""How often the main thread looks up from waiting for its workers (so Ctrl-C is seen)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py tune`."""
    parser.add_argument("--config", type=Path, help="base YAML config (default: configs/default.yaml)")
    parser.add_argument("--space", type=Path, required=True, help="search space YAML (see configs/tune.yaml)")
    parser.add_argument("--trials", type=int, required=True, help="N: run until the study holds N trials")
    parser.add_argument("--study", required=True, help="study name; its folder is runs/STUDY/")
    parser.add_argument("--storage", help="SQLAlchemy URL (default: sqlite in runs/STUDY/study.db)")
    parser.add_argument("--workers", type=int, default=1, help="trials at once in this process (default: 1)")
    parser.add_argument("--seeds", type=int, default=3, help="S: sessions per trial (default: 3)")
    parser.add_argument(
        "--lockbox", type=float, default=0.15, help="last share of the data no trial sees (default: 0.15)"
    )
    parser.add_argument("--top", type=int, default=3, help="trials evaluated on the lockbox (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default: 0)")
    add_fork_argument(parser)
    add_set_argument(parser, "set one config key for every session of the study (repeat it)")


def tune_main(args: argparse.Namespace) -> int:
    """Check the inputs, open the study, run the workers, then the lockbox, and write the report."""
    settings = _settings(args)
    url = args.storage or stores.default_storage(settings.folder)
    if args.storage is None:
        settings.folder.mkdir(parents=True, exist_ok=True)
    try:
        study = stores.open_study(settings, stores.storage_for(url))
    except InputError as exc:
        raise UsageError(str(exc)) from None
    shown = stores.redacted(url)
    done = len(studies.finished(study.get_trials(deepcopy=False)))
    _say(
        f"study {settings.name}: {done}/{settings.trials} trials finished; storage {shown}; "
        f"runs in {settings.folder}"
    )
    settings.folder.mkdir(parents=True, exist_ok=True)
    events = StudyBroadcast(settings.name, settings.folder)
    try:
        events.start()
    except (RuntimeError, zmq.ZMQError) as exc:
        raise UsageError(f"study {settings.name}: cannot publish its events: {exc}") from None
    _say(f"study {settings.name}: monitor: {monitor_command(settings.folder)}")
    events.publish(
        StudyStarted(
            name=settings.name,
            run_dir=str(settings.folder),
            trials=settings.trials,
            seeds=settings.seeds,
            episodes=settings.episodes,
            finished=done,
            storage=shown,
            sender=studies.SENDER,
        )
    )
    status, reason, report = "failed", "", ""
    try:
        with fork_server(args, _say) as fork:
            code, report = _search(settings, study, shown, args.workers, fork, events)
        status = {EXIT_OK: "completed", 130: "stopped"}.get(code, "failed")
        reason = "interrupted" if code == 130 else ""
        return code
    except KeyboardInterrupt:
        status, reason = "stopped", "interrupted"
        raise
    except BaseException as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        number, value = studies.best_so_far(study)
        finished = len(studies.finished(study.get_trials(deepcopy=False)))
        events.publish(
            StudyFinished(
                name=settings.name,
                status=status,
                finished=finished,
                best_number=number,
                best_value=value,
                report=report,
                reason=reason,
                sender=studies.SENDER,
            )
        )
        events.close()


def _search(
    settings: stores.StudySettings,
    study: optuna.Study,
    shown: str,
    workers: int,
    fork: ForkClient | None,
    events: StudyBroadcast,
) -> tuple[int, str]:
    """Run the workers until the study holds N trials, then the lockbox; write the report.

    Returns the exit status and the report's path ("" when none was written).
    """
    stop = threading.Event()
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            studies.Worker(settings, study, stop, _say, index, fork, events).run()
        except Exception as exc:  # a worker's failure ends this process's search with its reason
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(i,), name=f"tune-{i}") for i in range(workers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            while thread.is_alive():
                thread.join(JOIN_POLL_S)
    except KeyboardInterrupt:
        _say("interrupted: stopping the running trials (they run again when the study is resumed)")
        stop.set()
        for thread in threads:
            thread.join()
        return 130, str(write_study_report(settings, study, None, shown))
    if errors:
        print(f"error: study {settings.name}: {errors[0]}", file=sys.stderr)
        return EXIT_FAILURE, ""
    lockbox = None
    if settings.lockbox_fraction > 0.0 and not stop.is_set():
        events.doing("waiting for the last trials")
        _wait_for_running(study, stop)
        events.doing("lockbox")
        try:
            lockbox = run_lockbox(settings, study, _say, stop, fork)
        except KeyboardInterrupt:
            stop.set()
            return 130, ""
    report = write_study_report(settings, study, lockbox, shown)
    _say(f"study {settings.name}: report {report}")
    return EXIT_OK, str(report)


def _wait_for_running(study: optuna.Study, stop: threading.Event) -> None:
    """Wait until no trial of the study runs (other workers' last trials) before the lockbox."""
    while any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)) and not stop.is_set():
        studies.fail_stale(study)
        stop.wait(studies.POLL_S)


def _settings(args: argparse.Namespace) -> stores.StudySettings:
    """Return the study's settings from the command line, or raise UsageError in one line."""
    limits = (("--trials", args.trials, 1), ("--workers", args.workers, 1), ("--seeds", args.seeds, 1))
    for flag, value, low in (*limits, ("--top", args.top, 0)):
        if value < low:
            raise UsageError(f"run.py tune: {flag} must be at least {low}, got {value}")
    if not 0.0 <= args.lockbox < 1.0:
        raise UsageError(f"run.py tune: --lockbox must be in [0, 1), got {args.lockbox}")
    if not args.study or "/" in args.study or args.study.startswith("."):
        raise UsageError(f"run.py tune: --study must be a plain name, got {args.study!r}")
    overrides = tuple(args.overrides)
    try:
        config = load_config(args.config, overrides)
        space = read_space(args.space, args.config, overrides)
    except InputError as exc:
        raise UsageError(str(exc)) from None
    runs = Path(config.session.runs_dir)
    runs = runs if runs.is_absolute() else ROOT / runs
    return stores.StudySettings(
        name=args.study,
        config=args.config,
        overrides=overrides,
        space=space,
        trials=args.trials,
        seeds=args.seeds,
        base_seed=config.training.seed,
        episodes=config.training.episodes,
        lockbox_fraction=args.lockbox,
        top_k=args.top,
        folder=runs / args.study,
        sampler_seed=args.seed,
    )


def _say(line: str) -> None:
    """Print one progress line at once (plain lines: the study's log)."""
    print(line, flush=True)
