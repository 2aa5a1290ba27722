"""What has not been observed for ``STALE_S`` no longer speaks for now (``infaas.calibration``).

The defect this guards against (*frozen pessimism*), seen in ``benchmarks/trace.py`` at 0.7×: the large MLP's
instance learnt ~50× during a spike, which made it infeasible for the accurate class; never chosen again, it was
never observed again, so its factor never came down, and it was unloaded as idle while the class was refused.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from infaas.calibration import STALE_S, Calibration
from infaas.fast_selector import fast_select
from infaas.selector import Infeasible, Requirements, select
from tests.infaas.test_selector import P99, PRICES, candidate, live

OVERHEAD_MS = 0.2


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _serve(
    calibration: Calibration, clock: Clock, key: str, worker: str, raw_ms: float, worker_ms: float, n: int
) -> None:
    """``n`` queries of ``key`` on ``worker`` served in ``worker_ms`` (5% lognormal noise), 10 ms apart."""
    rng = np.random.default_rng(zlib.crc32(repr((key, worker, raw_ms, worker_ms, n)).encode()))
    for _ in range(n):
        took = worker_ms * float(rng.lognormal(0.0, 0.05))
        calibration.observe(key, worker, raw_ms, took + OVERHEAD_MS, worker_ms=took, budget_ms=None)
        clock.now += 0.01


def _spike_then_quiet(calibration: Calibration, clock: Clock, quiet_s: float) -> None:
    """``m/big`` (2 ms raw) learns 50× in a spike on w1; then only the tiny ``m/tiny`` is served there, quietly,
    for ``quiet_s``."""
    _serve(calibration, clock, "m/big", "w1", 2.0, 1.8, 100)
    _serve(calibration, clock, "m/tiny", "w1", 0.01, 0.05, 100)
    _serve(calibration, clock, "m/big", "w1", 2.0, 100.0, 60)  # the spike
    _serve(calibration, clock, "m/tiny", "w1", 0.01, 0.05, round(quiet_s / 0.01))


def test_a_placement_not_observed_for_stale_s_falls_back_to_its_quiet_workers_prior() -> None:
    clock = Clock()
    calibration = Calibration(clock)
    _spike_then_quiet(calibration, clock, STALE_S - 1.0)
    # Within STALE_S the spike still stands, for the placement and for the prior's slowdown (learnt on it alone).
    assert calibration.correct("m/big", "w1", 2.0) > 90.0
    assert calibration.correct("m/cold", "w1", 2.0) > 90.0
    _serve(calibration, clock, "m/tiny", "w1", 0.01, 0.05, 200)  # 2 s more of quiet: past STALE_S
    # The placement and the slowdown expired; the worker's excess, fresh, stands in: the spike is still in its tail
    # (60 of the worker's last 760 queries) but decays with every quiet one, where the frozen 50× never would.
    fresh = calibration.correct("m/big", "w1", 2.0)
    assert fresh == pytest.approx(calibration.correct("m/cold", "w1", 2.0))
    assert fresh < 50.0
    _serve(calibration, clock, "m/tiny", "w1", 0.01, 0.05, 1000)
    assert calibration.correct("m/big", "w1", 2.0) < 0.4 * fresh
    assert calibration.factor("m/big", "w1") > 40.0  # the tracker is kept until its next observation restarts it


def test_the_next_observation_of_an_expired_placement_starts_its_factor_again() -> None:
    clock = Clock()
    calibration = Calibration(clock)
    _spike_then_quiet(calibration, clock, STALE_S + 1.0)
    _serve(calibration, clock, "m/big", "w1", 2.0, 1.8, 1)
    # One query as profiled: its ratio, not the spike's 50× moved one step down.
    assert calibration.factor("m/big", "w1") == pytest.approx(1.8 / 2.0, rel=0.15)
    assert calibration.report()["factors"]["m/big on w1"]["observed"] == 1  # type: ignore[index]
    # And the expiry is no amnesty for a placement that really is slow: one slow query makes it slow again.
    _serve(calibration, clock, "m/other", "w1", 2.0, 1.8, 1)
    clock.now += STALE_S + 1.0
    _serve(calibration, clock, "m/other", "w1", 2.0, 60.0, 1)
    assert calibration.correct("m/other", "w1", 2.0) > 55.0


def test_a_placement_in_use_never_expires() -> None:
    clock = Clock()
    calibration = Calibration(clock)
    for _ in range(round(4 * STALE_S)):  # slow, served once a second for 4 × STALE_S
        _serve(calibration, clock, "m/slow", "w1", 2.0, 40.0, 1)
        clock.now += 1.0
    assert calibration.correct("m/slow", "w1", 2.0) > 38.0


def test_a_worker_nobody_observed_for_stale_s_is_believed() -> None:
    clock = Clock()
    calibration = Calibration(clock)
    _serve(calibration, clock, "m/big", "w1", 2.0, 100.0, 60)
    assert calibration.correct("m/cold", "w1", 2.0) > 90.0
    clock.now += STALE_S + 0.1
    assert calibration.correct("m/cold", "w1", 2.0) == pytest.approx(calibration.overhead_ms + 2.0)
    assert calibration.correct("m/big", "w1", 2.0) == pytest.approx(calibration.overhead_ms + 2.0)


def test_a_correction_reads_the_clock_once() -> None:
    clock = Clock()
    calibration = Calibration(clock)
    _serve(calibration, clock, "m/big", "w1", 2.0, 100.0, 60)
    correct = calibration.correction()
    clock.now += STALE_S + 0.1  # expires while a selection is under way: that selection still sees it fresh
    assert correct("m/big", "w1", 2.0) > 90.0
    assert calibration.correction()("m/big", "w1", 2.0) < 3.0


# The selector: two variants of one model on one worker, both loaded. The cheap one (1 core) learnt 50× in a
# spike; the pricey one (4 cores) served the queries since.
CHEAP = candidate("m", "cheap", {1: 2.0}, threads=1)
PRICEY = candidate("m", "pricey", {1: 2.0}, threads=4)


@pytest.mark.parametrize("selector", [select, fast_select])
def test_the_selector_tries_a_frozen_placement_again_once_it_expired(selector) -> None:  # type: ignore[no-untyped-def]
    clock = Clock()
    calibration = Calibration(clock)
    snapshot = live(loaded={"m/cheap": [("w1", 1)], "m/pricey": [("w1", 1)]})
    needs = Requirements(model="m", latency_ms=20.0)
    raw = 2.0 * P99
    _serve(calibration, clock, "m/pricey", "w1", raw, 2.0, 100)
    _serve(calibration, clock, "m/cheap", "w1", raw, 120.0, 60)  # the spike, on the cheap one
    assert selector(needs, [CHEAP, PRICEY], snapshot, PRICES, (), calibration.correction()).variant.name == "pricey"
    _serve(calibration, clock, "m/pricey", "w1", raw, 2.0, round((STALE_S - 1.0) / 0.01))  # quiet since
    assert selector(needs, [CHEAP, PRICEY], snapshot, PRICES, (), calibration.correction()).variant.name == "pricey"
    # Past STALE_S the cheap one is judged by its worker's prior, whose slowdown (fresh: the pricey one's
    # queries keep it so) still has the spike in its tail, less with every quiet query: ~1,000 bring it under.
    _serve(calibration, clock, "m/pricey", "w1", raw, 2.0, 1000)
    again = selector(needs, [CHEAP, PRICEY], snapshot, PRICES, (), calibration.correction())
    assert again.variant.name == "cheap" and not again.slo_at_risk and again.estimated_ms < 20.0


@pytest.mark.parametrize("selector", [select, fast_select])
def test_a_class_rejected_as_infeasible_is_served_again_once_the_worker_is_quiet(selector) -> None:  # type: ignore[no-untyped-def]
    # Its only placement learnt 50×, and every query since was rejected (nothing ran, nothing was observed).
    clock = Clock()
    calibration = Calibration(clock)
    snapshot = live(loaded={"m/cheap": [("w1", 1)]})
    needs = Requirements(model="m", latency_ms=20.0, on_infeasible="reject")
    _serve(calibration, clock, "m/cheap", "w1", 2.0 * P99, 120.0, 60)
    with pytest.raises(Infeasible):
        selector(needs, [CHEAP], snapshot, PRICES, (), calibration.correction())
    clock.now += STALE_S + 0.1
    assert selector(needs, [CHEAP], snapshot, PRICES, (), calibration.correction()).variant.name == "cheap"
