"""Start, watch and stop the actor processes of a session: the process table and the supervision policy.

The policy is one-for-one: an actor whose process ended is restarted (the model from the latest
checkpoint), at most `max_restarts` times within `restart_window_s` per actor before the session gives
up; an actor that sent no heartbeat for `hang_timeout_s` (or none at all within `start_timeout_s` of its
start), or whose heartbeats say it has been on one message for `stuck_timeout_s`, is killed, and the
next check restarts it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from actors.ports import Clock

logger = logging.getLogger(__name__)

ACTOR_KINDS = ("monitor", "data", "env", "model")
"""Start order of the actor processes; they stop in reverse (the model first)."""


class Process(Protocol):
    """What the supervisor does with an actor's process (`subprocess.Popen` has it)."""

    @property
    def pid(self) -> int:
        """The process id."""
        ...

    def poll(self) -> int | None:
        """Return the exit status if the process has ended, else None."""
        ...

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the end and return the status; raise subprocess.TimeoutExpired past timeout."""
        ...

    def send_signal(self, sig: int) -> None:
        """Send a signal."""
        ...

    def kill(self) -> None:
        """Send SIGKILL."""
        ...


Spawn = Callable[[list[str], dict[str, str]], Process]
"""Starts `run.py ARGS` (the arguments after run.py) with an environment; stdin is /dev/null."""


def popen_spawn(run_py: Path) -> Spawn:
    """Return a spawner that starts a fresh interpreter: `python run.py ARGS` (the default)."""

    def spawn(args: list[str], env: dict[str, str]) -> Process:
        return subprocess.Popen([sys.executable, str(run_py), *args], env=env, stdin=subprocess.DEVNULL)

    return spawn


@dataclass(slots=True)
class ActorProcess:
    """One actor's process: `run.py _actor KIND --run-dir DIR`, a fresh interpreter unless a fork server
    of a study starts it."""

    kind: str
    args: list[str]
    spawn: Spawn
    proc: Process | None = None

    @property
    def pid(self) -> int:
        """The process id (0 when not running)."""
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        """Start the process; it ignores SIGINT (the launcher coordinates every stop)."""
        self.proc = self.spawn(self.args, dict(os.environ, PYTHONUNBUFFERED="1"))
        logger.info("%s actor process started (pid %d)", self.kind, self.proc.pid)

    def exit_code(self) -> int | None:
        """Return the exit code if the process ended, else None."""
        return None if self.proc is None else self.proc.poll()


class ProcessTable(Protocol):
    """What the supervision policy needs of the actor processes."""

    def exited(self) -> list[tuple[str, int]]:
        """Return (kind, exit code) of every process that has ended."""
        ...

    def running(self, kind: str) -> bool:
        """Whether the actor's process is alive."""
        ...

    def restart(self, kind: str) -> int:
        """Start the actor's process again and return its pid."""
        ...

    def kill(self, kind: str) -> None:
        """Kill the actor's process."""
        ...


class Supervisor:
    """Own the actor processes of a session."""

    def __init__(
        self,
        run_py: Path,
        run_dir: Path,
        kinds: Sequence[str] = ACTOR_KINDS,
        spawn: Spawn | None = None,
    ) -> None:
        starter = spawn if spawn is not None else popen_spawn(run_py)
        self.processes: dict[str, ActorProcess] = {
            kind: ActorProcess(kind, ["_actor", kind, "--run-dir", str(run_dir)], starter) for kind in kinds
        }

    def start_all(self) -> None:
        """Start every actor process."""
        for process in self.processes.values():
            process.start()

    def exited(self) -> list[tuple[str, int]]:
        """Return (kind, exit code) of every process that has ended."""
        codes = ((kind, process.exit_code()) for kind, process in self.processes.items())
        return [(kind, code) for kind, code in codes if code is not None]

    def running(self, kind: str) -> bool:
        """Whether the actor's process is alive."""
        return self.processes[kind].exit_code() is None

    def restart(self, kind: str) -> int:
        """Start a dead actor's process again (the old one is reaped) and return its pid."""
        self.kill(kind)
        process = self.processes[kind]
        if process.proc is not None:
            process.proc.wait()
        process.start()
        return process.pid

    def kill(self, kind: str) -> None:
        """Kill one actor's process (a hung one); the next check restarts it."""
        process = self.processes[kind]
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()

    def wait_all(self, timeout_s: float) -> None:
        """Wait for every process to exit, then terminate and finally kill the stragglers."""
        deadline = time.monotonic() + timeout_s
        for process in self.processes.values():
            if process.proc is None:
                continue
            try:
                process.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s actor did not exit in time; terminating it", process.kind)
                process.proc.send_signal(signal.SIGTERM)
                try:
                    process.proc.wait(3)
                except subprocess.TimeoutExpired:
                    process.proc.kill()
                    process.proc.wait()

    def kill_all(self) -> None:
        """Kill every process at once (second Ctrl-C)."""
        for kind in self.processes:
            self.kill(kind)


@dataclass(frozen=True, slots=True, kw_only=True)
class SupervisionRules:
    """The limits of the supervision policy (from the session config)."""

    max_restarts: int
    """Restarts of one actor allowed within restart_window_s; one more gives up the session."""
    hang_timeout_s: float
    """Seconds without a heartbeat after which a started actor counts as hung and is killed."""
    start_timeout_s: float
    """Seconds a (re)started actor may take to send its first heartbeat."""
    restart_window_s: float = 60.0
    """The window of the restart cap."""
    stuck_timeout_s: float = float("inf")
    """Seconds an actor may spend on one message (while its heartbeats go on) before it counts as stuck."""


class SupervisionActions(Protocol):
    """What the policy does to the rest of the session when it acts."""

    def restore_model(self) -> None:
        """Make the next model process restore the latest checkpoint."""
        ...

    def restarted(self, kind: str, pid: int, restarts: int, reason: str) -> None:
        """Report a restart (`restarts` counts every actor's) so the session redoes the lost work."""
        ...

    def give_up(self, reason: str) -> None:
        """Fail the session: an actor keeps dying."""
        ...


@dataclass(slots=True)
class SupervisionPolicy:
    """Restart the dead, kill the hung, give up on an actor that keeps dying."""

    processes: ProcessTable
    rules: SupervisionRules
    clock: Clock
    heartbeat_age: Callable[[str, float], float]
    """Seconds since an actor's last heartbeat at a given wall time (infinite before its first)."""
    actions: SupervisionActions
    kinds: Sequence[str] = ACTOR_KINDS
    busy_for: Callable[[str, float], float] = lambda kind, wall: 0.0
    """Seconds an actor has been on one message at a given wall time (from its heartbeats)."""
    gave_up: bool = field(default=False, init=False)
    _restarts: dict[str, list[float]] = field(init=False)
    _started: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        self._restarts = {kind: [] for kind in self.kinds}
        self._started = {kind: self.clock.time() for kind in self.kinds}

    def check(self) -> None:
        """Restart every actor whose process ended; kill every actor whose heartbeat stopped."""
        if self.gave_up:
            return
        for kind, code in self.processes.exited():
            if not self._restart(kind, code):
                return
        wall = self.clock.time()
        for kind in self.kinds:
            if not self.processes.running(kind):
                continue
            why = self._hung(kind, wall)
            if why:
                logger.warning("%s actor hung (%s): killing it", kind, why)
                self.processes.kill(kind)
                self._started[kind] = wall

    def _restart(self, kind: str, code: int) -> bool:
        now = self.clock.monotonic()
        reason = f"process exited with status {code}" if code >= 0 else f"process killed by signal {-code}"
        recent = [t for t in self._restarts[kind] if now - t < self.rules.restart_window_s]
        if len(recent) >= self.rules.max_restarts:
            self.gave_up = True
            window = (
                "a minute" if self.rules.restart_window_s == 60.0 else f"{self.rules.restart_window_s:g} s"
            )
            why = f"{kind} actor died {len(recent) + 1} times within {window} ({reason}); giving up"
            logger.error("%s", why)
            self.actions.give_up(why)
            return False
        self._restarts[kind] = [*recent, now]
        logger.warning("%s actor died (%s): restarting it", kind, reason)
        if kind == "model":
            self.actions.restore_model()
        pid = self.processes.restart(kind)
        self._started[kind] = self.clock.time()
        total = sum(len(times) for times in self._restarts.values())
        self.actions.restarted(kind, pid, total, reason)
        return True

    def _hung(self, kind: str, wall: float) -> str:
        since_start = wall - self._started[kind]
        age = self.heartbeat_age(kind, wall)
        if age > since_start:  # no heartbeat from this process yet: it is still starting
            if since_start <= self.rules.start_timeout_s:
                return ""
            return f"did not start within {self.rules.start_timeout_s:g} s"
        if age > self.rules.hang_timeout_s:
            return f"no heartbeat for {age:.0f} s"
        busy = self.busy_for(kind, wall)
        if busy > self.rules.stuck_timeout_s:
            return f"busy with one message for {busy:.0f} s"
        return ""


def wait_started(
    started: Callable[[], set[str]],
    processes: ProcessTable,
    timeout_s: float,
    interrupted: Callable[[], bool],
    clock: Clock,
    sleep: Callable[[float], None] = time.sleep,
    kinds: Sequence[str] = ACTOR_KINDS,
) -> str:
    """Wait until every actor has announced itself; return why not ("" once all have)."""
    deadline = clock.monotonic() + timeout_s
    while clock.monotonic() < deadline:
        if set(kinds) <= started():
            return ""
        for kind, code in processes.exited():
            return f"{kind} actor process exited with status {code} while starting (see its log)"
        if interrupted():
            return "interrupted while starting"
        sleep(0.05)
    missing = [kind for kind in kinds if kind not in started()]
    return f"actor(s) {', '.join(missing)} did not start within {timeout_s:g} s"
