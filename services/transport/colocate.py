"""Place the two ends of a shared step buffer while a rollout runs: apart, split, or on one core.

During a rollout the model's training thread and the env actor's serving thread take turns: neither
has anything to do while the other works. Where they run decides what a turn costs, and the right
place depends on how many cores other processes keep busy (`Crowd`: the kernel's count of runnable
tasks, less this session's own, read at the start and end of each rollout; the last four readings
decide, three of four needed, so that the session's own actors waking together once decide nothing):

- **Apart, unpinned** (a core is free besides the model's): each side spins on its own core and a step
  costs about 40 us at 16 envs (docs/BENCHMARKS.md, section 14). Nothing is pinned.
- **Split** (other processes keep every other core busy, but not the model's: one CPU hog on two cores;
  while it costs less a step than one core, `PlacementChoice`).
  The model pins its training thread to the core it is on, where it spins alone; the env actor's lease
  pins its serving thread to every other core and sleeps on its bell between steps, where the ring
  wakes it ahead of the busy process (a short slice, below). A lease that spun there instead would
  yield its core to that process for the process's whole slice, up to 3 ms a step; one that was not
  pinned would be woken onto the model's core (the pipe's wake-up is a "sync" one, which pulls the
  woken thread to the waker's core) and wait there for the model's spin to yield. Beside one hog at 16
  envs a step took 49 to 51 us split against 67 to 101 us on one core one hour, and the learner kept
  its core and its caches to itself (section 14, session 11); another hour the wake-up alone took
  34 us of the model's ring, and one core was the cheaper (session 12).
- **On one core** (other processes keep every core busy, the model's too: three hogs on two cores; and
  beside busy other cores while it costs less a step than split):
  the model pins its training thread to its core and the lease pins its serving thread to the same
  core; each side's spin yields the core, and the side it waits for is the one that runs next. Split
  there, the model's own core is crowded and each of its yields hands that core to a busy process for
  a slice: a step took about 3 ms (section 14, session 11).

The model writes the placement into the buffer's header (`SharedSteps.begin_rollout`): the core plus
one for one core, minus that for split, 0 for apart; the env actor's lease follows the word at each
step. At the end of the rollout the model lets its thread go back to every core it had (the update
that follows runs wherever the scheduler puts it, and the next rollout starts on the core it is on
then) and clears the word; the env actor lets its thread go when the lease ends or the word is cleared.

Both threads also ask the kernel for a short time slice (`sched_setattr` with a `sched_runtime` of
`SLICE_NS`, Linux 6.12 and later; older kernels ignore it): a thread with a short slice has an early
deadline under the EEVDF scheduler, so when it wakes or gets a yield it runs before processes with the
default slice instead of after their slice. The env actor's serving thread asks at its first lease and
keeps it; the model's thread has it during pinned rollouts only.

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
    """Pin the calling thread to one core, or to every core but one, and later give it back the cores it
    had (use one thread only)."""

    def __init__(self) -> None:
        self._cores: set[int] | None = None
        self.core = -1
        """The core the thread is pinned to, -1 when it is not pinned to one."""
        self.avoided = -1
        """The core the thread is kept off (pinned to every other), -1 when it is not."""

    @property
    def pinned(self) -> bool:
        """Whether pin() or avoid() holds the thread now."""
        return self._cores is not None

    def pin(self, core: int) -> bool:
        """Pin the calling thread to core; False (nothing changed) if it may not run there or only there."""
        if core == self.core:
            return True
        return core >= 0 and self._set(core, {core})

    def avoid(self, core: int) -> bool:
        """Pin the calling thread to every core it may use but core; False (nothing changed) if it may not
        use core or no other."""
        if core == self.avoided:
            return True
        return core >= 0 and self._set(core, None)

    def _set(self, core: int, only: set[int] | None) -> bool:
        """Pin to `only`, or (None) to every allowed core but `core`; record which."""
        if _LIBC is None:
            return False
        cores = self._cores if self._cores is not None else os.sched_getaffinity(0)
        if core not in cores or len(cores) < 2:
            return False
        try:
            os.sched_setaffinity(0, only if only is not None else cores - {core})
        except OSError:
            return False
        self._cores = cores
        self.core, self.avoided = (core, -1) if only is not None else (-1, core)
        return True

    def release(self) -> None:
        """Let the thread run on every core it could before pin() or avoid()."""
        if self._cores is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, self._cores)
        self._cores, self.core, self.avoided = None, -1, -1


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
    if placement.pinned:
        placement.release()
        request_slice(0)


class Crowd:
    """Tell whether other processes keep every core but this thread's busy (`busy`: a rollout is split),
    or every core (`full`: a rollout runs on one core).

    Reads the number of runnable tasks from /proc/loadavg (its fourth field, `running/total`), less the
    caller and its own others (`own`), at each sample; busy when at least three of the last `SAMPLES`
    readings each show as many others as there are other cores, full when three show as many as there
    are cores. A count, not a mean: the session's other actors sometimes wake together (a heartbeat, an
    event), and one reading of four others on a quiet machine pinned a 16-env session's next rollouts,
    5 to 14 % of its steps (section 14).
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
        return self._taken(self._cores - 1)

    def full(self) -> bool:
        """Return True when the recent samples show every core taken by other processes, this one's too."""
        return self._taken(self._cores)

    def _taken(self, others_needed: int) -> bool:
        """Whether three of four recent samples show at least others_needed other runnable tasks."""
        if self._cores < 2 or not self._others:
            return False
        taken = sum(1 for others in self._others if others >= others_needed)
        return 4 * taken >= 3 * len(self._others)

    def close(self) -> None:
        """Close the loadavg file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


SPLIT, ONE_CORE = "split", "one core"


class PlacementChoice:
    """Choose split or one core for a rollout beside busy other cores, by what each cost lately.

    Which is faster depends on the host as much as on the load. Split, every step wakes the lease on a
    core a busy process holds, and the wake-up (an interprocessor interrupt, which a virtual machine
    pays with an exit to its host) took 23 us a round trip outside training one hour and 34 us of the
    model's ring alone inside it another; on one core the two processes hand over the core twice a step
    and share its caches (docs/BENCHMARKS.md, section 14, sessions 11 and 12). So each placement's cost
    is measured where it matters, as a rollout's wall time per step (the learner's forward passes
    included), and the cheaper one runs; every `EXPLORE`-th choice takes the other, so that the choice
    follows the machine.
    """

    EXPLORE = 16
    WEIGHT = 0.3
    """How much one rollout's cost moves a placement's moving average."""

    def __init__(self) -> None:
        self.cost: dict[str, float] = {}
        """Each tried placement's moving average of seconds per step."""
        self._chosen = 0

    def choose(self) -> str:
        """Return the placement for the next rollout: an untried one first (split), else the cheaper."""
        self._chosen += 1
        for mode in (SPLIT, ONE_CORE):
            if mode not in self.cost:
                return mode
        best = min(self.cost, key=self.cost.__getitem__)
        if self._chosen % self.EXPLORE == 0:
            return ONE_CORE if best == SPLIT else SPLIT
        return best

    def record(self, mode: str, seconds_per_step: float) -> None:
        """Take in what a rollout placed so cost a step."""
        old = self.cost.get(mode)
        self.cost[mode] = seconds_per_step if old is None else old + self.WEIGHT * (seconds_per_step - old)
