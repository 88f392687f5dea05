"""Check everything a session needs before any process starts: config, keys, data size, resume point."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from launcher.usage import ROOT, UsageError, project_path
from messages.envelope import SessionKey
from services.config import (
    Config,
    ConfigError,
    algorithm_notes,
    config_fingerprint,
    config_to_dict,
    load_config,
)
from services.data.bars import DataError
from services.data.fingerprint import DIGESTS, cache_key
from services.data.splits import split_ranges
from services.data.store import FeatureStore, store_folder
from services.model.checkpoint import CheckpointError, latest_checkpoint, write_json_atomic
from services.transport.auth import write_session_key
from services.transport.curve import LOCAL_KIT, KeysError, SessionKeys, load_client_keys, load_session_keys
from services.transport.endpoints import is_loopback


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepared:
    """A session that passed every check, with its run folder made and its config written."""

    config: Config
    """The resolved config."""
    run_dir: Path
    """The run folder (new, or the one resumed)."""
    resolved: dict[str, object]
    """The config as written to config.yaml, with the run's name."""
    fingerprint: dict[str, str]
    """data_hash and config_hash: what a checkpoint must match to be resumed."""
    first_episode: int
    """The first episode this launch trains (after the last complete one when resuming)."""
    resume_from: str
    """The checkpoint the model restores first ("" for a new run)."""
    session_keys: SessionKeys | None
    """CURVE keys of the monitor sockets, when session.keys_dir is set."""
    key: SessionKey
    """This launch's session key (a new one each launch), written to the run folder."""


def prepare(args: argparse.Namespace) -> Prepared:
    """Run every check of a training launch, then make the run folder and write its config."""
    config = resolve_config(args)
    check_model(config)
    session_keys = load_keys(config)
    data_hash = data_fingerprint(config)
    symbols: tuple[str, ...] = ()
    built = False
    if config.data.universe is not None:
        config, symbols, built = check_universe(config, data_hash)
    else:
        config, built = check_data(config, data_hash)
    fingerprint = {"data_hash": data_hash, "config_hash": config_fingerprint(config)}
    first_episode, resume_from = 1, ""
    if args.resume is not None:
        first_episode, resume_from = resume_point(args.resume, args.force, config, fingerprint)
        run_dir = args.resume.resolve()
    else:
        run_dir = new_run_dir(project_path(config.session.runs_dir), config.name)
    key = write_session_key(run_dir)
    resolved: dict[str, object] = {**config_to_dict(config), "name": run_dir.name}
    session: dict[str, object] = {"resume": resume_from, "first_episode": first_episode, **fingerprint}
    if symbols:
        session["symbols"] = list(symbols)
    if built:
        session["data_built"] = True
    write_json_atomic(run_dir / "session.json", session)
    config_tmp = run_dir / ".config.yaml.tmp"
    config_tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    os.replace(config_tmp, run_dir / "config.yaml")
    return Prepared(
        config=config,
        run_dir=run_dir,
        resolved=resolved,
        fingerprint=fingerprint,
        first_episode=first_episode,
        resume_from=resume_from,
        session_keys=session_keys,
        key=key,
    )


def resolve_config(args: argparse.Namespace) -> Config:
    """Load the config named on the command line (or the resumed run's) with every --set applied."""
    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.source.path={json.dumps(args.data)}")
    if args.name:
        overrides.append(f"name={json.dumps(args.name)}")
    config_path = args.config
    if args.resume is not None:
        if args.config or args.name:
            raise UsageError("--resume takes the run's own config and name; use --set to change keys")
        config_path = args.resume / "config.yaml"
        if not config_path.is_file():
            raise UsageError(f"--resume {args.resume}: not a run folder (no config.yaml)")
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    source = config.data.source.path
    if not any(ch in source for ch in "*?[") and not Path(source).exists():
        raise UsageError(f"data.source.path: {source} does not exist")
    return config


def check_model(config: Config) -> None:
    """Print the algorithm's suggestions and refuse a CUDA device this machine lacks."""
    for note in algorithm_notes(config):
        print(f"note: {note}", flush=True)
    if config.model.device in ("auto", "cpu"):
        return  # the check imports torch, a second or two: only for an explicit cuda device
    from services.model.trading_model import DeviceError, resolve_device

    try:
        resolve_device(config.model.device)
    except DeviceError as exc:
        raise UsageError(str(exc)) from None


def load_keys(config: Config) -> SessionKeys | None:
    """Load the CURVE keys of the monitor sockets; refuse a non-loopback host without them."""
    opts = config.session
    if not is_loopback(f"tcp://{opts.monitor_host}:1") and not opts.keys_dir:
        raise UsageError(
            f"session.monitor_host {opts.monitor_host} is not loopback: create keys with "
            "`python run.py keys` and set session.keys_dir"
        )
    if not opts.keys_dir:
        return None
    keys_dir = project_path(opts.keys_dir)
    try:
        session_keys = load_session_keys(keys_dir)
        load_client_keys(keys_dir / LOCAL_KIT)  # the session's own monitor needs it: fail early
    except KeysError as exc:
        raise UsageError(str(exc)) from None
    return session_keys


def data_fingerprint(config: Config) -> str:
    """Return the data hash: the source files' contents and the feature config (remembered by stat)."""
    digests = project_path(config.data.cache_dir) / DIGESTS if config.data.cache else None
    try:
        return cache_key(config.data.source, config.data.features, digests=digests)
    except (DataError, OSError) as exc:
        raise UsageError(f"data.source.path: {exc}") from None


def check_data(config: Config, data_hash: str) -> tuple[Config, bool]:
    """Read and validate the whole source and check every episode's split before any process starts.

    With data.cache on, the source is processed into the feature store the data actor then opens (a
    store of an earlier session is only opened); with it off, into a temporary store that is dropped.
    A close-only source fills every trade at the next bar's close, so env.fill=close becomes next_open.
    Returns the config and whether the store was built now (the data actor then says so, not "cache").
    """
    opts = config.data
    # No log file exists yet: keep the data services' warnings off stderr (the console's data line says
    # what cleaning dropped; the data actor's log has the rest).
    logging.getLogger("services.data").addHandler(logging.NullHandler())
    with tempfile.TemporaryDirectory(prefix="rl-trading-preflight-") as scratch:
        folder = store_folder(opts.cache_dir, data_hash, root=ROOT) if opts.cache else Path(scratch) / "store"
        try:
            store = FeatureStore.open(folder)
            built = store is None
            if store is None:
                store = FeatureStore.build(folder, opts.source, opts.features, key=data_hash)
        except DataError as exc:
            raise UsageError(str(exc)) from None
        except OSError as exc:
            raise UsageError(f"data.source.path: {exc}") from None
        check_episode_plan(config, store)
        close_only = store.info.close_only
    if close_only and config.env.fill == "close":
        print(
            "note: close-only data: env.fill=close would fill at the close the decision was made on; "
            "filling at the next bar's close (env.fill=next_open)",
            flush=True,
        )
        return dataclasses.replace(config, env=dataclasses.replace(config.env, fill="next_open")), built
    return config, built


def check_universe(config: Config, data_hash: str) -> tuple[Config, tuple[str, ...], bool]:
    """Read and validate every symbol of a multi-symbol source and check every episode's split.

    With data.cache on, the aligned universe is kept in the feature cache, where the data actor then
    opens it (one of an earlier session is only opened). Returns the config (env.fill=close becomes
    next_open on close-only data, as for one series), the universe's symbols, in column order, and
    whether the universe was read from the source now.
    """
    from services.data.universe_cache import cached_universe, universe_key

    opts = config.data
    assert opts.universe is not None
    logging.getLogger("services.data").addHandler(logging.NullHandler())
    folder = None
    if opts.cache:
        folder = store_folder(opts.cache_dir, universe_key(data_hash, opts.universe), root=ROOT)
    try:
        universe, built = cached_universe(opts.source, opts.features, opts.universe, folder)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    except ValueError as exc:
        raise UsageError(f"data.universe: {exc}") from None
    except OSError as exc:
        raise UsageError(f"data.source.path: {exc}") from None
    try:
        warmup = universe.first_tradable_bar()
    except DataError as exc:
        raise UsageError(f"{opts.source.path}: {exc.reason}") from None
    _check_plan(config, len(universe), universe.timestamp, warmup)
    if universe.close_only and config.env.fill == "close":
        print(
            "note: close-only data: env.fill=close would fill at the close the decision was made on; "
            "filling at the next bar's close (env.fill=next_open)",
            flush=True,
        )
        config = dataclasses.replace(config, env=dataclasses.replace(config.env, fill="next_open"))
    return config, universe.symbols, built


def check_episode_plan(config: Config, store: FeatureStore) -> None:
    """Refuse a split that does not fit for every episode this session trains (walk-forward windows)."""
    _check_plan(config, len(store), store.timestamps(), store.info.warmup)


def _check_plan(config: Config, n_bars: int, timestamps: Any, warmup: int) -> None:
    split = config.data.split
    episodes = config.training.episodes if split.walk_forward else 1
    try:
        for episode in range(episodes):
            split_ranges(
                n_bars,
                split,
                episode=episode,
                timestamps_ns=timestamps,
                warmup=warmup,
                min_train_bars=config.env.min_bars,
                min_eval_bars=config.env.min_eval_bars,
            )
    except DataError as exc:
        raise UsageError(f"{config.data.source.path}: {exc.reason}") from None


def resume_point(run_dir: Path, force: bool, config: Config, fingerprint: dict[str, str]) -> tuple[int, str]:
    """Return (first episode, checkpoint path) of a resumed run, refusing a mismatch unless forced."""
    try:
        info = latest_checkpoint(run_dir / "checkpoints")
    except CheckpointError as exc:
        raise UsageError(f"--resume: {exc}") from None
    if info is None:
        raise UsageError(f"--resume {run_dir}: no checkpoint to resume from")
    differ = [
        key.split("_")[0] for key in ("data_hash", "config_hash") if info.meta.get(key) != fingerprint[key]
    ]
    if differ and not force:
        verb = "differ" if len(differ) > 1 else "differs"
        raise UsageError(
            f"--resume {run_dir}: the {' and '.join(differ)} {verb} from checkpoint {info.path.name}; "
            "pass --force to resume anyway"
        )
    first = int(info.meta["episode"]) + (1 if info.meta.get("complete") else 0)
    if first > config.training.episodes:
        raise UsageError(
            f"--resume {run_dir}: all {config.training.episodes} episodes are done; "
            f"raise training.episodes with --set"
        )
    return first, str(info.path)


def new_run_dir(runs_dir: Path, name: str) -> Path:
    """Make the folder of a new run, named after the time when no name is given."""
    if not name:
        name = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir / name
    if run_dir.exists():
        raise UsageError(f"run folder {run_dir} already exists: choose another --name, or --resume it")
    run_dir.mkdir(parents=True)
    return run_dir
