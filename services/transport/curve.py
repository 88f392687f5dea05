"""Create, load and check the CURVE keys that guard a session's event and snapshot sockets.

Layout made by `python run.py keys` (the session's `session.keys_dir` names the top folder)::

    keys/server/server.key, server.key_secret    the session's key pair
    keys/clients/<kit>.key                       the allowlist: public keys of the monitors let in
    keys/local/                                  the kit of the session's own monitor actor
    keys/client-<n>/                             a kit to hand to a person running a remote monitor:
        client.key, client.key_secret, server.key

Removing `clients/<kit>.key` revokes that monitor at its next connection.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from services.transport.credentials import Credentials, CurveClientKeys, CurveServerKeys
from services.transport.endpoints import context

logger = logging.getLogger(__name__)

SERVER_DIR = "server"
"""Folder of the session's key pair."""
ALLOWLIST_DIR = "clients"
"""Folder of the public keys of every monitor the session accepts."""
LOCAL_KIT = "local"
"""Kit of the session's own monitor actor (it connects over tcp like any other monitor)."""
KIT_PREFIX = "client-"
"""Name prefix of the kits handed to remote monitors."""


class KeysError(Exception):
    """Keys are missing or unreadable; the message says which file and what to run."""


@dataclass(frozen=True, slots=True)
class SessionKeys:
    """What the session's event hub needs: its key pair and the folder of accepted client keys."""

    curve: CurveServerKeys
    allowlist: Path


@dataclass(frozen=True, slots=True)
class CreatedKeys:
    """What `create_keys` made (existing server keys are reused, never replaced)."""

    folder: Path
    server_created: bool
    kits: tuple[Path, ...]
    """Client kits created by this call (the local kit included when it was new)."""


def create_keys(folder: Path, clients: int = 1) -> CreatedKeys:
    """Create the session's key pair and the local monitor's kit if missing, plus `clients` new kits."""
    if clients < 0:
        raise ValueError(f"clients must be zero or more, got {clients}")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    server_created = False
    if not (folder / SERVER_DIR / "server.key_secret").is_file():
        with _staging(folder, folder / SERVER_DIR) as tmp:
            _create_pair(tmp, "server")
        server_created = True
    (folder / ALLOWLIST_DIR).mkdir(mode=0o700, exist_ok=True)
    names = [] if (folder / LOCAL_KIT).exists() else [LOCAL_KIT]
    number, added = 1, 0
    while added < clients:
        name = f"{KIT_PREFIX}{number}"
        if not (folder / name).exists() and not (folder / ALLOWLIST_DIR / f"{name}.key").exists():
            names.append(name)
            added += 1
        number += 1
    kits = tuple(_create_kit(folder, name) for name in names)
    return CreatedKeys(folder=folder, server_created=server_created, kits=kits)


def _create_pair(folder: Path, name: str) -> None:
    public, secret = zmq.auth.create_certificates(folder, name)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)


@contextmanager
def _staging(parent: Path, final: Path) -> Iterator[Path]:
    """Yield a private temporary folder that becomes `final` in one rename when the block succeeds."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))  # mode 0700: secrets are never exposed
    try:
        yield tmp
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _create_kit(folder: Path, name: str) -> Path:
    kit = folder / name
    with _staging(folder, kit) as tmp:
        _create_pair(tmp, "client")
        shutil.copyfile(folder / SERVER_DIR / "server.key", tmp / "server.key")
    listed = folder / ALLOWLIST_DIR / f"{name}.key"
    tmp_listed = listed.with_suffix(".tmp")
    shutil.copyfile(kit / "client.key", tmp_listed)
    os.replace(tmp_listed, listed)
    return kit


def _load(path: Path, what: str) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise KeysError(f"{what}: {path} is missing; create keys with `python run.py keys`")
    try:
        return zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise KeysError(f"{what}: {path} is not a CURVE key file: {exc}") from None


def load_session_keys(folder: Path) -> SessionKeys:
    """Load the session's key pair and locate its allowlist of client keys."""
    public, secret = _load(folder / SERVER_DIR / "server.key_secret", "session keys")
    if secret is None:
        raise KeysError(f"session keys: {folder / SERVER_DIR / 'server.key_secret'} holds no secret key")
    allowlist = folder / ALLOWLIST_DIR
    if not allowlist.is_dir():
        raise KeysError(f"session keys: the allowlist folder {allowlist} is missing")
    return SessionKeys(curve=CurveServerKeys(public=public, secret=secret), allowlist=allowlist)


def load_client_keys(kit: Path) -> CurveClientKeys:
    """Load a monitor's kit: its own key pair and the session's public key."""
    if not (kit / "client.key_secret").is_file() and (kit / SERVER_DIR).is_dir():
        raise KeysError(
            f"monitor keys: {kit} is a session's keys folder; pass one client folder such as "
            f"{kit / (KIT_PREFIX + '1')}"
        )
    public, secret = _load(kit / "client.key_secret", "monitor keys")
    if secret is None:
        raise KeysError(f"monitor keys: {kit / 'client.key_secret'} holds no secret key")
    server_public, _ = _load(kit / "server.key", "monitor keys")
    return CurveClientKeys(public=public, secret=secret, server_public=server_public)


class KeyAllowlist:
    """Accept the client keys listed in a folder and log every refusal (a ZAP credentials provider).

    The folder is read again whenever it changes, so a kit listed or revoked counts at the next
    connection. A refused client retries about ten times a second, so each key is logged once a minute.
    Use: ``ZapHandler.admit(ctx, domain, curve_check(KeyAllowlist(dir).callback))`` (services.transport.auth).
    """

    def __init__(
        self, folder: Path, *, quiet_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._folder = folder
        self._quiet_s = quiet_s
        self._clock = clock
        self._lock = threading.Lock()
        self._stamp: int | None = None
        self._keys: set[bytes] = set()
        self._logged: dict[bytes, float] = {}

    def _reload(self) -> None:
        try:
            stamp = self._folder.stat().st_mtime_ns
        except OSError:
            stamp = -1
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._keys = set(zmq.auth.load_certificates(self._folder))
        except (OSError, ValueError) as exc:
            logger.error("session: cannot read the monitor allowlist %s: %s", self._folder, exc)
            self._keys = set()

    def callback(self, domain: str, key: bytes) -> bool:
        """Tell whether the z85-encoded client key is listed; log a refusal."""
        with self._lock:
            self._reload()
            if key in self._keys:
                return True
            now = self._clock()
            if now - self._logged.get(key, -self._quiet_s) >= self._quiet_s:
                self._logged[key] = now
                logger.warning(
                    "session: refused a monitor: its CURVE key %s is not listed in %s",
                    key.decode("ascii", "replace"),
                    self._folder,
                )
            return False


class Handshake(enum.Enum):
    """How a connection attempt to a session's socket ended."""

    ACCEPTED = "accepted"
    REFUSED = "refused"
    """The session's authenticator refused the client key (it is not listed)."""
    MECHANISM = "mechanism"
    """One side uses CURVE and the other does not."""
    FAILED = "failed"
    """The session dropped the handshake, as it does for a client holding another session's key."""
    NO_ANSWER = "no answer"


_RETRY_WATCH_S = 1.0
"""How long to keep watching after a handshake broke off without detail."""
_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


def check_handshake(endpoint: str, keys: Credentials | None, timeout_s: float) -> Handshake:
    """Connect to endpoint, watch the security handshake through a socket monitor and say how it ended.

    Sends no message: only the ZMTP greeting (and CURVE's hello or PLAIN's credentials) goes out.
    """
    sock = context().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    if keys is not None:
        keys.apply(sock)
    monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout_s
        result = Handshake.NO_ANSWER
        while (remaining := deadline - time.monotonic()) > 0:
            if not monitor.poll(max(1, int(remaining * 1000))):
                break
            event = recv_monitor_message(monitor)
            match event["event"]:
                case zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return Handshake.ACCEPTED
                case zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                    return Handshake.REFUSED
                case zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL if (
                    event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
                ):
                    return Handshake.MECHANISM
                case zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL if result is Handshake.NO_ANSWER:
                    # The peer closed first. A mechanism mismatch can look like this too, so let the
                    # socket retry for a moment in case the next attempt says more.
                    result = Handshake.FAILED
                    deadline = min(deadline, time.monotonic() + _RETRY_WATCH_S)
                case zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    pass
                case _:
                    return Handshake.FAILED
        return result
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def explain_handshake(
    result: Handshake, endpoint: str, keys_dir: Path | None, timeout_s: float, *, run_dir: Path | None = None
) -> str:
    """Return the one line a monitor prints when its handshake with the session did not succeed.

    `keys_dir` is the CURVE kit the monitor used, `run_dir` the run folder whose session key it used.
    """
    match result:
        case Handshake.ACCEPTED:
            return f"the session at {endpoint} accepted this monitor"
        case Handshake.REFUSED if run_dir is not None:
            return (
                f"the session at {endpoint} refused this monitor: {run_dir}/session.key is not the key of "
                "the session running there (was the run launched again, or is this another run's folder?)"
            )
        case Handshake.REFUSED:
            return (
                f"the session at {endpoint} refused this monitor's key from {keys_dir}: it is not listed "
                "in the session's keys/clients folder (ask for a listed client folder made by "
                "`python run.py keys`)"
            )
        case Handshake.MECHANISM if run_dir is not None:
            return (
                f"the session at {endpoint} uses CURVE keys: pass --keys DIR with a client folder made by "
                "`python run.py keys`"
            )
        case Handshake.MECHANISM if keys_dir is None:
            return (
                f"the session at {endpoint} requires its key: on the session's host pass --run runs/NAME "
                "(it reads the run's session.key); a session with CURVE keys requires CURVE keys: pass "
                "--keys DIR with a client folder made by `python run.py keys`"
            )
        case Handshake.MECHANISM:
            return (
                f"the session at {endpoint} does not use CURVE keys: leave out --keys and pass "
                "--run runs/NAME on the session's host"
            )
        case Handshake.FAILED if keys_dir is None:
            return (
                f"the session at {endpoint} broke off the handshake: it probably requires CURVE keys "
                "(pass --keys DIR with a client folder made by `python run.py keys`)"
            )
        case Handshake.FAILED:
            return (
                f"the session at {endpoint} broke off the handshake: server.key in {keys_dir} is "
                "probably not this session's key"
            )
        case _:
            return f"no session answered at {endpoint} within {timeout_s:g} s"
