"""Define what a server hands its actor: a decoded request and the peer to answer."""

from __future__ import annotations

from dataclasses import dataclass

from messages.base import Message


@dataclass(frozen=True, slots=True)
class Incoming:
    """One request taken from a server socket: the peer to answer and the message, or why it was bad."""

    peer: bytes
    message: Message | None
    error: str = ""
