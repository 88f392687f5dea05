"""Run the subscriber example of docs/PROTOCOL.md against a live event hub, so the doc cannot rot."""

from __future__ import annotations

import ast
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from messages import EpisodeStarted, ErrorRaised, Message, encode
from services.session.state import SessionState
from services.transport.auth import write_session_key
from services.transport.endpoints import Endpoints, context
from services.transport.hub import EventHub
from tests.integration.signing import AUTH, KEY, signed

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "PROTOCOL.md"
EXAMPLE = re.compile(r"<!-- example:subscribe -->\s*```python\n(.*?)```", re.DOTALL)
ALLOWED_IMPORTS = {"hmac", "json", "pathlib", "sys", "time", "uuid", "zmq", "msgpack"}


def example_code() -> str:
    """Return the subscriber example's code block from the doc."""
    match = EXAMPLE.search(DOC.read_text(encoding="utf-8"))
    assert match, f"{DOC} has no python block after <!-- example:subscribe -->"
    return match.group(1)


def imported_modules(code: str) -> set[str]:
    tree = ast.parse(code)
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    return names


class Hub:
    """A live hub with a session state and a run folder (endpoints.json, session.key), plus a signed inlet."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="t-", dir="/tmp")
        self.state = SessionState()
        self.applied = threading.Semaphore(0)
        self.numbers: dict[str, int] = {}
        self.hub = EventHub(
            name="doc-session",
            events_in=f"ipc://{self.folder}/in.sock",
            monitor_host="127.0.0.1",
            events_port=0,
            session_port=0,
            max_bytes=1 << 20,
            sinks=[self._record],
            snapshot=self.state.to_dict,
            key=KEY,
        )
        self.hub.start()
        self.run_dir = Path(self.folder)
        write_session_key(self.run_dir, KEY)
        Endpoints.local(self.run_dir, events_out=self.hub.events_out, session=self.hub.session).write(
            self.run_dir / "endpoints.json"
        )
        self.inlet = context().socket(zmq.PUSH)
        self.inlet.setsockopt(zmq.LINGER, 0)
        AUTH.apply(self.inlet)
        self.inlet.connect(f"ipc://{self.folder}/in.sock")

    def _record(self, seq: int, msg: Message) -> None:
        self.state.apply(seq, msg)
        self.numbers[msg.msg_id] = seq
        self.applied.release()

    def publish(self, msg: Message) -> None:
        """Publish one event and wait until the hub applied it."""
        self.inlet.send_multipart(signed(encode(msg)))
        assert self.applied.acquire(timeout=5), "the hub did not apply the event"

    def close(self) -> None:
        self.inlet.close()
        self.hub.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def hub() -> Iterator[Hub]:
    before = set(threading.enumerate())
    live = Hub()
    yield live
    live.close()
    assert set(threading.enumerate()) <= before, "the hub left a thread running"


def test_the_example_uses_only_zmq_msgpack_and_the_standard_library() -> None:
    assert imported_modules(example_code()) <= ALLOWED_IMPORTS


def test_the_doc_example_attaches_to_a_live_session_and_prints_new_events(hub: Hub, tmp_path: Path) -> None:
    for i in range(3):
        hub.publish(ErrorRaised(sender="env", where="before", error=f"old {i}"))
    script = tmp_path / "subscribe.py"
    script.write_text(example_code(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    want = 2

    proc = subprocess.Popen(
        [sys.executable, str(script), str(hub.run_dir), str(want)],
        cwd=tmp_path,  # outside the repository: the example cannot import project code
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Keep publishing until the example has printed its events: its SUB joins at some point.
        deadline = time.monotonic() + 30
        episode = 0
        while proc.poll() is None:
            assert time.monotonic() < deadline, "the example never printed its events"
            episode += 1
            hub.publish(EpisodeStarted(sender="session", episode=episode, episodes=99, steps=10))
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.05)
        out, err = proc.communicate(timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 0, err
    lines = out.splitlines()
    header = re.fullmatch(r"session doc-session snapshot seq=(\d+)", lines[0])
    assert header, lines
    snapshot_seq = int(header.group(1))
    assert snapshot_seq >= 3
    # The SUB may join a little after the snapshot was taken (the protocol allows losses): the example then
    # says how many it lost before the next event, and that count must close the gap in the numbers.
    losses = {
        i: int(m.group(1)) for i, line in enumerate(lines) if (m := re.fullmatch(r"lost (\d+) events", line))
    }
    for i, lost in losses.items():
        before = snapshot_seq if i == 1 else int(lines[i - 1].split()[0])
        assert int(lines[i + 1].split()[0]) == before + lost + 1, lines
    events = [line for i, line in enumerate(lines[1:], 1) if i not in losses]
    assert len(events) == want, lines
    for line in events:
        seq, type_name = line.split()[:2]
        msg_id = re.search(r"'msg_id': '([0-9a-f]{32})'", line)
        assert msg_id, line
        assert int(seq) == hub.numbers[msg_id.group(1)], "the printed number is the hub's number"
        assert int(seq) > snapshot_seq
        assert type_name == "EpisodeStarted"
        assert "'sender': 'session'" in line and "'episodes': 99" in line
