"""The serving path in the estimator (``infaas.pipelines.path``): its work, measured once, queued for the front
end's interpreter, so the path's time grows with the rate; the planner and the tuner judge with the same."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from autoscaler.pipeline_apply import planned_pipeline
from autoscaler.pipeline_tuner import decide
from infaas.pipelines.options import StageOption
from infaas.pipelines.path import QUANTILES, ServingPath, Split, from_splits
from infaas.pipelines.planner import plan
from infaas.pipelines.simulator import StageConfig, arrival_times, simulate
from infaas.pipelines.spec import Arrivals, PipelineSpec, parse_spec
from infaas.pipelines.store import PipelineInfo
from infaas.selector import Candidate, ProfileCurve
from tests.factories import profiles, variant_info


def _spec(p99_ms: float = 100.0, rate: float = 10.0) -> PipelineSpec:
    return parse_spec(
        {
            "name": "p",
            "p99_ms": p99_ms,
            "inputs": [{"name": "x", "dtype": "float32", "shape": [-1, 4]}],
            "stages": [{"name": "a", "model": "ma"}],
            "edges": [{"from": "input.x", "to": "a.x"}],
            "arrivals": {"rate_per_s": rate, "duration_s": 60},
        }
    )


def _curve(ms: float) -> ProfileCurve:
    return ProfileCurve.of(variant_info("ma", "v", profiles({1: ms}, p99_factor=1.0)))


def _roomy(ms: float = 1.0) -> dict[str, StageConfig]:
    """A stage with replicas to spare: nothing ever waits at it."""
    return {"a": StageConfig(_curve(ms), 1, 64)}


def test_queries_that_overlap_wait_for_the_interpreter() -> None:
    """Two queries arriving together, 1 ms of path work each: with one interpreter the second waits for the
    first's work (2 ms + its run); with two, neither waits. As plain delays (the estimator before) both took 1 ms."""
    arrivals = np.array([0.0, 0.0])
    one = simulate(_spec(), _roomy(), {}, arrivals, path=ServingPath(entry=(1.0,), stage={}))
    two = simulate(_spec(), _roomy(), {}, arrivals, path=ServingPath(entry=(1.0,), stage={}, threads=2))
    assert sorted(one.latencies_ms) == pytest.approx([2.0, 3.0])
    assert sorted(two.latencies_ms) == pytest.approx([2.0, 2.0])


def test_only_the_cpu_part_of_the_path_waits_for_the_interpreter() -> None:
    """1 ms of path time of which 0.2 ms is CPU: two queries arriving together both wait out the 0.8 ms delay
    side by side, then take the interpreter one after the other (1.0 and 1.2 ms, + the 1 ms run)."""
    path = ServingPath(entry=(1.0,), stage={}, entry_cpu=(0.2,))
    result = simulate(_spec(), _roomy(), {}, np.array([0.0, 0.0]), path=path)
    assert sorted(result.latencies_ms) == pytest.approx([2.0, 2.2])
    assert path.work_ms({}) == pytest.approx(0.2)


def test_the_paths_time_grows_with_the_rate_from_work_measured_once() -> None:
    """The same measured work (0.8 ms a query) at 50 and 1,000 queries/s: the interpreter is 4% and 80% busy, and
    the P99 beyond work + run grows from nearly nothing to several work times (an M/D/1 wait), where a path
    learnt as a constant would stay put."""
    path = ServingPath(entry=(0.8,), stage={})
    results = {}
    for rate in (50.0, 1000.0):
        arrivals = arrival_times(Arrivals(rate_per_s=rate, duration_s=20.0), seed=3)
        results[rate] = simulate(_spec(), _roomy(), {}, arrivals, path=path)
    assert results[50.0].interpreter == pytest.approx(0.04, rel=0.1)
    assert results[1000.0].interpreter == pytest.approx(0.8, rel=0.05)
    assert results[50.0].p99_ms - 1.8 < 0.8
    assert results[1000.0].p99_ms - 1.8 > 3 * 0.8
    # M/D/1 mean wait at rho 0.8: rho / (2 mu (1 - rho)) = 2 work times.
    assert float(np.mean(results[1000.0].latencies_ms)) - 1.8 == pytest.approx(2 * 0.8, rel=0.15)


def test_a_plan_is_judged_with_the_paths_work() -> None:
    """A 4 ms stage at 150 q/s, objective 10 ms. Without the path two replicas meet it; with 1.5 ms of path work
    a query (22% of the interpreter) two give about 10 ms and the plan takes a third; with 3 ms (45%) the
    front end's own queue breaks the objective at any replica count: infeasible at once, not 64 replicas."""
    option = StageOption("ma", "v", ProfileCurve.of(variant_info("ma", "v", profiles({1: 4.0}))), 1, None, 1.0)
    spec = _spec(p99_ms=10.0, rate=150.0)
    arrivals = arrival_times(spec.arrivals, seed=1)[:3000]
    bare = plan(spec, {"a": [option]}, {}, arrivals)
    judged = plan(spec, {"a": [option]}, {}, arrivals, path=ServingPath(entry=(1.5,), stage={}, source="test"))
    assert bare.feasible and judged.feasible
    assert (bare.choices["a"].replicas, judged.choices["a"].replicas) == (2, 3)
    assert judged.interpreter == pytest.approx(0.225, rel=0.05)
    assert judged.to_json({"a": [option]})["serving_path"]["source"] == "test"
    assert bare.to_json({"a": [option]})["serving_path"] == {"source": "not measured: stages only"}
    swamped = plan(spec, {"a": [option]}, {}, arrivals, path=ServingPath(entry=(3.0,), stage={}))
    assert not swamped.feasible and swamped.p99_ms > 10.0 and swamped.simulations <= 2


def test_the_stored_path_keeps_its_tail_and_refuses_bad_samples() -> None:
    rng = np.random.default_rng(0)
    entry = tuple(rng.lognormal(0.0, 0.8, 5000))
    stored = ServingPath(entry=entry, stage={"a": (0.1, 0.2)}, excess={"a": (0.5,)}, source="s").to_json()
    back = ServingPath.from_json(stored)
    assert len(back.entry) == QUANTILES and back.source == "s" and back.excess["a"] == pytest.approx((0.5,) * 200)
    assert np.percentile(back.entry, 99) == pytest.approx(np.percentile(entry, 99), rel=0.1)
    with pytest.raises(ValueError, match="threads"):
        ServingPath(entry=(1.0,), stage={}, threads=0)
    with pytest.raises(ValueError, match="entry: no samples"):
        ServingPath(entry=(), stage={})
    with pytest.raises(ValueError, match="finite"):
        ServingPath(entry=(1.0, math.nan), stage={})
    with pytest.raises(ValueError, match="between 0 and"):
        ServingPath(entry=(1.0,), stage={}, entry_cpu=(1.5,))
    with pytest.raises(ValueError, match="1 samples for 2 times"):
        ServingPath(entry=(1.0, 2.0), stage={}, entry_cpu=(0.5,))
    # Each stored sample keeps its own CPU part (the slowest time with the CPU it had, not the largest CPU).
    paired = ServingPath(entry=(0.5,) * 99 + (9.0,), stage={}, entry_cpu=(0.4,) * 99 + (0.1,))
    again = ServingPath.from_json(paired.to_json())
    assert again.entry_cpu is not None and again.entry[-1] == 9.0 and again.entry_cpu[-1] == 0.1


def test_a_runs_excess_is_over_the_profile_at_its_own_batch() -> None:
    curve = ProfileCurve.of(variant_info("m", "v", profiles({1: 2.0, 2: 3.0, 4: 5.0})))
    splits = [
        Split(4.0, 0.4, {"a": 0.1}, {"a": 0.0}, {"a": 2.5}, {"a": 1}, {"a": "m/v"}),
        Split(5.0, 0.5, {"a": 0.2}, {"a": 0.0}, {"a": 3.5}, {"a": 2}, {"a": "m/v"}),
        Split(6.0, 0.6, {"a": 0.3}, {"a": 1.0}, {"a": 4.0}, {"a": 4}, {"a": "m/v"}),
        Split(0.7, 0.7, {}, {}, {}, {}, {}),  # a query that reached no stage
    ]
    path = from_splits(splits, {"m/v": curve}, "test")
    assert path.excess["a"] == pytest.approx((0.5, 0.5, -1.0))
    assert path.stage["a"] == (0.1, 0.2, 0.3) and path.entry == (0.4, 0.5, 0.6, 0.7)
    assert path.entry_cpu is None  # no CPU measured: the whole time is taken as work


def test_the_serving_threads_cpu_is_spread_over_entry_and_stages() -> None:
    """0.3 ms of CPU in a query whose path took 0.4 (entry) + 0.2 (stage): half of each is work."""
    splits = [Split(3.0, 0.4, {"a": 0.2}, {"a": 0.0}, {"a": 2.4}, {"a": 1}, {"a": "m/v"}, cpu=0.3)]
    path = from_splits(splits, {}, "test")
    assert path.entry_cpu == pytest.approx((0.2,)) and path.stage_cpu == {"a": pytest.approx((0.1,))}
    assert Split(1.0, 0.5, {}, {}, {}, {}, {}, cpu=9.0).cpu_share() == 1.0  # never more than the time


def test_the_tuner_sizes_with_the_plans_excess_and_records_the_front_end() -> None:
    """A plan judged with 1 ms of excess on a 4 ms run: one replica serves 200/s, not 250/s; every decision
    says how busy the front end's interpreter would be at the rate it sized for."""
    spec = _spec(rate=10.0)
    path = ServingPath(entry=(2.0,), stage={"a": (0.5,)}, excess={"a": (1.0,)}, source="test")
    document = {
        "feasible": True,
        "p99_ms": 10.0,
        "service_ms": 5.0,
        "stages": {"a": {"model": "ma", "variant": "v", "batch": 1, "replicas": 1, "utilisation": 0.5}},
        "scale_factors": {"a": 1.0},
        "serving_path": path.to_json(),
    }
    info = PipelineInfo("p", "local", spec.to_json(), ("ma",), {"stages": {"a": 1.0}}, document, datetime.now(UTC))
    variant = variant_info("ma", "v", profiles({1: 4.0}))
    candidate = Candidate(model=None, variant=variant, accuracy=None, curve=ProfileCurve.of(variant), hardware=())  # type: ignore[arg-type]
    planned = planned_pipeline(info, {"ma/v": candidate})
    assert planned is not None
    assert planned.stages[0].throughput_per_s == pytest.approx(200.0)
    assert planned.path_work_ms == pytest.approx(2.5)
    now = 1000.0
    burst = now - 1.0 + np.arange(1000) / 1000.0  # 1,000/s against the planned 10/s
    actions = decide(planned, burst, now, {"a": 1})
    assert [a.action for a in actions] == ["tune_up"]
    rate = actions[0].inputs["rate_per_s"]
    assert actions[0].inputs["front_end_utilisation"] == pytest.approx(rate * 2.5 / 1000.0, rel=1e-3)
