"""Render a session's state and events for people (a live view or plain lines) and scripts (JSON lines).

This is the console UI: the one place besides run.py's final table that prints.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import IO, Any, Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from messages import (
    ActorRestarted,
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
from services.runtime import SystemClock
from services.session.state import SessionState

logger = logging.getLogger(__name__)

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

TRAINING_VALUES = (
    ("rollout/ep_rew_mean", "episode reward"),
    ("train/loss", "loss"),
    ("train/policy_gradient_loss", "policy loss"),
    ("train/value_loss", "value loss"),
    ("train/entropy_loss", "entropy loss"),
    ("train/approx_kl", "approx KL"),
    ("train/clip_fraction", "clip fraction"),
    ("train/explained_variance", "explained var"),
    ("train/actor_loss", "actor loss"),
    ("train/critic_loss", "critic loss"),
    ("train/ent_coef", "entropy coef"),
    ("rollout/exploration_rate", "exploration"),
    ("train/learning_rate", "learning rate"),
    ("time/fps", "fps"),
)
"""SB3 logger keys shown by the live view, in this order, with their labels."""
BOOKKEEPING_VALUES = frozenset(
    {"time/iterations", "time/time_elapsed", "time/total_timesteps", "time/episodes", "train/n_updates"}
)
"""SB3 logger keys the live view leaves out: counters that the progress bars already say."""

STALE_HEARTBEATS = 3
"""An actor is stale after this many missed heartbeats."""
LIVE_REFRESH_HZ = 4.0
EVAL_ROWS_SHOWN = 12


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


class ViewClock(Protocol):
    """The clocks a view reads: monotonic for its own pace, wall time to age heartbeats."""

    def monotonic(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def time(self) -> float:
        """Seconds since the epoch."""
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
    if not math.isfinite(seconds):
        return "-:--:--"
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


def session_progress(d: Mapping[str, Any]) -> tuple[int, int, float]:
    """Return (steps done, steps planned, ETA seconds) of the whole session from a state dict."""
    p, s = d["progress"], d["session"]
    per_episode = int(s["steps_per_episode"] or p["steps_total"] or 0)
    total = int(s["episodes"] or 0) * per_episode
    if not total:
        return int(p["steps"]), int(p["steps_total"]), float(p["eta_s"])
    if s["status"] == "completed":
        return total, total, 0.0
    done = max(0, int(p["episode"]) - 1) * per_episode + min(int(p["steps"]), per_episode)
    done = min(done, total)
    speed = float(p["steps_per_s"])
    eta = (total - done) / speed if speed > 0 else math.inf
    return done, total, eta


class HeartbeatWatch:
    """Judge actors by the age of their last heartbeat, allowing for the offset of the session's clock.

    Heartbeats carry the sender's wall time. The offset of that clock from this one is estimated as the
    smallest (receipt time - send time) seen, so a monitor on another host with a skewed clock does not
    mark every actor stale.
    """

    def __init__(self, clock: ViewClock, heartbeat_s: float) -> None:
        self._clock = clock
        self.stale_after_s = STALE_HEARTBEATS * heartbeat_s
        self._offset: float | None = None

    def saw(self, msg: Message) -> None:
        """Update the clock offset from one event just received."""
        offset = self._clock.time() - msg.ts
        if self._offset is None or offset < self._offset:
            self._offset = offset

    def age(self, actor: Mapping[str, Any]) -> float:
        """Seconds since the actor's last heartbeat (infinite if it sent none)."""
        last = float(actor.get("last_heartbeat") or 0.0)
        if not last:
            return math.inf
        return max(0.0, self._clock.time() - (self._offset or 0.0) - last)

    def is_stale(self, actor: Mapping[str, Any]) -> bool:
        """Tell whether a running actor missed STALE_HEARTBEATS heartbeats."""
        return actor.get("state") != "stopped" and self.age(actor) > self.stale_after_s


def _age_text(age: float) -> str:
    return "never" if not math.isfinite(age) else f"{age:.1f} s ago"


def format_actor(name: str, actor: Mapping[str, Any], watch: HeartbeatWatch) -> str:
    """Return one plain line about an actor: state, pid, RSS, CPU and last heartbeat."""
    stale = "  STALE" if watch.is_stale(actor) else ""
    return (
        f"actor {name:<8} {actor['state']:<10} pid {actor['pid']:<7} "
        f"RSS {actor['rss_bytes'] / 2**20:7.0f} MB  CPU {actor['cpu_percent']:5.1f}%  "
        f"heartbeat {_age_text(watch.age(actor))}{stale}"
    )


class PlainView:
    """Plain lines: one per event that matters, progress and actor lines at a modest rate."""

    def __init__(
        self,
        out: IO[str] | None = None,
        *,
        tables: bool = True,
        progress_every_s: float = 5.0,
        actors_every_s: float = 30.0,
        heartbeat_s: float = 1.0,
        clock: ViewClock | None = None,
    ) -> None:
        self._out = out or sys.stdout
        self._tables = tables
        self._every = progress_every_s
        self._actors_every = actors_every_s
        self._clock = clock or SystemClock()
        self._watch = HeartbeatWatch(self._clock, heartbeat_s)
        self._next = -math.inf
        self._next_actors = self._clock.monotonic() + actors_every_s
        self._next_check = -math.inf
        self._stale: set[str] = set()

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
        for name, actor in sorted(d["actors"].items()):
            self._say(format_actor(name, actor, self._watch))

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        """Print the events that matter; progress at most every progress_every_s."""
        self._watch.saw(msg)
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
                now = self._clock.monotonic()
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
            case ActorRestarted():
                self._say(
                    f"actor {msg.kind} restarted as pid {msg.pid} (restart {msg.restarts}): {msg.reason}"
                )
            case SessionFinished():
                reason = f": {msg.reason}" if msg.reason else ""
                self._say(f"session {msg.name} {msg.status}{reason}")
            case _:
                pass
        self._check_actors(state)

    def _check_actors(self, state: SessionState) -> None:
        """Say when an actor goes stale or comes back (once a second), and list actors now and then."""
        now = self._clock.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + 1.0
        actors = state.to_dict()["actors"]
        for name, actor in sorted(actors.items()):
            stale = self._watch.is_stale(actor)
            if stale and name not in self._stale:
                self._stale.add(name)
                self._say(
                    f"actor {name}: no heartbeat for {self._watch.age(actor):.1f} s "
                    f"({STALE_HEARTBEATS} missed): stale"
                )
            elif not stale and name in self._stale:
                self._stale.discard(name)
                self._say(f"actor {name}: {actor['state']} again")
        if now >= self._next_actors:
            self._next_actors = now + self._actors_every
            for name, actor in sorted(actors.items()):
                self._say(format_actor(name, actor, self._watch))

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


class NullView:
    """Shows nothing (`session.console: off`)."""

    def snapshot(self, state: SessionState) -> None:
        """Ignore the snapshot."""

    def event(self, state: SessionState, seq: int, msg: Message) -> None:
        """Ignore the event."""

    def notice(self, text: str) -> None:
        """Ignore the notice."""

    def close(self) -> None:
        """Nothing to finish."""


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
                f"created {m['created']}, reused {m['reused']})"
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
                Text(_cell(a.get("total_return"), "pct"), style="green" if better else "red"),
                _cell(b.get("total_return"), "pct"),
                _cell(a.get("sharpe"), "num"),
                _cell(b.get("sharpe"), "num"),
                _cell(a.get("max_drawdown"), "pct"),
                _cell(b.get("max_drawdown"), "pct"),
                _cell(a.get("trades"), "int"),
            )
        return table

    def _actors(self, actors: Mapping[str, Mapping[str, Any]]) -> Table:
        table = Table(title="actors", title_justify="left")
        for label in ("actor", "state", "pid", "RSS", "CPU", "heartbeat"):
            table.add_column(label, justify="left" if label in ("actor", "state", "heartbeat") else "right")
        for name, actor in sorted(actors.items()):
            stale = self._watch.is_stale(actor)
            age = _age_text(self._watch.age(actor))
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
