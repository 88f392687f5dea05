"""Define what a server hands its actor, and the signed envelope every message between a session's
processes travels in: ``[signer, mac, header, arrays...]`` (see docs/PROTOCOL.md, section 2)."""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from messages.base import Message
from messages.codec import DecodeError, Frame

KEY_BYTES = 32
"""Length of a session key."""
MAX_SIGNER_BYTES = 32
"""Longest signer name (a role such as "session", "env", "model")."""
MAC_BYTES = 32
"""Length of an HMAC-SHA256."""
_COUNT = struct.Struct(">I")
_LENGTH = struct.Struct(">Q")
_ROLE_CACHE = 16
"""Role keys kept per session key; a peer naming many roles only costs a derivation each."""


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request taken from a server socket: the peer to answer and the message, or why it was bad."""

    peer: bytes
    message: Message | None
    error: str = ""
    request_id: str = ""
    """The msg_id of a request that could not be decoded, when its header was readable."""


class SignatureError(DecodeError):
    """Frames that are not signed with a key of this session."""


class SessionKey:
    """The session's secret and what is derived from it: one signing key per role, the monitors' token."""

    __slots__ = ("_roles", "_secret")

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"a session key has {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = bytes(secret)
        self._roles: dict[bytes, bytes] = {}

    @classmethod
    def generate(cls) -> SessionKey:
        """Return a new random key."""
        return cls(os.urandom(KEY_BYTES))

    @property
    def secret(self) -> bytes:
        """The 32 secret bytes (what the key file holds)."""
        return self._secret

    def role_key(self, role: bytes) -> bytes:
        """Return the signing key of one role: HMAC-SHA256(secret, b"role:" + role)."""
        key = self._roles.get(role)
        if key is None:
            key = hmac.digest(self._secret, b"role:" + role, "sha256")
            if len(self._roles) < _ROLE_CACHE:
                self._roles[role] = key
        return key

    def token(self) -> str:
        """Return the monitors' PLAIN password: hex of HMAC-SHA256(secret, b"monitor")."""
        return hmac.digest(self._secret, b"monitor", "sha256").hex()

    def domain(self) -> str:
        """Return the ZAP domain of this session's sockets (public: it names the session, proves nothing)."""
        return "rlta-" + hmac.digest(self._secret, b"domain", "sha256").hex()[:16]


def _mac(key: bytes, frames: Sequence[Frame]) -> bytes:
    """HMAC-SHA256 over the frame count, each frame's length, then the frames (no frame is copied)."""
    prefix = _COUNT.pack(len(frames)) + b"".join(_LENGTH.pack(len(f)) for f in frames)
    if len(frames) == 1:
        return hmac.digest(key, prefix + frames[0], "sha256")
    mac = hmac.new(key, prefix, "sha256")
    for frame in frames:
        mac.update(frame)
    return mac.digest()


def seal(key: SessionKey, signer: bytes, frames: Sequence[Frame]) -> list[Frame]:
    """Return the signed envelope of encoded frames: [signer, mac, *frames]."""
    return [signer, _mac(key.role_key(signer), frames), *frames]


def unseal(key: SessionKey, frames: Sequence[Frame]) -> tuple[str, Sequence[Frame]]:
    """Check an envelope's signature before anything is decoded; return (signer, the message's frames)."""
    if len(frames) < 3:
        raise SignatureError(f"not signed: {len(frames)} frame(s), a signed message has at least 3")
    signer, mac, rest = bytes(frames[0]), bytes(frames[1]), frames[2:]
    if not 0 < len(signer) <= MAX_SIGNER_BYTES or not signer.isascii():
        raise SignatureError("not signed: the first frame is not a signer name")
    if len(mac) != MAC_BYTES or not hmac.compare_digest(_mac(key.role_key(signer), rest), mac):
        raise SignatureError(f"bad signature for signer {signer.decode()!r}")
    return signer.decode(), rest
