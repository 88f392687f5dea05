"""How a socket on the hot path waits for its next message: a short yielding spin, then a blocking poll."""

from __future__ import annotations

import math
import os
import time
from typing import cast

import zmq

SPIN_S = 0.002
"""How long a socket on the hot path polls before it blocks: a reply to an env step, or the next step
request, usually arrives within this, and waking a blocked process costs more than the spin."""
HOT_S = 0.01
"""A socket is on the hot path while its last message (received by a server, sent by a client) is at most
this old; any other socket blocks at once, so idle actors cost no CPU."""


# Plain ints: the spin reads these hundreds of times a request, and pyzmq's enums are slower to combine.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


class SocketWaiter:
    """Wait until a socket is readable: poll it in a loop for a short while when it is busy, else block.

    The loop gives the CPU away (sched_yield) between polls, so that on a machine with few cores the
    ZeroMQ I/O threads of both processes, which carry the message, are not kept waiting by the spin.
    """

    __slots__ = ("_last", "_sock")

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._sock = sock
        self._last = -math.inf

    def touch(self) -> None:
        """Mark the socket busy: the next wait spins before it blocks."""
        self._last = time.perf_counter()

    def wait(self, timeout_ms: int) -> bool:
        """Return True once the socket has a message, False after timeout_ms without one."""
        readable = self._readable
        if readable():
            return True
        if timeout_ms <= 0:
            return False
        started = now = time.perf_counter()
        if now - self._last < HOT_S:
            end = now + min(SPIN_S, timeout_ms / 1000)
            while now < end:
                os.sched_yield()
                if readable():
                    return True
                now = time.perf_counter()
            timeout_ms -= int((now - started) * 1000)
        return bool(self._sock.poll(max(timeout_ms, 0)))

    def _readable(self) -> bool:
        """Tell whether a message is waiting, without blocking (cheaper than poll(0))."""
        return bool(cast(int, self._sock.get(_EVENTS)) & _POLLIN)
