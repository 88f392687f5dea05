"""What the benchmarks share: the host's stolen CPU time is read from /proc/stat and given as a share."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.common import cpu_ticks, steal_share


def test_the_stolen_share_is_the_steal_over_all_cpu_time_between_two_readings() -> None:
    assert steal_share((1000, 10), (2000, 60)) == pytest.approx(0.05)
    assert steal_share((1000, 10), (1000, 10)) == 0.0, "no time between the readings"


@pytest.mark.skipif(not Path("/proc/stat").is_file(), reason="needs Linux's /proc/stat")
def test_the_reading_counts_the_steal_inside_the_total() -> None:
    total, steal = cpu_ticks()

    assert total > 0 and 0 <= steal <= total
