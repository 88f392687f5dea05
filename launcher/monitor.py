"""Attach to a running session: `run.py monitor --run runs/NAME` on its host (the run folder's session key
proves the monitor may), or `run.py monitor --connect tcp://HOST:PORT --keys DIR` with CURVE keys.

A running study (`run.py tune`) has a hub of its own, so `--run runs/STUDY` attaches to its trials."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from actors.base import ActorExit
from actors.monitor import MonitorActor
from actors.ports import Ports
from launcher.logs import configure_logging
from launcher.signals import SignalLatch
from launcher.usage import EXIT_FAILURE, EXIT_OK, UsageError
from messages import DescribeSession, SessionDescription
from services.runtime import PsutilProbe, SystemClock
from services.session.views import make_view
from services.transport.auth import KeyFileError, read_session_key
from services.transport.credentials import Credentials, PlainClient
from services.transport.curve import (
    Handshake,
    KeysError,
    check_handshake,
    explain_handshake,
    load_client_keys,
)
from services.transport.endpoints import Endpoints
from services.transport.sockets import Client, Subscriber, TransportError

MAX_BYTES = 1 << 26
"""The largest message a remote monitor accepts."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py monitor`."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--run",
        dest="run_dir",
        type=Path,
        metavar="RUN_DIR",
        help="a session on this host: its run folder (runs/NAME), or a study's (runs/STUDY)",
    )
    where.add_argument(
        "--connect", metavar="tcp://HOST:PORT", help="the session's monitor endpoint (with --keys for CURVE)"
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


def _target(args: argparse.Namespace) -> tuple[str, Credentials | None]:
    """Return the session endpoint to attach to and the credentials to present there."""
    try:
        keys = load_client_keys(args.keys) if args.keys is not None else None
    except KeysError as exc:
        raise UsageError(f"run.py monitor: {exc}") from None
    if args.connect is not None:
        if not args.connect.startswith("tcp://") or ":" not in args.connect[6:]:
            raise UsageError(f"run.py monitor: --connect must be tcp://HOST:PORT, got {args.connect!r}")
        return args.connect, keys
    try:
        endpoints = Endpoints.from_dict(json.loads((args.run_dir / "endpoints.json").read_text()))
        key = read_session_key(args.run_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(
            f"run.py monitor: --run {args.run_dir}: not the folder of a session or a study ({exc})"
        ) from None
    except KeyFileError as exc:
        raise UsageError(f"run.py monitor: {exc}") from None
    return endpoints.session, keys if keys is not None else PlainClient.of(key)


def monitor_main(args: argparse.Namespace) -> int:
    """Attach to a running session: snapshot first, then live events, until it finishes."""
    if args.timeout <= 0:
        raise UsageError(f"run.py monitor: --timeout must be positive, got {args.timeout:g}")
    endpoint, auth = _target(args)
    configure_logging(None, stderr_level=logging.ERROR)
    # Watch the handshake first, so a refused key gets its own message instead of a timeout.
    handshake = check_handshake(endpoint, auth, args.timeout)
    if handshake is not Handshake.ACCEPTED:
        line = explain_handshake(handshake, endpoint, args.keys, args.timeout, run_dir=args.run_dir)
        print(f"monitor: {line}", file=sys.stderr)
        return EXIT_FAILURE
    session_link = Client.factory(
        endpoint, max_bytes=MAX_BYTES, timeout_s=args.timeout, sender="monitor", key=None, auth=auth
    )
    probe = session_link()
    try:
        description = probe.request(DescribeSession(sender="monitor"))
    except TransportError as exc:
        print(f"monitor: the session at {endpoint} did not describe itself: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        probe.close()
    assert isinstance(description, SessionDescription)
    host = endpoint[6:].rsplit(":", 1)[0]
    events = f"tcp://{host}:{description.events.rsplit(':', 1)[1]}"
    view = make_view(args.console, json=args.json, tables=True, stream=sys.stdout)
    note = ActorExit()
    ports = Ports(
        subscriber=lambda: Subscriber(events, max_bytes=MAX_BYTES, auth=auth),
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
    signals = SignalLatch()
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
