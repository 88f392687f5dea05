"""Wake a process that sleeps on a shared buffer: a named pipe and a word saying whether anyone sleeps.

A process waiting for the other side of a shared step buffer first spins on the buffer's step word (the
other side usually answers within microseconds); if nothing comes within its spin time it sets its
`sleeping` word, checks the step word once more and blocks in poll() on its pipe. The other side rings
the pipe (writes one byte) after each step word it writes, but only while the `sleeping` word is set, so
a step between two spinning processes costs no system call at all. A blocked process wakes in tens of
microseconds and, on a busy machine, is preferred by the scheduler over processes that kept running,
which a process that spins or yields is not.

Spinning pays only while a core is free for it: on a core shared with other busy processes, a spinning
process takes CPU from the very process it waits for. So each turn of the spin yields the core
(`sched_yield`: a system call of about a microsecond that returns at once when nothing else is runnable
there, and otherwise lets the waiting process run first), and `CpuLoad` reads how long the kernel kept
the waiting thread from running: the waiters spin long while that is near nothing and only briefly
otherwise. Beside a CPU hog the yield raised the env actor's training rate from 0.56-0.65 to 0.86-0.87
of the same envs in process (docs/BENCHMARKS.md, section 14).

A ring that finds the condition still false is a wake-up call: the sleeper spins again before it sleeps
again. The model sends one at the start of each rollout, so the env actor's lease, asleep through the
update, is spinning by the time the rollout's first actions come.

A ring can be missed in one interleaving (the sleeper sets its word while the ringer reads the old one:
no fence orders a store before a later load here); the sleeper's first poll has a timeout (`NAP_S`)
after which it checks the step word again, so a missed ring costs that much once and loses nothing.
The word stays set through the rest of the sleep, by then long visible to the ringer, so later naps
last until the deadline: a lease asleep through the learner's update does not wake every NAP_S (on two
cores beside a CPU hog those wake-ups cost the learner 3 to 6 % of its rate: docs/BENCHMARKS.md,
section 14).

A sleeper can also wake on a ZeroMQ socket (`wait(..., also=socket)`): the env actor's lease sleeps on
its bell and its command socket at once, so a request ends the lease at once without the lease waking
to look for one.

The pipes live next to their buffer in the session's 0700 ipc folder (0600), are made by the buffer's
owner and removed with it.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # zmq is loaded only by a sleeper that also waits on a socket (predict loads none)
    import zmq

NAP_S = 0.002
"""The longest the first nap of a sleep lasts before the sleeper looks at the step word again (a missed
ring costs this); the naps after it last until the deadline."""
LOAD_WINDOW_S = 0.005
"""How often CpuLoad looks at the thread's time spent waiting for a core."""
CROWDED_SHARE = 0.1
"""A thread that waited for a core more than this share of two windows in a row spins only briefly."""


class CpuLoad:
    """Tell whether the calling thread has been kept waiting for a core lately (then spinning steals CPU).

    The kernel counts, per thread, the time it was runnable but not running (`run_delay`, the second
    field of /proc/self/task/TID/schedstat). A thread that spins on a free core has almost none; one that
    shares its core with other busy processes of its priority waits for half its time slices. Processes
    of a lower priority (nice) barely delay it, so they do not stop it from spinning.

    The wait that follows a sleep on a bell is left out (`asleep`): the ring makes the thread runnable,
    and on a virtual machine whose idle core has halted it waits tens to hundreds of microseconds until
    that core runs again. That says the core was free, not crowded; counted, one slow wake-up made the
    thread spin briefly, so it slept at the next gap between steps and paid another wake-up (section 14).
    And one window over the share is not enough: the session's other actors wake for a few hundred
    microseconds at a time (an event, a heartbeat) and may run on this thread's core. A crowded core
    keeps the thread waiting window after window, so it takes two in a row.
    """

    def __init__(self, path_for: Callable[[int], str] | None = None) -> None:
        """path_for(tid) names the thread's schedstat file (tests give another)."""
        self._path_for = path_for or (lambda tid: f"/proc/self/task/{tid}/schedstat")
        self._fds: dict[int, int] = {}
        self._since = -1.0
        self._delay = 0
        self._asleep_delay = 0
        """Run delay of this thread's wake-ups from its bell, left out of every window."""
        self._over = False
        """Whether the thread waited for a core more than CROWDED_SHARE of the last window."""
        self._crowded = False

    def crowded(self) -> bool:
        """Return True when this thread waited for a core more than CROWDED_SHARE of each of the last two
        windows."""
        now = time.perf_counter()
        elapsed = now - self._since
        if elapsed < LOAD_WINDOW_S:
            return self._crowded
        delay = self._run_delay()
        if delay < 0:
            self._crowded = True  # no schedstat (not Linux, or hidden): spin briefly
        else:
            delay -= self._asleep_delay
            if self._since >= 0:
                over = (delay - self._delay) / 1e9 > CROWDED_SHARE * elapsed
                self._crowded, self._over = over and self._over, over
        self._since, self._delay = now, delay
        return self._crowded

    @contextlib.contextmanager
    def asleep(self) -> Iterator[None]:
        """Leave the run delay of the sleep inside this block (and of the wake-up ending it) out."""
        before = self._run_delay()
        try:
            yield
        finally:
            after = self._run_delay()
            if 0 <= before <= after:
                self._asleep_delay += after - before

    def _run_delay(self) -> int:
        """Return the calling thread's run_delay in ns, or -1 where the kernel does not tell."""
        tid = threading.get_native_id()
        fd = self._fds.get(tid)
        try:
            if fd is None:
                fd = self._fds[tid] = os.open(self._path_for(tid), os.O_RDONLY)
            return int(os.pread(fd, 128, 0).split()[1])
        except (OSError, ValueError, IndexError):
            return -1

    def close(self) -> None:
        """Close the schedstat files."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class Doorbell:
    """One direction of wake-ups: a named pipe, and the header word that says the other side sleeps."""

    def __init__(self, path: Path, words: memoryview, slot: int) -> None:
        """Open the pipe at path (made by `make`); `words[slot]` is 1 while a process sleeps on it."""
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.close(fd)
            raise ValueError(f"{path.name} refused: not a named pipe")
        self.path = path
        self._fd = fd
        self._words = words
        self._slot = slot
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self.called_at = -math.inf
        """time.perf_counter() of the last wake-up call (a ring that woke a wait before its condition)."""
        self._poller: zmq.Poller | None = None
        self._poller_socket: zmq.Socket[bytes] | None = None
        self.sleeps = 0
        """Waits on this bell that went to sleep after their spin (the rest ended spinning or at their
        deadline)."""

    @staticmethod
    def make(path: Path) -> None:
        """Create the named pipe (0600) for a new buffer; an old one of that name is replaced."""
        path.unlink(missing_ok=True)
        os.mkfifo(path, 0o600)

    def ring(self) -> None:
        """Wake the process sleeping on this bell, if one does (no system call otherwise)."""
        if self._words[self._slot]:
            # A full pipe (BlockingIOError) holds rings enough: the sleeper wakes anyway.
            with contextlib.suppress(BlockingIOError):
                os.write(self._fd, b"\x01")

    def wait(
        self,
        ready: Callable[[], bool],
        spin_s: float,
        deadline: float,
        load: CpuLoad | None = None,
        wake_spin_s: float | None = None,
        also: zmq.Socket[bytes] | None = None,
    ) -> bool:
        """Return True once ready() holds; spin spin_s, then sleep on the bell; False at deadline.

        A ring that wakes the sleeper before ready() holds says the condition comes soon (the model's
        wake-up call at the start of a rollout): the wait spins again (wake_spin_s, by default spin_s)
        before it sleeps again.

        Args:
            ready: the condition, read from the shared buffer (cheap, no side effects).
            spin_s: seconds to spin before sleeping.
            deadline: time.perf_counter() value after which to give up.
            load: the waiting thread's CpuLoad, which leaves the sleeps' wake-ups out of its windows.
            wake_spin_s: seconds to spin after a wake-up call.
            also: a socket that ends the sleep too: the wait returns ready() as soon as a message
                waits on it (owned by the calling thread, as ZeroMQ sockets must be).
        """
        if ready():
            return True
        clock = time.perf_counter
        words, slot = self._words, self._slot
        slept = False
        while True:
            spin_until = min(clock() + spin_s, deadline)
            spin_s = spin_s if wake_spin_s is None else wake_spin_s
            while clock() < spin_until:
                if ready():
                    return True
                os.sched_yield()  # a runnable process waiting for this core gets it at once
            words[slot] = 1
            try:
                nap = NAP_S
                rung = False
                while not rung:  # a ring without the condition is a wake-up call: spin again
                    remaining = deadline - clock()
                    if remaining <= 0 or ready():
                        return ready()
                    if not slept:
                        self.sleeps, slept = self.sleeps + 1, True
                    with load.asleep() if load is not None else contextlib.nullcontext():
                        rung, message = self._sleep(max(1, int(min(remaining, nap) * 1000)), also)
                    nap = math.inf  # the word has long been visible: no ring is missed from now on
                    if rung:
                        self._drain()
                    if message:
                        return ready()
            finally:
                words[slot] = 0
            if ready():
                return True
            self.called_at = clock()

    def _sleep(self, timeout_ms: int, also: zmq.Socket[bytes] | None) -> tuple[bool, bool]:
        """Block up to timeout_ms on the pipe (and `also`); return (rung, a message waits on `also`)."""
        if also is None:
            return bool(self._poll.poll(timeout_ms)), False
        if self._poller is None or self._poller_socket is not also:
            import zmq

            self._poller, self._poller_socket = zmq.Poller(), also
            self._poller.register(self._fd, zmq.POLLIN)
            self._poller.register(also, zmq.POLLIN)
        events = dict(self._poller.poll(timeout_ms))
        return self._fd in events, also in events

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._fd, 4096)

    def close(self) -> None:
        """Close this process's end of the pipe."""
        self._poller = self._poller_socket = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
