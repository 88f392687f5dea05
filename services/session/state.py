"""Fold events into the state a monitor shows; the hub serves it as the snapshot (Clone pattern)."""

from __future__ import annotations

import copy
import threading
from typing import Any

from messages import (
    ActorRestarted,
    ActorStarted,
    ActorStopped,
    DataLoaded,
    EpisodeFinished,
    EpisodeStarted,
    ErrorRaised,
    EvaluationFinished,
    Heartbeat,
    Message,
    ModelCreated,
    ModelReused,
    SeedStarted,
    SessionFinished,
    SessionStarted,
    StudyFinished,
    StudyStarted,
    TrainingMetrics,
    TrainingProgress,
    TrialCompleted,
    TrialFailed,
    TrialProgressed,
    TrialPruned,
    TrialReported,
    TrialStarted,
)

MAX_ERRORS = 20
MAX_TRIALS = 50
"""Trials a study's state keeps (the latest), so its snapshot stays small however long the study runs."""


class SessionState:
    """The state of a session (or of a study: its trials) as seen through its events; apply(seq, event)
    ignores events already seen."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._data: dict[str, Any] = copy.deepcopy(data) if data is not None else self.empty()

    @staticmethod
    def empty() -> dict[str, Any]:
        """Return the state of a session before any event."""
        return {
            "seq": 0,
            "session": {"name": "", "status": "unknown", "reason": "", "episodes": 0, "steps_per_episode": 0},
            "actors": {},
            "model": {
                "model_id": "",
                "algorithm": "",
                "device": "",
                "created": 0,
                "restored": 0,
                "reused": 0,
            },
            "progress": {
                "episode": 0,
                "steps": 0,
                "steps_total": 0,
                "total_steps": 0,
                "steps_per_s": 0.0,
                "eta_s": 0.0,
            },
            "metrics": {},
            "data": {},
            "evaluations": [],
            "errors": [],
            "gaps": 0,
            "study": {
                "name": "",
                "trials": 0,
                "seeds": 0,
                "episodes": 0,
                "finished": 0,
                "storage": "",
                "best_number": -1,
                "best_value": 0.0,
                "report": "",
                "recent": [],
            },
        }

    @classmethod
    def from_snapshot(cls, seq: int, state: dict[str, Any]) -> SessionState:
        """Build the state from a snapshot taken after event `seq`."""
        merged = cls.empty()
        for key, value in state.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        merged["seq"] = seq
        return cls(merged)

    @property
    def seq(self) -> int:
        """Sequence number of the last event applied."""
        return int(self._data["seq"])

    def to_dict(self) -> dict[str, Any]:
        """Return a deep copy of the state (JSON- and msgpack-safe)."""
        with self._lock:
            return copy.deepcopy(self._data)

    def heartbeat_age(self, actor: str, now: float) -> float:
        """Seconds since the actor's last heartbeat (infinite if it never sent one)."""
        with self._lock:
            info = self._data["actors"].get(actor)
            if not info or not info["last_heartbeat"]:
                return float("inf")
            return max(0.0, now - float(info["last_heartbeat"]))

    def busy_for(self, actor: str, now: float) -> float:
        """Seconds the actor has been on one message, as of now (0 when its last heartbeat found it idle)."""
        with self._lock:
            info = self._data["actors"].get(actor)
            if not info or not info.get("busy_s"):
                return 0.0
            return float(info["busy_s"]) + max(0.0, now - float(info["last_heartbeat"]))

    def apply(self, seq: int, msg: Message) -> bool:
        """Apply one event numbered `seq`; return False if it was already part of the state."""
        with self._lock:
            if seq <= self._data["seq"]:
                return False
            if self._data["seq"] and seq > self._data["seq"] + 1:
                self._data["gaps"] += seq - self._data["seq"] - 1
            self._data["seq"] = seq
            self._fold(msg)
            return True

    def _actor(self, name: str) -> dict[str, Any]:
        actors: dict[str, dict[str, Any]] = self._data["actors"]
        return actors.setdefault(
            name, {"state": "unknown", "pid": 0, "rss_bytes": 0, "cpu_percent": 0.0, "last_heartbeat": 0.0}
        )

    def _trial(self, number: int) -> dict[str, Any]:
        """Return a study's entry for a trial, made (and the oldest dropped past MAX_TRIALS) when new."""
        recent: list[dict[str, Any]] = self._data["study"]["recent"]
        for trial in recent:
            if trial["number"] == number:
                return trial
        trial = {"number": number, "state": "running", "params": {}, "seeds": {}, "value": None}
        recent.append(trial)
        del recent[:-MAX_TRIALS]
        return trial

    def _fold(self, msg: Message) -> None:
        d = self._data
        match msg:
            case SessionStarted():
                d["session"].update(
                    _fields(msg, "name", "episodes", "steps_per_episode", "monitor", "run_dir"),
                    status="running",
                )
            case SessionFinished():
                d["session"].update(status=msg.status, reason=msg.reason)
            case ActorStarted():
                self._actor(msg.sender).update(state="started", pid=msg.pid, last_heartbeat=msg.ts)
            case ActorRestarted():
                info = self._actor(msg.kind)
                info.update(state="restarted", pid=msg.pid, restarts=msg.restarts)
            case ActorStopped():
                self._actor(msg.sender).update(state="stopped", pid=msg.pid)
            case Heartbeat():
                self._actor(msg.sender).update(
                    _fields(msg, "state", "pid", "rss_bytes", "cpu_percent", "busy_s"), last_heartbeat=msg.ts
                )
            case DataLoaded():
                d["data"] = {
                    **_fields(msg, "source", "rows", "bars_per_year", "cached"),
                    "features": list(msg.features),
                }
            case ModelCreated():
                d["model"].update(_fields(msg, "model_id", "algorithm", "device", "parameters"))
                if msg.restored_from:
                    d["model"]["restored"] = d["model"].get("restored", 0) + 1
                else:
                    d["model"]["created"] += 1
            case ModelReused():
                d["model"]["reused"] += 1
            case EpisodeStarted():
                d["progress"].update(episode=msg.episode, steps=0, steps_total=msg.steps, eta_s=0.0)
            case TrainingProgress():
                d["progress"].update(
                    _fields(msg, "episode", "steps", "steps_total", "total_steps", "steps_per_s", "eta_s")
                )
            case TrainingMetrics():
                d["metrics"] = dict(msg.values)
            case EpisodeFinished():
                d["progress"].update(_fields(msg, "steps", "total_steps", "steps_per_s"), eta_s=0.0)
            case EvaluationFinished():
                d["evaluations"].append(
                    {
                        "episode": msg.episode,
                        "agent": dict(msg.agent),
                        "buy_and_hold": dict(msg.buy_and_hold),
                        "ruined_at": msg.ruined_at,
                    }
                )
            case StudyStarted():
                d["session"].update(name=msg.name, status="running", run_dir=msg.run_dir, kind="study")
                d["study"].update(_fields(msg, "name", "trials", "seeds", "episodes", "finished", "storage"))
            case StudyFinished():
                d["session"].update(status=msg.status, reason=msg.reason)
                d["study"].update(_fields(msg, "finished", "best_number", "best_value", "report"))
            case TrialStarted():
                self._trial(msg.number).update(
                    state="running", params=dict(msg.params), retry_of=msg.retry_of, started=msg.ts
                )
            case SeedStarted():
                self._trial(msg.number)["seeds"][str(msg.seed)] = msg.run_dir
            case TrialProgressed():
                self._trial(msg.number)["progress"] = _fields(
                    msg, "seed", "episode", "steps", "steps_total", "steps_per_s"
                )
            case TrialReported():
                self._trial(msg.number)["last_report"] = _fields(msg, "seed", "episode", "sharpe")
            case TrialCompleted():
                self._trial(msg.number).update(
                    state="complete", value=msg.value, seed_sharpes=list(msg.seed_sharpes), progress=None
                )
                d["study"].update(_fields(msg, "finished", "best_number", "best_value"))
            case TrialPruned():
                self._trial(msg.number).update(state="pruned", reason=msg.reason, progress=None)
                d["study"].update(_fields(msg, "finished", "best_number", "best_value"))
            case TrialFailed():
                self._trial(msg.number).update(state="failed", reason=msg.error, progress=None)
                d["study"].update(_fields(msg, "finished", "best_number", "best_value"))
            case ErrorRaised():
                d["errors"] = [
                    *d["errors"][-(MAX_ERRORS - 1) :],
                    {"actor": msg.sender, "where": msg.where, "error": msg.error, "ts": msg.ts},
                ]
            case _:
                pass


def _fields(msg: Message, *names: str) -> dict[str, Any]:
    """Return the named fields of an event, as the state keeps them under the same names."""
    return {name: getattr(msg, name) for name in names}
