"""Run the session's event hub: a PULL/XPUB relay that numbers events, plus the monitors' snapshot socket."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import zmq
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
    message_types,
)
from messages.base import Event
from messages.envelope import SessionKey, SignatureError, unseal
from services.transport.auth import ZapHandler, curve_check, plain_check
from services.transport.credentials import CurveServerKeys
from services.transport.curve import KeyAllowlist
from services.transport.endpoints import advertised, bind_tcp, context, secure_ipc
from services.transport.events import EventSink, pack_event
from services.transport.sockets import MAX_FRAMES, _take, _Throttle, _tune

logger = logging.getLogger(__name__)


SESSION_SOCKET_BYTES = 1 << 16
"""Largest request a monitor may send to the session socket (requests are about 150 bytes)."""
SUBSCRIPTION_BYTES = 1024
"""Largest message a subscriber may send (a subscription to a type name is far shorter; a CURVE handshake
command is about 300 bytes and counts too)."""
_REPORT_EVERY_S = 1.0


def _topics() -> frozenset[bytes]:
    """Return every subscription topic a monitor may use: b"" and each prefix of an event's type name."""
    names = [name.encode() for name, cls in message_types().items() if issubclass(cls, Event)]
    return frozenset(name[:n] for name in names for n in range(len(name) + 1))


class EventHub:
    """Forward every valid event from the session's processes to subscribers with a sequence number;
    serve snapshots.

    Runs its own thread, which owns its three sockets. The input is a PULL: a connecting PUSH queues
    events from connect() on, so the first event of every process arrives. Input not signed with the
    session's key is refused and counted (`refused`); input that does not decode, is not an event, or
    names another sender than its signer is dropped and counted too (`rejected` counts both). A slow
    subscriber loses events (XPUB drops), never the publishers. Subscriptions other than b"" and the
    prefixes of event type names are ignored and counted, so a subscriber cannot make the hub hold more.
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
        key: SessionKey,
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
        self._key = key
        self._curve = curve
        self._allowed_keys_dir = allowed_keys_dir
        self._sndhwm = sndhwm
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="event-hub", daemon=True)
        self._error: BaseException | None = None
        self._topics = _topics()
        self.seq = 0
        self.rejected = 0
        """Input messages dropped: refused, undecodable, not events, or speaking for another sender."""
        self.refused = 0
        """Input messages refused because they were not signed with the session's key."""
        self.ignored_subscriptions = 0
        """Subscriptions to topics no event has, ignored."""
        self._suppressed = 0
        self._next_report = 0.0
        self._next_handshake_log = 0.0
        self.events_out = ""
        self.session = ""
        self._domains: list[str] = []
        self._refusals = _Throttle()

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the hub thread and wait until its sockets are bound."""
        if self._curve is not None and self._allowed_keys_dir is None:
            raise RuntimeError("a CURVE session needs a folder of allowed client keys")
        ctx = context()
        ZapHandler.admit(ctx, self._key.domain(), plain_check(self._key))
        self._domains.append(self._key.domain())
        if self._curve is not None and self._allowed_keys_dir is not None:
            # The allowlist logs every refused key, so the session side says why a monitor was refused.
            allowlist = KeyAllowlist(self._allowed_keys_dir)
            ZapHandler.admit(ctx, self._curve_domain, curve_check(allowlist.callback))
            self._domains.append(self._curve_domain)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError("event hub did not start")
        if self._error is not None:
            self._release()
            raise RuntimeError(f"event hub could not bind: {self._error}") from self._error

    @property
    def _curve_domain(self) -> str:
        return self._key.domain() + "-curve"

    def stop(self) -> None:
        """Stop the hub thread and close its sockets."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        self._release()

    def _release(self) -> None:
        while self._domains:
            ZapHandler.release(self._domains.pop())

    def refusals(self) -> dict[str, int]:
        """Return what the hub refused: unsigned input, dropped input, handshakes, ignored subscriptions."""
        handshakes = sum(ZapHandler.refused(domain) for domain in self._domains)
        return {
            "unsigned_events": self.refused,
            "dropped_events": self.rejected,
            "handshakes": handshakes,
            "subscriptions": self.ignored_subscriptions,
        }

    def _secure(self, sock: zmq.Socket[bytes]) -> None:
        """Make a monitor-facing socket a CURVE server (keys given) or a PLAIN server of the session."""
        if self._curve is not None:
            self._curve.apply(sock)
            sock.setsockopt(zmq.ZAP_DOMAIN, self._curve_domain.encode())
        else:
            sock.setsockopt(zmq.PLAIN_SERVER, 1)
            sock.setsockopt(zmq.ZAP_DOMAIN, self._key.domain().encode())

    def _bind(self) -> tuple[zmq.Socket[bytes], zmq.Socket[bytes], zmq.Socket[bytes]]:
        ctx = context()
        inlet = ctx.socket(zmq.PULL)
        _tune(inlet, self._max_bytes)
        inlet.setsockopt(zmq.RCVHWM, 10_000)
        inlet.setsockopt(zmq.PLAIN_SERVER, 1)
        inlet.setsockopt(zmq.ZAP_DOMAIN, self._key.domain().encode())
        inlet.bind(self._events_in)
        secure_ipc(self._events_in)
        xpub = ctx.socket(zmq.XPUB)
        xpub.setsockopt(zmq.LINGER, 0)
        xpub.setsockopt(zmq.SNDHWM, self._sndhwm)
        xpub.setsockopt(zmq.XPUB_MANUAL, 1)
        xpub.setsockopt(zmq.MAXMSGSIZE, SUBSCRIPTION_BYTES)
        router = ctx.socket(zmq.ROUTER)
        _tune(router, SESSION_SOCKET_BYTES)
        router.setsockopt(zmq.RCVHWM, 16)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        for sock in (xpub, router):
            self._secure(sock)
        self.events_out = advertised(bind_tcp(xpub, self._host, self._events_port))
        self.session = advertised(bind_tcp(router, self._host, self._session_port))
        return inlet, xpub, router

    def _run(self) -> None:
        try:
            inlet, xpub, router = self._bind()
        except Exception as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        for sock in (inlet, xpub, router):
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
                if inlet in ready:
                    self._forward(inlet, xpub)
                if xpub in ready:
                    self._subscriptions(xpub)
                if router in ready:
                    self._serve(router, xpub)
                for monitor in monitors:
                    if monitor in ready:
                        self._watch_handshakes(monitor)
            # Publish what is still queued so the last events (SessionFinished) reach subscribers.
            self._forward(inlet, xpub)
        finally:
            for sock in (xpub, router):
                if self._curve is not None:
                    with contextlib.suppress(zmq.ZMQError):
                        sock.disable_monitor()
            for sock in (*monitors, inlet, xpub, router):
                sock.close(0)

    def _forward(self, inlet: zmq.Socket[bytes], xpub: zmq.Socket[bytes]) -> None:
        for _ in range(1000):
            taken = _take(inlet, self._max_bytes, MAX_FRAMES, skip=2)
            if taken is None:
                return
            try:
                if taken.error:
                    raise DecodeError(taken.error)
                signer, buffers = unseal(self._key, [f.buffer for f in taken.frames])
                msg = decode(buffers, max_bytes=self._max_bytes)
                if not isinstance(msg, Event):
                    raise DecodeError(f"{type(msg).__name__} is not an event")
                if msg.sender != signer:
                    raise SignatureError(f"{type(msg).__name__} from {msg.sender!r} was signed by {signer!r}")
            except DecodeError as exc:
                self.rejected += 1
                if isinstance(exc, SignatureError):
                    self.refused += 1
                self._report(xpub, "event input", str(exc))
                continue
            self._emit(xpub, msg, list(buffers))

    def _subscriptions(self, xpub: zmq.Socket[bytes]) -> None:
        """Pass on subscriptions to topics an event has; ignore and count the rest (XPUB_MANUAL)."""
        while True:
            try:
                notice = xpub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            topic = notice[1:]
            if notice[:1] not in (b"\x00", b"\x01") or topic not in self._topics:
                self.ignored_subscriptions += 1
                self._report(xpub, "event output", f"ignored a subscription to a {len(topic)}-byte topic")
                continue
            xpub.setsockopt(zmq.SUBSCRIBE if notice[:1] == b"\x01" else zmq.UNSUBSCRIBE, topic)

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
        more += (
            f"; refused in all: {self.refused} unsigned event(s), "
            f"{self.ignored_subscriptions} subscription(s)"
        )
        logger.warning("event hub: rejected input on the %s: %s%s", where, error, more)
        self._emit(xpub, ErrorRaised(where=f"session {where}", error=f"{error}{more}", sender="session"))
        self._suppressed = 0
        self._next_report = now + _REPORT_EVERY_S

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
        while True:
            taken = _take(router, SESSION_SOCKET_BYTES, MAX_FRAMES, skip=1)
            if taken is None:
                return
            peer = taken.frames[0].bytes
            reply: Message
            try:
                if taken.error:
                    raise DecodeError(taken.error)
                request = decode([f.buffer for f in taken.frames[1:]], max_bytes=SESSION_SOCKET_BYTES)
            except DecodeError as exc:
                self._report(xpub, "session socket", str(exc))
                reply = RequestFailed(
                    correlation_id=exc.msg_id, request="?", error=str(exc), sender="session"
                )
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
                if self._refusals.due():
                    logger.warning(
                        "session socket: refused a %s from a monitor%s",
                        type(request).__name__,
                        self._refusals.more(),
                    )
                return RequestFailed(
                    correlation_id=request.msg_id,
                    sender="session",
                    request=type(request).__name__,
                    error="monitors may only describe the session and ask for snapshots",
                )
