"""Provide the real clock and the process probe that actors get injected."""

from __future__ import annotations

import time

import psutil


class SystemClock:
    """The machine's clocks."""

    def monotonic(self) -> float:
        """Seconds on the monotonic clock."""
        return time.monotonic()

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()


class PsutilProbe:
    """Reads this process's resident memory and CPU share with psutil."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._proc.cpu_percent(None)

    def sample(self) -> tuple[int, float]:
        """Return (rss_bytes, cpu_percent since the previous sample)."""
        return int(self._proc.memory_info().rss), float(self._proc.cpu_percent(None))


def rss_bytes() -> int:
    """Return this process's resident memory."""
    return int(psutil.Process().memory_info().rss)
