"""Train one stable-baselines3 trading model with an actor system; attach monitors; generate data.

    python run.py [--config FILE | --default] [--data FILE] [--set key.path=value ...] [--name NAME]
    python run.py monitor --connect tcp://HOST:PORT [--json] [--once]
    python run.py generate-data --rows N --seed S --out FILE

This is the one place where objects are created and wired. Exit status: 0 success, 2 bad usage,
config or data, 1 runtime failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import yaml

ROOT = Path(__file__).resolve().parent
RUN_PY = ROOT / "run.py"
ACTOR_KINDS = ("monitor", "data", "env", "model")
"""Start order of the actor processes; they stop in reverse (the model first)."""
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

logger = logging.getLogger("run")


class UsageError(Exception):
    """Bad command line, config or data: exit status 2 with one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# Logging.


class _OneLineFormatter(logging.Formatter):
    """One line per record on the console; tracebacks go to the log file only."""

    def format(self, record: logging.LogRecord) -> str:
        line = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            line = f"{line}: {type(exc).__name__}: {exc}"
        return self._fmt % {"levelname": record.levelname, "message": line} if self._fmt else line


def _configure_logging(log_file: Path | None, *, stderr_level: int, prefix: str = "") -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(stderr_level)
    console.setFormatter(_OneLineFormatter(f"{prefix}%(levelname)s %(message)s"))
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, encoding="utf-8")
        fh.setLevel(logging.INFO)
        fh.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
        root.addHandler(fh)
    for noisy in ("matplotlib", "PIL", "h5py"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# The training session (launcher).


def _train_parser() -> _Parser:
    parser = _Parser(prog="run.py", description="Train one trading model with the actor system.")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", type=Path, help="YAML config (default: configs/default.yaml)")
    group.add_argument("--default", action="store_true", help="use configs/default.yaml explicitly")
    parser.add_argument("--data", help="data file, folder or glob (overrides data.source.path)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE")
    parser.add_argument("--name", help="run name: the run folder is runs/NAME")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue runs/NAME from its last checkpoint"
    )
    parser.add_argument("--force", action="store_true", help="resume even if data or config differ")
    return parser


def _resolve_config(args: argparse.Namespace) -> Any:
    from services.config import ConfigError, load_config

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


def _fingerprint(config: Any) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the data files and the model-relevant config."""
    from services.config import config_fingerprint
    from services.data.fingerprint import cache_key
    from services.data.reader import DataError

    try:
        data_hash = cache_key(config.data.source, config.data.features)
    except (DataError, OSError) as exc:
        raise UsageError(f"data.source.path: {exc}") from None
    return {"data_hash": data_hash, "config_hash": config_fingerprint(config)}


def _check_rows(config: Any, data_hash: str) -> None:
    """Refuse a window and split the data cannot hold before any process starts.

    The row count comes from the feature store of a previous session, else from counting the lines of
    plain CSV files (a fast byte scan); other sources are checked by the data actor.
    """
    from services.data.features import feature_warmup
    from services.data.reader import DataError, list_source_files
    from services.data.splits import split_ranges

    if config.data.split.mode == "date":
        return
    meta = Path(config.data.cache_dir)
    meta = (meta if meta.is_absolute() else ROOT / meta) / data_hash / "meta.json"
    if meta.is_file():
        rows = int(json.loads(meta.read_text())["rows"])
    else:
        files = list_source_files(config.data.source.path)
        if not files or any(f.suffix.lower() != ".csv" for f in files):
            return
        rows = sum(_count_lines(path) - 1 for path in files)
    try:
        split_ranges(
            rows,
            config.data.split,
            warmup=feature_warmup(config.data.features),
            min_bars=config.env.window + config.env.episode_length,
        )
    except DataError as exc:
        raise UsageError(
            f"{config.data.source.path}: {exc} (env.window {config.env.window}, "
            f"env.episode_length {config.env.episode_length})"
        ) from None


def _count_lines(path: Path) -> int:
    """Count the newlines of a file in 1 MiB blocks."""
    count = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            count += block.count(b"\n")
    return count


def _resume_point(args: argparse.Namespace, config: Any, fingerprint: dict[str, str]) -> tuple[int, str]:
    """Return (first episode, checkpoint path) of a resumed run, refusing a mismatch unless --force."""
    from services.model.checkpoint import CheckpointError, latest_checkpoint

    try:
        info = latest_checkpoint(args.resume / "checkpoints")
    except CheckpointError as exc:
        raise UsageError(f"--resume: {exc}") from None
    if info is None:
        raise UsageError(f"--resume {args.resume}: no checkpoint to resume from")
    differ = [
        key.split("_")[0] for key in ("data_hash", "config_hash") if info.meta.get(key) != fingerprint[key]
    ]
    if differ and not args.force:
        verb = "differ" if len(differ) > 1 else "differs"
        raise UsageError(
            f"--resume {args.resume}: the {' and '.join(differ)} {verb} from checkpoint {info.path.name}; "
            "pass --force to resume anyway"
        )
    first = int(info.meta["episode"]) + (1 if info.meta.get("complete") else 0)
    if first > config.training.episodes:
        raise UsageError(
            f"--resume {args.resume}: all {config.training.episodes} episodes are done; "
            f"raise training.episodes with --set"
        )
    return first, str(info.path)


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    if not name:
        name = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = runs_dir / name
    if run_dir.exists():
        raise UsageError(f"run folder {run_dir} already exists: choose another --name, or --resume it")
    run_dir.mkdir(parents=True)
    return run_dir


def train(argv: Sequence[str]) -> int:
    """Run a whole session: hub, actor processes, episode loop, summary."""
    import zmq

    from actors.ports import Ports
    from actors.session import Abort, Outcome, SessionActor
    from launcher.supervisor import Supervisor
    from messages import EvaluationReport, SessionStarted
    from services.config import config_to_dict
    from services.model.checkpoint import write_json_atomic
    from services.runtime import SystemClock, rss_bytes
    from services.session.console import format_duration, format_eval_table
    from services.session.recorder import RunRecorder, write_eval_csv
    from services.session.state import SessionState
    from services.transport.hub import EventHub
    from services.transport.sockets import Endpoints, Publisher, ipc_folder, is_loopback

    args = _train_parser().parse_args(argv)
    config = _resolve_config(args)
    opts = config.session
    if not is_loopback(f"tcp://{opts.monitor_host}:1") and not opts.keys_dir:
        raise UsageError(
            f"session.monitor_host {opts.monitor_host} is not loopback: create keys with "
            "`python run.py keys` and set session.keys_dir"
        )
    session_keys = None
    if opts.keys_dir:
        from services.transport.curve import LOCAL_KIT, KeysError, load_client_keys, load_session_keys

        keys_dir = Path(opts.keys_dir) if Path(opts.keys_dir).is_absolute() else ROOT / opts.keys_dir
        try:
            session_keys = load_session_keys(keys_dir)
            load_client_keys(keys_dir / LOCAL_KIT)  # the session's own monitor needs it: fail early
        except KeysError as exc:
            raise UsageError(str(exc)) from None
    fingerprint = _fingerprint(config)
    _check_rows(config, fingerprint["data_hash"])
    first_episode, resume_from = 1, ""
    if args.resume is not None:
        first_episode, resume_from = _resume_point(args, config, fingerprint)
        run_dir = args.resume.resolve()
    else:
        runs_dir = Path(opts.runs_dir)
        run_dir = _new_run_dir(runs_dir if runs_dir.is_absolute() else ROOT / runs_dir, config.name)
    name = run_dir.name
    _configure_logging(run_dir / "logs" / "session.log", stderr_level=logging.WARNING)
    resolved = config_to_dict(config)
    resolved["name"] = name
    write_json_atomic(
        run_dir / "session.json", {"resume": resume_from, "first_episode": first_episode, **fingerprint}
    )
    config_tmp = run_dir / ".config.yaml.tmp"
    config_tmp.write_text(yaml.safe_dump(resolved, sort_keys=False))
    os.replace(config_tmp, run_dir / "config.yaml")

    ipc = ipc_folder(run_dir)
    state = SessionState()
    recorder = RunRecorder(run_dir)
    hub = EventHub(
        name=name,
        events_in=f"ipc://{ipc}/events_in.sock",
        monitor_host=opts.monitor_host,
        events_port=opts.events_port,
        session_port=opts.session_port,
        max_bytes=opts.max_message_bytes,
        sinks=[state.apply, recorder],
        snapshot=state.to_dict,
        curve=session_keys.curve if session_keys else None,
        allowed_keys_dir=session_keys.allowlist if session_keys else None,
    )
    started = time.monotonic()
    try:
        hub.start()
    except (RuntimeError, zmq.ZMQError) as exc:
        raise UsageError(f"session: {exc}") from None
    endpoints = Endpoints(
        events_in=f"ipc://{ipc}/events_in.sock",
        events_out=hub.events_out,
        session=hub.session,
        data=f"ipc://{ipc}/data.sock",
        env=f"ipc://{ipc}/env.sock",
        model=f"ipc://{ipc}/model.sock",
        ipc_dir=str(ipc),
    )
    endpoints.write(run_dir / "endpoints.json")
    print(f"session {name}: run folder {run_dir}", flush=True)
    print(f"monitor: python run.py monitor --connect {hub.session}", flush=True)

    publisher = Publisher(endpoints.events_in, sender="session")
    supervisor = Supervisor(RUN_PY, run_dir, ACTOR_KINDS)
    reports: list[EvaluationReport] = []

    def on_report(report: EvaluationReport) -> None:
        path = write_eval_csv(run_dir, report)
        logger.info("episode %d evaluation written to %s", report.episode, path.name)
        reports.append(report)

    clock = SystemClock()

    def heartbeat_age(actor: str) -> float:
        return state.heartbeat_age(actor, clock.time())

    max_bytes = opts.max_message_bytes
    ports = Ports(
        publisher=lambda: Publisher(endpoints.events_in, sender="session"),
        clients={
            kind: _client_factory(getattr(endpoints, kind), max_bytes, opts.request_timeout_s, "session")
            for kind in ("data", "env", "model")
        },
    )
    signals = _SignalLatch()
    signals.install()
    exit_code = EXIT_FAILURE
    session_ref = None
    try:
        time.sleep(0.2)  # let the PUB connect before the first event
        publisher.publish(
            SessionStarted(
                name=name,
                run_dir=str(run_dir),
                monitor=hub.session,
                episodes=config.training.episodes,
                steps_per_episode=config.training.steps_per_episode,
                config=resolved,
                sender="session",
            )
        )
        supervisor.start_all()
        failure = _wait_started(state, supervisor, opts.start_timeout_s, signals)
        if failure:
            raise RuntimeError(failure)
        outcome = Outcome()
        session_ref = SessionActor.start(
            outcome=outcome,
            session_name=name,
            episodes=config.training.episodes,
            first_episode=first_episode,
            steps_per_episode=config.training.steps_per_episode,
            ports=ports,
            clock=clock,
            request_timeout_s=opts.request_timeout_s,
            hang_timeout_s=opts.hang_timeout_s,
            heartbeat_age=heartbeat_age,
            on_report=on_report,
            supervised=True,
        )
        watch = _Watch(supervisor, state, session_ref, publisher, opts, run_dir, clock)
        while not outcome.done.wait(0.2):
            if signals.count >= 2:
                print("second interrupt: stopping at once", file=sys.stderr, flush=True)
                supervisor.kill_all()
                shutil.rmtree(ipc, ignore_errors=True)
                os._exit(130)
            if signals.count == 1 and not watch.aborted:
                watch.aborted = True
                print("interrupt: finishing the current piece, then stopping", file=sys.stderr, flush=True)
                session_ref.tell(Abort(reason="interrupted", status="stopped"))
            if outcome.status == "running" and not watch.aborted:
                watch.check()
        supervisor.wait_all(timeout_s=15)
        exit_code = {"completed": EXIT_OK, "stopped": EXIT_OK}.get(outcome.status, EXIT_FAILURE)
        if outcome.status == "failed":
            exit_code = EXIT_USAGE if outcome.input_error else EXIT_FAILURE
            line = outcome.reason if outcome.input_error else f"session failed: {outcome.reason}"
            print(f"error: {line}", file=sys.stderr, flush=True)
        _print_summary(
            name,
            run_dir,
            outcome,
            reports,
            state,
            time.monotonic() - started,
            rss_bytes(),
            format_eval_table,
            format_duration,
        )
        _write_report(run_dir, name, state.to_dict()["model"]["model_id"])
    except RuntimeError as exc:
        print(f"session {name} failed: {exc}", file=sys.stderr, flush=True)
        logger.exception("session failed")
        supervisor.kill_all()
        exit_code = EXIT_FAILURE
    finally:
        if session_ref is not None:
            session_ref.stop(block=False)
        publisher.close()
        time.sleep(0.1)
        hub.stop()
        recorder.close()
        shutil.rmtree(ipc, ignore_errors=True)
        signals.uninstall()
    return exit_code


def _client_factory(endpoint: str, max_bytes: int, timeout_s: float, sender: str) -> Any:
    """Return a factory of request clients to one endpoint (called in the thread that uses them)."""
    from services.transport.sockets import Client

    return lambda: Client(endpoint, max_bytes=max_bytes, timeout_s=timeout_s, sender=sender)


class _Watch:
    """Supervise the actor processes one-for-one: restart the dead, kill and restart the hung."""

    def __init__(
        self,
        supervisor: Any,
        state: Any,
        session_ref: Any,
        publisher: Any,
        opts: Any,
        run_dir: Path,
        clock: Any,
    ) -> None:
        self.supervisor = supervisor
        self.state = state
        self.session_ref = session_ref
        self.publisher = publisher
        self.opts = opts
        self.run_dir = run_dir
        self.clock = clock
        self.aborted = False
        self.restarts: dict[str, list[float]] = {kind: [] for kind in ACTOR_KINDS}
        self.started = {kind: clock.time() for kind in ACTOR_KINDS}

    def check(self) -> None:
        """Restart every actor whose process ended; kill every actor whose heartbeat stopped."""
        from actors.session import Abort, Restarted
        from messages import ActorRestarted

        now = self.clock.monotonic()
        for kind, code in self.supervisor.exited():
            reason = (
                f"process exited with status {code}" if code >= 0 else f"process killed by signal {-code}"
            )
            recent = [t for t in self.restarts[kind] if now - t < 60.0]
            if len(recent) >= self.opts.max_restarts_per_minute:
                self.aborted = True
                why = f"{kind} actor died {len(recent) + 1} times within a minute ({reason}); giving up"
                logger.error("%s", why)
                self.session_ref.tell(Abort(reason=why, status="failed"))
                return
            self.restarts[kind] = [*recent, now]
            logger.warning("%s actor died (%s): restarting it", kind, reason)
            if kind == "model":
                self._resume_from_latest()
            process = self.supervisor.restart(kind)
            self.started[kind] = self.clock.time()
            total = sum(len(v) for v in self.restarts.values())
            self.publisher.publish(
                ActorRestarted(kind=kind, pid=process.pid, restarts=total, reason=reason, sender="session")
            )
            self.session_ref.tell(Restarted(kind))
        wall = self.clock.time()
        for kind in ACTOR_KINDS:
            if self.supervisor.processes[kind].exit_code() is not None:
                continue
            since_start = wall - self.started[kind]
            age = self.state.heartbeat_age(kind, wall)
            if age > since_start:  # no heartbeat from this process yet: it is still starting
                if since_start <= self.opts.start_timeout_s:
                    continue
                why = f"did not start within {self.opts.start_timeout_s:g} s"
            elif age > self.opts.hang_timeout_s:
                why = f"no heartbeat for {age:.0f} s"
            else:
                continue
            logger.warning("%s actor hung (%s): killing it", kind, why)
            self.supervisor.kill(kind)
            self.started[kind] = wall

    def _resume_from_latest(self) -> None:
        """Point session.json at the last checkpoint so the new model process restores it."""
        from services.model.checkpoint import latest_checkpoint, write_json_atomic

        info = latest_checkpoint(self.run_dir / "checkpoints")
        session_file = self.run_dir / "session.json"
        data = json.loads(session_file.read_text())
        data["resume"] = str(info.path) if info is not None else ""
        write_json_atomic(session_file, data)


class _SignalLatch:
    """Count SIGINT/SIGTERM: the first stops the session cleanly, the second at once."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


def _wait_started(state: Any, supervisor: Any, timeout_s: float, signals: _SignalLatch) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        actors = state.to_dict()["actors"]
        if all(kind in actors for kind in ACTOR_KINDS):
            return ""
        for kind, code in supervisor.exited():
            return f"{kind} actor process exited with status {code} while starting (see its log)"
        if signals.count:
            return "interrupted while starting"
        time.sleep(0.05)
    missing = [k for k in ACTOR_KINDS if k not in state.to_dict()["actors"]]
    return f"actor(s) {', '.join(missing)} did not start within {timeout_s:g} s"


def _write_report(run_dir: Path, name: str, model_id: str) -> None:
    """Write report.md and its plots from every evaluation the run has (resumes included)."""
    from services.session.report import write_report

    by_episode: dict[int, dict[str, Any]] = {}
    with (run_dir / "events.jsonl").open(encoding="utf-8") as fh:
        for line in fh:
            if '"EvaluationFinished"' not in line:
                continue
            event = json.loads(line)
            by_episode[event["episode"]] = {
                "episode": event["episode"],
                "agent": event["agent"],
                "buy_and_hold": event["buy_and_hold"],
            }
            model_id = model_id or event.get("model_id", "")
    if not by_episode:
        return
    try:
        path = write_report(run_dir, name=name, model_id=model_id, evaluations=list(by_episode.values()))
    except Exception as exc:
        logger.exception("report failed")
        print(f"report: not written ({type(exc).__name__}: {exc})", file=sys.stderr, flush=True)
        return
    print(f"report: {path}", flush=True)


def _print_summary(
    name: str,
    run_dir: Path,
    outcome: Any,
    reports: list[Any],
    state: Any,
    seconds: float,
    launcher_rss: int,
    format_eval_table: Any,
    format_duration: Any,
) -> None:
    print("", flush=True)
    for report in reports:
        print(format_eval_table(report.episode, report.agent, report.buy_and_hold))
        print("")
    snapshot = state.to_dict()
    model_id = snapshot["model"]["model_id"]
    print(
        f"model {model_id or '-'}: created {snapshot['model']['created']} time(s), "
        f"restored {snapshot['model'].get('restored', 0)} time(s), "
        f"reused {snapshot['model']['reused']} time(s)"
    )
    print(
        "process RSS: launcher "
        + f"{launcher_rss / 2**20:.0f} MB, "
        + ", ".join(
            f"{kind} {snapshot['actors'].get(kind, {}).get('rss_bytes', 0) / 2**20:.0f} MB"
            for kind in ACTOR_KINDS
        )
    )
    reason = f" ({outcome.reason})" if outcome.reason else ""
    print(
        f"session {name} {outcome.status}{reason} in {format_duration(seconds)}; outputs in {run_dir}",
        flush=True,
    )


# The actor processes.


def actor_main(argv: Sequence[str]) -> int:
    """Host one actor in this process until it stops: `run.py _actor KIND --run-dir DIR`."""
    parser = _Parser(prog="run.py _actor")
    parser.add_argument("kind", choices=ACTOR_KINDS)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    kind, run_dir = args.kind, args.run_dir
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Failed requests reach the console as events and the launcher's verdict; only crashes print here.
    _configure_logging(run_dir / "logs" / f"{kind}.log", stderr_level=logging.ERROR, prefix=f"[{kind}] ")

    from actors.base import ActorExit
    from services.config import config_from_dict, read_yaml
    from services.transport.sockets import Endpoints

    config = config_from_dict(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    endpoints = Endpoints.from_dict(json.loads((run_dir / "endpoints.json").read_text()))
    note = ActorExit()
    ref = _build_actor(kind, config, endpoints, run_dir, note)
    signal.signal(signal.SIGTERM, lambda signum, frame: ref.stop(block=False))
    parent = os.getppid()
    while not note.event.wait(1.0):
        if os.getppid() != parent:
            logger.warning("%s: the launcher is gone; stopping", kind)
            ref.stop(block=False)
    return EXIT_FAILURE if note.crashed else EXIT_OK


def _build_actor(kind: str, config: Any, endpoints: Any, run_dir: Path, note: Any) -> Any:
    from actors.ports import Ports
    from services.runtime import PsutilProbe, SystemClock
    from services.transport.sockets import Publisher, Server

    opts = config.session
    max_bytes = opts.max_message_bytes
    common: dict[str, Any] = {
        "clock": SystemClock(),
        "probe": PsutilProbe(),
        "heartbeat_s": opts.heartbeat_s,
        "exit_note": note,
    }

    def ports(
        server: str | None, clients: Sequence[str] = (), timeout_s: float = opts.request_timeout_s
    ) -> Ports:
        return Ports(
            server=(lambda: Server(getattr(endpoints, server), max_bytes=max_bytes, name=kind))
            if server
            else None,
            publisher=lambda: Publisher(endpoints.events_in, sender=kind),
            clients={c: _client_factory(getattr(endpoints, c), max_bytes, timeout_s, kind) for c in clients},
        )

    if kind == "data":
        from actors.data import DataActor
        from services.data.dataset import DatasetService

        service = DatasetService(
            config.data,
            window=config.env.window,
            episode_length=config.env.episode_length,
            cache_root=ROOT,
            run_dir=run_dir,
        )
        return DataActor.start(
            service=service,
            block_rows=config.data.block_rows,
            ack_timeout_s=opts.request_timeout_s,
            ports=ports("data", ["env"]),
            **common,
        )
    if kind == "env":
        from actors.environment import EnvActor
        from services.env.factory import VecEnvFactory

        env_factory = VecEnvFactory(config.env, seed=config.training.seed)
        return EnvActor.start(factory=env_factory, ports=ports("env"), **common)
    if kind == "model":
        from actors.model import ModelActor
        from services.model.checkpoint import verify_checkpoint
        from services.model.trading_model import RemoteModelFactory

        session = json.loads((run_dir / "session.json").read_text())
        factory = RemoteModelFactory(
            config.model,
            seed=config.training.seed,
            tensorboard_dir=run_dir / "tensorboard",
            checkpoint_root=run_dir / "checkpoints",
            fingerprint={k: session[k] for k in ("data_hash", "config_hash")},
            resume=verify_checkpoint(Path(session["resume"])) if session["resume"] else None,
        )
        return ModelActor.start(
            factory=factory,
            piece_steps=config.training.piece_steps,
            ports=ports("model", ["env"], opts.env_timeout_s),
            **common,
        )
    from actors.monitor import MonitorActor
    from services.session.console import make_view
    from services.transport.curve import LOCAL_KIT, load_client_keys, session_client
    from services.transport.sockets import Subscriber

    view = make_view(opts.console, json=False, tables=False, stream=sys.stdout, heartbeat_s=opts.heartbeat_s)
    keys = None
    if opts.keys_dir:  # with CURVE the session's own monitor needs a listed key too: keys/local
        keys_dir = Path(opts.keys_dir) if Path(opts.keys_dir).is_absolute() else ROOT / opts.keys_dir
        keys = load_client_keys(keys_dir / LOCAL_KIT)
    monitor_ports = Ports(
        publisher=lambda: Publisher(endpoints.events_in, sender=kind),
        subscriber=lambda: Subscriber(endpoints.events_out, max_bytes=max_bytes, curve=keys),
        clients={
            "session": lambda: session_client(
                endpoints.session,
                max_bytes=max_bytes,
                timeout_s=opts.request_timeout_s,
                sender=kind,
                keys=keys,
            )
        },
    )
    return MonitorActor.start(
        view=view,
        ports=monitor_ports,
        silence_s=max(5.0, 5 * opts.heartbeat_s),
        exit_when_finished=True,
        **common,
    )


# The remote monitor.


def monitor_main(argv: Sequence[str]) -> int:
    """Attach to a running session: snapshot first, then live events, until it finishes."""
    parser = _Parser(prog="run.py monitor", description="Attach to a running session.")
    parser.add_argument(
        "--connect", required=True, metavar="tcp://HOST:PORT", help="the session's monitor endpoint"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per line")
    parser.add_argument("--once", action="store_true", help="print the snapshot and exit")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the session")
    parser.add_argument(
        "--keys", type=Path, metavar="DIR", help="a client folder made by `run.py keys` (CURVE sessions)"
    )
    parser.add_argument(
        "--console", choices=("auto", "live", "plain"), default="auto", help="view (auto: live on a terminal)"
    )
    args = parser.parse_args(argv)
    if not args.connect.startswith("tcp://") or ":" not in args.connect[6:]:
        raise UsageError(f"run.py monitor: --connect must be tcp://HOST:PORT, got {args.connect!r}")
    if args.timeout <= 0:
        raise UsageError(f"run.py monitor: --timeout must be positive, got {args.timeout:g}")
    _configure_logging(None, stderr_level=logging.ERROR)

    from actors.base import ActorExit
    from actors.monitor import MonitorActor
    from actors.ports import Ports
    from messages import DescribeSession, SessionDescription
    from services.runtime import PsutilProbe, SystemClock
    from services.session.console import make_view
    from services.transport.curve import (
        Handshake,
        KeysError,
        check_handshake,
        explain_handshake,
        load_client_keys,
        session_client,
    )
    from services.transport.sockets import Subscriber, TransportError

    try:
        keys = load_client_keys(args.keys) if args.keys is not None else None
    except KeysError as exc:
        raise UsageError(f"run.py monitor: {exc}") from None
    # Watch the handshake first, so a refused key gets its own message instead of a timeout.
    handshake = check_handshake(args.connect, keys, args.timeout)
    if handshake is not Handshake.ACCEPTED:
        print(
            f"monitor: {explain_handshake(handshake, args.connect, args.keys, args.timeout)}", file=sys.stderr
        )
        return EXIT_FAILURE

    def session_link() -> Any:
        return session_client(
            args.connect, max_bytes=1 << 26, timeout_s=args.timeout, sender="monitor", keys=keys
        )

    probe = session_link()
    try:
        description = probe.request(DescribeSession(sender="monitor"))
    except TransportError as exc:
        print(f"monitor: the session at {args.connect} did not describe itself: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        probe.close()
    assert isinstance(description, SessionDescription)
    host = args.connect[6:].rsplit(":", 1)[0]
    events = f"tcp://{host}:{description.events.rsplit(':', 1)[1]}"
    view = make_view(args.console, json=args.json, tables=True, stream=sys.stdout)
    note = ActorExit()
    ports = Ports(
        subscriber=lambda: Subscriber(events, max_bytes=1 << 26, curve=keys),
        clients={"session": session_link},
    )
    # Sockets reconnect on their own; the actor notices silence, restarts and lost events and
    # resynchronises with a snapshot when the session is back.
    ref = MonitorActor.start(
        view=view,
        ports=ports,
        clock=SystemClock(),
        probe=PsutilProbe(),
        exit_note=note,
        exit_when_finished=True,
        once=args.once,
        snapshot_timeout_s=min(args.timeout, 5.0),
    )
    signals = _SignalLatch()
    signals.install()
    try:
        while not note.event.wait(0.2):
            if signals.count:
                ref.stop(block=False)
                note.event.wait(5)
                break
    finally:
        signals.uninstall()
    return EXIT_FAILURE if note.crashed else EXIT_OK


def keys_main(argv: Sequence[str]) -> int:
    """Create CURVE keys for the session and its monitors: `run.py keys [--dir keys] [--clients N]`."""
    parser = _Parser(prog="run.py keys", description="Create CURVE keys for a session and its monitors.")
    parser.add_argument(
        "--dir", type=Path, default=ROOT / "keys", help="keys folder (default: keys/ beside run.py)"
    )
    parser.add_argument("--clients", type=int, default=1, help="client folders to add (default: 1)")
    args = parser.parse_args(argv)
    if args.clients < 0:
        raise UsageError(f"run.py keys: --clients must be zero or more, got {args.clients}")

    from services.transport.curve import ALLOWLIST_DIR, LOCAL_KIT, SERVER_DIR, create_keys

    folder = args.dir.resolve()
    try:
        created = create_keys(folder, args.clients)
    except OSError as exc:
        print(f"keys: cannot create keys in {folder}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    state = "created" if created.server_created else "kept"
    print(f"session keys {state}: {folder / SERVER_DIR}; set session.keys_dir: {folder}")
    print(f"allowlist: {folder / ALLOWLIST_DIR} (delete a client's .key file there to revoke it)")
    for kit in created.kits:
        if kit.name == LOCAL_KIT:
            print(f"local monitor keys: {kit} (used by the session's own monitor)")
        else:
            print(f"monitor keys: {kit} -> python run.py monitor --connect tcp://HOST:PORT --keys {kit}")
    return EXIT_OK


# Inference.


def predict_main(argv: Sequence[str]) -> int:
    """Print the position a trained run's model would take after the last bar of the data."""
    parser = _Parser(prog="run.py predict", description="Decide the position after the last bar.")
    parser.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="a trained run folder")
    parser.add_argument("--data", help="data file (default: the run's own source)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    _configure_logging(None, stderr_level=logging.ERROR)

    from launcher.predict import Predictor
    from services.config import ConfigError
    from services.data.reader import DataError
    from services.model.checkpoint import CheckpointError

    if args.data is not None and not Path(args.data).exists():
        raise UsageError(f"--data: {args.data} does not exist")
    try:
        prediction = Predictor(args.run).predict_source(args.data)
    except (CheckpointError, ConfigError, DataError, ValueError) as exc:
        raise UsageError(f"predict: {exc}") from None
    if args.json:
        print(json.dumps(prediction.as_dict()))
    else:
        side = "long" if prediction.position > 0 else "short" if prediction.position < 0 else "flat"
        print(
            f"after {prediction.timestamp} (close {prediction.close:.2f}): {side} {prediction.position:+.2f}"
            f" (model {prediction.model_id}, {Path(prediction.checkpoint).name})"
        )
    return EXIT_OK


# Data generation.


def generate_main(argv: Sequence[str]) -> int:
    """Write a synthetic OHLCV CSV of any length."""
    from services.data import synthetic

    return int(synthetic.main(list(argv)) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch the command line; bad usage exits 2 with one line, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "monitor": monitor_main,
        "keys": keys_main,
        "predict": predict_main,
        "generate-data": generate_main,
        "_actor": actor_main,
    }
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return train(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
