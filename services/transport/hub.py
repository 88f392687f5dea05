"""Run the session's event hub: an XSUB/XPUB proxy that numbers events, plus the monitors' snapshot socket."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from messages import (
    PROTOCOL_VERSION,
    DecodeError,
    DescribeSession,
    ErrorRaised,
    Message,
    RequestFailed,
    RequestSnapshot,
    SessionDescription,
    Snapshot,
    decode,
    encode,
)
from services.transport.curve import KeyAllowlist
from services.transport.sockets import CurveServerKeys, EventSink, _bind_tcp, _tune, context, pack_event

logger = logging.getLogger(__name__)


class EventHub:
    """Forward every valid event from actors to subscribers with a sequence number; serve snapshots.

    Runs its own thread, which owns its three sockets. Invalid frames arriving on the XSUB side are
    dropped with one log line each; a slow subscriber loses events (XPUB drops), never the publishers.
    """

    def __init__(
        self,
        *,
        name: str,
        events_in: str,
        monitor_host: str,
        events_port: int,
        session_port: int,
        max_bytes: int,
        sinks: Sequence[EventSink],
        snapshot: Callable[[], dict[str, object]],
        curve: CurveServerKeys | None = None,
        allowed_keys_dir: Path | None = None,
        sndhwm: int = 10_000,
    ) -> None:
        self._name = name
        self._events_in = events_in
        self._host = monitor_host
        self._events_port = events_port
        self._session_port = session_port
        self._max_bytes = max_bytes
        self._sinks = list(sinks)
        self._snapshot = snapshot
        self._curve = curve
        self._allowed_keys_dir = allowed_keys_dir
        self._sndhwm = sndhwm
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
        self._error: BaseException | None = None
        self.seq = 0
        self.rejected = 0
        self._suppressed = 0
        self._next_report = 0.0
        self._next_handshake_log = 0.0
        self.events_out = ""
        self.session = ""
        self._auth: ThreadAuthenticator | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the hub thread and wait until its sockets are bound."""
        if self._curve is not None:
            self._auth = ThreadAuthenticator(context())
            self._auth.start()
            if self._allowed_keys_dir is None:
                raise RuntimeError("a CURVE session needs a folder of allowed client keys")
            # The allowlist logs every refused key, so the session side says why a monitor was refused.
            self._auth.configure_curve_callback(
                domain="*", credentials_provider=KeyAllowlist(self._allowed_keys_dir)
            )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("event hub did not start")
        if self._error is not None:
            raise RuntimeError(f"event hub could not bind: {self._error}") from self._error

    def stop(self) -> None:
        """Stop the hub thread and close its sockets."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        if self._auth is not None:
            self._auth.stop()

    def _bind(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes]]:
        ctx = context()
        xsub = ctx.socket(zmq.XSUB)
        _tune(xsub, self._max_bytes)
        xsub.bind(self._events_in)
        xsub.send(b"\x01")  # subscribe to everything
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.SNDHWM, self._sndhwm)
        router = ctx.socket(zmq.ROUTER)
        _tune(router, 1 << 16)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for sock in (xpub, router):
            if self._curve is not None:
                self._curve.apply(sock)
        self.events_out = _bind_tcp(xpub, self._host, self._events_port)
        self.session = _bind_tcp(router, self._host, self._session_port)
        return xsub, xpub, router

    def _run(self) -> None:
        try:
            xsub, xpub, router = self._bind()
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        for sock in (xsub, xpub, router):
            poller.register(sock, zmq.POLLIN)
        monitors: list[zmq.Socket[bytes]] = []
        if self._curve is not None:
            failed = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
            monitors = [xpub.get_monitor_socket(failed), router.get_monitor_socket(failed)]
            for monitor in monitors:
                poller.register(monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                if xsub in ready:
                    self._forward(xsub, xpub)
                if xpub in ready:
                    while xpub.poll(0):
                        xpub.recv_multipart()  # subscription notices; nothing to forward
                if router in ready:
                    self._serve(router, xpub)
                for monitor in monitors:
                    if monitor in ready:
                        self._watch_handshakes(monitor)
            # Publish what is still queued so the last events (SessionFinished) reach subscribers.
            self._forward(xsub, xpub)
        finally:
            for sock in (xpub, router):
                if self._curve is not None:
                    with contextlib.suppress(zmq.ZMQError):
                        sock.disable_monitor()
            for sock in (*monitors, xsub, xpub, router):
                sock.close(0)

    def _forward(self, xsub: zmq.Socket[bytes], xpub: zmq.Socket[bytes]) -> None:
        for _ in range(1000):
            try:
                frames = xsub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            buffers = [f.buffer for f in frames]
            try:
                msg = decode(buffers, max_bytes=self._max_bytes)
            except DecodeError as exc:
                self.rejected += 1
                self._report(xpub, "event input", str(exc))
                continue
            self._emit(xpub, msg, buffers)

    def _emit(self, xpub: zmq.Socket[bytes], msg: Message, buffers: list[Any] | None = None) -> None:
        """Number an event, give it to the sinks and publish it."""
        self.seq += 1
        for sink in self._sinks:
            try:
                sink(self.seq, msg)
            except Exception:
                logger.exception("event hub: a sink failed on %s", type(msg).__name__)
        with contextlib.suppress(zmq.Again):  # a full subscriber queue drops, never blocks
            xpub.send_multipart(pack_event(self.seq, msg, buffers), zmq.NOBLOCK, copy=False)

    def _report(self, xpub: zmq.Socket[bytes], where: str, error: str) -> None:
        """Log and publish garbage received, at most once a second (a flood is counted, not echoed)."""
        now = time.monotonic()
        self._suppressed += 1
        if now < self._next_report:
            return
        more = f" (and {self._suppressed - 1} more since the last report)" if self._suppressed > 1 else ""
        logger.warning("event hub: rejected input on the %s: %s%s", where, error, more)
        self._emit(xpub, ErrorRaised(where=f"session {where}", error=f"{error}{more}", sender="session"))
        self._suppressed = 0
        self._next_report = now + 1.0

    def _watch_handshakes(self, monitor: zmq.Socket[bytes]) -> None:
        """Log CURVE handshakes that failed before the allowlist was asked (a key of another session)."""
        while monitor.poll(0):
            event = recv_monitor_message(monitor)
            now = time.monotonic()
            if now < self._next_handshake_log:
                continue
            self._next_handshake_log = now + 60.0
            logger.warning(
                "a monitor's CURVE handshake failed (event %s): it does not hold this session's server key",
                event.get("event"),
            )

    def _serve(self, router: zmq.Socket[bytes], xpub: zmq.Socket[bytes]) -> None:
        while router.poll(0):
            frames = router.recv_multipart(copy=False)
            peer = frames[0].bytes
            reply: Message
            try:
                request = decode([f.buffer for f in frames[1:]], max_bytes=1 << 16)
            except DecodeError as exc:
                self._report(xpub, "session socket", str(exc))
                reply = RequestFailed(request="?", error=str(exc), sender="session")
            else:
                reply = self._answer(request)
            try:
                router.send_multipart([peer, *encode(reply)], zmq.NOBLOCK, copy=False)
            except zmq.ZMQError:
                logger.info("session socket: a monitor left before its reply")

    def _answer(self, request: Message) -> Message:
        match request:
            case DescribeSession():
                return SessionDescription(
                    correlation_id=request.msg_id,
                    sender="session",
                    name=self._name,
                    events=self.events_out,
                    protocol=PROTOCOL_VERSION,
                )
            case RequestSnapshot():
                return Snapshot(
                    correlation_id=request.msg_id, sender="session", seq=self.seq, state=self._snapshot()
                )
            case _:
                logger.warning("session socket: refused a %s from a monitor", type(request).__name__)
                return RequestFailed(
                    correlation_id=request.msg_id,
                    sender="session",
                    request=type(request).__name__,
                    error="monitors may only describe the session and ask for snapshots",
                )
