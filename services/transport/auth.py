"""Decide who may talk to a session: its key file, and the ZAP handler that checks every handshake.

Every socket a session's process binds is a PLAIN or CURVE server in a ZAP domain of the session, so a
process that does not hold the session key is refused at the handshake, before it can deliver a byte
(libzmq holds a whole multipart message before the application sees its first frame, so refusing a
message after it arrived would come too late to bound memory). The key file is ``<run>/session.key``:
the 32-byte secret as 64 hex digits and a newline, mode 0600.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from messages.envelope import KEY_BYTES, SessionKey

logger = logging.getLogger(__name__)

KEY_FILE = "session.key"
"""Name of the session key file in the run folder."""
PLAIN_USER = b"session"
"""The PLAIN user name every session client presents; the password is SessionKey.token()."""
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
_LOG_EVERY_S = 10.0


class KeyFileError(Exception):
    """The session key file is missing or unreadable; the message names the file."""


def write_session_key(run_dir: Path, key: SessionKey | None = None) -> SessionKey:
    """Write a session key (a new random one unless given) to the run folder, mode 0600 whatever the umask."""
    key = key if key is not None else SessionKey.generate()
    tmp = run_dir / f".{KEY_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (key.secret.hex() + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, run_dir / KEY_FILE)
    return key


def read_session_key(run_dir: Path) -> SessionKey:
    """Read the session key of a run folder."""
    path = run_dir / KEY_FILE
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the session key ({exc.strerror})") from None
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        secret = b""
    if len(secret) != KEY_BYTES:
        raise KeyFileError(f"{path}: not a session key ({KEY_BYTES * 2} hex digits)")
    return SessionKey(secret)


Check = Callable[[bytes, list[bytes]], bool]
"""Tells whether a handshake's mechanism and credentials may pass."""


def plain_check(key: SessionKey) -> Check:
    """Accept PLAIN handshakes that present the session's token."""
    token = key.token().encode()

    def check(mechanism: bytes, credentials: list[bytes]) -> bool:
        return (
            mechanism == b"PLAIN"
            and len(credentials) == 2
            and credentials[0] == PLAIN_USER
            and hmac.compare_digest(credentials[1], token)
        )

    return check


def curve_check(callback: Callable[[str, bytes], bool]) -> Check:
    """Accept CURVE handshakes whose client key the callback accepts (a KeyAllowlist's)."""

    def check(mechanism: bytes, credentials: list[bytes]) -> bool:
        if mechanism != b"CURVE" or len(credentials) != 1 or len(credentials[0]) != 32:
            return False
        return callback("*", z85.encode(credentials[0]))

    return check


@dataclass(slots=True)
class _Domain:
    check: Check
    users: int
    refused: int = 0


class ZapHandler:
    """Answer the handshakes of one context's server sockets, by ZAP domain, in a thread of its own.

    One per process: it runs while at least one domain is admitted and stops with the last release.
    """

    _lock = threading.Lock()
    _running: ZapHandler | None = None
    _domains: dict[str, _Domain] = {}  # one table per process, guarded by _lock

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> None:
        self._ctx = ctx
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._next_log = 0.0
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)

    @classmethod
    def admit(cls, ctx: zmq.Context[zmq.Socket[bytes]], domain: str, check: Check) -> None:
        """Answer handshakes in `domain` with `check` (counted: every admit needs one release)."""
        with cls._lock:
            entry = cls._domains.get(domain)
            if entry is None:
                cls._domains[domain] = _Domain(check, 1)
            else:
                entry.users += 1
            if cls._running is None:
                handler = cls(ctx)
                handler._thread.start()
                handler._ready.wait(5)
                if handler._error is not None:
                    del cls._domains[domain]
                    raise RuntimeError(f"authentication handler did not start: {handler._error}")
                cls._running = handler

    @classmethod
    def release(cls, domain: str) -> None:
        """Drop one admit of a domain; the handler stops when no domain is left."""
        with cls._lock:
            entry = cls._domains.get(domain)
            if entry is None:
                return
            entry.users -= 1
            if entry.users <= 0:
                del cls._domains[domain]
            handler = cls._running if not cls._domains else None
            if handler is not None:
                cls._running = None
        if handler is not None:
            handler._stop.set()
            handler._thread.join(5)

    @classmethod
    def refused(cls, domain: str) -> int:
        """Return how many handshakes in a domain were refused."""
        with cls._lock:
            entry = cls._domains.get(domain)
            return entry.refused if entry is not None else 0

    def _run(self) -> None:
        sock = self._ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(ZAP_ENDPOINT)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while not self._stop.is_set():
                if sock.poll(50):
                    sock.send_multipart(self._answer(sock.recv_multipart()))
        finally:
            sock.unbind(ZAP_ENDPOINT)  # at once: close() frees the name later, and a new handler may bind
            sock.close(0)

    def _answer(self, request: list[bytes]) -> list[bytes]:
        if len(request) < 6:
            return [b"1.0", b"", b"500", b"malformed request", b"", b""]
        version, request_id, domain, address, _identity, mechanism = request[:6]
        with self._lock:
            entry = self._domains.get(domain.decode("ascii", "replace"))
            allowed = entry is not None and entry.check(mechanism, request[6:])
            if entry is not None and not allowed:
                entry.refused += 1
        if allowed:
            return [version, request_id, b"200", b"OK", PLAIN_USER, b""]
        now = time.monotonic()
        if now >= self._next_log:
            self._next_log = now + _LOG_EVERY_S
            logger.warning(
                "refused a %s handshake from %s: it does not hold this session's key",
                mechanism.decode("ascii", "replace"),
                address.decode("ascii", "replace") or "a local process",
            )
        return [version, request_id, b"400", b"not this session's key", b"", b""]
