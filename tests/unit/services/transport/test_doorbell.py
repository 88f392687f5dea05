"""Doorbells: a ring wakes a sleeper at once, costs nothing while nobody sleeps, and a missed one only
delays; the load probe reads how long the thread waited for a core."""

from __future__ import annotations

import os
import select
import threading
import time
from pathlib import Path

import pytest
import zmq

from services.transport.doorbell import LOAD_WINDOW_S, NAP_S, CpuLoad, Doorbell


def bell(folder: Path) -> tuple[Doorbell, Doorbell, memoryview]:
    """Return the sleeper's and the ringer's ends of one bell and the shared words."""
    words = memoryview(bytearray(16)).cast("q")
    Doorbell.make(folder / "x.bell")
    return Doorbell(folder / "x.bell", words, 0), Doorbell(folder / "x.bell", words, 0), words


def test_a_ring_wakes_a_sleeper_long_before_its_deadline(tmp_path: Path) -> None:
    sleeper, ringer, words = bell(tmp_path)
    flag = {"set": False}

    def later() -> None:
        while not words[0]:  # wait until the sleeper sleeps, then set the condition and ring
            time.sleep(0.0005)
        flag["set"] = True
        ringer.ring()

    thread = threading.Thread(target=later)
    thread.start()
    started = time.perf_counter()
    assert sleeper.wait(lambda: flag["set"], spin_s=0.0, deadline=started + 30.0)
    thread.join()
    assert time.perf_counter() - started < 10.0
    assert words[0] == 0, "the sleeping word is cleared on waking"


def test_a_ring_before_the_condition_is_a_wake_up_call_and_the_sleeper_spins_again(tmp_path: Path) -> None:
    sleeper, ringer, words = bell(tmp_path)
    called = threading.Event()
    awake_reads = []

    def ready() -> bool:  # true once read 2,000 times awake after the call: only a spin gets there
        if called.is_set() and not words[0]:
            awake_reads.append(1)
        return len(awake_reads) >= 2000

    def call() -> None:
        while not words[0]:  # the sleeper sleeps: ring without making the condition true
            time.sleep(0.0005)
        called.set()
        ringer.ring()

    thread = threading.Thread(target=call)
    thread.start()
    before = time.perf_counter()
    assert sleeper.wait(ready, spin_s=0.0, deadline=before + 2.0, wake_spin_s=5.0)
    thread.join()
    assert sleeper.called_at > before, "the call is on record"
    assert sleeper.sleeps == 1, "woken once, it did not sleep again"


def test_no_ring_goes_out_while_nobody_sleeps(tmp_path: Path) -> None:
    sleeper, ringer, _ = bell(tmp_path)

    ringer.ring()

    with pytest.raises(BlockingIOError):
        os.read(sleeper._fd, 1)


def test_a_missed_ring_costs_the_first_nap_and_the_deadline_is_kept(tmp_path: Path) -> None:
    sleeper, _, _ = bell(tmp_path)
    ready_at = time.perf_counter() + NAP_S / 2  # true while the sleeper naps, and nobody rings

    started = time.perf_counter()
    assert sleeper.wait(lambda: time.perf_counter() >= ready_at, spin_s=0.0, deadline=started + 30.0)
    assert time.perf_counter() - started < 10.0, "seen after the first nap, not at the deadline"
    assert not sleeper.wait(lambda: False, spin_s=0.0, deadline=time.perf_counter() + 0.02)


class CountingPoll:
    """A bell's poll that notes each nap's timeout and whether the sleeping word was set for it."""

    def __init__(self, poll: select.poll, words: memoryview) -> None:
        self._poll = poll
        self._words = words
        self.naps: list[tuple[int, int]] = []

    def poll(self, timeout_ms: int) -> list[tuple[int, int]]:
        self.naps.append((timeout_ms, self._words[0]))
        return self._poll.poll(timeout_ms)


def test_after_its_first_short_nap_a_sleep_lasts_until_a_ring_or_its_deadline(tmp_path: Path) -> None:
    sleeper, _, words = bell(tmp_path)
    naps = CountingPoll(sleeper._poll, words)
    sleeper._poll = naps  # type: ignore[assignment]

    started = time.perf_counter()
    assert not sleeper.wait(lambda: False, spin_s=0.0, deadline=started + 0.3)

    assert time.perf_counter() - started >= 0.3
    timeouts = [timeout for timeout, _ in naps.naps]
    assert timeouts[0] <= NAP_S * 1000 and len(timeouts) <= 3, f"it woke {len(timeouts)} times: {timeouts}"
    assert all(word == 1 for _, word in naps.naps), "the sleeping word stays set through the sleep"
    assert words[0] == 0


def test_a_message_on_the_socket_it_also_sleeps_on_ends_a_sleep(tmp_path: Path) -> None:
    sleeper, _, words = bell(tmp_path)
    context = zmq.Context.instance()
    receiver, sender = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    receiver.bind("inproc://doorbell-test")
    sender.connect("inproc://doorbell-test")

    started = time.perf_counter()

    def later() -> None:
        while not words[0] and time.perf_counter() < started + 10:  # asleep: send, ring nothing
            time.sleep(0.0005)
        sender.send(b"request")

    thread = threading.Thread(target=later)
    thread.start()
    try:
        assert not sleeper.wait(lambda: False, spin_s=0.0, deadline=started + 30.0, also=receiver)
        assert time.perf_counter() - started < 10.0, "woken by the message, not at the deadline"
        assert words[0] == 0 and receiver.poll(0), "the message is left for its reader"
    finally:
        thread.join()
        receiver.close(0)
        sender.close(0)


def test_a_bell_that_is_not_a_named_pipe_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.bell").write_bytes(b"")

    with pytest.raises(ValueError, match="not a named pipe"):
        Doorbell(tmp_path / "x.bell", memoryview(bytearray(8)).cast("q"), 0)


def test_a_thread_kept_waiting_for_a_core_counts_as_crowded_and_one_that_runs_does_not(
    tmp_path: Path,
) -> None:
    stat = tmp_path / "schedstat"
    stat.write_text("1000 0 1\n")
    load = CpuLoad(lambda tid: str(stat))
    assert not load.crowded(), "no history yet: spin"
    time.sleep(2 * LOAD_WINDOW_S)
    stat.write_text("2000 100 2\n")  # 100 ns of waiting in a window of milliseconds
    assert not load.crowded()
    time.sleep(2 * LOAD_WINDOW_S)
    stat.write_text(f"3000 {100 + 10**9} 3\n")  # a second of waiting
    assert not load.crowded(), "one window: another actor's burst, not yet a crowd"
    time.sleep(2 * LOAD_WINDOW_S)
    stat.write_text(f"4000 {100 + 2 * 10**9} 4\n")  # and another
    assert load.crowded(), "two windows in a row: a crowded core"
    time.sleep(2 * LOAD_WINDOW_S)
    stat.write_text(f"5000 {100 + 2 * 10**9} 5\n")  # no more waiting
    assert not load.crowded()
    load.close()


def test_a_burst_between_quiet_windows_is_not_a_crowd(tmp_path: Path) -> None:
    stat = tmp_path / "schedstat"
    delay = 0
    stat.write_text("1000 0 1\n")
    load = CpuLoad(lambda tid: str(stat))
    load.crowded()
    verdicts = []
    for waited in (True, False, True, False, True, False):
        time.sleep(2 * LOAD_WINDOW_S)
        delay += 10**9 if waited else 0
        stat.write_text(f"1000 {delay} 1\n")
        verdicts.append(load.crowded())
    assert not any(verdicts)
    load.close()


def test_waiting_for_a_core_after_a_sleep_is_not_a_crowded_core(tmp_path: Path) -> None:
    stat = tmp_path / "schedstat"
    stat.write_text("1000 0 1\n")
    load = CpuLoad(lambda tid: str(stat))
    load.crowded()
    time.sleep(2 * LOAD_WINDOW_S)
    with load.asleep():
        stat.write_text(f"2000 {10**9} 2\n")  # a second to wake up: a halted core, not a crowd
    assert not load.crowded(), "the wake-up's wait is left out"
    verdicts = []
    for window in (1, 2):  # then a second of waiting while awake in each of two windows
        time.sleep(2 * LOAD_WINDOW_S)
        stat.write_text(f"3000 {(1 + window) * 10**9} 3\n")
        verdicts.append(load.crowded())
    assert verdicts == [False, True]
    load.close()


class AsleepLog(CpuLoad):
    """A CpuLoad that counts the sleeps a wait reports to it."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps = 0

    def asleep(self):  # type: ignore[no-untyped-def]
        self.sleeps += 1
        return super().asleep()


def test_a_wait_tells_its_load_about_each_sleep_and_not_about_its_spin(tmp_path: Path) -> None:
    sleeper, _, _ = bell(tmp_path)
    load = AsleepLog()

    assert not sleeper.wait(lambda: False, spin_s=0.005, deadline=time.perf_counter() + 0.004, load=load)
    assert load.sleeps == 0 and sleeper.sleeps == 0, "the deadline came within the spin: no sleep"
    assert not sleeper.wait(lambda: False, spin_s=0.0, deadline=time.perf_counter() + 3 * NAP_S, load=load)
    assert load.sleeps >= 2, "each nap of the sleep is left out"
    assert sleeper.sleeps == 1, "one wait, one sleep"
    load.close()


def test_the_real_probe_reads_this_threads_schedstat() -> None:
    load = CpuLoad()
    load.crowded()
    time.sleep(2 * LOAD_WINDOW_S)
    load.crowded()
    assert load._fds, "the calling thread's schedstat was opened"
    load.close()


def test_without_schedstat_the_machine_counts_as_crowded(tmp_path: Path) -> None:
    load = CpuLoad(lambda tid: str(tmp_path / "missing"))
    assert load.crowded()
