"""The hand-over benchmark: every turn is answered, on one core and on two, by both ways of waiting."""

from __future__ import annotations

import os

import pytest

from bench.bench_handoff import hand_over, percentile


@pytest.mark.parametrize("spin_s", [1.0, 0.0])
@pytest.mark.parametrize("same_core", [True, False])
def test_each_turn_is_answered_and_timed(spin_s: float, same_core: bool) -> None:
    allowed = sorted(os.sched_getaffinity(0))
    if not same_core and len(allowed) < 2:
        pytest.skip("needs two allowed cores")
    cores = (allowed[0], allowed[0] if same_core else allowed[1])

    trips = hand_over(cores, spin_s, turns=200, work=10)

    assert len(trips) == 200
    assert all(0 < trip < 10_000_000 for trip in trips)  # each answered, none waited out its 10 s deadline
    assert sorted(os.sched_getaffinity(0)) == allowed  # the caller's cores given back


def test_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 51.0
    assert percentile(values, 0.9) == 91.0
    assert percentile(values, 0.99) == 100.0
    assert percentile([3.0, 1.0, 2.0], 0.0) == 1.0
