"""Sign and open frames as a session's processes do, for tests that drive sockets by hand."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import msgpack
import zmq

from messages import DecodeError, decode, encode
from messages.envelope import MAX_SIGNER_BYTES, SessionKey, seal, unseal
from services.transport.credentials import PlainClient

KEY = SessionKey.generate()
"""The session key of every socket these tests build."""
AUTH = PlainClient.of(KEY)
"""The handshake credentials of a holder of KEY."""


def signer_of(frames: Sequence[bytes]) -> bytes:
    """Return the sender named in a header frame, or b"test" when none can be read (garbage)."""
    try:
        sender = msgpack.unpackb(frames[0], raw=False)["body"]["sender"]
    except Exception:
        return b"test"
    ok = isinstance(sender, str) and 0 < len(sender) <= MAX_SIGNER_BYTES and sender.isascii()
    return sender.encode() if ok else b"test"


def signed(frames: Sequence[Any], key: SessionKey = KEY) -> list[Any]:
    """Return frames in a signed envelope, signed by the sender their header names.

    A valid message without a sender is stamped "test" first, as the transport stamps its own role.
    """
    raw = [bytes(f) for f in frames]
    try:
        msg = decode(raw)
    except DecodeError:
        return seal(key, signer_of(raw), raw)
    if not msg.sender:
        raw = [bytes(f) for f in encode(dataclasses.replace(msg, sender="test"))]
    return seal(key, signer_of(raw), raw)


def opened(frames: Sequence[Any]) -> list[Any]:
    """Return the message frames of a signed envelope, checking its signature."""
    return list(unseal(KEY, frames)[1])


class SignedSocket:
    """A raw socket that signs what it sends and opens what it receives; anything else passes through."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock

    def send_multipart(self, frames: Sequence[Any], flags: int = 0) -> None:
        self.sock.send_multipart(signed(frames), flags)

    def recv_multipart(self) -> list[Any]:
        return opened(self.sock.recv_multipart())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)
