"""Attach to a running session from any process or host: `run.py monitor --connect tcp://HOST:PORT`."""

from __future__ import annotations

import argparse
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
from services.transport.curve import (
    Handshake,
    KeysError,
    check_handshake,
    explain_handshake,
    load_client_keys,
)
from services.transport.sockets import Client, Subscriber, TransportError

MAX_BYTES = 1 << 26
"""The largest message a remote monitor accepts."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of `run.py monitor`."""
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


def monitor_main(args: argparse.Namespace) -> int:
    """Attach to a running session: snapshot first, then live events, until it finishes."""
    if not args.connect.startswith("tcp://") or ":" not in args.connect[6:]:
        raise UsageError(f"run.py monitor: --connect must be tcp://HOST:PORT, got {args.connect!r}")
    if args.timeout <= 0:
        raise UsageError(f"run.py monitor: --timeout must be positive, got {args.timeout:g}")
    configure_logging(None, stderr_level=logging.ERROR)
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
    session_link = Client.factory(
        args.connect, max_bytes=MAX_BYTES, timeout_s=args.timeout, sender="monitor", curve=keys
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
        subscriber=lambda: Subscriber(events, max_bytes=MAX_BYTES, curve=keys),
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
