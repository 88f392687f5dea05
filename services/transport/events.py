"""The frames of a published event (topic, sequence number, message) and the hub's callback types."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from messages import DecodeError, Message, decode, encode

_SEQ = struct.Struct(">Q")


def pack_event(seq: int, msg: Message, frames: Sequence[Any] | None = None) -> list[Any]:
    """Return the frames of a published event: topic, sequence number, then the message."""
    return [type(msg).__name__.encode(), _SEQ.pack(seq), *(frames if frames is not None else encode(msg))]


def unpack_event(frames: Sequence[Any], max_bytes: int) -> tuple[int, Message]:
    """Decode the frames of a published event into (seq, event)."""
    if len(frames) < 3:
        raise DecodeError(f"event has {len(frames)} frames, expected at least 3")
    seq_frame = bytes(frames[1])
    if len(seq_frame) != _SEQ.size:
        raise DecodeError(f"sequence frame of {len(seq_frame)} bytes, expected {_SEQ.size}")
    msg = decode(frames[2:], max_bytes=max_bytes)
    if bytes(frames[0]) != type(msg).__name__.encode():
        raise DecodeError(f"topic {bytes(frames[0])[:40]!r} does not match type {type(msg).__name__}")
    return _SEQ.unpack(seq_frame)[0], msg


EventSink = Callable[[int, Message], object]
"""Called by the hub for every valid event with its sequence number."""
