"""The pipeline tuner's policy (issue 17, point 5): traffic envelopes, k = ceil(r*s/(rho*mu)), when it scales a
planned stage up, down, or brings it to its plan, and the inputs each decision carries."""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoscaler.pipeline_tuner import (
    MAX_WINDOW_S,
    PlannedPipeline,
    PlannedStage,
    decide,
    down_rate,
    envelope,
    replicas_for,
    windows,
)


def test_windows_double_from_the_service_time_up_to_60_s() -> None:
    spans = windows(0.02)
    assert spans[0] == 0.02 and spans[-1] == MAX_WINDOW_S
    assert all(b == pytest.approx(2 * a) for a, b in zip(spans[:-2], spans[1:-1], strict=True))
    assert spans[-2] < MAX_WINDOW_S <= 2 * spans[-2]


def test_envelope_is_the_most_arrivals_any_interval_of_each_length_holds() -> None:
    times = [0.0, 0.1, 0.2, 1.0, 5.0]
    got = dict(envelope(times, [0.25, 1.0, 2.0, 10.0]))
    assert got[0.25] == pytest.approx(3 / 0.25)  # [0, 0.25) holds 0, 0.1, 0.2
    assert got[1.0] == pytest.approx(3 / 1.0)  # half-open: [0, 1) misses 1.0; [0.1, 1.1) holds 3 too
    assert got[2.0] == pytest.approx(4 / 2.0)
    assert got[10.0] == pytest.approx(5 / 10.0)
    # Against brute force on a random trace.
    rng = np.random.default_rng(0)
    trace = np.sort(rng.uniform(0, 20, 300))
    for w, rate in envelope(trace, [0.05, 0.5, 3.0]):
        brute = max(int(np.sum((trace >= t) & (trace < t + w))) for t in trace)
        assert rate == pytest.approx(brute / w)


def test_down_rate_is_the_busiest_5_s_window_of_the_last_30_s() -> None:
    now = 100.0
    steady = list(np.arange(71.5, 100.0, 1.0))  # 1/s
    times = steady + [now - 2.0 + i * 0.01 for i in range(40)] + [10.0] * 500  # a 40-query burst; 500 too old
    assert down_rate(times, now) == pytest.approx((40 + 5) / 5.0)  # the last 5 s window: 40 burst + 5 steady
    assert down_rate([1.0, 2.0], now) == 0.0  # older than 30 s: nothing


def _stage(**changes: object) -> PlannedStage:
    fields: dict = dict(name="b", variant="m/v", batch=4, replicas=2, scale=0.5, utilisation=0.5, throughput_per_s=50.0)
    fields.update(changes)
    return PlannedStage(**fields)


def test_k_is_ceil_r_s_over_rho_mu_never_below_the_plan() -> None:
    stage = _stage()
    assert replicas_for(400.0, stage) == math.ceil(400 * 0.5 / (0.5 * 50))  # 8
    assert replicas_for(10.0, stage) == 2  # the plan's
    assert replicas_for(1e9, stage) == 64  # bounded
    assert replicas_for(100.0, _stage(utilisation=0.0)) == math.ceil(100 * 0.5 / (0.05 * 50))  # rho floored


def _pipeline(rate: float = 10.0, seconds: float = 60.0, b_mu: float = 50.0) -> tuple[PlannedPipeline, np.ndarray]:
    planned_trace = np.arange(0, seconds, 1.0 / rate)  # evenly spaced: its envelope is exactly `rate` at 1 s+
    pipeline = PlannedPipeline(
        name="p",
        stages=(_stage(name="a", scale=1.0, replicas=1), _stage(name="b", throughput_per_s=b_mu)),
        rate_per_s=rate,
        envelope=envelope(planned_trace, windows(0.05)),
    )
    return pipeline, planned_trace


def test_traffic_like_the_plan_changes_nothing() -> None:
    pipeline, trace = _pipeline()
    assert decide(pipeline, trace + 1000.0, 1060.0, {"a": 1, "b": 2}) == []


def test_a_stage_below_its_plan_is_brought_to_it() -> None:
    pipeline, trace = _pipeline()
    actions = decide(pipeline, trace + 1000.0, 1060.0, {"a": 1})
    assert [(a.action, a.target, a.count, a.variant) for a in actions] == [("apply_plan", "p/b", 2, "m/v")]
    assert actions[0].inputs["planned_replicas"] == 2 and actions[0].inputs["replicas"] == 0


def test_a_burst_above_the_planned_envelope_scales_every_stage_by_k() -> None:
    pipeline, trace = _pipeline()
    now = 1060.0
    burst = now - 1.0 + np.arange(120) / 120.0  # 120 q/s over the last second: 12x the planned 10/s
    actions = decide(pipeline, np.concatenate([trace + 1000.0, burst]), now, {"a": 1, "b": 2})
    assert {a.action for a in actions} == {"tune_up"}
    by_stage = {a.target: a for a in actions}
    exceeded = by_stage["p/b"].inputs["exceeded_windows"]
    ratio = max(e["live_per_s"] / e["planned_per_s"] for e in exceeded)
    r = 10.0 * ratio
    assert by_stage["p/b"].inputs["rate_per_s"] == pytest.approx(r, rel=1e-3)
    assert by_stage["p/b"].count == replicas_for(r, pipeline.stages[1]) > 2
    assert by_stage["p/a"].count == replicas_for(r, pipeline.stages[0]) > 1
    # Every input the formula used is in the decision.
    for key in ("scale_factor", "planned_utilisation", "throughput_per_replica_per_s", "planned_replicas", "batch"):
        assert key in by_stage["p/b"].inputs


def test_after_the_burst_a_stage_comes_down_on_the_last_30_s_never_below_the_plan() -> None:
    pipeline, _trace = _pipeline(b_mu=2.0)  # b: 2/s per replica at rho 0.5 and s 0.5 -> k = ceil(r / 2)
    now = 5000.0
    quiet = now - 50.0 + np.arange(0, 50, 0.5)  # 2/s: below the plan everywhere
    actions = decide(pipeline, quiet, now, {"a": 9, "b": 9})
    assert {(a.action, a.target, a.count) for a in actions} == {("tune_down", "p/a", 1), ("tune_down", "p/b", 2)}
    busy = now - 20.0 + np.arange(0, 20, 1 / 9.5)  # 9.5/s: within the plan's envelope
    actions = decide(pipeline, busy, now, {"a": 1, "b": 9})
    assert [(a.action, a.count) for a in actions] == [("tune_down", 5)]  # ceil(9.6 / 2): above the plan's 2
    assert actions[0].inputs["down_rate_per_s"] == pytest.approx(down_rate(busy, now)) == pytest.approx(9.6)
