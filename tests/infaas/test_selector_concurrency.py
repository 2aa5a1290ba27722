"""The selector prices queueing behind replicas with their measured joint throughput, and the indexed selector
still decides exactly as the reference does when variants carry that measurement."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from infaas.fast_selector import FastSelector
from infaas.live_state import InstanceState, LiveSnapshot, WorkerState
from infaas.replica_scaling import speedup, speedups
from infaas.selector import Candidate, ProfileCurve, Requirements, _queue_ms, select
from tests.factories import model_info, profiles, variant_info
from tests.infaas.test_fast_selector import _candidates, _correction, _live, _outcome, _prices, _requirements, _same


def _measured(p50: dict[int, float], together: float) -> Candidate:
    rows = tuple(
        replace(p, replica_throughput_per_s=(p.throughput_per_s, together * p.throughput_per_s))
        for p in profiles(p50, p99_factor=1.0)
    )
    return Candidate.of(model_info("m", task="t"), variant_info("m", "t1", rows))


def test_speedups_are_relative_to_one_replica_and_never_above_the_count() -> None:
    assert speedups((100.0, 150.0)) == (1.0, 1.5)
    assert speedups((100.0, 230.0)) == (1.0, 2.0)  # noise above 2x is not a free core
    assert speedups((100.0,)) == speedups(()) == speedups((100.0, 0.0)) == ()
    assert [speedup((1.0, 1.5), n) for n in range(5)] == [0.0, 1.0, 1.5, 2.5, 3.0]  # pairs on further workers
    assert speedup((), 3) == 3.0


def test_queueing_behind_two_replicas_is_stretched_by_their_measured_speedup() -> None:
    candidate = _measured({1: 10.0, 4: 20.0}, 1.25)
    curve = candidate.curve
    assert curve.best_batch == 4 and curve.speedups == (1.0, 1.25)
    linear = replace(curve, speedups=())
    # 16 rows on 2 replicas: 8 rows each, two rounds of 4 at 20 ms, as before for one replica...
    assert _queue_ms(16, 1, curve) == _queue_ms(16, 1, linear) == 80.0
    assert _queue_ms(16, 2, linear) == 40.0
    # ...but two replicas together serve 1.25 of one, not 2: 40 ms × 2 / 1.25.
    assert _queue_ms(16, 2, curve) == pytest.approx(64.0)
    assert ProfileCurve.of(variant_info("m", "t1", profiles({1: 10.0}))).speedups == ()


def test_a_placement_that_only_meets_the_budget_by_linear_scaling_is_at_risk() -> None:
    worker = WorkerState(id="w", address="local", cores=2, memory_budget_mb=1000.0, memory_used_mb=0.0)
    measured = _measured({1: 10.0, 4: 20.0}, 1.25)
    linear = replace(measured, curve=replace(measured.curve, speedups=()))
    live = LiveSnapshot(
        (worker,), {measured.key: (InstanceState("w", measured.key, 2, 50.0),)}, {("w", measured.key): 16}
    )
    need = Requirements(model="m", latency_ms=70.0)  # 10 ms + 40 ms queue assumed; 10 + 64 measured
    assert not select(need, [linear], live, {}).slo_at_risk
    chosen = select(need, [measured], live, {})
    assert chosen.loaded and chosen.slo_at_risk and chosen.estimated_ms == pytest.approx(74.0)


@pytest.mark.parametrize("seed", range(2))
def test_fast_selector_matches_the_reference_with_measured_speedups(seed: int) -> None:
    selector = FastSelector()
    for case in range(seed * 1000, (seed + 1) * 1000):
        rng = random.Random(case)
        candidates = [
            replace(c, curve=replace(c.curve, speedups=(1.0, rng.choice((0.5, 1.2, 1.9)), rng.choice((1.5, 2.5)))))
            if rng.random() < 0.7
            else c
            for c in _candidates(rng)
        ]
        live = _live(rng, candidates)
        requirements, prices, correct = _requirements(rng), _prices(rng), _correction(rng)
        reference = _outcome(select, requirements, candidates, live, prices, (), correct)
        _same(reference, _outcome(selector.select, requirements, candidates, live, prices, (), correct), case)
