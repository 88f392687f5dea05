"""Define the common base of every message on the wire and the three roles a message plays."""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Self


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

    @classmethod
    def from_value(cls, value: object, **fields: Any) -> Self:
        """Build this message from the same-named attributes of `value`; `fields` set the rest.

        The base fields (id, correlation id, time, sender) are never taken from `value`, so a message
        built from another message is a new one; a field that `value` lacks and `fields` omit raises
        AttributeError naming it.
        """
        taken = {name: getattr(value, name) for name in _payload_fields(cls) if name not in fields}
        return cls(**taken, **fields)


_PAYLOAD_FIELDS: dict[type, tuple[str, ...]] = {}
"""Names of each message type's own fields, found once per type (from_value is on the step hot path)."""


def _payload_fields(cls: type[Message]) -> tuple[str, ...]:
    """Return the names of a message type's own fields, those besides the base fields."""
    names = _PAYLOAD_FIELDS.get(cls)
    if names is None:
        base = {f.name for f in dataclasses.fields(Message)}
        names = _PAYLOAD_FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls) if f.name not in base)
    return names


@dataclass(frozen=True, slots=True, kw_only=True)
class Command(Message):
    """A request to one actor, named in the imperative (TrainEpisode); it is answered by a Reply."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply(Message):
    """The answer to one Command, carrying the command's id as its correlation id."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event(Message):
    """A fact published on the bus, named in the past tense (ModelCreated); it may be dropped."""
