"""Choose the console view of a session: JSON lines, a live view on a terminal, plain lines, or none."""

from __future__ import annotations

import sys
from typing import IO

from rich.console import Console

from services.session.console import ConsoleView, JsonView, NullView, PlainView, ViewClock
from services.session.live import LiveView


def make_view(
    mode: str,
    *,
    json: bool,
    tables: bool,
    stream: IO[str] | None = None,
    heartbeat_s: float = 1.0,
    clock: ViewClock | None = None,
) -> ConsoleView:
    """Choose a view: JSON lines, or by mode (auto: live when the stream is a terminal, else plain).

    Args:
        mode: auto, live, plain or off (`session.console`).
        json: one JSON object per line for scripts, whatever the mode.
        tables: print full evaluation tables and the attach summary in plain mode (remote monitors).
    """
    out = stream or sys.stdout
    if json:
        return JsonView(out)
    if mode == "auto":
        mode = "live" if out.isatty() else "plain"
    match mode:
        case "live":
            return LiveView(Console(file=out), heartbeat_s=heartbeat_s, clock=clock)
        case "plain":
            return PlainView(out, tables=tables, heartbeat_s=heartbeat_s, clock=clock)
        case "off":
            return NullView()
        case _:
            raise ValueError(f"console mode must be auto, live, plain or off, got {mode!r}")
