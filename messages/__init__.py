"""Typed, immutable messages and the one msgpack codec that carries them."""

from messages.base import Command, Event, Message, Reply, new_id
from messages.codec import PROTOCOL_VERSION, DecodeError, decode, encode, message_types, to_json_dict
from messages.commands import *  # noqa: F403
from messages.envelope import Incoming
from messages.events import *  # noqa: F403

__all__ = [
    "PROTOCOL_VERSION",
    "Command",
    "DecodeError",
    "Event",
    "Incoming",
    "Message",
    "Reply",
    "decode",
    "encode",
    "message_types",
    "new_id",
    "to_json_dict",
]
