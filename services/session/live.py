"""Show a session live on a terminal: progress, training values, evaluations and actors, redrawn in place."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from messages import Message
from services.runtime import SystemClock
from services.session.console import (
    BOOKKEEPING_VALUES,
    EVAL_ROWS_SHOWN,
    LIVE_REFRESH_HZ,
    TRAINING_VALUES,
    HeartbeatWatch,
    ViewClock,
    age_text,
    format_duration,
    session_progress,
)
from services.session.figures import format_cell
from services.session.state import SessionState
from services.session.study_console import format_params, format_trial_progress

logger = logging.getLogger(__name__)


class LiveView:
    """A live terminal view redrawn by rich at most LIVE_REFRESH_HZ times a second.

    The actor's calls only keep a reference to the state (and queue notices); rich's refresh thread
    renders, so a slow terminal never holds up the actor, and stale actors show up without new events.
    """

    def __init__(
        self,
        console: Console | None = None,
        *,
        heartbeat_s: float = 1.0,
        clock: ViewClock | None = None,
        refresh_hz: float = LIVE_REFRESH_HZ,
        auto_refresh: bool = True,
    ) -> None:
        self._console = console or Console()
        self._clock = clock or SystemClock()
        self._watch = HeartbeatWatch(self._clock, heartbeat_s)
        self._refresh_hz = min(refresh_hz, LIVE_REFRESH_HZ)
        self._auto_refresh = auto_refresh
        self._state: SessionState | None = None
        self._notices: deque[str] = deque(maxlen=4)
        self._lock = threading.Lock()
        self._live: Live | None = None
        self._closed = False

    def _start(self) -> None:
        if self._live is not None or self._closed:
            return
        self._live = Live(
            console=self._console,
            get_renderable=self.render,
            refresh_per_second=self._refresh_hz,
            auto_refresh=self._auto_refresh,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._live.start()

    def snapshot(self, state: SessionState) -> None:
        """Show the attached state."""
        self._state = state
        self._start()

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        """Take the new state; the next refresh shows it."""
        self._state = state
        self._watch.saw(msg)
        self._start()

    def notice(self, text: str) -> None:
        """Show a connection notice under the view."""
        stamp = time.strftime("%H:%M:%S", time.localtime(self._clock.time()))
        with self._lock:
            self._notices.append(f"{stamp} {text}")
        self._start()

    def close(self) -> None:
        """Draw the final state and stop the refresh thread."""
        self._closed = True
        if self._live is not None:
            self._live.stop()
            self._live = None

    def render(self) -> RenderableType:
        """Build the whole view from the current state (called by rich's refresh thread)."""
        try:
            d = self._state.to_dict() if self._state is not None else SessionState.empty()
            with self._lock:
                notices = list(self._notices)
            return Group(*self._parts(d, notices))
        except Exception as exc:  # the refresh thread must survive a bad state
            logger.exception("live view: rendering failed")
            return Text(f"console: rendering failed: {type(exc).__name__}: {exc}", style="red")

    def _parts(self, d: Mapping[str, Any], notices: list[str]) -> list[RenderableType]:
        if d["session"].get("kind") == "study":
            return [*self._study(d), *(Text(line, style="yellow") for line in notices)]
        parts: list[RenderableType] = [self._header(d), self._progress(d)]
        if d["metrics"]:
            parts.append(self._training(d["metrics"]))
        if d["evaluations"]:
            parts.append(self._evaluations(d["evaluations"]))
        if d["actors"]:
            parts.append(self._actors(d["actors"]))
        for err in d["errors"][-3:]:
            parts.append(
                Text(f"error in {err['actor'] or '?'} ({err['where']}): {err['error']}", style="red")
            )
        for line in notices:
            parts.append(Text(line, style="yellow"))
        return parts

    def _study(self, d: Mapping[str, Any]) -> list[RenderableType]:
        """Render a study: its header, the latest trials, the tune process's heartbeat."""
        study, status = d["study"], d["session"]["status"]
        style = {"running": "green", "completed": "bold green", "failed": "bold red"}.get(status, "yellow")
        header = Text.assemble(
            ("study ", "bold"), (study["name"] or "?", "bold cyan"), "  ", (status, style),
            f"  {study['finished']}/{study['trials']} trials finished, {study['seeds']} seed(s) each",
        )  # fmt: skip
        if study["best_number"] >= 0:
            header.append(f"  best trial {study['best_number']} value {study['best_value']:.3f}")
        table = Table(title="trials", title_justify="left")
        for label in ("trial", "state", "value", "training", "latest evaluation", "parameters"):
            table.add_column(label, justify="right" if label in ("trial", "value") else "left")
        for trial in study["recent"][-EVAL_ROWS_SHOWN:]:
            report, progress = trial.get("last_report"), trial.get("progress")
            latest = (
                f"seed {report['seed']} episode {report['episode']}: Sharpe {report['sharpe']:.3f}"
                if report
                else ""
            )
            table.add_row(
                str(trial["number"]),
                trial["state"],
                format_cell(trial.get("value"), "num") if trial.get("value") is not None else "",
                f"seed {progress['seed']} {format_trial_progress(progress)}" if progress else "",
                latest,
                format_params(trial["params"]),
            )
        parts: list[RenderableType] = [header, table]
        if d["actors"]:
            parts.append(self._actors(d["actors"]))
        return parts

    def _header(self, d: Mapping[str, Any]) -> Text:
        s, m, data = d["session"], d["model"], d["data"]
        style = {"running": "green", "completed": "bold green", "failed": "bold red"}.get(
            s["status"], "yellow"
        )
        text = Text.assemble(
            ("session ", "bold"), (s["name"] or "?", "bold cyan"), "  ", (s["status"], style)
        )
        if m["model_id"]:
            params = f", {m['parameters']:,} parameters" if m.get("parameters") else ""
            text.append(
                f"  model {m['model_id']} ({m['algorithm']}, {m['device']}{params}; "
                f"created {m['created']}, restored {m.get('restored', 0)}, reused {m['reused']})"
            )
        if data:
            text.append(f"  data {data['rows']:,} bars")
        if d["gaps"]:
            text.append(f"  {d['gaps']} event(s) lost", style="yellow")
        return text

    def _progress(self, d: Mapping[str, Any]) -> Table:
        p, s = d["progress"], d["session"]
        grid = Table.grid(padding=(0, 1))
        grid.add_column(min_width=14)
        grid.add_column(width=32)
        grid.add_column()
        total = max(int(p["steps_total"]), 1)
        steps = int(p["steps"])
        grid.add_row(
            f"episode {p['episode']}/{s['episodes'] or '?'}",
            ProgressBar(total=total, completed=min(steps, total), width=32),
            f"{steps:,}/{p['steps_total']:,} steps ({min(100.0, 100.0 * steps / total):.0f}%)  "
            f"{p['steps_per_s']:,.0f} steps/s  ETA {format_duration(p['eta_s'])}",
        )
        done, planned, eta = session_progress(d)
        grid.add_row(
            "session",
            ProgressBar(total=max(planned, 1), completed=min(done, max(planned, 1)), width=32),
            f"{done:,}/{planned:,} steps ({min(100.0, 100.0 * done / max(planned, 1)):.0f}%)  "
            f"ETA {format_duration(eta)}",
        )
        return grid

    def _training(self, metrics: Mapping[str, float]) -> Table:
        known = dict(TRAINING_VALUES)
        items = [(label, metrics[key]) for key, label in TRAINING_VALUES if key in metrics]
        items += [
            (key, value)
            for key, value in sorted(metrics.items())
            if key not in known and key not in BOOKKEEPING_VALUES
        ]
        grid = Table.grid(padding=(0, 2))
        per_row = 4
        for _ in range(per_row):
            grid.add_column(style="dim")
            grid.add_column(justify="right")
        for i in range(0, len(items), per_row):
            row: list[str] = []
            for label, value in items[i : i + per_row]:
                row += [label, f"{value:.4g}" if isinstance(value, int | float) else str(value)]
            grid.add_row(*row)
        return grid

    def _evaluations(self, evaluations: list[Mapping[str, Any]]) -> Table:
        shown = evaluations[-EVAL_ROWS_SHOWN:]
        earlier = len(evaluations) - len(shown)
        table = Table(
            title="evaluation on the eval window: agent vs buy & hold",
            caption=f"{earlier} earlier episode(s) not shown" if earlier else None,
            title_justify="left",
        )
        table.add_column("episode", justify="right")
        for label in ("return", "Sharpe", "max drawdown"):
            table.add_column(f"{label} agent", justify="right")
            table.add_column("B&H", justify="right")
        table.add_column("trades", justify="right")
        for ev in shown:
            a, b = ev["agent"], ev["buy_and_hold"]
            better = a.get("total_return", 0.0) >= b.get("total_return", 0.0)
            table.add_row(
                str(ev["episode"]),
                Text(format_cell(a.get("total_return"), "pct"), style="green" if better else "red"),
                format_cell(b.get("total_return"), "pct"),
                format_cell(a.get("sharpe"), "num"),
                format_cell(b.get("sharpe"), "num"),
                format_cell(a.get("max_drawdown"), "pct"),
                format_cell(b.get("max_drawdown"), "pct"),
                format_cell(a.get("trades"), "int"),
            )
        return table

    def _actors(self, actors: Mapping[str, Mapping[str, Any]]) -> Table:
        table = Table(title="actors", title_justify="left")
        for label in ("actor", "state", "pid", "RSS", "CPU", "heartbeat"):
            table.add_column(label, justify="left" if label in ("actor", "state", "heartbeat") else "right")
        for name, actor in sorted(actors.items()):
            stale = self._watch.is_stale(actor)
            age = age_text(self._watch.age(actor))
            restarts = f" ({actor['restarts']} restart(s))" if actor.get("restarts") else ""
            table.add_row(
                name,
                Text(actor["state"] + restarts, style="dim" if actor["state"] == "stopped" else ""),
                str(actor["pid"]),
                f"{actor['rss_bytes'] / 2**20:,.0f} MB",
                f"{actor['cpu_percent']:.1f}%",
                Text(f"STALE, {age}", style="bold red") if stale else Text(age),
            )
        return table
