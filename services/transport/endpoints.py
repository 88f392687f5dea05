"""Name and place a session's endpoints: the process's context, ipc folders, tcp binding and advertising."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

IPC_PATH_LIMIT = 100
"""Longest ipc path used; longer run folders get their sockets in a short temporary folder."""


def context() -> zmq.Context[zmq.Socket[bytes]]:
    """Return the process's one ZeroMQ context."""
    return zmq.Context.instance()


def is_loopback(endpoint: str) -> bool:
    """Tell whether an endpoint stays on this machine (ipc, inproc or a loopback tcp address)."""
    if endpoint.startswith(("ipc://", "inproc://")):
        return True
    host = endpoint.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoints:
    """Every endpoint of a session; written to the run folder as endpoints.json."""

    events_in: str
    """The event hub's input (PULL): every process's Publisher (PUSH) connects here."""
    events_out: str
    """XPUB side of the event hub: monitors subscribe here."""
    session: str
    """The launcher's ROUTER for monitors: session description and state snapshots."""
    data: str
    """The data actor's ROUTER."""
    env: str
    """The env actor's ROUTER."""
    model: str
    """The model actor's ROUTER."""
    ipc_dir: str
    """Folder holding the ipc socket files, removed at the end of the session."""

    @classmethod
    def local(cls, ipc_dir: Path, *, events_out: str, session: str) -> Endpoints:
        """Name a session's endpoints: its actors and the hub's input on ipc sockets in ipc_dir."""
        return cls(
            events_in=f"ipc://{ipc_dir}/events_in.sock",
            events_out=events_out,
            session=session,
            data=f"ipc://{ipc_dir}/data.sock",
            env=f"ipc://{ipc_dir}/env.sock",
            model=f"ipc://{ipc_dir}/model.sock",
            ipc_dir=str(ipc_dir),
        )

    def to_dict(self) -> dict[str, str]:
        """Return the endpoints as a plain dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Endpoints:
        """Build endpoints from a dict written by to_dict."""
        return cls(**{f.name: str(raw[f.name]) for f in dataclasses.fields(cls)})

    def write(self, path: Path) -> None:
        """Write the endpoints as JSON, atomically."""
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)


def ipc_folder(run_dir: Path) -> Path:
    """Return a folder for ipc sockets: under the run folder, or a short temporary one if too long."""
    candidate = run_dir.resolve() / "ipc"
    if len(str(candidate)) + len("/events_in.sock") <= IPC_PATH_LIMIT:
        candidate.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(candidate, 0o700)  # mkdir's mode is cut by the umask, and the folder may exist
        return candidate
    return Path(tempfile.mkdtemp(prefix="rlta-"))  # mkdtemp makes it 0700


def bind_tcp(sock: zmq.Socket[bytes], host: str, port: int) -> str:
    """Bind to host:port (a random port when 0) and return the bound endpoint; IPv6 hosts in brackets."""
    if ":" in host:
        sock.setsockopt(zmq.IPV6, 1)
        host = f"[{host.strip('[]')}]"
    if port:
        sock.bind(f"tcp://{host}:{port}")
        return f"tcp://{host}:{port}"
    chosen = sock.bind_to_random_port(f"tcp://{host}")
    return f"tcp://{host}:{chosen}"


_WILDCARDS = ("0.0.0.0", "[::]", "*")


def advertised(endpoint: str) -> str:
    """Return the endpoint a peer can connect to: a wildcard host becomes this host's first non-loopback
    IPv4 address (or its name when it has none)."""
    host, port = endpoint[len("tcp://") :].rsplit(":", 1) if endpoint.startswith("tcp://") else ("", "")
    if host not in _WILDCARDS:
        return endpoint
    name = socket.gethostname()
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET)
    except OSError:
        infos = []
    addresses = [str(info[4][0]) for info in infos if not ipaddress.ip_address(info[4][0]).is_loopback]
    return f"tcp://{addresses[0] if addresses else name}:{port}"


def connect(sock: zmq.Socket[bytes], endpoint: str) -> None:
    """Connect, enabling IPv6 for a bracketed address such as tcp://[::1]:5555."""
    if endpoint.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    sock.connect(endpoint)


def secure_ipc(endpoint: str) -> None:
    """Make an ipc socket file reachable by its owner only (0600), whatever the umask."""
    if endpoint.startswith("ipc://"):
        os.chmod(endpoint[len("ipc://") :], 0o600)
