"""Put the two ends of a shared step buffer on one core while a rollout runs, and ask for short slices.

During a rollout the model's training thread and the env actor's serving thread take turns: neither
has anything to do while the other works. On separate cores each turn needs the other core to be free
at that moment; on a machine whose cores are busy with other processes the one woken waits for a core,
up to a whole time slice of the process running there (p90 of a step 1.3 to 3.4 ms beside other jobs,
against 60 us in process: docs/BENCHMARKS.md, section 14). On one core the turn is a hand-over: the
waiting side's spin yields the core (services.transport.doorbell), and the side it waits for is the
one that runs next. So at the start of a rollout on such a machine the model pins its training thread
to the core it is on and writes that core into the buffer's header (`SharedSteps.begin_rollout`); the
env actor's lease pins its serving thread to the same core while the word says so. At the end of the
rollout the model lets its thread go back to every core it had (the update that follows runs wherever
the scheduler puts it, and the next rollout starts on the core it is on then) and clears the word; the
env actor lets its thread go when the lease ends or the word is cleared.

On a machine with a free core the two threads are faster apart: each spins on its own core and a step
costs about 40 us, against 75 to 115 us as a hand-over on one core (section 14). So a rollout is
co-located only while other processes keep the other cores busy (`Crowd`: the kernel's count of
runnable tasks, less this session's own, read at the start and end of each rollout; co-located when
the last four readings average at least one other runnable task for every other core, less a quarter:
on two cores, three readings in four).

Both threads also ask the kernel for a short time slice (`sched_setattr` with a `sched_runtime` of
`SLICE_NS`, Linux 6.12 and later; older kernels ignore it): a thread with a short slice has an early
deadline under the EEVDF scheduler, so when it wakes or gets a yield it runs before processes with the
default slice instead of after their slice. The env actor's serving thread asks at its first lease and
keeps it; the model's thread has it during co-located rollouts only.

Everything here is advice to the kernel: where a call is not available (another OS, a single allowed
core, a kernel that refuses) the steps run as before, unpinned.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import platform
import threading
from collections import deque

SLICE_NS = 100_000
"""The time slice the two stepping threads ask for (the kernel's default is 0.75 ms times 1 + log2 of the
core count, at most 3 ms): a step takes 5-15 us and a hand-over a few."""

_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}.get(platform.machine())
"""The sched_setattr system call's number on this architecture (None: not known, not asked)."""


class _SchedAttr(ctypes.Structure):
    """struct sched_attr of <linux/sched/types.h>, its first version with the utilisation clamps."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
        ("sched_util_min", ctypes.c_uint32),
        ("sched_util_max", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


_LIBC = _libc() if hasattr(os, "sched_setaffinity") else None


def current_cpu() -> int:
    """Return the core the calling thread runs on, or -1 where the system does not tell."""
    if _LIBC is None:
        return -1
    try:
        return int(_LIBC.sched_getcpu())
    except AttributeError:
        return -1


def request_slice(slice_ns: int) -> bool:
    """Ask for a time slice of slice_ns for the calling thread (0: the default); True if accepted.

    Keeps the thread's scheduling policy (the normal one) and nice value; only its slice changes.
    """
    if _LIBC is None or _SCHED_SETATTR is None or os.sched_getscheduler(0) != os.SCHED_OTHER:
        return False
    attr = _SchedAttr(
        size=ctypes.sizeof(_SchedAttr),
        sched_policy=os.SCHED_OTHER,
        sched_nice=os.getpriority(os.PRIO_PROCESS, 0),
        sched_runtime=slice_ns,
    )
    return int(_LIBC.syscall(_SCHED_SETATTR, 0, ctypes.byref(attr), 0)) == 0


class Placement:
    """Pin the calling thread to one core and later give it back the cores it had (use one thread only)."""

    def __init__(self) -> None:
        self._cores: set[int] | None = None
        self.core = -1
        """The core the thread is pinned to, -1 when it is not."""

    def pin(self, core: int) -> bool:
        """Pin the calling thread to core; False (nothing changed) if it may not run there or only there."""
        if core == self.core:
            return True
        if _LIBC is None or core < 0:
            return False
        cores = self._cores if self._cores is not None else os.sched_getaffinity(0)
        if core not in cores or len(cores) < 2:
            return False
        try:
            os.sched_setaffinity(0, {core})
        except OSError:
            return False
        self._cores, self.core = cores, core
        return True

    def release(self) -> None:
        """Let the thread run on every core it could before pin()."""
        if self._cores is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._cores)
        self._cores, self.core = None, -1


_THREADS = threading.local()


def thread_placement() -> Placement:
    """Return the calling thread's Placement (one per thread, whichever buffer pins it)."""
    placement = getattr(_THREADS, "placement", None)
    if placement is None:
        placement = _THREADS.placement = Placement()
    return placement


def release_thread() -> None:
    """Give the calling thread back every core it had and the default slice, if a rollout pinned it."""
    placement = thread_placement()
    if placement.core >= 0:
        placement.release()
        request_slice(0)


class Crowd:
    """Tell whether other processes keep every core but this thread's busy (then a rollout co-locates).

    Reads the number of runnable tasks from /proc/loadavg (its fourth field, `running/total`), less the
    caller and its own others (`own`), at each sample; busy when at least three of the last `SAMPLES`
    readings each show as many others as there are other cores. A count, not a mean: the session's
    other actors sometimes wake together (a heartbeat, an event), and one reading of four others on a
    quiet machine co-located a 16-env session's next rollouts, 5 to 14 % of its steps (section 14).
    """

    SAMPLES = 4

    def __init__(self, path: str = "/proc/loadavg", cores: int | None = None) -> None:
        """path: the loadavg file (tests give another); cores: the cores to count (default: allowed ones)."""
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError:
            self._fd = -1
        if cores is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        self._cores = cores
        self._others: deque[int] = deque(maxlen=self.SAMPLES)

    def sample(self, own: int = 1) -> None:
        """Read the runnable tasks now; own is how many of them are this session's (the caller included)."""
        if self._fd < 0:
            return
        try:
            running = int(os.pread(self._fd, 128, 0).split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            return
        self._others.append(max(running - own, 0))

    def busy(self) -> bool:
        """Return True when the recent samples show the other cores taken by other processes."""
        if self._cores < 2 or not self._others:
            return False
        taken = sum(1 for others in self._others if others >= self._cores - 1)
        return 4 * taken >= 3 * len(self._others)

    def close(self) -> None:
        """Close the loadavg file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
