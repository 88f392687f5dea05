"""Publish a study's progress as signed events that `run.py monitor --run runs/<study>` attaches to.

A `run.py tune` process runs an event hub of its own (services/transport/hub.py), like a session's: a
fresh key in runs/<study>/session.key, its endpoints in runs/<study>/endpoints.json, every event recorded
in runs/<study>/events.jsonl and folded into the state monitors get as their snapshot. Its worker threads
publish through one thread that owns the publishing socket and also sends the process's heartbeat, so a
monitor can tell a long trial from a dead study.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from pathlib import Path

from messages import Heartbeat
from messages.base import Event
from services.experiments.study import SENDER
from services.runtime import PsutilProbe
from services.session.recorder import RunRecorder
from services.session.state import SessionState
from services.transport.auth import write_session_key
from services.transport.endpoints import Endpoints, ipc_folder
from services.transport.hub import EventHub
from services.transport.sockets import Publisher

logger = logging.getLogger(__name__)

MAX_BYTES = 1 << 20
"""Largest message the study's hub takes (its events are small)."""
_CLOSE = object()


class StudyBroadcast:
    """The study's hub and its one publishing thread; publish() may be called from any thread."""

    def __init__(self, name: str, folder: Path, *, heartbeat_s: float = 1.0, host: str = "127.0.0.1") -> None:
        self._folder = folder
        self._heartbeat_s = heartbeat_s
        self.state = SessionState()
        self._recorder = RunRecorder(folder, metrics=False)
        key = write_session_key(folder)
        self._ipc = ipc_folder(folder)
        # One socket file per process: two `run.py tune` processes of one study on a host do not collide.
        self._events_in = f"ipc://{self._ipc}/study-{os.getpid()}.sock"
        self._hub = EventHub(
            name=name,
            events_in=self._events_in,
            monitor_host=host,
            events_port=0,
            session_port=0,
            max_bytes=MAX_BYTES,
            sinks=[self.state.apply, self._recorder],
            snapshot=self.state.to_dict,
            key=key,
        )
        self._key = key
        self._queue: queue.Queue[object] = queue.Queue()
        self._state_text = "starting"
        self._thread = threading.Thread(target=self._run, name="study-events", daemon=True)

    def start(self) -> None:
        """Bind the hub, write endpoints.json and start the publishing thread."""
        self._hub.start()
        Endpoints.local(self._ipc, events_out=self._hub.events_out, session=self._hub.session).write(
            self._folder / "endpoints.json"
        )
        self._thread.start()

    def publish(self, event: Event) -> None:
        """Queue an event for the hub (signed as the study's)."""
        self._queue.put(event)

    def doing(self, text: str) -> None:
        """Say what the study is doing in its next heartbeats ("trial 3 seed 1")."""
        self._state_text = text

    def close(self) -> None:
        """Send what is queued, stop the hub and close the record; the key and endpoints stay."""
        if self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join(10)
        self._hub.stop()
        self._recorder.close()
        with contextlib.suppress(OSError):
            Path(self._events_in.removeprefix("ipc://")).unlink()
        with contextlib.suppress(OSError):  # left while another tune process of the study uses it
            self._ipc.rmdir()

    def _run(self) -> None:
        """Own the publisher: pass on queued events, and a heartbeat every heartbeat_s."""
        publisher = Publisher(self._events_in, sender=SENDER, key=self._key)
        probe = PsutilProbe()
        next_beat = time.monotonic()
        try:
            while True:
                try:
                    item = self._queue.get(timeout=max(0.0, next_beat - time.monotonic()))
                except queue.Empty:
                    item = None
                if item is _CLOSE:
                    return
                if isinstance(item, Event):
                    publisher.publish(item)
                if time.monotonic() < next_beat:
                    continue  # events however frequent never hold the heartbeat back
                next_beat = time.monotonic() + self._heartbeat_s
                rss, cpu = probe.sample()
                beat = Heartbeat(
                    pid=os.getpid(), rss_bytes=rss, cpu_percent=cpu, state=self._state_text, sender=SENDER
                )
                publisher.publish(beat)
        except Exception:
            logger.exception("study events: the publishing thread failed")
        finally:
            publisher.close()
