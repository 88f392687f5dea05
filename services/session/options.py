"""Configure the session: the episode loop's budget (`training:`), its processes and timing (`session:`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingOptions:
    """The episode loop's budget and seed."""

    episodes: int = 1
    """Episodes to train and evaluate."""
    steps_per_episode: int = 500_000
    """Env steps (all envs together) per episode; training stops at the first whole rollout past it."""
    seed: int = 42
    """Seed of the model, the env offsets and everything else random."""
    piece_steps: int = 16_384
    """Steps per learn() piece; stop and status requests are served between pieces."""

    def __post_init__(self) -> None:
        for name in ("episodes", "steps_per_episode", "piece_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOptions:
    """Processes, sockets and timing of the session."""

    runs_dir: str = "runs"
    """Folder under which each run gets runs/<name>/."""
    monitor_host: str = "127.0.0.1"
    """Address the event and snapshot sockets bind; anything but loopback needs CURVE keys."""
    events_port: int = 0
    """Port of the event stream (0: any free port)."""
    session_port: int = 0
    """Port of the snapshot socket that monitors connect to (0: any free port)."""
    keys_dir: str = ""
    """Folder of CURVE keys made by `python run.py keys` (needed for a non-loopback monitor_host)."""
    console: str = "auto"
    """Local console view: auto (live when stdout is a terminal), live, plain or off."""
    request_timeout_s: float = 60.0
    """Timeout of every request between actors, except whole-episode training."""
    heartbeat_s: float = 1.0
    """Interval of every actor's heartbeat."""
    hang_timeout_s: float = 30.0
    """An actor without heartbeat for this long is treated as dead."""
    start_timeout_s: float = 120.0
    """Time allowed for every actor process to start."""
    stuck_timeout_s: float = 900.0
    """An actor busy with one message this long is stuck (its work comes in bounded pieces): restarted."""
    max_restarts_per_minute: int = 3
    """Restarts of one actor allowed within a minute; one more stops the session with the reason."""
    env_timeout_s: float = 10.0
    """Timeout of the model actor's reset and step requests to the env actor (then it retries)."""
    max_message_bytes: int = 64 << 20
    """Largest message any socket accepts."""
    figures: bool = True
    """Draw the report's PNG figures; false writes report.md with its tables alone (a study's trials)."""

    def __post_init__(self) -> None:
        if self.console not in ("auto", "live", "plain", "off"):
            raise ValueError(f"console must be auto, live, plain or off, got {self.console!r}")
        if self.max_restarts_per_minute < 0:
            raise ValueError(f"max_restarts_per_minute must be >= 0, got {self.max_restarts_per_minute}")
        for name in (
            "request_timeout_s",
            "heartbeat_s",
            "hang_timeout_s",
            "start_timeout_s",
            "stuck_timeout_s",
            "env_timeout_s",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hang_timeout_s < 3 * self.heartbeat_s:
            raise ValueError("hang_timeout_s must be at least three heartbeats")
        if self.hang_timeout_s < 2 * self.env_timeout_s + 1:
            raise ValueError(
                "hang_timeout_s must exceed twice env_timeout_s plus a second (the model waits on the env)"
            )
        for name in ("events_port", "session_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be a port number, got {getattr(self, name)}")
        if self.max_message_bytes < 1 << 16:
            raise ValueError(f"max_message_bytes must be at least 65536, got {self.max_message_bytes}")
