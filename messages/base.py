"""Define the common base of every message on the wire."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field


def new_id() -> str:
    """Return a fresh message id (32 lowercase hex characters)."""
    return uuid.uuid4().hex


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of every command, reply and event: an id, a correlation id, a timestamp and a sender."""

    msg_id: str = field(default_factory=new_id)
    """Unique id of this message."""
    correlation_id: str = ""
    """Id of the message this one answers; empty when it answers none."""
    ts: float = field(default_factory=time.time)
    """Wall-clock time of creation, seconds since the epoch."""
    sender: str = ""
    """Name of the actor that sent it (data, env, model, monitor, session)."""
