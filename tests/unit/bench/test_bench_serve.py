"""The benchmarks' bare env server answers until a Stop, and stops by itself once its parent is gone."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from bench.common import BENCH_KEY, serve_until_stopped
from messages import Ping, Pong, Stop, Stopped
from services.transport.sockets import Client, Server

MAX_BYTES = 1 << 20


def pong(msg: object) -> Pong:
    assert isinstance(msg, Ping)
    return Pong(correlation_id=msg.msg_id, state="serving", pid=os.getpid())


def test_it_answers_requests_until_a_stop(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/serve.sock"
    server = Server(endpoint, max_bytes=MAX_BYTES, name="plain-env", key=BENCH_KEY)
    thread = threading.Thread(target=serve_until_stopped, args=(server, pong), daemon=True)
    thread.start()
    client = Client(endpoint, max_bytes=MAX_BYTES, timeout_s=10.0, sender="model", key=BENCH_KEY)
    try:
        assert isinstance(client.request(Ping(), timeout_s=10.0), Pong)
        assert isinstance(client.request(Stop(reason="done"), timeout_s=10.0), Stopped)
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        client.close()


def test_it_stops_at_once_when_the_process_that_started_it_is_gone(tmp_path: Path) -> None:
    server = Server(f"ipc://{tmp_path}/orphan.sock", max_bytes=MAX_BYTES, name="plain-env", key=BENCH_KEY)
    # -1 is never this process's parent: as if the one that started the server had died.
    thread = threading.Thread(target=serve_until_stopped, args=(server, pong, -1), daemon=True)
    thread.start()
    thread.join(timeout=5)

    assert not thread.is_alive(), "the server went on polling without its parent"
