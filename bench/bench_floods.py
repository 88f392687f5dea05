"""Measure the peak memory of a session's receiving sockets under floods from a local process.

Run from the repository root with the project venv:

    .venv/bin/python bench/bench_floods.py [--root OTHER_CHECKOUT]

Each flood goes to a receiver in a fresh child process built from the checkout at --root (default: this
one), so the same floods can be measured before and after a change:
  env       one message of 16 frames of 60 MiB to an actor's Server (the env actor's socket);
  session   one message of 8,000 frames of 65,000 bytes to the hub's session socket;
  subscribe 3,000 subscriptions of 10 KB to the hub's event output, then the client leaves.
Each is sent twice: by a foreign process (no session key) and by a holder of the key (credentials and
signature, where the checkout has them). The child reports its RSS before, its peak (VmHWM) and its RSS
after, and whether it still answers a request.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

ROOT = Path(__file__).resolve().parents[1]
SETTLE_S = 3.0
"""How long the child is sampled after a flood was sent (a refused flood never finishes arriving)."""


def memory() -> dict[str, int]:
    """Return this process's RSS and peak RSS in MB (from /proc/self/status)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        "rss_mb": int(fields["VmRSS"].split()[0]) // 1024,
        "hwm_mb": int(fields["VmHWM"].split()[0]) // 1024,
    }


def serve(kind: str, folder: str) -> None:
    """Child: build the receiver of the checkout on sys.path, print its endpoints, answer stats on stdin."""
    from messages import Ping, Pong
    from services.transport import sockets

    keyed = "key" in inspect.signature(sockets.Server.__init__).parameters
    key = None
    extra: dict[str, Any] = {}
    if keyed:
        from messages.envelope import SessionKey

        key = SessionKey.generate()
        extra["key"] = key
    info: dict[str, Any] = {"keyed": keyed, "key": key.secret.hex() if key else ""}
    if kind == "env":
        import threading

        server = sockets.Server(f"ipc://{folder}/env.sock", max_bytes=64 << 20, name="env", **extra)
        info["endpoint"] = server.endpoint

        def loop() -> None:
            while True:
                for item in server.poll(50):
                    if isinstance(item.message, Ping):
                        server.reply(item.peer, Pong(correlation_id=item.message.msg_id, state="ok", pid=1))

        threading.Thread(target=loop, daemon=True).start()
    else:
        from services.transport.hub import EventHub

        hub = EventHub(
            name="flood",
            events_in=f"ipc://{folder}/in.sock",
            monitor_host="127.0.0.1",
            events_port=0,
            session_port=0,
            max_bytes=64 << 20,
            sinks=[],
            snapshot=dict,
            **extra,
        )
        hub.start()
        info["endpoint"] = hub.session if kind == "session" else hub.events_out
        info["session"] = hub.session
    print(json.dumps(info), flush=True)
    for _ in sys.stdin:
        print(json.dumps(memory()), flush=True)


class Receiver:
    """A receiver child process of one checkout."""

    def __init__(self, root: Path, kind: str, folder: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind, "--folder", folder],
            cwd=root,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def stats(self) -> dict[str, int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def credentials(sock: zmq.Socket[bytes], info: dict[str, Any]) -> None:
    """Present the session's PLAIN credentials (a holder of the key)."""
    if info["keyed"]:
        from messages.envelope import SessionKey

        sock.setsockopt(zmq.PLAIN_USERNAME, b"session")
        sock.setsockopt(zmq.PLAIN_PASSWORD, SessionKey(bytes.fromhex(info["key"])).token().encode())


def envelope(info: dict[str, Any], frames: list[Any]) -> list[Any]:
    """Sign frames as a session process would (a holder of the key), when the checkout signs."""
    if not info["keyed"] or not frames:
        return frames
    from messages.envelope import SessionKey, seal

    return seal(SessionKey(bytes.fromhex(info["key"])), b"model", frames)


def still_serves(kind: str, info: dict[str, Any]) -> bool:
    """Tell whether the receiver answers a valid request from a holder of the key within 5 s."""
    from messages import DescribeSession, Ping, decode, encode

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    credentials(sock, info)
    if kind == "env":
        sock.connect(info["endpoint"])
        sock.send_multipart(envelope(info, encode(Ping(sender="model"))))
    else:
        sock.connect(info["session"])
        sock.send_multipart(encode(DescribeSession(sender="monitor")))
    ok = bool(sock.poll(5000))
    if ok:
        frames = sock.recv_multipart()
        decode(frames[2:] if kind == "env" and info["keyed"] else frames)
    sock.close(0)
    return ok


def flood(kind: str, info: dict[str, Any], keyed: bool) -> None:
    """Send one flood of its kind, as a foreign process or as a holder of the key."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.XSUB if kind == "subscribe" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 100_000)
    if keyed:
        credentials(sock, info)
    sock.connect(info["endpoint"])
    if kind == "env":
        big = b"\x00" * (60 << 20)
        sock.send_multipart(envelope(info, [b"\x80", *[big] * 15]) if keyed else [big] * 16, copy=False)
    elif kind == "session":
        sock.send_multipart([b"\x00" * 65_000] * 8000, copy=False)
    else:
        for n in range(3000):
            sock.send(b"\x01" + n.to_bytes(4, "big") + b"s" * 10_000)
    started = time.monotonic()
    while time.monotonic() - started < SETTLE_S:
        time.sleep(0.1)
    sock.close(0)  # the client leaves


def measure(root: Path, kind: str, keyed: bool) -> dict[str, Any]:
    """Run one flood against a fresh receiver; return its memory before, at its peak and after."""
    with tempfile.TemporaryDirectory(prefix="flood-", dir="/tmp") as folder:
        receiver = Receiver(root, kind, folder)
        try:
            before = receiver.stats()
            flood(kind, receiver.info, keyed)
            time.sleep(1.0)
            after = receiver.stats()
            serving = still_serves(kind, receiver.info)
        finally:
            receiver.close()
    return {
        "flood": kind,
        "sender": "key holder" if keyed else "foreign",
        "rss_before_mb": before["rss_mb"],
        "peak_mb": after["hwm_mb"],
        "rss_after_mb": after["rss_mb"],
        "still_serves": serving,
    }


def fuzz(count: int) -> None:
    """Send `count` foreign messages of each kind to an actor's Server and the hub; print what was refused."""
    from messages import SessionStarted, Stop, encode
    from messages.envelope import SessionKey, seal
    from services.transport.auth import ZapHandler
    from services.transport.credentials import PlainClient
    from services.transport.hub import EventHub
    from services.transport.sockets import Server

    key, other = SessionKey.generate(), SessionKey.generate()
    applied: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fuzz-", dir="/tmp") as folder:
        server = Server(f"ipc://{folder}/env.sock", max_bytes=1 << 20, name="env", key=key)
        hub = EventHub(
            name="fuzz", events_in=f"ipc://{folder}/in.sock", monitor_host="127.0.0.1", events_port=0,
            session_port=0, max_bytes=1 << 20, sinks=[lambda seq, msg: applied.append(type(msg).__name__)],
            snapshot=dict, key=key,
        )  # fmt: skip
        hub.start()
        ctx = zmq.Context.instance()
        stop = [bytes(f) for f in encode(Stop(reason="fuzz", sender="session"))]
        spoof = [
            bytes(f)
            for f in encode(
                SessionStarted(
                    name="spoof",
                    run_dir="",
                    monitor="",
                    episodes=1,
                    steps_per_episode=1,
                    config={},
                    sender="session",
                )
            )
        ]
        kinds: dict[str, Callable[[int, list[bytes]], list[Any]]] = {
            "garbage": lambda n, msg: [os.urandom(8 + n % 200)],
            "unsigned": lambda n, msg: msg,
            "foreign-signed": lambda n, msg: seal(other, b"session", msg),
            "spoofed signer": lambda n, msg: seal(key, b"model", msg),
        }
        handed: list[object] = []
        sent = {zmq.DEALER: 0, zmq.PUSH: 0}
        sockets = []
        for endpoint, kind in ((server.endpoint, zmq.DEALER), (f"ipc://{folder}/in.sock", zmq.PUSH)):
            for creds in (None, PlainClient.of(key), PlainClient.of(other)):
                sock = ctx.socket(kind)
                sock.setsockopt(zmq.LINGER, 0)
                if creds is not None:
                    creds.apply(sock)
                sock.connect(endpoint)
                sockets.append(sock)
                for make in kinds.values():
                    for n in range(count):
                        with contextlib.suppress(zmq.Again):  # a full queue (a refused peer's) drops
                            sock.send_multipart(make(n, stop if kind == zmq.DEALER else spoof), zmq.NOBLOCK)
                            sent[kind] += creds is not None and creds.token == key.token()
        deadline = time.monotonic() + 10
        keyed_env, keyed_events = sent[zmq.DEALER], sent[zmq.PUSH]
        while time.monotonic() < deadline and (server.refused < keyed_env or hub.rejected < keyed_events):
            handed += [i for i in server.poll(50) if i.message is not None]
        handshakes = ZapHandler.refused(key.domain())
        print(
            f"fuzz: {count} messages of each of {len(kinds)} kinds from a keyless, a keyed and a wrong-key "
            f"peer to the env socket and the event input"
        )
        print(
            f"  env socket: {sent[zmq.DEALER]} sent by the keyed peer, {server.refused} refused as "
            f"unsigned or forged, {len(handed)} handed to the actor"
        )
        print(
            f"  event input: {sent[zmq.PUSH]} sent by the keyed peer, {hub.rejected} dropped "
            f"({hub.refused} unsigned or forged), events applied: {sorted(set(applied))}"
        )
        print(f"  handshakes refused (no key or a wrong key): {handshakes}")
        for sock in sockets:
            sock.close(0)
        hub.stop()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose receivers are measured")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("env", "session", "subscribe"), help="one flood only")
    parser.add_argument("--fuzz", type=int, metavar="N", help="instead: N foreign messages of each kind")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.folder)
        return
    sys.path.insert(0, str(ROOT))
    if args.fuzz:
        fuzz(args.fuzz)
        return
    print(f"receivers from {args.root.resolve()}")
    for kind in [args.only] if args.only else ["env", "session", "subscribe"]:
        for keyed in (False, True):
            row = measure(args.root.resolve(), kind, keyed)
            print(
                f"  {row['flood']:<9} {row['sender']:<10} RSS {row['rss_before_mb']:>5} MB -> peak "
                f"{row['peak_mb']:>5} MB, after {row['rss_after_mb']:>5} MB, serves: {row['still_serves']}",
                flush=True,
            )


if __name__ == "__main__":
    main()
