"""Tail estimates: the selector prices queues in rows and applies the engine's calibration; instances report rows."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from infaas.calibration import Calibration
from infaas.engine import Query
from infaas.selector import Infeasible, Requirements, select
from infaas.services import Services
from infaas.worker import Instance
from tests.factories import GatedSession, linear_model, profiles, queue_behind_gate, seed_model
from tests.infaas.test_selector import P99, PRICES, candidate, live, worker

# Best batch 8 (8 rows / 20 ms beats 1 / 5 ms): p99 6 ms alone, 24 ms for a batch of up to 8.
SLOW = candidate("m", "slow", {1: 5.0, 8: 20.0})
LOADED = {"m/slow": [("w1", 1)]}


def test_the_queue_is_priced_by_rows_at_the_instance_batching() -> None:
    def estimate(rows: int, replicas: int = 1) -> float:
        snapshot = live(loaded={"m/slow": [("w1", replicas)]}, depth={("w1", "m/slow"): rows})
        return select(Requirements(model="m"), [SLOW], snapshot, PRICES).estimated_ms

    alone = 5.0 * P99
    assert estimate(0) == alone
    assert estimate(1) == alone + 5.0 * P99  # one row running: wait for its run
    assert estimate(8) == alone + 20.0 * P99  # one full batch ahead
    assert estimate(64) == alone + 8 * 20.0 * P99  # a queued 64-row query weighs 8 batches, not one request
    assert estimate(17) == alone + 2 * 20.0 * P99 + 5.0 * P99  # two full batches and a 1-row remainder (batch-1 p99)
    assert estimate(64, replicas=4) == alone + 2 * 20.0 * P99  # four replicas drain it in two rounds
    assert estimate(3, replicas=4) == alone  # fewer rows than replicas: one is free


def test_the_correction_is_what_the_budget_is_compared_with() -> None:
    snapshot = live(loaded=LOADED)
    needs = Requirements(model="m", latency_ms=10.0)
    raw = select(needs, [SLOW], snapshot, PRICES)
    assert not raw.slo_at_risk and raw.estimated_ms == raw.raw_estimated_ms == 5.0 * P99

    def overhead(_key: str, _worker: str, raw_ms: float) -> float:
        return 5.0 + raw_ms  # a 5 ms serving path the profile never saw

    corrected = select(needs, [SLOW], snapshot, PRICES, correct=overhead)
    assert corrected.slo_at_risk and corrected.estimated_ms == 5.0 + 5.0 * P99
    assert corrected.raw_estimated_ms == raw.raw_estimated_ms


def test_a_worker_calibrated_slow_loses_to_one_that_is_not() -> None:
    calibration = Calibration()
    for _ in range(50):  # w2 serves the variant in 3× its raw estimate, w1 as estimated
        calibration.observe("m/slow", "w1", 6.0, 6.0, worker_ms=6.0, budget_ms=None)
        calibration.observe("m/slow", "w2", 6.0, 18.0, worker_ms=18.0, budget_ms=None)
    # Equal cost on both: without correction the tie goes to the worker id order; with it, the slow one never wins.
    for first in (False, True):
        order = (worker("w2"), worker("w1")) if first else (worker("w1"), worker("w2"))
        snapshot = live(*order, loaded={"m/slow": [("w2", 1), ("w1", 1)]})
        decision = select(Requirements(model="m", latency_ms=10.0), [SLOW], snapshot, PRICES, (), calibration.correct)
        assert decision.worker == "w1" and not decision.slo_at_risk


def test_retry_after_uses_the_corrected_queue_share() -> None:
    # 8 rows queued: raw 6 + 24 ms; doubled by calibration: 12 + 48 ms. Without the queue, 12 ms meets 13 ms.
    busy = live(loaded=LOADED, depth={("w1", "m/slow"): 8})

    def doubled(_key: str, _worker: str, raw_ms: float) -> float:
        return 2.0 * raw_ms

    needs = Requirements(model="m", latency_ms=13.0, on_infeasible="reject")
    with pytest.raises(Infeasible) as excinfo:
        select(needs, [SLOW], busy, PRICES, correct=doubled)
    assert excinfo.value.best.latency_ms == pytest.approx(2.0 * 30.0)
    assert excinfo.value.headers == {"Retry-After": "1"}
    # 11 ms cannot be met even once the queue drains (12 ms alone, corrected): no Retry-After.
    with pytest.raises(Infeasible) as excinfo:
        select(Requirements(model="m", latency_ms=11.0, on_infeasible="reject"), [SLOW], busy, PRICES, correct=doubled)
    assert "Retry-After" not in excinfo.value.headers


def test_an_instance_reports_rows_outstanding() -> None:
    gated = GatedSession(ort.InferenceSession(linear_model(), providers=["CPUExecutionProvider"]))
    reported: list[int] = []
    curve = SLOW.curve
    instance = Instance("m/slow", lambda: gated, curve, on_depth=reported.append)
    threads = queue_behind_gate(
        instance,
        gated,
        lambda: instance.infer({"x": np.ones((3, 4), np.float32)}),
        [lambda: instance.infer({"x": np.ones((5, 4), np.float32)})],
    )
    assert instance.outstanding == 2 and reported == [3, 8]  # two requests, 8 rows
    gated.release(threads)
    assert instance.outstanding == 0 and reported[-1] == 0
    instance.close()


def test_the_engine_feeds_its_calibration_and_selects_with_it(services: Services) -> None:
    seed_model(services, "lin", linear_model(), task="t", variants={"fp32": profiles({1: 0.01, 8: 0.02})})
    services.start_serving()
    engine = services.engine
    x = {"x": [[0.0] * 4]}
    cold = engine.infer(Query(Requirements(model="lin"), x))
    assert engine.calibration.report()["observed"] == 0  # the load's time is not a serving-path error
    for _ in range(30):
        answer = engine.infer(Query(Requirements(model="lin", latency_ms=1000.0), x))
    served = answer.served_by
    report = engine.calibration.report()
    assert report["observed"] == 30 and f"lin/fp32 on {served.worker}" in report["factors"]  # type: ignore[operator]
    # The estimate now includes the serving path the 0.01 ms profile never saw.
    assert engine.calibration.overhead_ms > 0 and served.estimated_ms > served.raw_estimated_ms
    assert not cold.served_by.slo_at_risk
