"""Watch a session: apply numbered events to the state and show them; attach late with a snapshot."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Unpack

from actors.base import ServiceActor, ServiceArgs
from actors.ports import EventSubscriber
from messages import Message, RequestSnapshot, SessionFinished, SessionStarted, Snapshot, StudyFinished
from services.session.state import SessionState

if TYPE_CHECKING:
    from services.session.console import ConsoleView

logger = logging.getLogger(__name__)

JOIN_WAIT_S = 2.0
"""How long an attaching monitor waits for its first event before it asks for the snapshot anyway
(a running session sends heartbeats every second)."""


class MonitorActor(ServiceActor):
    """Subscribes to every event; sends no command (its only request is the snapshot on attach)."""

    name = "monitor"

    def __init__(
        self,
        *,
        view: ConsoleView,
        silence_s: float = 5.0,
        exit_when_finished: bool = False,
        once: bool = False,
        snapshot_timeout_s: float = 5.0,
        resync_every_s: float = 2.0,
        **base: Unpack[ServiceArgs],
    ) -> None:
        super().__init__(**base)
        self._view = view
        self._silence_s = silence_s
        self._exit_when_finished = exit_when_finished
        self._once = once
        self._subscriber: EventSubscriber | None = None
        self.state = SessionState()
        self._last_event = 0.0
        self._silent = False
        self._snapshot_timeout_s = snapshot_timeout_s
        self._resync_every_s = resync_every_s
        self._next_resync = 0.0
        self._live = False
        self._finishing = False
        self.gaps = 0
        self.resyncs = 0

    def started(self) -> None:
        """Subscribe, wait for the first event, then ask for the snapshot and apply only newer events.

        A subscription reaches the publisher some time after it is made; a snapshot taken before then
        would miss the events published in between (the monitor would report them lost). Once the first
        event has arrived the subscription is in place, so a snapshot taken after it misses nothing.
        """
        if self._ports.subscriber is not None:
            self._subscriber = self._ports.subscriber()
        self._last_event = self._clock.monotonic()
        early = self._first_events() if "session" in self._clients and not self._once else []
        if "session" in self._clients:
            self._request_snapshot("attaching", timeout_s=None)
        # Silence counts from here: waiting for the first event and the snapshot is not the session's.
        self._last_event = self._clock.monotonic()
        for seq, msg in early:
            if seq > self.state.seq:
                self._take(seq, msg)
        status = self.state.to_dict()["session"]["status"]
        if self._once:
            self._finish("snapshot printed")
        elif self._exit_when_finished and status not in ("unknown", "running"):
            self._finish(f"session {status}")

    def _first_events(self) -> list[tuple[int, Message]]:
        """Return the events that arrive until the first one has (JOIN_WAIT_S at most), and any queued."""
        if self._subscriber is None:
            return []
        first = self._subscriber.receive(int(JOIN_WAIT_S * 1000))
        if first is None:
            return []  # an idle or finished session: the snapshot alone tells its state
        events = [first]
        while (item := self._subscriber.receive(0)) is not None:
            events.append(item)
        return events

    def _request_snapshot(self, why: str, timeout_s: float | None) -> bool:
        """Replace the state by the session's snapshot; False (with a notice) when none came."""
        if "session" not in self._clients:
            return False
        try:
            reply = self.client("session").request(RequestSnapshot(), timeout_s=timeout_s)
        except Exception as exc:  # a timeout or an error reply: go on with the events alone
            logger.warning("monitor: no snapshot (%s): %s", why, exc)
            self._view.notice(f"could not get a snapshot ({why}): {exc}")
            return False
        if not isinstance(reply, Snapshot):
            return False
        self.state = SessionState.from_snapshot(reply.seq, reply.state)
        self._live = False
        self._view.snapshot(self.state)
        return True

    def _resync(self, why: str) -> bool:
        self.resyncs += 1
        self._next_resync = self._clock.monotonic() + self._resync_every_s
        if not self._request_snapshot(why, self._snapshot_timeout_s):
            return False
        self._view.notice(f"resynchronised with the session at event {self.state.seq} ({why})")
        status = self.state.to_dict()["session"]["status"]
        if self._exit_when_finished and status not in ("unknown", "running"):
            # The session ended while this monitor was resynchronising: its SessionFinished is in the
            # snapshot and will not come again.
            self._finish(f"session {status}")
        return True

    def poll_timeout_ms(self) -> int:
        """Never block on the command socket: events are what this actor waits for."""
        return 0

    def after_poll(self) -> None:
        """Take the events that arrived, apply them and show them."""
        if self._subscriber is None:
            self.actor_stopped.wait(self.idle_poll_ms / 1000)
            return
        deadline = self._clock.monotonic() + self.idle_poll_ms / 1000
        while not self.actor_stopped.is_set() and not self._finishing:
            remaining = deadline - self._clock.monotonic()
            if remaining <= 0:
                break
            item = self._subscriber.receive(int(remaining * 1000))
            if item is None:
                break
            self._take(*item)
        self._check_silence()

    def _take(self, seq: int, msg: Message) -> None:
        """Apply one event; resynchronise after silence, a restart, a new session or lost events."""
        self._last_event = self._clock.monotonic()
        if self._silent:
            self._silent = False
            self._view.notice("session is back: events are arriving again")
            if self._resync("the session was silent"):
                self._apply(seq, msg)
                return
        last = self.state.seq
        if self._live and seq <= last:
            # Events after a snapshot arrive in order, so a smaller number means a restarted session.
            self._view.notice(f"the session restarted its event numbering (event {seq} after {last})")
            if not self._resync("the session restarted"):
                self.state = SessionState()
        elif isinstance(msg, SessionStarted) and self._session_name() not in ("", msg.name):
            self._view.notice(f"a new session {msg.name} started")
            self._resync("a new session started")
        elif last and seq > last + 1:
            self.gaps += seq - last - 1
            self._view.notice(f"lost {seq - last - 1} event(s) (sequence {last + 1}..{seq - 1})")
            if self._clock.monotonic() >= self._next_resync:
                self._resync("events were lost")
        self._apply(seq, msg)

    def _apply(self, seq: int, msg: Message) -> None:
        if self.state.apply(seq, msg):
            self._live = True
            self._view.event(self.state, seq, msg)
        if isinstance(msg, SessionFinished | StudyFinished) and self._exit_when_finished:
            self._finish(f"{'study' if isinstance(msg, StudyFinished) else 'session'} {msg.status}")

    def _finish(self, reason: str) -> None:
        """Stop, showing nothing more: stop() only queues the stop behind this poll."""
        self._finishing = True
        self.stop_reason = reason
        self.stop()

    def _session_name(self) -> str:
        return str(self.state.to_dict()["session"]["name"])

    def _check_silence(self) -> None:
        if self._silent:
            return
        if self._clock.monotonic() - self._last_event > self._silence_s:
            self._silent = True
            self._view.notice(f"no event for {self._silence_s:g} s: the session may be gone")

    def on_stop(self) -> None:
        """Close the subscriber and the view."""
        if self._subscriber is not None:
            self._subscriber.close()
        self._view.close()
        super().on_stop()
