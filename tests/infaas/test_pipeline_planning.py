"""The pipeline estimator (SimPy) against queueing theory and the batching rule, and the greedy planner against
brute force over every configuration of a small pipeline (issue 17, points 3 and 4)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from infaas.pipelines.options import StageOption
from infaas.pipelines.planner import Judge, StageChoice, plan
from infaas.pipelines.simulator import StageConfig, arrival_times, late_limit, simulate
from infaas.pipelines.spec import Arrivals, parse_spec
from infaas.selector import ProfileCurve
from tests.factories import profiles, variant_info


def _curve(p50: dict[int, float], p99_factor: float = 1.0) -> ProfileCurve:
    return ProfileCurve.of(variant_info("m", "v", profiles(p50, p99_factor=p99_factor)))


def _spec(p99_ms: float = 100.0, conditional: bool = False) -> object:
    edges = [{"from": "input.x", "to": "a.x"}, {"from": "a.y", "to": "b.x"}]
    if conditional:
        edges[1]["when"] = {"class": 0, "above": 0.5}
    return parse_spec(
        {
            "name": "p",
            "p99_ms": p99_ms,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "stages": [{"name": "a", "model": "ma"}, {"name": "b", "model": "mb"}],
            "edges": edges,
            "arrivals": {"rate_per_s": 100, "duration_s": 20},
        }
    )


def test_one_stage_without_batching_matches_pollaczek_khinchine() -> None:
    """M/D/1 at utilisation 0.6: mean wait = rho / (2 mu (1 - rho)) -> mean latency 1 + 0.75 service times."""
    spec = parse_spec(
        {
            "name": "one",
            "p99_ms": 100,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "stages": [{"name": "a", "model": "ma"}],
            "edges": [{"from": "input.x", "to": "a.x"}],
            "arrivals": {"rate_per_s": 60, "duration_s": 600},
        }
    )
    arrivals = arrival_times(spec.arrivals, seed=1)
    result = simulate(spec, {"a": StageConfig(_curve({1: 10.0}), 1, 1)}, {}, arrivals)
    assert result.utilisation["a"] == pytest.approx(0.6, rel=0.05)
    assert float(np.mean(result.latencies_ms)) == pytest.approx(10.0 * 1.75, rel=0.08)


def test_batching_by_the_instance_rule_carries_a_load_one_at_a_time_cannot() -> None:
    """150 q/s on a 10 ms (batch 1) / 12 ms (batch 8) stage: one at a time it is 1.5x overloaded; batched it is
    well within capacity, so latency stays a few batch times."""
    spec = _spec()
    arrivals = arrival_times(Arrivals(rate_per_s=150, duration_s=20), seed=2)
    fast = StageConfig(_curve({1: 0.1}), 1, 1)
    curve = _curve({1: 10.0, 8: 12.0})
    alone = simulate(spec, {"a": StageConfig(curve, 1, 1), "b": fast}, {}, arrivals)
    batched = simulate(spec, {"a": StageConfig(curve, 8, 1), "b": fast}, {}, arrivals)
    assert alone.p99_ms > 1000  # the queue grows for the whole trace
    assert batched.p99_ms < 60 and batched.utilisation["a"] < 0.8


def test_a_conditional_edge_sends_its_share_of_queries() -> None:
    spec = _spec(conditional=True)
    arrivals = arrival_times(Arrivals(rate_per_s=50, duration_s=100), seed=3)
    curve = _curve({1: 2.0})
    configs = {"a": StageConfig(curve, 1, 1), "b": StageConfig(curve, 1, 1)}
    result = simulate(spec, configs, {1: 0.25}, arrivals)
    assert result.utilisation["b"] == pytest.approx(0.25 * result.utilisation["a"], rel=0.1)


def _options() -> dict[str, list[StageOption]]:
    def option(name: str, p50: dict[int, float], per_hour: float) -> StageOption:
        return StageOption("m", name, _curve(p50, p99_factor=1.3), 16, 0.9, per_hour)

    return {
        "a": [option("fast", {1: 4.0, 4: 6.0}, 0.4), option("cheap", {1: 8.0, 4: 12.0}, 0.1)],
        "b": [option("fast", {1: 3.0, 4: 5.0}, 0.3), option("cheap", {1: 6.0, 4: 10.0}, 0.1)],
    }


def test_the_planner_meets_the_objective_near_the_brute_force_optimum() -> None:
    spec = _spec(p99_ms=40.0)
    options = _options()
    arrivals = arrival_times(Arrivals(rate_per_s=250, burstiness=2.0, duration_s=2), seed=4)
    planned = plan(spec, options, {}, arrivals)
    assert planned.feasible and planned.p99_ms <= 40.0

    judge = Judge(spec, options, {}, arrivals, 0)
    per_stage = [[StageChoice(o, b, r) for o in range(2) for b in (1, 4) for r in range(1, 4)] for _name in spec.order]
    best = min(
        judge.cost(dict(zip(spec.order, combo, strict=True)))
        for combo in itertools.product(*per_stage)
        if judge.feasible(dict(zip(spec.order, combo, strict=True)))
    )
    assert planned.cost_per_hour <= best * 1.10
    assert planned.simulations < judge.runs / 5  # it searched a small part of the space


def test_an_objective_below_the_service_time_is_infeasible_with_the_best_achievable() -> None:
    planned = plan(_spec(p99_ms=5.0), _options(), {}, arrival_times(Arrivals(rate_per_s=10, duration_s=5)))
    assert not planned.feasible
    assert 4.0 + 3.0 < planned.p99_ms < 4.0 * 1.3 + 3.0 * 1.3  # the fastest variants in a row, no queueing


def test_a_probe_stops_once_the_objective_is_missed_and_agrees_with_the_whole_trace() -> None:
    spec = _spec()
    arrivals = arrival_times(Arrivals(rate_per_s=150, duration_s=20), seed=2)
    curve, fast = _curve({1: 10.0, 8: 12.0}), StageConfig(_curve({1: 0.1}), 1, 1)
    overloaded = {"a": StageConfig(curve, 1, 1), "b": fast}
    whole = simulate(spec, overloaded, {}, arrivals)
    probe = simulate(spec, overloaded, {}, arrivals, over_ms=100.0)
    assert whole.p99_ms > 100.0 and not whole.stopped
    assert probe.stopped and probe.p99_ms == float("inf")
    assert np.count_nonzero(probe.latencies_ms) < len(arrivals) / 4  # decided early in the trace
    assert np.count_nonzero(probe.latencies_ms > 100.0) == late_limit(len(arrivals))
    batched = {"a": StageConfig(curve, 8, 1), "b": fast}
    kept = simulate(spec, batched, {}, arrivals, over_ms=100.0)
    assert not kept.stopped and kept.p99_ms == simulate(spec, batched, {}, arrivals).p99_ms <= 100.0


def test_late_limit_is_where_the_interpolated_p99_must_exceed() -> None:
    for n in (1, 7, 100, 600, 1501):
        k = late_limit(n)
        at_limit = np.r_[np.zeros(n - k), np.full(k, 2.0)]
        below = np.r_[np.zeros(n - k + 1), np.full(k - 1, 2.0)]
        assert np.percentile(at_limit, 99) > 1.0
        assert np.percentile(below, 99) < 2.0  # one fewer: the P99 may still interpolate under the late ones
