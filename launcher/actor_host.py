"""Host one actor in its own process: `run.py _actor KIND --run-dir DIR`, one builder per kind.

A builder imports what its actor needs inside itself, so each process loads only its own libraries: the
data and env processes never load torch, only the model process does.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pykka

from actors.base import ActorExit
from actors.ports import Ports
from launcher.logs import configure_logging
from launcher.supervisor import ACTOR_KINDS
from launcher.usage import EXIT_FAILURE, EXIT_OK, ROOT, Parser, project_path
from messages.envelope import SessionKey
from services.config import Config, config_from_dict, read_yaml
from services.forkserver import launcher_gone
from services.runtime import PsutilProbe, SystemClock
from services.transport.auth import read_session_key
from services.transport.endpoints import Endpoints
from services.transport.sockets import Client, Publisher, Server

logger = logging.getLogger(__name__)

STOP_GRACE_S = 15.0
"""Seconds an actor may take to stop (after SIGTERM or its launcher's death) before its process exits."""


def actor_main(argv: Sequence[str]) -> int:
    """Host one actor in this process until it stops."""
    parser = Parser(prog="run.py _actor")
    parser.add_argument("kind", choices=ACTOR_KINDS)
    parser.add_argument("--run-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    kind, run_dir = args.kind, args.run_dir
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Failed requests reach the console as events and the launcher's verdict; only crashes print here.
    configure_logging(run_dir / "logs" / f"{kind}.log", stderr_level=logging.ERROR, prefix=f"[{kind}] ")
    config = config_from_dict(read_yaml(run_dir / "config.yaml"), str(run_dir / "config.yaml"))
    endpoints = Endpoints.from_dict(json.loads((run_dir / "endpoints.json").read_text()))
    host = ActorHost(kind, config, endpoints, run_dir, ActorExit(), read_session_key(run_dir))
    ref = BUILDERS[kind](host)
    deadline = math.inf

    def request_stop(signum: int | None = None, frame: FrameType | None = None) -> None:
        nonlocal deadline
        ref.stop(block=False)
        deadline = min(deadline, time.monotonic() + STOP_GRACE_S)

    signal.signal(signal.SIGTERM, request_stop)
    gone = launcher_gone()
    while not host.note.event.wait(1.0):
        if gone() and deadline == math.inf:
            logger.warning("%s: the launcher is gone; stopping", kind)
            request_stop()
        if time.monotonic() > deadline:
            # A stop waits behind the message in hand; one that never ends must not outlive the session.
            logger.error("%s: did not stop within %g s; exiting", kind, STOP_GRACE_S)
            os._exit(EXIT_FAILURE)
    return EXIT_FAILURE if host.note.crashed else EXIT_OK


@dataclass(frozen=True, slots=True)
class ActorHost:
    """What every builder gets: the actor's kind, the run's config, endpoints, folder and session key."""

    kind: str
    config: Config
    endpoints: Endpoints
    run_dir: Path
    note: ActorExit
    key: SessionKey

    def common(self) -> dict[str, object]:
        """Return the constructor arguments every served actor takes."""
        return {
            "clock": SystemClock(),
            "probe": PsutilProbe(),
            "heartbeat_s": self.config.session.heartbeat_s,
            "exit_note": self.note,
        }

    def ports(self, serve: bool, clients: Sequence[str] = (), timeout_s: float | None = None) -> Ports:
        """Return the actor's socket factories: its own server, its publisher and clients to others."""
        opts, kind, endpoints, key = self.config.session, self.kind, self.endpoints, self.key
        max_bytes = opts.max_message_bytes
        timeout = opts.request_timeout_s if timeout_s is None else timeout_s
        return Ports(
            server=(lambda: Server(getattr(endpoints, kind), max_bytes=max_bytes, name=kind, key=key))
            if serve
            else None,
            publisher=self.publisher,
            clients={
                peer: Client.factory(
                    getattr(endpoints, peer), max_bytes=max_bytes, timeout_s=timeout, sender=kind, key=key
                )
                for peer in clients
            },
        )

    def publisher(self) -> Publisher:
        """Return a new signed publisher of this actor's events (one per thread that publishes)."""
        return Publisher(self.endpoints.events_in, sender=self.kind, key=self.key)


def build_data(host: ActorHost) -> pykka.ActorRef[Any]:
    """Start the data actor over the dataset service."""
    from actors.data import DataActor
    from services.data.dataset import DatasetService

    config = host.config
    session = json.loads((host.run_dir / "session.json").read_text())
    service = DatasetService(
        config.data,
        data_hash=session["data_hash"],
        window=config.env.window,
        episode_length=config.env.episode_length,
        cache_root=ROOT,
        run_dir=host.run_dir,
        built_for_this_run=bool(session.get("data_built")),
    )
    return DataActor.start(
        service=service,
        block_rows=config.data.block_rows,
        ack_timeout_s=config.session.request_timeout_s,
        ports=host.ports(True, ["env"]),
        **host.common(),
    )


def build_env(host: ActorHost) -> pykka.ActorRef[Any]:
    """Start the env actor over the vectorized env factory."""
    from actors.environment import EnvActor
    from services.env.factory import VecEnvFactory
    from services.transport.shm_files import shared_folder
    from services.transport.shm_folder import SharedFolder

    symbols: tuple[str, ...] = ()
    if host.config.portfolio is not None:  # preflight wrote the universe's symbols into session.json
        symbols = tuple(json.loads((host.run_dir / "session.json").read_text()).get("symbols", ()))
    factory = VecEnvFactory(
        host.config.env, seed=host.config.training.seed, portfolio=host.config.portfolio, symbols=symbols
    )
    # On an ipc endpoint the model is on this host: steps go through buffers in the socket's folder.
    folder = shared_folder(host.endpoints.env)
    shared = SharedFolder(folder) if folder is not None else None
    return EnvActor.start(factory=factory, shared=shared, ports=host.ports(True), **host.common())


def build_model(host: ActorHost) -> pykka.ActorRef[Any]:
    """Start the model actor; it restores the checkpoint session.json names, if any."""
    from actors.model import ModelActor
    from services.model.checkpoint import verify_checkpoint
    from services.model.trading_model import RemoteModelFactory

    config, run_dir = host.config, host.run_dir
    session = json.loads((run_dir / "session.json").read_text())
    factory = RemoteModelFactory(
        config.model,
        seed=config.training.seed,
        budget=config.training.episodes * config.training.steps_per_episode,
        tensorboard_dir=run_dir / "tensorboard",
        checkpoint_root=run_dir / "checkpoints",
        fingerprint={k: session[k] for k in ("data_hash", "config_hash")},
        resume=verify_checkpoint(Path(session["resume"])) if session["resume"] else None,
    )
    return ModelActor.start(
        factory=factory,
        piece_steps=config.training.piece_steps,
        max_reply_bytes=config.session.max_message_bytes,
        ports=host.ports(True, ["env"], config.session.env_timeout_s),
        **host.common(),
    )


def build_monitor(host: ActorHost) -> pykka.ActorRef[Any]:
    """Start the session's own monitor: the console view of the events."""
    from actors.monitor import MonitorActor
    from services.session.views import make_view
    from services.transport.credentials import Credentials, PlainClient
    from services.transport.curve import LOCAL_KIT, load_client_keys
    from services.transport.sockets import Subscriber

    opts, endpoints = host.config.session, host.endpoints
    view = make_view(opts.console, json=False, tables=False, stream=sys.stdout, heartbeat_s=opts.heartbeat_s)
    # With CURVE the session's own monitor needs a listed key too (keys/local); without, the session token.
    auth: Credentials = (
        load_client_keys(project_path(opts.keys_dir) / LOCAL_KIT)
        if opts.keys_dir
        else PlainClient.of(host.key)
    )
    max_bytes = opts.max_message_bytes
    ports = Ports(
        publisher=host.publisher,
        subscriber=lambda: Subscriber(endpoints.events_out, max_bytes=max_bytes, auth=auth),
        clients={
            "session": Client.factory(
                endpoints.session,
                max_bytes=max_bytes,
                timeout_s=opts.request_timeout_s,
                sender=host.kind,
                key=None,
                auth=auth,
            )
        },
    )
    return MonitorActor.start(
        view=view,
        ports=ports,
        silence_s=max(5.0, 5 * opts.heartbeat_s),
        exit_when_finished=True,
        **host.common(),
    )


BUILDERS: dict[str, Callable[[ActorHost], pykka.ActorRef[Any]]] = {
    "data": build_data,
    "env": build_env,
    "model": build_model,
    "monitor": build_monitor,
}
"""One builder per actor kind."""
