"""A modelled queue is corrected by what queued queries waited, not by the tail factor of unqueued runs.

The defect this guards against, found by the 1,000-worker fleet simulation (session 8): the tail factor (a p98 of
actual over raw, learnt mostly on queries that waited for nothing) multiplied the whole raw estimate, queue
included, so a placement whose runs' tail was 3x its profile read a modelled 48 ms queue as 144 ms; in bursts the
selector declared loaded placements at risk and spilled queries onto costlier variants.
"""

from __future__ import annotations

import pytest

from infaas.calibration import STALE_S, Calibration
from infaas.selector import Requirements, select
from tests.infaas.test_calibration_expiry import Clock
from tests.infaas.test_estimates import LOADED, SLOW
from tests.infaas.test_selector import P99, PRICES, live

KEY, WORKER = "m/slow", "w1"


# Trackers step in log space and hover a step above a constant observation (``_Quantile``): within 12%.


def _unqueued(calibration: Calibration, raw_ms: float, took_ms: float, n: int = 60) -> None:
    for _ in range(n):
        calibration.observe(KEY, WORKER, raw_ms, took_ms, worker_ms=took_ms, budget_ms=None)


def test_the_tail_factor_of_unqueued_runs_does_not_multiply_the_queue() -> None:
    calibration = Calibration(Clock())
    _unqueued(calibration, 6.0, 18.0)  # runs take 3x their raw estimate, no serving path
    assert calibration.factor(KEY, WORKER) == pytest.approx(3.0, rel=0.12)
    assert calibration.correct(KEY, WORKER, 6.0) == pytest.approx(18.0, rel=0.12)
    # 48 ms of modelled queue, never yet compared with a real wait: taken as modelled, not 3x.
    assert calibration.correct(KEY, WORKER, 6.0, 48.0) == pytest.approx(18.0 + 48.0, rel=0.12)


def test_the_queue_factor_follows_what_queued_queries_waited() -> None:
    calibration = Calibration(Clock())
    _unqueued(calibration, 6.0, 6.0)
    for _ in range(200):  # the model predicts 48 ms of queue; they wait 96, then run as profiled
        calibration.observe(KEY, WORKER, 54.0, 102.0, worker_ms=102.0, budget_ms=None, queue_ms=48.0, waited_ms=96.0)
    assert calibration.queue_factor(KEY, WORKER) == pytest.approx(2.0, rel=0.12)
    # The wait is the queue factor's: the tail factor still says the runs are as profiled.
    assert calibration.factor(KEY, WORKER) == pytest.approx(1.0, rel=0.12)
    assert calibration.correct(KEY, WORKER, 6.0, 48.0) == pytest.approx(6.0 + 96.0, rel=0.12)


def test_one_query_that_waited_for_nothing_moves_the_queue_factor_one_step() -> None:
    calibration = Calibration(Clock())
    calibration.observe(KEY, WORKER, 54.0, 6.0, worker_ms=6.0, budget_ms=None, queue_ms=48.0, waited_ms=0.0)
    assert 0.9 < calibration.queue_factor(KEY, WORKER) < 1.0  # from the model, one step down: not to nothing


def test_a_query_the_model_said_would_not_queue_keeps_its_wait_in_the_tail_factor() -> None:
    calibration = Calibration(Clock())
    for _ in range(60):  # a batch forming: 12 ms of wait nothing modelled
        calibration.observe(KEY, WORKER, 6.0, 18.0, worker_ms=18.0, budget_ms=None, queue_ms=0.0, waited_ms=12.0)
    assert calibration.factor(KEY, WORKER) == pytest.approx(3.0, rel=0.12)
    assert calibration.queue_factor(KEY, WORKER) == 1.0


def test_an_unobserved_queue_factor_expires_back_to_the_model() -> None:
    clock = Clock()
    calibration = Calibration(clock)
    for _ in range(100):
        calibration.observe(KEY, WORKER, 54.0, 150.0, worker_ms=150.0, budget_ms=None, queue_ms=48.0, waited_ms=144.0)
    assert calibration.queue_factor(KEY, WORKER) > 2.5
    clock.now += STALE_S + 1
    assert calibration.queue_factor(KEY, WORKER) == 1.0
    assert calibration.correct(KEY, WORKER, 6.0, 48.0) == pytest.approx(6.0 + 48.0, abs=0.01)  # nothing fresh: raw


def test_a_queued_placement_whose_runs_have_a_slow_tail_stays_feasible() -> None:
    """8 rows queued: tail 6 ms x 3 (the runs' learnt tail) + 24 ms of queue = 42 ms meets 50 ms; the old correction
    read 3 x 30 = 90 ms and served the query as at risk."""
    calibration = Calibration(Clock())
    _unqueued(calibration, 5.0 * P99, 15.0 * P99)
    busy = live(loaded=LOADED, depth={(WORKER, KEY): 8})
    decision = select(Requirements(model="m", latency_ms=50.0), [SLOW], busy, PRICES, (), calibration.correct)
    assert not decision.slo_at_risk
    assert decision.estimated_ms == pytest.approx(15.0 * P99 + 20.0 * P99, rel=0.12)
    assert decision.raw_queue_ms == pytest.approx(20.0 * P99)
