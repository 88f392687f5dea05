"""Placed rollouts: the model's thread pinned, the env actor's lease off its core (split) or on it, short
slices."""

from __future__ import annotations

import ctypes
import os
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

from services.env.options import EnvOptions
from services.env.vec_env import VecTradingEnv
from services.transport import colocate
from services.transport.colocate import (
    ONE_CORE,
    SLICE_NS,
    SPLIT,
    Crowd,
    Placement,
    PlacementChoice,
    current_cpu,
    release_thread,
    request_slice,
    thread_placement,
)
from services.transport.shm import SharedSteps, StepLayout
from services.transport.shm_layout import ACTION, PLACEMENT, SERVING

N, OBS = 4, (14,)
CORES = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
multi_core = pytest.mark.skipif(len(CORES) < 2 or current_cpu() < 0, reason="needs 2 cores, sched_getcpu")


def in_thread(work: Callable[[], Any]) -> Any:
    """Run work in a new thread (pinning changes only the calling thread) and return its result."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(work())
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(30)
    if errors:
        raise errors[0]
    return out[0]


def runtime_ns() -> int:
    """Read the calling thread's requested slice back with sched_getattr (-1 where unknown)."""
    number = {"x86_64": 315, "aarch64": 275}.get(platform.machine())
    libc = colocate._LIBC
    if number is None or libc is None:
        return -1
    attr = colocate._SchedAttr()
    if libc.syscall(number, 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        return -1
    return int(attr.sched_runtime)


@multi_core
def test_a_placement_pins_the_calling_thread_and_gives_back_its_cores() -> None:
    def work() -> tuple[set[int], set[int], int, set[int]]:
        placement = Placement()
        before = os.sched_getaffinity(0)
        assert placement.pin(CORES[-1])
        pinned, core = os.sched_getaffinity(0), placement.core
        placement.release()
        return before, pinned, core, os.sched_getaffinity(0)

    before, pinned, core, after = in_thread(work)

    assert pinned == {CORES[-1]} and core == CORES[-1]
    assert after == before
    assert os.sched_getaffinity(0) == set(CORES), "the test's own thread was not touched"


@multi_core
def test_a_placement_refuses_a_core_the_thread_may_not_use_and_a_thread_on_one_core() -> None:
    def work() -> tuple[bool, bool, int]:
        placement = Placement()
        outside = placement.pin(max(CORES) + 1000)
        os.sched_setaffinity(0, {CORES[0]})
        alone = placement.pin(CORES[0])
        return outside, alone, placement.core

    assert in_thread(work) == (False, False, -1)


@multi_core
def test_a_placement_keeps_the_thread_off_one_core_and_moves_between_pin_and_avoid() -> None:
    def work() -> tuple[set[int], int, set[int], int, bool, set[int], bool]:
        placement = Placement()
        assert placement.avoid(CORES[0])
        avoided, kept_off = os.sched_getaffinity(0), placement.avoided
        assert placement.pin(CORES[0])  # from avoiding a core to joining it, the cores before either
        pinned, core = os.sched_getaffinity(0), placement.core
        placement.release()
        return (
            avoided,
            kept_off,
            pinned,
            core,
            placement.avoided == -1,
            os.sched_getaffinity(0),
            placement.pinned,
        )

    avoided, kept_off, pinned, core, cleared, after, still = in_thread(work)

    assert avoided == set(CORES) - {CORES[0]} and kept_off == CORES[0]
    assert pinned == {CORES[0]} and core == CORES[0]
    assert cleared and after == set(CORES) and not still


@multi_core
def test_a_placement_refuses_to_avoid_a_core_the_thread_cannot_leave() -> None:
    def work() -> tuple[bool, bool, bool]:
        placement = Placement()
        outside = placement.avoid(max(CORES) + 1000)
        os.sched_setaffinity(0, {CORES[0]})
        alone = placement.avoid(CORES[0])
        return outside, alone, placement.pinned

    assert in_thread(work) == (False, False, False)


def test_a_short_slice_is_asked_for_and_given_back_where_the_kernel_takes_it() -> None:
    def work() -> tuple[bool, int, bool, int]:
        asked = request_slice(SLICE_NS)
        held = runtime_ns()
        reset = request_slice(0)
        return asked, held, reset, runtime_ns()

    asked, held, reset, after = in_thread(work)

    if not asked:
        pytest.skip("this kernel or platform takes no slice request")
    assert reset
    if held >= 0:
        assert held == SLICE_NS, "the kernel reports the slice asked for"
        assert after != SLICE_NS, "the default slice is back"


def vec_env() -> VecTradingEnv:
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 300)))
    env = VecTradingEnv(EnvOptions(window=4, episode_length=6), n_envs=N, seed=3)
    env.update_data(rng.normal(size=(300, 3)).astype(np.float32), close.copy(), close)
    env.reset()
    return env


class Busy(Crowd):
    """A crowd that always says the other cores are taken (or never, with busy=False), and every core
    with full=True."""

    def __init__(self, busy: bool = True, full: bool = False) -> None:
        super().__init__(path="/nonexistent")
        self._busy, self._full = busy, full
        self.samples: list[int] = []

    def sample(self, own: int = 1) -> None:
        self.samples.append(own)

    def busy(self) -> bool:
        return self._busy

    def full(self) -> bool:
        return self._full


def pair(folder: Path, *, busy: bool = True, full: bool = True) -> tuple[SharedSteps, SharedSteps]:
    layout = StepLayout.of(N, OBS, "discrete3")
    owner = SharedSteps.create(folder, "train", layout)
    model = SharedSteps.attach(folder, owner.name, layout, layout.size)
    model._crowd = Busy(busy, full)
    return owner, model


def write_loadavg(path: Path, running: int) -> None:
    path.write_text(f"0.52 0.61 0.70 {running}/311 4242\n")  # the same file, read again at each sample


@pytest.mark.parametrize(
    ("cores", "readings", "own", "busy"),
    [
        (2, [1, 1, 1, 1], 1, False),  # only the caller runs: a free core
        (2, [2, 2, 2, 2], 1, True),  # one other runnable task for the other core
        (2, [2, 2, 2, 1], 1, True),  # three readings of four
        (2, [2, 2, 1, 1], 1, False),
        (2, [5, 1, 1, 1], 1, False),  # the session's actors woke together once: not a crowd
        (2, [1, 1, 5, 5], 1, False),
        (4, [4, 4, 9, 1], 1, True),
        (2, [2, 2, 2, 2], 2, False),  # the other runnable task is the session's own env actor
        (4, [3, 3, 3, 3], 1, False),  # two others on four cores: a core is free
        (4, [4, 4, 4, 4], 1, True),
        (1, [5, 5, 5, 5], 1, False),  # one core: nothing to co-locate onto
    ],
)
def test_the_crowd_counts_other_runnable_tasks_against_the_other_cores(
    tmp_path: Path, cores: int, readings: list[int], own: int, busy: bool
) -> None:
    path = tmp_path / "loadavg"
    write_loadavg(path, 0)
    crowd = Crowd(str(path), cores=cores)
    for running in readings:
        write_loadavg(path, running)
        crowd.sample(own)

    assert crowd.busy() is busy
    crowd.close()


@pytest.mark.parametrize(
    ("cores", "readings", "own", "full"),
    [
        (2, [2, 2, 2, 2], 1, False),  # one other task: the other core is taken, the caller's is not
        (2, [3, 3, 3, 3], 1, True),  # two others on two cores: every core taken
        (2, [3, 3, 3, 2], 1, True),  # three readings of four
        (2, [3, 3, 2, 2], 1, False),
        (2, [4, 4, 4, 4], 2, True),  # three others besides the caller and its lease
        (2, [3, 3, 3, 3], 2, False),  # the second "other" is the session's own lease
        (4, [5, 5, 5, 5], 1, True),
        (4, [4, 4, 4, 4], 1, False),  # three others on four cores: busy, not full
        (1, [5, 5, 5, 5], 1, False),  # one core: nothing to place
    ],
)
def test_the_crowd_is_full_when_others_take_every_core(
    tmp_path: Path, cores: int, readings: list[int], own: int, full: bool
) -> None:
    path = tmp_path / "loadavg"
    write_loadavg(path, 0)
    crowd = Crowd(str(path), cores=cores)
    for running in readings:
        write_loadavg(path, running)
        crowd.sample(own)

    assert crowd.full() is full
    assert crowd.busy() or not full, "a full machine is a busy one"
    crowd.close()


def test_a_crowd_without_its_file_never_says_busy(tmp_path: Path) -> None:
    crowd = Crowd(str(tmp_path / "absent"), cores=2)
    crowd.sample()

    assert not crowd.busy() and not crowd.full()


def test_the_last_four_readings_decide(tmp_path: Path) -> None:
    path = tmp_path / "loadavg"
    write_loadavg(path, 2)
    crowd = Crowd(str(path), cores=2)
    for _ in range(4):
        crowd.sample()
    assert crowd.busy()

    write_loadavg(path, 1)
    crowd.sample()
    assert crowd.busy(), "three busy readings of the last four"
    crowd.sample()
    assert not crowd.busy(), "two free readings of the last four"
    crowd.close()


def test_a_rollout_on_a_machine_with_a_free_core_stays_unpinned(tmp_path: Path) -> None:
    _, model = pair(tmp_path, busy=False)

    def work() -> tuple[bool, int, set[int]]:
        begun = model.begin_rollout()
        return begun, int(model._words[PLACEMENT]), os.sched_getaffinity(0)

    begun, word, cores = in_thread(work)

    assert not begun and word == 0 and cores == set(CORES)
    assert isinstance(model._crowd, Busy)
    assert model._crowd.samples == [1], "the caller alone is the session's own (no lease runs)"
    assert (model.rollouts, model.colocated_rollouts) == (1, 0)


@pytest.mark.parametrize("busy", [True, False])
def test_the_wake_up_call_rings_after_the_crowd_is_read(tmp_path: Path, busy: bool) -> None:
    # Rung first, the lease it wakes would run while its word still says it sleeps: counted as another
    # process's task, it made one CPU hog look like a full machine.
    _, model = pair(tmp_path, busy=busy, full=False)
    assert isinstance(model._crowd, Busy)
    events: list[str] = []
    crowd_sample, bell_ring = model._crowd.sample, model._env_bell.ring
    model._crowd.sample = lambda own=1: (events.append("sample"), crowd_sample(own))[1]  # type: ignore[method-assign]
    model._env_bell.ring = lambda: (events.append("ring"), bell_ring())[1]  # type: ignore[method-assign]

    in_thread(lambda: (model.begin_rollout(), model.end_rollout()))

    assert events == ["sample", "ring", "sample"]


class Rollout(NamedTuple):
    """What one placed rollout of 20 steps showed (placed_rollout)."""

    core: int
    word: int
    pinned: set[int]
    released: set[int]
    cleared: int
    seen: list[set[int]]
    after_lease: list[set[int]]
    lease_sleeps: int


def placed_rollout(owner: SharedSteps, model: SharedSteps) -> Rollout:
    """Run a lease in a thread and a 20-step rollout of the model in another; return what they showed."""
    env = vec_env()
    seen: list[set[int]] = []

    def step_envs(actions: np.ndarray) -> Any:
        seen.append(os.sched_getaffinity(0))  # the serving thread's cores while it steps
        return env.step(actions)

    after_lease: list[set[int]] = []

    def serve() -> None:
        owner.serve(step_envs, idle_s=5.0)
        after_lease.append(os.sched_getaffinity(0))

    def rollout() -> Rollout:
        first = model.put_actions(np.zeros(N, dtype=np.int64))
        owner.serve_token(first, env.step)
        lease = threading.Thread(target=serve)
        lease.start()
        deadline = time.monotonic() + 10
        while not model._words[SERVING]:
            assert time.monotonic() < deadline, "the lease never started"
            time.sleep(0.001)
        sleeps = owner._env_bell.sleeps
        assert model.begin_rollout()
        core = thread_placement().core
        word = int(model._words[PLACEMENT])
        pinned = os.sched_getaffinity(0)
        for _ in range(20):
            step = model.put_actions(np.ones(N, dtype=np.int64))
            assert model.wait(step)
            model.read(step)
        model.end_rollout()
        cleared = int(model._words[PLACEMENT])
        released = os.sched_getaffinity(0)
        owner._words[ACTION] = -5  # ends the lease
        lease.join(10)
        return Rollout(
            core, word, pinned, released, cleared, seen, after_lease, owner._env_bell.sleeps - sleeps
        )

    result: Rollout = in_thread(rollout)
    return result


@multi_core
def test_a_rollout_on_a_full_machine_puts_the_lease_on_the_models_core_and_the_end_lets_both_go(
    tmp_path: Path,
) -> None:
    owner, model = pair(tmp_path, full=True)

    got = placed_rollout(owner, model)

    core = got.core
    assert got.word - 1 == core and got.pinned == {core}, "the model pins itself and names its core"
    assert (model.rollouts, model.colocated_rollouts, model.split_rollouts) == (1, 1, 0)
    # The lease follows the word from its next turn on: every step after the first few ran on that core.
    assert got.seen[-1] == {core} and sum(s == {core} for s in got.seen) >= len(got.seen) - 2
    assert got.released == set(CORES) and got.cleared == 0
    assert got.after_lease == [set(CORES)], "the lease gives its thread back its cores when it ends"
    assert model.choice.cost == {}, "a full machine's one-core rollout is forced, not a measure of the choice"


@multi_core
def test_a_rollout_beside_busy_other_cores_is_split_and_the_lease_sleeps_off_the_models_core(
    tmp_path: Path,
) -> None:
    owner, model = pair(tmp_path, full=False)

    got = placed_rollout(owner, model)

    core = got.core
    assert got.word == -(core + 1) and got.pinned == {core}, "the model pins itself and names its core"
    assert (model.rollouts, model.colocated_rollouts, model.split_rollouts) == (1, 0, 1)
    others = set(CORES) - {core}
    assert got.seen[-1] == others and sum(s == others for s in got.seen) >= len(got.seen) - 2
    # Split, the lease sleeps on its bell for each next step instead of spinning (the first steps may
    # come before it read the word).
    assert got.lease_sleeps >= 15
    assert got.released == set(CORES) and got.cleared == 0
    assert got.after_lease == [set(CORES)]
    assert list(model.choice.cost) == [SPLIT] and model.choice.cost[SPLIT] > 0, "the rollout was measured"


@multi_core
def test_the_lease_lets_go_of_the_core_once_the_model_clears_the_word(tmp_path: Path) -> None:
    owner, model = pair(tmp_path)
    env = vec_env()
    seen: list[set[int]] = []

    def step_envs(actions: np.ndarray) -> Any:
        seen.append(os.sched_getaffinity(0))
        return env.step(actions)

    def rollout() -> None:
        first = model.put_actions(np.zeros(N, dtype=np.int64))
        owner.serve_token(first, env.step)
        lease = threading.Thread(target=lambda: owner.serve(step_envs, idle_s=5.0))
        lease.start()
        while not model._words[SERVING]:
            time.sleep(0.001)
        model.begin_rollout()
        for _ in range(5):
            step = model.put_actions(np.ones(N, dtype=np.int64))
            model.wait(step)
        model.end_rollout()
        for _ in range(5):  # steps of the same lease after the rollout's end (an eval, say)
            step = model.put_actions(np.ones(N, dtype=np.int64))
            model.wait(step)
        owner._words[ACTION] = -5
        lease.join(10)

    in_thread(rollout)

    assert seen[-1] == set(CORES), "a cleared word unpins the serving thread at its next step"


def test_colocation_off_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("services.transport.shm_waits.COLOCATE", False)
    _, model = pair(tmp_path)

    def work() -> tuple[bool, int, set[int]]:
        begun = model.begin_rollout()
        model.end_rollout()
        return begun, int(model._words[PLACEMENT]), os.sched_getaffinity(0)

    begun, word, cores = in_thread(work)

    assert not begun and word == 0 and cores == set(CORES)
    assert (model.rollouts, model.colocated_rollouts) == (1, 0), "the rollout is counted, not co-located"


@multi_core
def test_release_thread_unpins_a_thread_whose_buffer_was_dropped(tmp_path: Path) -> None:
    _, model = pair(tmp_path)

    def work() -> tuple[set[int], set[int]]:
        model.begin_rollout()
        pinned = os.sched_getaffinity(0)
        model.close()  # the buffer goes (a fault); the thread is still pinned
        release_thread()
        return pinned, os.sched_getaffinity(0)

    pinned, after = in_thread(work)

    assert len(pinned) == 1 and after == set(CORES)


def test_the_choice_tries_split_then_one_core_then_runs_the_cheaper_and_now_and_then_the_other() -> None:
    choice = PlacementChoice()

    assert choice.choose() == SPLIT
    choice.record(SPLIT, 60e-6)
    assert choice.choose() == ONE_CORE
    choice.record(ONE_CORE, 40e-6)
    picks = [choice.choose() for _ in range(3 * PlacementChoice.EXPLORE - 2)]

    # Chosen 2 to 48 (the 16th, 32nd and 48th choices explore): one core but for those three.
    assert [i + 3 for i, mode in enumerate(picks) if mode == SPLIT] == [16, 32, 48]
    assert picks.count(ONE_CORE) == len(picks) - 3


def test_the_choice_follows_a_placement_that_became_dearer() -> None:
    choice = PlacementChoice()
    choice.record(SPLIT, 60e-6)
    choice.record(ONE_CORE, 40e-6)

    choice.record(ONE_CORE, 100e-6)  # a moving average: 40 + 0.3 * 60

    assert choice.cost[ONE_CORE] == pytest.approx(58e-6)
    assert choice.choose() == ONE_CORE, "still (just) the cheaper"
    choice.record(ONE_CORE, 100e-6)
    assert choice.choose() == SPLIT


@multi_core
def test_rollouts_beside_busy_other_cores_are_placed_as_the_choice_says_and_measured(tmp_path: Path) -> None:
    _, model = pair(tmp_path, full=False)

    def rollout() -> int:
        assert model.begin_rollout()
        word = int(model._words[PLACEMENT])
        for _ in range(3):  # no lease serves them: the model's side of the steps is enough here
            model.put_actions(np.ones(N, dtype=np.int64))
        model.end_rollout()
        return word

    def work() -> list[int]:
        words = [rollout(), rollout()]
        model.choice.cost[SPLIT] = 1e-9  # split measured far cheaper since
        return [*words, rollout()]

    words = in_thread(work)

    assert words[0] < 0 and words[1] > 0 and words[2] < 0, "split, one core, then the cheaper: split"
    assert (model.split_rollouts, model.colocated_rollouts) == (2, 1)
    assert set(model.choice.cost) == {SPLIT, ONE_CORE} and model.choice.cost[ONE_CORE] > 0


@multi_core
def test_an_unmeasured_rollout_is_not_recorded(tmp_path: Path) -> None:
    # A rollout without a step (a fault before the first) says nothing of its placement's cost.
    _, model = pair(tmp_path, full=False)

    in_thread(lambda: (model.begin_rollout(), model.end_rollout()))

    assert model.choice.cost == {}
