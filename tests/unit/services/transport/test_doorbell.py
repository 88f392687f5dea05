"""Doorbells: a ring wakes a sleeper at once, costs nothing while nobody sleeps, and a missed one only
delays; the load probe reads the kernel's runnable count."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from services.transport.doorbell import NAP_S, CpuLoad, Doorbell


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


def test_no_ring_goes_out_while_nobody_sleeps(tmp_path: Path) -> None:
    sleeper, ringer, _ = bell(tmp_path)

    ringer.ring()

    with pytest.raises(BlockingIOError):
        os.read(sleeper._fd, 1)


def test_a_missed_ring_costs_one_nap_and_the_deadline_is_kept(tmp_path: Path) -> None:
    sleeper, _, _ = bell(tmp_path)
    ready_at = time.perf_counter() + 3 * NAP_S

    started = time.perf_counter()
    assert sleeper.wait(lambda: time.perf_counter() >= ready_at, spin_s=0.0, deadline=started + 30.0)
    assert not sleeper.wait(lambda: False, spin_s=0.0, deadline=time.perf_counter() + 0.02)
    assert time.perf_counter() - started < 10.0


def test_a_bell_that_is_not_a_named_pipe_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.bell").write_bytes(b"")

    with pytest.raises(ValueError, match="not a named pipe"):
        Doorbell(tmp_path / "x.bell", memoryview(bytearray(8)).cast("q"), 0)


@pytest.mark.parametrize(("running", "crowded"), [(1, False), (2, False), (3, True)])
def test_the_load_probe_counts_runnable_tasks_against_cores(
    tmp_path: Path, running: int, crowded: bool
) -> None:
    (tmp_path / "loadavg").write_text(f"0.50 0.40 0.30 {running}/345 12345\n")
    load = CpuLoad(str(tmp_path / "loadavg"))
    load.cpus = 2

    assert load.crowded() is crowded


def test_without_proc_the_machine_counts_as_crowded(tmp_path: Path) -> None:
    assert CpuLoad(str(tmp_path / "missing")).crowded()
