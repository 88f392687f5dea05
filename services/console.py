"""Render a session's state and events for people (plain lines) and scripts (JSON lines).

This is the console UI: the one place besides run.py's final table that prints.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Protocol

from messages import (
    DataLoaded,
    EpisodeFinished,
    ErrorRaised,
    EvaluationFinished,
    Message,
    ModelCreated,
    ModelReused,
    SessionFinished,
    SessionStarted,
    TrainingProgress,
    to_json_dict,
)
from services.session_state import SessionState

TABLE_ROWS = (
    ("total_return", "Total return", "pct"),
    ("annualised_return", "Annualised return", "pct"),
    ("annualised_volatility", "Annualised volatility", "pct"),
    ("sharpe", "Sharpe", "num"),
    ("sortino", "Sortino", "num"),
    ("max_drawdown", "Max drawdown", "pct"),
    ("max_drawdown_duration", "Max drawdown duration (bars)", "int"),
    ("calmar", "Calmar", "num"),
    ("turnover", "Turnover", "num"),
    ("costs_paid", "Costs paid", "pct"),
    ("trades", "Trades", "int"),
    ("win_rate", "Win rate", "pct"),
    ("exposure", "Exposure", "pct"),
)


class ConsoleView(Protocol):
    """Shows the state of a session as events arrive."""

    def snapshot(self, state: SessionState) -> None:
        """Show the state received on attaching."""
        ...

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        """Show one new event (already applied to state)."""
        ...

    def notice(self, text: str) -> None:
        """Show a line about the connection (gaps, silence, reconnects)."""
        ...

    def close(self) -> None:
        """Finish the output."""
        ...


def _cell(value: Any, kind: str) -> str:
    if not isinstance(value, int | float):
        return "-"
    if kind == "pct":
        return f"{100 * value:.2f}%"
    if kind == "int":
        return f"{int(value):d}"
    return f"{value:.3f}"


def format_eval_table(episode: int, agent: Mapping[str, float], buy_and_hold: Mapping[str, float]) -> str:
    """Return the evaluation table of one episode: agent vs buy-and-hold, one metric per row."""
    lines = [
        f"Evaluation of episode {episode} (eval window)",
        f"{'metric':<30}{'agent':>14}{'buy & hold':>14}",
    ]
    for key, label, kind in TABLE_ROWS:
        if key in agent or key in buy_and_hold:
            lines.append(
                f"{label:<30}{_cell(agent.get(key), kind):>14}{_cell(buy_and_hold.get(key), kind):>14}"
            )
    return "\n".join(lines)


def format_duration(seconds: float) -> str:
    """Format seconds as H:MM:SS."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def format_progress(state: SessionState) -> str:
    """Return the one-line progress of the current episode: steps, steps/s, ETA."""
    d = state.to_dict()
    p, s = d["progress"], d["session"]
    total = max(p["steps_total"], 1)
    pct = min(100.0, 100.0 * p["steps"] / total)
    episodes = s["episodes"] or "?"
    return (
        f"episode {p['episode']}/{episodes}  {p['steps']:,}/{p['steps_total']:,} steps ({pct:.0f}%)"
        f"  {p['steps_per_s']:,.0f} steps/s  ETA {format_duration(p['eta_s'])}"
    )


class PlainView:
    """Plain lines: one per event that matters, progress at a modest rate."""

    def __init__(
        self, out: IO[str] | None = None, *, tables: bool = True, progress_every_s: float = 5.0
    ) -> None:
        self._out = out or sys.stdout
        self._tables = tables
        self._every = progress_every_s
        self._next = 0.0

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def snapshot(self, state: SessionState) -> None:
        """Summarise the state on attaching."""
        d = state.to_dict()
        s, m = d["session"], d["model"]
        if not self._tables:
            return  # the local console: the session has only just started
        self._say(
            f"attached to session {s['name'] or '?'} ({s['status']}) at event {d['seq']}; "
            f"model {m['model_id'] or 'not created yet'}"
        )
        if d["progress"]["steps_total"]:
            self._say(format_progress(state))
        for ev in d["evaluations"]:
            self._say(format_eval_table(ev["episode"], ev["agent"], ev["buy_and_hold"]))

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        """Print the events that matter; progress at most every progress_every_s."""
        match msg:
            case SessionStarted():
                self._say(f"session {msg.name}: {msg.episodes} episode(s) x {msg.steps_per_episode:,} steps")
            case DataLoaded():
                cached = ", from cache" if msg.cached else ""
                self._say(f"data: {msg.rows:,} bars, {len(msg.features)} features{cached}")
            case ModelCreated():
                self._say(
                    f"model {msg.model_id} created"
                    f" ({msg.algorithm}, {msg.device}, {msg.parameters:,} parameters)"
                )
            case ModelReused():
                self._say(f"model {msg.model_id} reused for episode {msg.episode}")
            case TrainingProgress():
                now = time.monotonic()
                if now >= self._next:
                    self._next = now + self._every
                    self._say(format_progress(state))
            case EpisodeFinished():
                self._say(
                    f"episode {msg.episode} trained: {msg.steps:,} steps in {format_duration(msg.seconds)}"
                    f" ({msg.steps_per_s:,.0f} steps/s)"
                )
            case EvaluationFinished() if self._tables:
                self._say(format_eval_table(msg.episode, msg.agent, msg.buy_and_hold))
            case EvaluationFinished():
                a, b = msg.agent, msg.buy_and_hold
                agent = f"{100 * a.get('total_return', 0.0):+.2f}% (Sharpe {a.get('sharpe', 0.0):.2f})"
                bench = f"{100 * b.get('total_return', 0.0):+.2f}% (Sharpe {b.get('sharpe', 0.0):.2f})"
                self._say(f"episode {msg.episode} evaluated: agent {agent}, buy & hold {bench}")
            case ErrorRaised():
                self._say(f"error in {msg.sender or '?'} ({msg.where}): {msg.error}")
            case SessionFinished():
                reason = f": {msg.reason}" if msg.reason else ""
                self._say(f"session {msg.name} {msg.status}{reason}")
            case _:
                pass

    def notice(self, text: str) -> None:
        """Print a connection notice."""
        self._say(text)

    def close(self) -> None:
        """Flush the output."""
        self._out.flush()


class JsonView:
    """One JSON object per line: the snapshot first, then every event with its sequence number."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self._out = out or sys.stdout

    def _emit(self, obj: dict[str, Any]) -> None:
        self._out.write(json.dumps(obj, separators=(",", ":"), default=str) + "\n")
        self._out.flush()

    def snapshot(self, state: SessionState) -> None:
        """Emit the snapshot."""
        self._emit({"type": "Snapshot", "seq": state.seq, "state": state.to_dict()})

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        """Emit one event."""
        record = to_json_dict(msg)
        record["seq"] = seq
        record["actor"] = record.pop("sender")
        self._emit(record)

    def notice(self, text: str) -> None:
        """Emit a notice."""
        self._emit({"type": "Notice", "text": text})

    def close(self) -> None:
        """Flush the output."""
        self._out.flush()
