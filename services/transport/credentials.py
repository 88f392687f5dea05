"""What a socket presents in its handshake: the session's PLAIN token, or CURVE keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import zmq

from messages.envelope import SessionKey
from services.transport.auth import PLAIN_USER, ZapHandler, plain_check
from services.transport.endpoints import context


class Credentials(Protocol):
    """What a client socket presents in its handshake: PLAIN with the session token, or CURVE keys."""

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Set the socket's security options before it connects."""
        ...


@dataclass(frozen=True, slots=True)
class PlainClient:
    """PLAIN credentials: the user "session" and the token derived from the session key."""

    token: str

    @classmethod
    def of(cls, key: SessionKey) -> PlainClient:
        """Return the credentials of a holder of the session key."""
        return cls(key.token())

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make the socket a PLAIN client."""
        sock.setsockopt(zmq.PLAIN_USERNAME, PLAIN_USER)
        sock.setsockopt(zmq.PLAIN_PASSWORD, self.token.encode())


class ServerGuard:
    """A server socket's admission: a PLAIN server of the session's ZAP domain while the socket lives."""

    __slots__ = ("domain",)

    def __init__(self, sock: zmq.Socket[bytes], key: SessionKey) -> None:
        self.domain = key.domain()
        ZapHandler.admit(context(), self.domain, plain_check(key))
        sock.setsockopt(zmq.PLAIN_SERVER, 1)
        sock.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())

    def release(self) -> None:
        """Stop answering this socket's handshakes."""
        ZapHandler.release(self.domain)


@dataclass(frozen=True, slots=True)
class CurveServerKeys:
    """CURVE keys of a server socket bound to a non-loopback address."""

    public: bytes
    secret: bytes

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make the socket a CURVE server."""
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)


@dataclass(frozen=True, slots=True)
class CurveClientKeys:
    """CURVE keys of a client: its own pair and the server's public key."""

    public: bytes
    secret: bytes
    server_public: bytes

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Make the socket a CURVE client of the server."""
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.secret)
        sock.setsockopt(zmq.CURVE_SERVERKEY, self.server_public)
