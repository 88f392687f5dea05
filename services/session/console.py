"""Render a session's state and events for people (a live view or plain lines) and scripts (JSON lines).

This is the console UI (with live.py): the one place besides the launcher's summary that prints.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from collections.abc import Mapping
from pathlib import PurePath
from typing import IO, Any, Protocol

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
    TrialProgressed,
    to_json_dict,
)
from services.runtime import SystemClock
from services.session.figures import TABLE_ROWS, format_cell
from services.session.state import SessionState
from services.session.study_console import format_study_event, study_lines

logger = logging.getLogger(__name__)

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


def format_eval_table(episode: int, agent: Mapping[str, float], buy_and_hold: Mapping[str, float]) -> str:
    """Return the evaluation table of one episode: agent vs buy-and-hold, one metric per row."""
    lines = [
        f"Evaluation of episode {episode} (eval window)",
        f"{'metric':<30}{'agent':>14}{'buy & hold':>14}",
    ]
    for key, label, kind in TABLE_ROWS:
        if key in agent or key in buy_and_hold:
            ours, theirs = format_cell(agent.get(key), kind), format_cell(buy_and_hold.get(key), kind)
            lines.append(f"{label:<30}{ours:>14}{theirs:>14}")
    return "\n".join(lines)


def format_model_created(msg: ModelCreated) -> str:
    """Return the line of a new model, or of one restored from a checkpoint (named, with its step)."""
    what = f"({msg.algorithm}, {msg.device}, {msg.parameters:,} parameters)"
    if not msg.restored_from:
        return f"model {msg.model_id} created {what}"
    checkpoint = PurePath(msg.restored_from).name
    return f"model {msg.model_id} restored from checkpoint {checkpoint} at step {msg.total_steps:,} {what}"


def format_data(msg: DataLoaded) -> str:
    """Return the data line: bars, features, cache, and what the source lacked or cleaning changed."""
    cached = ", from cache" if msg.cached else ""
    parts = [f"data: {msg.rows:,} bars, {len(msg.features)} features{cached}"]
    if msg.close_only:
        parts.append("close prices only: every fill is at the next bar's close")
    if msg.dropped:
        total = sum(msg.dropped.values())
        reasons = ", ".join(f"{count:,} {reason}" for reason, count in msg.dropped.items())
        parts.append(
            f"dropped {total:,} row{'' if total == 1 else 's'} ({reasons}, data.source.nan_policy=drop)"
        )
    if msg.filled:
        parts.append(f"filled {msg.filled:,} row(s) with missing values (data.source.nan_policy=ffill)")
    if msg.clipped:
        parts.append(f"widened high/low of {msg.clipped:,} bar(s) (data.source.ohlc_policy=clip)")
    return "; ".join(parts)


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


def age_text(age: float) -> str:
    return "never" if not math.isfinite(age) else f"{age:.1f} s ago"


def format_actor(name: str, actor: Mapping[str, Any], watch: HeartbeatWatch) -> str:
    """Return one plain line about an actor: state, pid, RSS, CPU and last heartbeat."""
    stale = "  STALE" if watch.is_stale(actor) else ""
    return (
        f"actor {name:<8} {actor['state']:<10} pid {actor['pid']:<7} "
        f"RSS {actor['rss_bytes'] / 2**20:7.0f} MB  CPU {actor['cpu_percent']:5.1f}%  "
        f"heartbeat {age_text(watch.age(actor))}{stale}"
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
        self._errors_shown: set[str] = set()
        """Error texts already shown: an error passed on by several actors is said once."""

    def _say(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def _seen_error(self, error: str) -> bool:
        """Tell whether this error (or one it passes on) was shown already; remember it either way."""
        seen = any(error.endswith(known) or known.endswith(error) for known in self._errors_shown)
        self._errors_shown.add(error)
        return seen

    def snapshot(self, state: SessionState) -> None:
        """Summarise the state on attaching."""
        d = state.to_dict()
        s, m = d["session"], d["model"]
        if not self._tables:
            return  # the local console: the session has only just started
        if s.get("kind") == "study":
            for line in study_lines(d):
                self._say(line)
            return
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
        line = format_study_event(msg, int(state.to_dict()["study"]["trials"]))
        if isinstance(msg, TrialProgressed):
            now = self._clock.monotonic()
            line = line if now >= self._next else None
            if line is not None:
                self._next = now + self._every
        if line is not None:
            self._say(line)
        match msg:
            case SessionStarted():
                self._say(f"session {msg.name}: {msg.episodes} episode(s) x {msg.steps_per_episode:,} steps")
            case DataLoaded():
                self._say(format_data(msg))
            case ModelCreated():
                self._say(format_model_created(msg))
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
                ruin = f", ruined at eval bar {msg.ruined_at} and flat after" if msg.ruined_at >= 0 else ""
                self._say(f"episode {msg.episode} evaluated: agent {agent}{ruin}, buy & hold {bench}")
            case ErrorRaised():
                if not self._seen_error(msg.error):
                    self._say(f"error in {msg.sender or '?'} ({msg.where}): {msg.error}")
            case ActorRestarted():
                self._say(
                    f"actor {msg.kind} restarted as pid {msg.pid} (restart {msg.restarts}): {msg.reason}"
                )
            case SessionFinished():
                shown = bool(msg.reason) and self._seen_error(msg.reason)
                reason = " (the error above)" if shown else f": {msg.reason}" if msg.reason else ""
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
