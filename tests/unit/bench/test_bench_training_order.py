"""The training benchmark's order of runs: (s) between two runs of (b), the pair rotating as one unit."""

from __future__ import annotations

import pytest

from bench.bench_training import pooled_rate, repeat_order


def test_the_session_runs_between_two_runs_of_dummy_in_every_repeat() -> None:
    chosen = ("actor", "local", "dummy", "session")
    orders = [repeat_order(chosen, repeat) for repeat in range(6)]

    for order in orders:
        at = order.index("session")
        assert order[at - 1] == "dummy" and order[at + 1] == "dummy"
        assert sorted(order) == ["actor", "dummy", "dummy", "local", "session"]
    assert [order[0] for order in orders[:3]] == ["actor", "local", "dummy"]
    assert orders[3] == orders[0]


def test_without_both_the_setups_only_rotate() -> None:
    assert repeat_order(("actor", "local", "dummy"), 1) == ["local", "dummy", "actor"]
    assert repeat_order(("actor", "session"), 1) == ["session", "actor"]


def test_the_pooled_rate_is_total_steps_over_total_time() -> None:
    # 100 steps at 10/s (10 s) and 100 steps at 40/s (2.5 s): 200 steps in 12.5 s.
    assert pooled_rate([10.0, 40.0]) == pytest.approx(16.0)
    assert pooled_rate([7.0]) == pytest.approx(7.0)
