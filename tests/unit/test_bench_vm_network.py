"""benchmarks/vm_network.py reads its figures from what busybox prints on both ends."""

from __future__ import annotations

import pytest

from tests.unit.test_bench_baselines import load_benchmark

STAT0 = "cpu  100 0 50 800 50 0 0 0 0 0"
#: 100 jiffies later: 60 user, 20 system, 15 idle, 5 iowait
STAT1 = "cpu  160 0 70 815 55 0 0 0 0 0"


def test_cpu_busy_counts_idle_and_iowait_as_not_busy():
    bench = load_benchmark("vm_network")
    assert bench.busy(STAT0, STAT1) == pytest.approx(0.8)
    assert bench.busy(STAT0, STAT0) == 0.0  # no tick between the two readings


def test_a_transfer_line_gives_bytes_seconds_and_load():
    bench = load_benchmark("vm_network")
    nbytes, seconds, start, load = bench.parse_timed(
        f"RESULT 33554432 1200.50 1203.00 | {STAT0} | {STAT1}")
    assert (nbytes, start) == (33554432, 1200.5)
    assert seconds == pytest.approx(2.5) and load == pytest.approx(0.8)
