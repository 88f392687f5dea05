"""Run one training session: the event hub, the actor processes, the episode loop and the summary."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import pykka
import zmq

from actors.ports import Ports
from actors.session import Abort, Outcome, Restarted, SessionActor
from launcher.logs import configure_logging
from launcher.preflight import Prepared, prepare
from launcher.signals import SignalLatch
from launcher.summary import print_summary, recorded_evaluations, write_run_report
from launcher.supervisor import (
    Process,
    Spawn,
    SupervisionPolicy,
    SupervisionRules,
    Supervisor,
    wait_started,
)
from launcher.usage import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    RUN_PY,
    UsageError,
    add_set_argument,
    project_path,
)
from messages import ActorRestarted, EvaluationReport, SessionStarted
from services.forkserver import ForkClient
from services.model.checkpoint import latest_checkpoint, write_json_atomic
from services.runtime import SystemClock, rss_bytes
from services.session.commands import monitor_command
from services.session.recorder import RunRecorder, write_eval_csv
from services.session.state import SessionState
from services.transport.curve import LOCAL_KIT
from services.transport.endpoints import Endpoints, ipc_folder
from services.transport.hub import EventHub
from services.transport.shm_files import remove_buffers
from services.transport.sockets import Client, Publisher

logger = logging.getLogger(__name__)

REQUEST_KINDS = ("data", "env", "model")
"""The actors the session actor sends requests to."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py train` (also the command line without a command)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--config", type=Path, help="YAML config (default: configs/default.yaml)")
    group.add_argument("--default", action="store_true", help="use configs/default.yaml explicitly")
    parser.add_argument("--data", help="data file, folder or glob (overrides data.source.path)")
    add_set_argument(
        parser, "set one config key, e.g. env.n_envs=8 (repeat it; every key is in docs/CONFIG.md)"
    )
    parser.add_argument("--name", help="run name: the run folder is runs/NAME")
    parser.add_argument(
        "--resume", type=Path, metavar="RUN_DIR", help="continue runs/NAME from its last checkpoint"
    )
    parser.add_argument("--force", action="store_true", help="resume even if data or config differ")


def train(args: argparse.Namespace) -> int:
    """Check the launch, make the run folder, start the hub and run the session in it."""
    prepared = prepare(args)
    configure_logging(prepared.run_dir / "logs" / "session.log", stderr_level=logging.WARNING)
    earlier = recorded_evaluations(prepared.run_dir / "events.jsonl")
    state = SessionState()
    recorder = RunRecorder(prepared.run_dir)
    opts = prepared.config.session
    ipc = ipc_folder(prepared.run_dir)
    # A launch killed with kill -9 left its step buffers behind; the env actor makes new ones.
    stale = remove_buffers(ipc)
    if stale:
        logger.info("removed %d stale shared step buffer(s) from %s", stale, ipc)
    keys = prepared.session_keys
    hub = EventHub(
        name=prepared.run_dir.name,
        events_in=f"ipc://{ipc}/events_in.sock",
        monitor_host=opts.monitor_host,
        events_port=opts.events_port,
        session_port=opts.session_port,
        max_bytes=opts.max_message_bytes,
        sinks=[state.apply, recorder],
        snapshot=state.to_dict,
        key=prepared.key,
        curve=keys.curve if keys else None,
        allowed_keys_dir=keys.allowlist if keys else None,
    )
    try:
        hub.start()
    except (RuntimeError, zmq.ZMQError) as exc:
        raise UsageError(f"session: {exc}") from None
    endpoints = Endpoints.local(ipc, events_out=hub.events_out, session=hub.session)
    endpoints.write(prepared.run_dir / "endpoints.json")
    try:
        return _Session(prepared, endpoints, state, earlier).run()
    finally:
        hub.stop()
        recorder.close()
        shutil.rmtree(ipc, ignore_errors=True)


def _fork_spawn(client: ForkClient | None) -> Spawn | None:
    """Return a spawner of actor processes forked by the study's fork server that started this launcher
    (None: a fresh interpreter per actor, as `python run.py` does)."""
    if client is None:
        return None

    def spawn(args: list[str], env: dict[str, str]) -> Process:
        return client.spawn(args, cwd=Path.cwd(), env=env, die_with_server=False, watched=True)

    return spawn


class _SessionActions:
    """What supervision does to the session: restore the model, announce restarts, give up."""

    def __init__(
        self, run_dir: Path, publisher: Publisher, session_ref: pykka.ActorRef[SessionActor]
    ) -> None:
        self._run_dir = run_dir
        self._publisher = publisher
        self._session_ref = session_ref

    def restore_model(self) -> None:
        """Point session.json at the last checkpoint so the new model process restores it."""
        info = latest_checkpoint(self._run_dir / "checkpoints")
        session_file = self._run_dir / "session.json"
        data = json.loads(session_file.read_text())
        data["resume"] = str(info.path) if info is not None else ""
        write_json_atomic(session_file, data)

    def restarted(self, kind: str, pid: int, restarts: int, reason: str) -> None:
        """Publish the restart and tell the session actor to redo what the death lost."""
        self._publisher.publish(
            ActorRestarted(kind=kind, pid=pid, restarts=restarts, reason=reason, sender="session")
        )
        self._session_ref.tell(Restarted(kind))

    def give_up(self, reason: str) -> None:
        """Fail the session."""
        self._session_ref.tell(Abort(reason=reason, status="failed"))


class _Session:
    """One launch of a run: its processes, its session actor and its verdict."""

    def __init__(
        self, prepared: Prepared, endpoints: Endpoints, state: SessionState, earlier: list[dict[str, object]]
    ) -> None:
        self.prepared = prepared
        self.endpoints = endpoints
        self.state = state
        self.earlier = earlier
        self.name = prepared.run_dir.name
        self.clock = SystemClock()
        spawn = _fork_spawn(ForkClient.from_environment())
        self.supervisor = Supervisor(RUN_PY, prepared.run_dir, spawn=spawn)
        self.signals = SignalLatch()
        self.reports: list[EvaluationReport] = []
        self.started = time.monotonic()

    def run(self) -> int:
        """Start every actor, run the episode loop under supervision and return the exit status."""
        run_dir, opts = self.prepared.run_dir, self.prepared.config.session
        print(f"session {self.name}: run folder {run_dir}", flush=True)
        keys_dir = self.prepared.config.session.keys_dir
        kit = project_path(keys_dir) / LOCAL_KIT if keys_dir else None
        print(f"monitor: {monitor_command(run_dir, endpoint=self.endpoints.session, kit=kit)}", flush=True)
        publisher = Publisher(self.endpoints.events_in, sender="session", key=self.prepared.key)
        self.signals.install()
        session_ref: pykka.ActorRef[SessionActor] | None = None
        try:
            publisher.publish(self._started_event())
            self.supervisor.start_all()
            failure = wait_started(
                lambda: set(self.state.to_dict()["actors"]),
                self.supervisor,
                opts.start_timeout_s,
                lambda: self.signals.count > 0,
                self.clock,
            )
            if failure:
                raise RuntimeError(failure)
            outcome = Outcome()
            session_ref = self._start_session_actor(outcome)
            self._supervise(outcome, session_ref, publisher)
            self.supervisor.wait_all(timeout_s=15)
            exit_code = self._verdict(outcome)
            snapshot = self.state.to_dict()
            print_summary(
                name=self.name,
                run_dir=run_dir,
                status=outcome.status,
                reason=outcome.reason,
                reports=self.reports,
                snapshot=snapshot,
                seconds=time.monotonic() - self.started,
                launcher_rss=rss_bytes(),
            )
            reported = write_run_report(
                run_dir,
                name=self.name,
                model_id=snapshot["model"]["model_id"],
                evaluations=[*self.earlier, *snapshot["evaluations"]],
                figures=opts.figures,
            )
            return exit_code if reported else exit_code or EXIT_FAILURE
        except RuntimeError as exc:
            print(f"session {self.name} failed: {exc}", file=sys.stderr, flush=True)
            logger.exception("session failed")
            self.supervisor.kill_all()
            return EXIT_FAILURE
        finally:
            if session_ref is not None:
                session_ref.stop(block=False)
            publisher.close()
            time.sleep(0.1)
            self.signals.uninstall()

    def _started_event(self) -> SessionStarted:
        config = self.prepared.config
        return SessionStarted(
            name=self.name,
            run_dir=str(self.prepared.run_dir),
            monitor=self.endpoints.session,
            episodes=config.training.episodes,
            steps_per_episode=config.training.steps_per_episode,
            config=self.prepared.resolved,
            sender="session",
        )

    def _start_session_actor(self, outcome: Outcome) -> pykka.ActorRef[SessionActor]:
        config, opts = self.prepared.config, self.prepared.config.session
        ports = Ports(
            publisher=lambda: Publisher(self.endpoints.events_in, sender="session", key=self.prepared.key),
            clients={
                kind: Client.factory(
                    getattr(self.endpoints, kind),
                    max_bytes=opts.max_message_bytes,
                    timeout_s=opts.request_timeout_s,
                    sender="session",
                    key=self.prepared.key,
                )
                for kind in REQUEST_KINDS
            },
        )
        return SessionActor.start(
            outcome=outcome,
            session_name=self.name,
            episodes=config.training.episodes,
            first_episode=self.prepared.first_episode,
            steps_per_episode=config.training.steps_per_episode,
            ports=ports,
            clock=self.clock,
            request_timeout_s=opts.request_timeout_s,
            hang_timeout_s=opts.hang_timeout_s,
            heartbeat_age=lambda actor: self.state.heartbeat_age(actor, self.clock.time()),
            on_report=self._on_report,
            supervised=True,
        )

    def _on_report(self, report: EvaluationReport) -> None:
        path = write_eval_csv(self.prepared.run_dir, report)
        logger.info("episode %d evaluation written to %s", report.episode, path.name)
        self.reports.append(report)

    def _supervise(
        self, outcome: Outcome, session_ref: pykka.ActorRef[SessionActor], publisher: Publisher
    ) -> None:
        """Watch the processes until the session actor is done; the first signal stops, the second kills."""
        opts = self.prepared.config.session
        policy = SupervisionPolicy(
            self.supervisor,
            SupervisionRules(
                max_restarts=opts.max_restarts_per_minute,
                hang_timeout_s=opts.hang_timeout_s,
                start_timeout_s=opts.start_timeout_s,
                stuck_timeout_s=opts.stuck_timeout_s,
            ),
            self.clock,
            self.state.heartbeat_age,
            _SessionActions(self.prepared.run_dir, publisher, session_ref),
            busy_for=self.state.busy_for,
        )
        interrupted = False
        while not outcome.done.wait(0.2):
            if self.signals.count >= 2:
                print("second interrupt: stopping at once", file=sys.stderr, flush=True)
                self.supervisor.kill_all()
                shutil.rmtree(self.endpoints.ipc_dir, ignore_errors=True)
                os._exit(130)
            if self.signals.count == 1 and not interrupted and not policy.gave_up:
                interrupted = True
                print("interrupt: finishing the current piece, then stopping", file=sys.stderr, flush=True)
                session_ref.tell(Abort(reason="interrupted", status="stopped"))
            if outcome.status == "running" and not interrupted:
                policy.check()

    @staticmethod
    def _verdict(outcome: Outcome) -> int:
        if outcome.status != "failed":
            return EXIT_OK if outcome.status in ("completed", "stopped") else EXIT_FAILURE
        line = outcome.reason if outcome.input_error else f"session failed: {outcome.reason}"
        print(f"error: {line}", file=sys.stderr, flush=True)
        return EXIT_USAGE if outcome.input_error else EXIT_FAILURE
