"""Count SIGINT and SIGTERM so the main loop can stop cleanly on the first and at once on the second."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class SignalLatch:
    """Count SIGINT/SIGTERM: the first stops the session cleanly, the second at once."""

    def __init__(self) -> None:
        self.count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (only the main thread can)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        """Restore the handlers that were there before."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()
