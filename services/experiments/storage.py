"""Open the storage of a study and the study in it: SQLite by default, any SQLAlchemy URL otherwise.

A study's identity (its space, seeds, lockbox share and episodes) is stored with it, so that a rerun of
the same command resumes it and a different one under the same name is refused. Trials keep a heartbeat
in the storage; a trial whose worker died (kill -9) is failed after GRACE_S and retried once with the
same parameters (Optuna's RetryHeartbeatStaleTrialCallback).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from services.errors import InputError
from services.experiments.space import SearchSpace

HEARTBEAT_S = 5
"""Interval of a running trial's heartbeat in the storage."""
GRACE_S = 20
"""A running trial without heartbeat for this long is failed and retried with the same parameters."""
PRUNER_STARTUP_TRIALS = 2
"""Trials that complete before the median pruner prunes any."""
SCHEMA_ATTEMPTS = 4
"""Times a worker opens a new storage whose tables another worker is creating at the same moment."""


class StudyError(InputError, ValueError):
    """A study that cannot be opened or continued; the text names what and where."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StudySettings:
    """What a study runs: the config, the space, the budget, the seeds and where it is stored."""

    name: str
    """The study's name in the storage and its folder runs/<name>/."""
    config: Path | None
    """The base config file (None: configs/default.yaml)."""
    overrides: tuple[str, ...]
    """--set overrides over the config, applied to every session of the study."""
    space: SearchSpace
    """The search space."""
    trials: int
    """N: the study runs until it holds N complete or pruned trials."""
    seeds: int
    """S: sessions per trial, seeds training.seed + 0 .. S - 1."""
    base_seed: int
    """training.seed of the config: seed s of a trial trains with base_seed + s."""
    episodes: int
    """training.episodes of the config: the pruner gets one value per seed and episode."""
    lockbox_fraction: float
    """The last share of the usable bars no trial sees (0: no lockbox)."""
    top_k: int
    """Trials trained and evaluated on the lockbox after the search."""
    folder: Path
    """runs/<name>/: trial folders, the lockbox folder and the report."""
    sampler_seed: int
    """Seed of the TPE sampler (plus the worker thread's index)."""


def default_storage(folder: Path) -> str:
    """Return the SQLite URL of a study's own storage file, runs/<study>/study.db."""
    return f"sqlite:///{folder.resolve() / 'study.db'}"


def driver_url(url: str) -> str:
    """Return a storage URL with its driver: a bare postgresql:// URL uses psycopg2 (the pinned driver)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg2://" + url.removeprefix(bare)
    return url


def storage_for(url: str, attempts: int = SCHEMA_ATTEMPTS) -> RDBStorage:
    """Open an RDB storage with heartbeats and the retry of stale trials, or raise StudyError.

    Workers started together on a new database race to create its tables; the one that loses (an
    integrity error from the catalogue) opens it again once the other has made them.
    """
    from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

    url = driver_url(url)
    engine: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 5}
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(
                    url,
                    engine_kwargs=engine,
                    heartbeat_interval=HEARTBEAT_S,
                    grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(),
                )
        except IntegrityError as exc:
            if attempt + 1 == attempts:
                raise StudyError(
                    f"--storage {redacted(url)}: cannot open the storage: {first_line(exc)}"
                ) from None
            threading.Event().wait(0.5 * (attempt + 1))
        except (SQLAlchemyError, ArgumentError, ValueError, ImportError) as exc:
            raise StudyError(
                f"--storage {redacted(url)}: cannot open the storage: {first_line(exc)}"
            ) from None
    raise StudyError(f"--storage {redacted(url)}: cannot open the storage")


def redacted(url: str) -> str:
    """Return a storage URL without its password."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def first_line(exc: BaseException) -> str:
    """Return the first meaningful line of a driver's message."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def study_attrs(settings: StudySettings) -> dict[str, Any]:
    """Return what makes two runs of `run.py tune` the same study (compared when it is resumed)."""
    return {
        "space": settings.space.fingerprint(),
        "seeds": settings.seeds,
        "lockbox_fraction": settings.lockbox_fraction,
        "episodes": settings.episodes,
    }


def open_study(settings: StudySettings, storage: RDBStorage) -> optuna.Study:
    """Create the study or load it; a study of that name with another space or settings is refused."""
    from sqlalchemy.exc import SQLAlchemyError

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    wanted = study_attrs(settings)
    try:
        existing = optuna.load_study(study_name=settings.name, storage=storage)
    except KeyError:
        existing = None
    except SQLAlchemyError as exc:
        raise StudyError(f"study {settings.name}: the storage fails: {first_line(exc)}") from None
    if existing is not None:
        stored = {key: existing.user_attrs.get(key) for key in wanted}
        for key, value in wanted.items():
            if stored[key] is not None and stored[key] != value:
                what = "search space" if key == "space" else key
                raise StudyError(
                    f"study {settings.name} exists with another {what} ({settings.space.source} differs from "
                    "the stored one): choose another --study or use the same settings"
                )
    study = optuna.create_study(
        study_name=settings.name,
        storage=storage,
        direction="maximize",
        load_if_exists=True,
        sampler=sampler(settings.sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=PRUNER_STARTUP_TRIALS),
    )
    for key, value in wanted.items():
        if study.user_attrs.get(key) is None:
            study.set_user_attr(key, value)
    return study


def sampler(seed: int) -> optuna.samplers.TPESampler:
    """Return the study's TPE sampler; constant_liar keeps parallel workers off each other's points."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
