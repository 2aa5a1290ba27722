"""benchmarks/pipelines.py's estimator inputs: the tail breakdown reads the slowest 1% of the measured splits, and
the host's CPU is read as counters that only grow (a segment's other work is their difference)."""

from __future__ import annotations

from benchmarks.pipelines import host_cpu, tail_breakdown
from infaas.pipelines.path import Split


def _split(latency: float, entry: float, queue: float) -> Split:
    return Split(latency, entry, {"a": 0.0}, {"a": queue}, {"a": latency - entry - queue}, {"a": 1}, {"a": "m/v"})


def test_the_tail_breakdown_averages_the_slowest_one_percent() -> None:
    splits = [_split(1.0 + i / 1000, 1.0, 0.0) for i in range(198)]
    splits += [_split(100.0, 2.0, 90.0), _split(120.0, 4.0, 110.0)]
    slowest = tail_breakdown(splits)["slowest_1pct"]
    assert slowest == {"entry": 3.0, "a.stage": 0.0, "a.queue": 100.0, "a.run": 7.0, "latency": 110.0}


def test_host_cpu_counters_grow_and_include_this_process() -> None:
    before = host_cpu()
    total = 0
    for i in range(2_000_000):  # some CPU of this process's own
        total += i
    after = host_cpu()
    assert total > 0 and after[0] > before[0]
    assert after[1] >= before[1] and after[2] >= before[2] and after[3] > before[3]
