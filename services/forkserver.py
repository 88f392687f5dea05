"""Start `run.py` processes by forking a server that has imported the project's libraries once.

A study runs many short sessions, and each would otherwise spend seconds in five fresh interpreters (the
launcher and four actors) importing numpy, pandas, zmq, torch and stable-baselines3. The fork server
imports them once, then forks one child per request; the child runs a `run.py` command line as
`python run.py ...` would, with its own stdin, stdout and stderr, working folder, environment, process
session and exit status. Every child is a separate process like any other: it can be signalled, killed
and replaced.

The protocol is JSON lines on a Unix stream socket in a folder only this user can enter; nothing is
unpickled. A client sends one request line with the child's stdin, stdout and stderr attached
(SCM_RIGHTS); the server answers `{"pid": N}` and, once the child has exited, `{"status": S}` (a
`Popen.returncode`: negative for a signal), then closes the connection. A bad request is answered
`{"error": "..."}`.

The server forks from its only thread, before any ZeroMQ context or torch thread pool exists; whatever
else a child needs it creates after the fork.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

SERVER_ENV = "RL_TRADING_FORKSERVER"
"""Environment variable that gives a child the server's socket, so it can start its own children there."""
WATCH_ENV = "RL_TRADING_WATCH_PID"
"""Environment variable naming the process whose end a forked actor takes as its launcher's death."""
READY = "forkserver ready"
"""The line the server prints on stdout once it accepts requests."""
MAX_REQUEST_BYTES = 1 << 16
"""Longest request line the server reads."""
SOCKET_NAME = "fork.sock"
FOLDER_PREFIX = "rlt-fork-"
"""Name prefix of the temporary folder (mode 0700) that holds a server's socket."""
_PR_SET_PDEATHSIG = 1


class ForkServerError(RuntimeError):
    """The fork server could not start a process (it is gone, or refused the request)."""


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send sig to this process when its parent dies (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, sig)


class ForkedProcess:
    """A child of the fork server, with the part of `subprocess.Popen` that sessions and supervisors use.

    Its status comes from the server; signals go through a pidfd, so they never reach a later process
    that got the same pid.
    """

    def __init__(self, args: Sequence[str], connection: socket.socket) -> None:
        self.args = list(args)
        self.returncode: int | None = None
        self._connection: socket.socket | None = connection
        self._pending = b""
        self._pidfd: int | None = None
        reply = self._read_line(timeout_s=30.0)
        if reply is None or "pid" not in reply:
            self._close()
            why = reply.get("error", "no answer") if isinstance(reply, dict) else "no answer"
            raise ForkServerError(f"the fork server did not start {' '.join(self.args)}: {why}")
        self.pid = int(reply["pid"])
        with contextlib.suppress(OSError):
            self._pidfd = os.pidfd_open(self.pid)

    def poll(self) -> int | None:
        """Return the exit status if the process has ended, else None (without waiting)."""
        if self.returncode is None:
            self._wait(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to end and return its status; raise TimeoutExpired past timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
            self._wait(1.0 if remaining is None else min(remaining, 1.0))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Send a signal to the process unless it has ended."""
        if self.poll() is not None:
            return
        if self._pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._pidfd, sig)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """Send SIGKILL."""
        self.send_signal(signal.SIGKILL)

    def _wait(self, timeout_s: float) -> None:
        """Take the status line if it comes within timeout_s; without the server, ask the pidfd."""
        if self._connection is not None:
            reply = self._read_line(timeout_s)
            if isinstance(reply, dict) and "status" in reply:
                self.returncode = int(reply["status"])
                self._close()
            return
        # The server is gone (its connection closed without a status): the pidfd still tells the end.
        fds = [self._pidfd] if self._pidfd is not None else []
        if not fds or select.select(fds, [], [], timeout_s)[0]:
            self.returncode = 1
            logger.warning("pid %d: its exit status was lost with the fork server", self.pid)
            self._close()

    def _read_line(self, timeout_s: float) -> dict[str, Any] | None:
        """Return the next JSON line from the server, None when none came in time (or the server left)."""
        assert self._connection is not None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._pending:
            remaining = max(0.0, deadline - time.monotonic())
            if not select.select([self._connection], [], [], remaining)[0]:
                return None
            chunk = self._connection.recv(4096)
            if not chunk:
                self._connection.close()
                self._connection = None
                return None
            self._pending += chunk
        line, self._pending = self._pending.split(b"\n", 1)
        try:
            value = json.loads(line)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._pidfd is not None and self.returncode is not None:
            os.close(self._pidfd)
            self._pidfd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self._connection is not None:
                self._connection.close()
            if self._pidfd is not None:
                os.close(self._pidfd)


class ForkClient:
    """Ask a running fork server for processes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def from_environment(cls) -> ForkClient | None:
        """Return a client of the server that started this process, or None when a plain one did."""
        path = os.environ.get(SERVER_ENV, "")
        return cls(Path(path)) if path else None

    def spawn(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: Mapping[str, str] | None = None,
        stdin: IO[Any] | int | None = None,
        stdout: IO[Any] | int | None = None,
        stderr: IO[Any] | int | None = None,
        new_session: bool = False,
        die_with_server: bool = True,
        watched: bool = False,
    ) -> ForkedProcess:
        """Fork a child that runs `run.py argv`; stdio default to this process's own (stdin: /dev/null).

        Args:
            new_session: the child leads a process session of its own (no terminal's Ctrl-C reaches it).
            die_with_server: the child gets SIGTERM when the server dies (a launcher: its study ended).
            watched: the child takes this process's end as its launcher's death (an actor).
        """
        environment = dict(os.environ if env is None else env)
        environment[SERVER_ENV] = str(self.path)
        if watched:
            environment[WATCH_ENV] = str(os.getpid())
        arguments = [str(a) for a in argv]
        request = {
            "argv": arguments,
            "cwd": str(cwd),
            "env": environment,
            "new_session": new_session,
            "die_with_server": die_with_server,
        }
        with contextlib.ExitStack() as stack:
            fds = []
            for stream, default, mode in ((stdin, None, "rb"), (stdout, 1, ""), (stderr, 2, "")):
                if stream is None and default is None:
                    stream = stack.enter_context(open(os.devnull, mode))
                fds.append(_fileno(stream, default))
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                connection.connect(str(self.path))
                socket.send_fds(connection, [json.dumps(request).encode() + b"\n"], fds)
            except OSError as exc:
                connection.close()
                raise ForkServerError(f"the fork server at {self.path} is not reachable: {exc}") from None
        return ForkedProcess(["run.py", *arguments], connection)


def _fileno(stream: IO[Any] | int | None, default: int | None) -> int:
    """Return the descriptor of a stream, an int as given, or the default for None."""
    if stream is None:
        assert default is not None
        return default
    if isinstance(stream, int):
        return stream
    return stream.fileno()


class ForkServer:
    """A fork server process this process started and owns (it dies with this process)."""

    def __init__(self, process: subprocess.Popen[bytes], folder: Path) -> None:
        self._process = process
        self._folder = folder
        self.client = ForkClient(folder / SOCKET_NAME)

    @classmethod
    def start(cls, command: Sequence[str], *, cwd: Path, timeout_s: float = 120.0) -> ForkServer:
        """Start `command --socket PATH` and wait for its ready line; raise ForkServerError if none comes."""
        folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))  # mode 0700: only this user may connect
        process = subprocess.Popen(
            [*command, "--socket", str(folder / SOCKET_NAME)],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        server = cls(process, folder)
        assert process.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        while not line.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([process.stdout], [], [], remaining)[0]:
                server.close()
                raise ForkServerError(f"the fork server did not start within {timeout_s:g} s")
            chunk = os.read(process.stdout.fileno(), 256)
            if not chunk:
                server.close()
                raise ForkServerError(f"the fork server exited while starting (status {process.wait()})")
            line += chunk
        if line.decode(errors="replace").strip() != READY:
            server.close()
            raise ForkServerError(f"the fork server said {line[:80]!r} instead of ready")
        return server

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self._process.pid

    def close(self) -> None:
        """Stop the server (its launchers get SIGTERM from the kernel) and remove its socket folder."""
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._process.stdout is not None:
            self._process.stdout.close()
        with contextlib.suppress(OSError):
            (self._folder / SOCKET_NAME).unlink()
        with contextlib.suppress(OSError):
            self._folder.rmdir()


def launcher_gone() -> Callable[[], bool]:
    """Return a test of whether this process's launcher has died.

    A forked actor's parent is the fork server, so it watches the process that asked for it (WATCH_ENV,
    through a pidfd); any other process watches its parent.
    """
    text = os.environ.get(WATCH_ENV, "")
    if text.isdigit():
        try:
            pidfd = os.pidfd_open(int(text))
        except OSError:
            return lambda: True
        return lambda: bool(select.select([pidfd], [], [], 0)[0])
    parent = os.getppid()
    return lambda: os.getppid() != parent


Run = Callable[[list[str]], int]
"""Runs a `run.py` command line in a child and returns its exit status."""
Finish = Callable[[], None]
"""Runs in a child after its command, before it exits (what an interpreter's exit would do)."""


def serve(path: Path, run: Run, finish: Finish = lambda: None) -> None:
    """Accept requests on a Unix socket at path and fork one child per request until SIGTERM, or until
    the process that started the server is gone.

    The server has one thread; children are reaped as they exit and their status sent to the client
    that asked for them. The kernel sends SIGTERM when the starting process dies (`die_with_parent`),
    but not when that process dies between the fork and the request for it, nor when the server was
    started without it; so the loop also stops once its parent has changed (checked every 20 ms).
    """
    parent = os.getppid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the client's to handle
    signal.signal(signal.SIGTERM, _raise_exit)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    children: dict[int, socket.socket] = {}
    try:
        listener.bind(str(path))
        os.chmod(path, 0o600)
        listener.listen(64)
        print(READY, flush=True)
        while os.getppid() == parent:
            if select.select([listener], [], [], 0.02)[0]:
                connection, _ = listener.accept()
                pid = _fork_child(connection, listener, children, run, finish)
                if pid:
                    children[pid] = connection
            _reap(children)
    except SystemExit:
        pass
    finally:
        listener.close()
        for connection in children.values():
            connection.close()
        with contextlib.suppress(OSError):
            path.unlink()


def _raise_exit(signum: int, frame: object) -> None:
    raise SystemExit(0)


def _reap(children: dict[int, socket.socket]) -> None:
    """Send the status of every child that has exited to its client."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        connection = children.pop(pid, None)
        if connection is None:
            continue
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"status": code}).encode() + b"\n")
        connection.close()


def _request(connection: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """Read one request line and its three descriptors; raise ValueError naming what is wrong."""
    connection.settimeout(5.0)
    data, fds, _, _ = socket.recv_fds(connection, MAX_REQUEST_BYTES, 3)
    try:
        while not data.endswith(b"\n"):
            if len(data) > MAX_REQUEST_BYTES:
                raise ValueError(f"a request longer than {MAX_REQUEST_BYTES} bytes")
            chunk = connection.recv(MAX_REQUEST_BYTES)
            if not chunk:
                raise ValueError("a request cut short")
            data += chunk
        request = json.loads(data)
        if len(fds) != 3:
            raise ValueError(f"{len(fds)} descriptors, expected stdin, stdout and stderr")
        if not isinstance(request, dict):
            raise ValueError("a request that is not an object")
        argv, env, cwd = request.get("argv"), request.get("env"), request.get("cwd")
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError("env must map names to strings")
        if not isinstance(cwd, str):
            raise ValueError("cwd must be a string")
    except (ValueError, TimeoutError, OSError) as exc:
        for fd in fds:
            os.close(fd)
        raise ValueError(str(exc) or type(exc).__name__) from None
    connection.settimeout(None)
    return request, fds


def _fork_child(
    connection: socket.socket,
    listener: socket.socket,
    children: Mapping[int, socket.socket],
    run: Run,
    finish: Finish,
) -> int:
    """Fork the child a request asks for; return its pid (0 when the request was refused)."""
    try:
        request, fds = _request(connection)
    except (ValueError, OSError) as exc:
        with contextlib.suppress(OSError):
            connection.sendall(json.dumps({"error": f"bad request: {exc}"}).encode() + b"\n")
        connection.close()
        return 0
    sys.stdout.flush()
    sys.stderr.flush()
    server = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            listener.close()
            connection.close()
            for other in children.values():
                other.close()
            code = _child(request, fds, server, run)
        finally:
            with contextlib.suppress(BaseException):
                finish()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    for fd in fds:
        os.close(fd)
    # A client that left does not stop the child; its status is dropped when it is reaped.
    with contextlib.suppress(OSError):
        connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
    return pid


def _child(request: Mapping[str, Any], fds: Sequence[int], server: int, run: Run) -> int:
    """Become the requested process and run its command line; return its exit status."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if request.get("new_session"):
        os.setsid()
    if request.get("die_with_server"):
        die_with_parent()
        if os.getppid() != server:  # the server died before the request was granted
            return 1
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(write_through=unbuffered or stream is sys.stderr)
    sys.argv = ["run.py", *request["argv"]]
    try:
        return run(list(request["argv"]))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
