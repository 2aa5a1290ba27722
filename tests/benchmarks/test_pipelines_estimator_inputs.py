"""benchmarks/pipelines.py's estimator inputs: what a replay measured of the serving path becomes the simulator's
samples (a run's excess is over its profile at the run's own batch), and the tail breakdown reads the slowest 1%."""

from __future__ import annotations

import pytest

from benchmarks.pipelines import path_samples, tail_breakdown
from tests.factories import profiles, variant_info


def test_a_runs_excess_is_over_the_profile_at_its_own_batch() -> None:
    variant = variant_info("m", "v", profiles({1: 2.0, 2: 3.0, 4: 5.0}))
    run = {
        "served": {"a": {"m/v": 3}},
        "overhead_ms": {"a": [0.1, 0.2, 0.3]},
        "service_ms": {"a": [2.5, 3.5, 4.0]},
        "batches": {"a": [1, 2, 4]},
        "outside_ms": [0.4, 0.5, 0.6],
    }
    samples = path_samples(run, {"m/v": variant})
    assert samples["excess"]["a"] == pytest.approx((0.5, 0.5, -1.0))
    assert samples["overhead"]["a"] == (0.1, 0.2, 0.3) and samples["outside"] == (0.4, 0.5, 0.6)


def test_the_tail_breakdown_averages_the_slowest_one_percent() -> None:
    parts = [(1.0 + i / 1000, {"outside": 1.0, "a.queue": 0.0}) for i in range(198)]
    parts += [(100.0, {"outside": 2.0, "a.queue": 90.0}), (120.0, {"outside": 4.0, "a.queue": 110.0})]
    slowest = tail_breakdown(parts)["slowest_1pct"]
    assert slowest == {"outside": 3.0, "a.queue": 100.0, "latency": 110.0}
