"""Start, watch and stop the actor processes of a session."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class ActorProcess:
    """One actor's process: started as `python run.py _actor KIND --run-dir DIR`."""

    kind: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    restarts: list[float] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """The process id (0 when not running)."""
        return self.proc.pid if self.proc is not None else 0

    def start(self) -> None:
        """Start the process; it ignores SIGINT (the launcher coordinates every stop)."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL)
        self.starts += 1
        logger.info("%s actor process started (pid %d)", self.kind, self.proc.pid)

    def exit_code(self) -> int | None:
        """Return the exit code if the process ended, else None."""
        return None if self.proc is None else self.proc.poll()


class Supervisor:
    """Owns the actor processes of a session."""

    def __init__(self, run_py: Path, run_dir: Path, kinds: Sequence[str]) -> None:
        self.processes: dict[str, ActorProcess] = {}
        for kind in kinds:
            argv = [sys.executable, str(run_py), "_actor", kind, "--run-dir", str(run_dir)]
            self.processes[kind] = ActorProcess(kind, argv, run_dir / "logs" / f"{kind}.log")

    def start_all(self) -> None:
        """Start every actor process."""
        for process in self.processes.values():
            process.start()

    def exited(self) -> list[tuple[str, int]]:
        """Return (kind, exit code) of every process that has ended."""
        out = []
        for kind, process in self.processes.items():
            code = process.exit_code()
            if code is not None:
                out.append((kind, code))
        return out

    def restart(self, kind: str) -> ActorProcess:
        """Start a dead actor's process again (the old one is reaped)."""
        process = self.processes[kind]
        if process.proc is not None and process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
        process.start()
        return process

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
        for process in self.processes.values():
            if process.proc is not None and process.proc.poll() is None:
                process.proc.kill()
