"""A placement's run times against its profile (``Calibration.observe_run``, ``run_ms``): the event-loop rule's input.

Kept apart from the latency correction, whose factor holds every wait beyond the serving path's median (the
thread pool's among them), so that where a query ran cannot change what the rule believes its run takes.
"""

from __future__ import annotations

import pytest

from infaas.calibration import STALE_S, Calibration


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_unobserved_placement_runs_in_its_profiled_time() -> None:
    assert Calibration().run_ms("m/v", "w1", 0.4) == pytest.approx(0.4)


def test_the_median_run_ratio_scales_the_profile_at_any_batch() -> None:
    calibration = Calibration()
    for _ in range(10):  # a fifth of the runs stalled (one in five): the median is not moved by them
        for took in (1.2, 1.2, 40.0, 1.2, 0.9):
            calibration.observe_run("m/v", "w1", 0.4, took)
    assert 2.0 <= calibration.run_ms("m/v", "w1", 0.4) / 0.4 <= 3.5
    assert calibration.run_ms("m/v", "w1", 0.8) == pytest.approx(2 * calibration.run_ms("m/v", "w1", 0.4))
    assert calibration.run_ms("m/v", "w2", 0.4) == pytest.approx(0.4)  # another worker: its own runs


def test_waits_outside_the_run_do_not_count() -> None:
    """What a query waited for (queue, pool, serving path) goes to the latency correction, never to the runs."""
    calibration = Calibration()
    for _ in range(100):
        calibration.observe("m/v", "w1", 0.05, 5.0, worker_ms=3.0, budget_ms=None)
        calibration.observe_run("m/v", "w1", 0.05, 0.05)
    assert calibration.run_ms("m/v", "w1", 0.05) == pytest.approx(0.05, rel=0.1)
    assert calibration.correct("m/v", "w1", 0.05) > 1.0


def test_runs_unobserved_for_stale_s_fall_back_to_the_profile() -> None:
    clock = Clock()
    calibration = Calibration(clock)
    for _ in range(20):
        calibration.observe_run("m/v", "w1", 0.4, 2.0)
    assert calibration.run_ms("m/v", "w1", 0.4) == pytest.approx(2.0, rel=0.05)
    clock.now += STALE_S + 0.1
    assert calibration.run_ms("m/v", "w1", 0.4) == pytest.approx(0.4)
    calibration.observe_run("m/v", "w1", 0.4, 0.8)  # starts again from this run
    assert calibration.run_ms("m/v", "w1", 0.4) == pytest.approx(0.8)
    assert calibration.run_factors() == {"m/v on w1": {"factor": 2.0, "observed": 1, "age_s": 0.0}}
    assert "run_factors" not in calibration.report()  # /v1/stats shows the report to tenants: these name variants
