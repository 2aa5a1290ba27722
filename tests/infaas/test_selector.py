"""The selector as a pure function over hand-made profiles and live state."""

from __future__ import annotations

from dataclasses import replace

import pytest

from infaas.cascade_session import KIND
from infaas.errors import BadRequest
from infaas.hardware_kinds import TENSORRT_ENGINE
from infaas.live_state import InstanceState, LiveSnapshot, WorkerState
from infaas.selector import (
    AccuracyUnavailable,
    Candidate,
    Infeasible,
    NoWorkerAvailable,
    ProfileCurve,
    Requirements,
    parse_on_infeasible,
    select,
)
from tests.factories import model_info, profiles, variant_info
from variant_generator.tensorrt import TRT_PROVIDERS

PRICES = {"cpu-core": 0.048, "gpu": 2.5}
P99 = 1.2  # every hand-made profile's p99 / p50: estimates use the p99, costs the p50


def candidate(
    model_name: str,
    name: str,
    latencies: dict[int, float],
    accuracy: float | None = 0.9,
    threads: int = 1,
    hardware: str = "cpu",
    load_ms: float = 100.0,
    memory_mb: float = 100.0,
    task: str = "classify",
) -> Candidate:
    measured = profiles(
        latencies, threads=threads, accuracy=accuracy, memory_mb=memory_mb, p99_factor=P99, load_ms=load_ms
    )
    variant = variant_info(model_name, name, measured, kind=name, hardware=hardware)
    return Candidate.of(model_info(model_name, task=task), variant)


def worker(worker_id: str = "w1", cores: int = 4, draining: bool = False, **kw: object) -> WorkerState:
    return WorkerState(id=worker_id, address="local", cores=cores, memory_budget_mb=1000, draining=draining, **kw)  # type: ignore[arg-type]


def live(*workers: WorkerState, loaded: dict[str, list[tuple[str, int]]] | None = None, depth=None) -> LiveSnapshot:  # type: ignore[no-untyped-def]
    instances = {
        key: tuple(InstanceState(w, key, replicas, 100.0) for w, replicas in places)
        for key, places in (loaded or {}).items()
    }
    return LiveSnapshot(workers=workers or (worker(),), instances=instances, queue_depth=depth or {})


FAST_PRICEY = candidate("m", "fast", {1: 2.0, 8: 6.0}, threads=4)  # 4 cores × 2 ms
SLOW_CHEAP = candidate("m", "slow", {1: 5.0, 8: 20.0}, threads=1)  # 1 core × 5 ms


def test_cheapest_meeting_the_budget_wins() -> None:
    both = [FAST_PRICEY, SLOW_CHEAP]
    loaded = {"m/fast": [("w1", 1)], "m/slow": [("w1", 1)]}
    decision = select(Requirements(model="m", latency_ms=10), both, live(loaded=loaded), PRICES)
    assert decision.variant.name == "slow" and not decision.slo_at_risk
    assert decision.estimated_ms == decision.raw_estimated_ms == 5.0 * P99  # the tail, not the p50
    assert decision.estimated_cost == pytest.approx(0.048 * 5 / 3_600_000)
    # A tighter budget only the fast one meets: not always the same variant.
    decision = select(Requirements(model="m", latency_ms=3), both, live(loaded=loaded), PRICES)
    assert decision.variant.name == "fast"
    assert "cheapest of 1" in decision.reason


def test_loaded_instance_wins_a_cost_tie() -> None:
    decision = select(
        Requirements(model="m", latency_ms=1000),
        [SLOW_CHEAP],
        live(worker("w1"), worker("w2"), loaded={"m/slow": [("w2", 1)]}),
        PRICES,
    )
    assert decision.worker == "w2" and decision.loaded


def test_a_loaded_variant_beats_a_cold_one_that_is_cheaper_only_per_query() -> None:
    # cheap is 5 ms per query vs 8 ms for loaded, but loading it first costs 100 ms of the same core.
    cheap = candidate("m", "cheap", {1: 5.0}, accuracy=0.9)
    loaded = candidate("m", "loaded", {1: 8.0}, accuracy=0.9)
    decision = select(
        Requirements(model="m", latency_ms=500), [cheap, loaded], live(loaded={"m/loaded": [("w1", 1)]}), PRICES
    )
    assert decision.variant.name == "loaded" and decision.loaded
    # Once both are loaded the cheaper one per query wins.
    both = live(loaded={"m/loaded": [("w1", 1)], "m/cheap": [("w1", 1)]})
    assert select(Requirements(model="m", latency_ms=500), [cheap, loaded], both, PRICES).variant.name == "cheap"


def test_load_time_is_counted_for_cold_variants() -> None:
    decision = select(Requirements(model="m", latency_ms=50), [SLOW_CHEAP], live(), PRICES)
    assert not decision.loaded and decision.estimated_ms == 100.0 + 5.0 * P99 and decision.slo_at_risk
    assert "cold, +100 ms load" in decision.reason


def test_queueing_changes_the_choice() -> None:
    loaded = {"m/fast": [("w1", 1)], "m/slow": [("w1", 1)]}
    idle = select(Requirements(model="m", latency_ms=12), [FAST_PRICEY, SLOW_CHEAP], live(loaded=loaded), PRICES)
    assert idle.variant.name == "slow"
    # 3 rows outstanding on slow (best batch 8): one round of 3 rows, p99 at batch 8 (24 ms), + 6 ms service > 12 ms.
    busy = live(loaded=loaded, depth={("w1", "m/slow"): 3})
    decision = select(Requirements(model="m", latency_ms=12), [FAST_PRICEY, SLOW_CHEAP], busy, PRICES)
    assert decision.variant.name == "fast"
    # More replicas absorb the same queue.
    replicated = live(loaded={"m/fast": [("w1", 1)], "m/slow": [("w1", 4)]}, depth={("w1", "m/slow"): 3})
    assert (
        select(Requirements(model="m", latency_ms=12), [FAST_PRICEY, SLOW_CHEAP], replicated, PRICES).variant.name
        == "slow"
    )


def test_slo_at_risk_falls_back_to_the_fastest() -> None:
    loaded = {"m/fast": [("w1", 1)], "m/slow": [("w1", 1)]}
    decision = select(Requirements(model="m", latency_ms=1), [FAST_PRICEY, SLOW_CHEAP], live(loaded=loaded), PRICES)
    assert decision.variant.name == "fast" and decision.slo_at_risk
    assert decision.reason.startswith("m/fast on w1") and "SLO at risk" in decision.reason


def test_accuracy_floor_error_carries_the_best_accuracy() -> None:
    low = candidate("m", "int8", {1: 1.0}, accuracy=0.81)
    high = candidate("m", "fp32", {1: 3.0}, accuracy=0.88)
    with pytest.raises(AccuracyUnavailable) as excinfo:
        select(Requirements(model="m", min_accuracy=0.9), [low, high], live(), PRICES)
    assert excinfo.value.best == 0.88 and "best available is 0.88" in str(excinfo.value)
    unmeasured = candidate("m", "x", {1: 1.0}, accuracy=None)
    # Neither labels nor a declared accuracy: the 422 says what to register.
    with pytest.raises(AccuracyUnavailable, match="no variant has a known accuracy: register labels"):
        select(Requirements(model="m", min_accuracy=0.5), [unmeasured], live(), PRICES)
    # Without a floor, unmeasured variants qualify.
    assert select(Requirements(model="m"), [unmeasured], live(), PRICES).variant.name == "x"


def test_accuracy_floor_filters_cheaper_variants() -> None:
    cheap_inaccurate = candidate("m", "int8", {1: 1.0}, accuracy=0.8)
    accurate = candidate("m", "fp32", {1: 3.0}, accuracy=0.95)
    pick = select(Requirements(model="m", min_accuracy=0.9), [cheap_inaccurate, accurate], live(), PRICES)
    assert pick.variant.name == "fp32"
    assert select(Requirements(model="m"), [cheap_inaccurate, accurate], live(), PRICES).variant.name == "int8"


def test_task_spans_models() -> None:
    a = candidate("resnet", "fp32", {1: 8.0}, accuracy=0.76)
    b = candidate("mobilenet", "fp32", {1: 2.0}, accuracy=0.70)
    assert select(Requirements(task="classify"), [a, b], live(), PRICES).candidate.model.name == "mobilenet"
    assert (
        select(Requirements(task="classify", min_accuracy=0.75), [a, b], live(), PRICES).variant.model_name == "resnet"
    )


def test_max_cost_excludes_expensive_placements() -> None:
    gpu = candidate("m", "gpu", {1: 1.0}, hardware="gpu")
    cpu = candidate("m", "cpu", {1: 4.0}, threads=2)
    gpu_worker = worker("g1", hardware=("cpu", "gpu"))
    snapshot = live(gpu_worker, loaded={"m/gpu": [("g1", 1)], "m/cpu": [("g1", 1)]})
    assert select(Requirements(model="m", latency_ms=2), [gpu, cpu], snapshot, PRICES).variant.name == "gpu"
    cpu_cost = 2 * 0.048 * 4 / 3_600_000
    decision = select(Requirements(model="m", latency_ms=10, max_cost=cpu_cost * 1.01), [gpu, cpu], snapshot, PRICES)
    assert decision.variant.name == "cpu" and not decision.slo_at_risk
    # Nothing meets both the budget and the cost cap: the affordable one is served, flagged.
    decision = select(Requirements(model="m", latency_ms=2, max_cost=cpu_cost * 1.01), [gpu, cpu], snapshot, PRICES)
    assert decision.variant.name == "cpu" and decision.slo_at_risk


def test_threads_zero_means_every_core_of_the_worker() -> None:
    all_cores = candidate("m", "all", {1: 1.0}, threads=0)
    decision = select(
        Requirements(model="m"), [all_cores], live(worker(cores=8), loaded={"m/all": [("w1", 1)]}), PRICES
    )
    assert decision.estimated_cost == pytest.approx(8 * 0.048 * 1 / 3_600_000)
    # Cold, the 100 ms load is paid on the same 8 cores.
    cold = select(Requirements(model="m"), [all_cores], live(worker(cores=8)), PRICES)
    assert cold.estimated_cost == pytest.approx(8 * 0.048 * 101 / 3_600_000)


def test_gpu_variants_need_a_gpu_worker() -> None:
    gpu = candidate("m", "gpu", {1: 1.0}, hardware="gpu")
    with pytest.raises(NoWorkerAvailable):
        select(Requirements(model="m"), [gpu], live(worker()), PRICES)


@pytest.mark.parametrize("providers", [TRT_PROVIDERS, (TENSORRT_ENGINE,)], ids=["tensorrt-ep", "tensorrt-engine"])
def test_tensorrt_variants_need_a_worker_with_tensorrt_not_just_a_gpu(providers: tuple[str, ...]) -> None:
    plain = candidate("m", "trt", {1: 1.0}, hardware="gpu")
    trt = Candidate.of(plain.model, replace(plain.variant, providers=providers))
    assert trt.hardware == ("gpu", "tensorrt")
    gpu_only = worker("g1", hardware=("cpu", "gpu"))
    with_trt = worker("t1", hardware=("cpu", "gpu", "tensorrt"))
    # Loaded on the GPU-only worker as far as live state says: still never offered there.
    with pytest.raises(NoWorkerAvailable):
        select(Requirements(model="m"), [trt], live(gpu_only, loaded={"m/trt": [("g1", 1)]}), PRICES)
    decision = select(Requirements(model="m"), [trt], live(gpu_only, with_trt, loaded={"m/trt": [("g1", 1)]}), PRICES)
    assert decision.worker == "t1" and not decision.loaded
    cuda = candidate("m", "cuda", {1: 1.0}, hardware="gpu")  # the CUDA provider alone: a GPU is enough
    assert select(Requirements(model="m"), [cuda], live(gpu_only), PRICES).worker == "g1"


def test_draining_workers_are_never_chosen() -> None:
    snapshot = live(worker("old", draining=True), worker("new"), loaded={"m/slow": [("old", 1)]})
    decision = select(Requirements(model="m", latency_ms=1000), [SLOW_CHEAP], snapshot, PRICES)
    assert decision.worker == "new" and not decision.loaded
    with pytest.raises(NoWorkerAvailable):
        select(Requirements(model="m"), [SLOW_CHEAP], live(worker("old", draining=True)), PRICES)


def test_variants_too_big_for_every_worker_are_skipped() -> None:
    huge = candidate("m", "huge", {1: 1.0}, memory_mb=5000)
    with pytest.raises(NoWorkerAvailable):
        select(Requirements(model="m"), [huge], live(), PRICES)


def test_profile_at_the_batch_it_runs_with_extrapolation() -> None:
    curve = ProfileCurve.of(candidate("m", "v", {1: 2.0, 4: 5.0, 8: 9.0}).variant)
    assert curve.service_ms(1) == 2.0
    assert curve.service_ms(3) == 5.0  # smallest profiled batch ≥ 3
    assert curve.service_ms(8) == 9.0
    assert curve.service_ms(16) == pytest.approx(9.0 + 8 * 1.0)  # slope of the last two profiles
    single = ProfileCurve.of(candidate("m", "v", {4: 8.0}).variant)
    assert single.service_ms(8) == pytest.approx(16.0)
    decision = select(Requirements(model="m", batch=3), [candidate("m", "v", {1: 2.0, 4: 5.0})], live(), PRICES)
    assert decision.estimated_ms == 100.0 + 5.0 * P99 and decision.batch == 3


def _cascade(p50_ms: float, mean_ms: float, accuracy: float) -> Candidate:
    """A cascade whose batch-1 p50 is its cheap stage alone (most rows confident) and whose measured throughput
    says what a row really costs on average (the escalated rows' expensive stage included)."""
    (profile,) = profiles({1: p50_ms}, accuracy=accuracy, p99_factor=20.0)
    measured = (replace(profile, throughput_per_s=1000.0 / mean_ms),)
    return Candidate.of(model_info("m"), variant_info("m", "cascade-cpu-fp32", measured, kind=KIND))


def test_a_cascade_is_priced_by_its_measured_mean_not_its_p50() -> None:
    cascade = _cascade(p50_ms=0.1, mean_ms=2.0, accuracy=0.95)
    assert cascade.curve.service_ms(1) == pytest.approx(2.0)
    assert cascade.curve.tail_ms(1) == pytest.approx(2.0)  # p99 (0.1 x 20) is not below the mean
    single = candidate("m", "cpu-fp32", {1: 1.0}, accuracy=0.95)
    both_loaded = live(loaded={"m/cascade-cpu-fp32": [("w1", 1)], "m/cpu-fp32": [("w1", 1)]})
    chosen = select(Requirements(model="m", min_accuracy=0.95), [cascade, single], both_loaded, PRICES)
    assert chosen.variant.name == "cpu-fp32"  # priced by its p50 (0.1 ms) the cascade would look 10x cheaper
    assert chosen.estimated_cost == pytest.approx(0.048 * 1.0 / 3_600_000)
    cheaper = _cascade(p50_ms=0.1, mean_ms=0.5, accuracy=0.95)
    chosen = select(Requirements(model="m", min_accuracy=0.95), [cheaper, single], both_loaded, PRICES)
    assert chosen.variant.kind == KIND and chosen.estimated_cost == pytest.approx(0.048 * 0.5 / 3_600_000)


def test_a_plain_variant_keeps_its_p50_whatever_its_throughput() -> None:
    (profile,) = profiles({1: 1.0})
    slow_mean = variant_info("m", "cpu-fp32", (replace(profile, throughput_per_s=100.0),))
    assert ProfileCurve.of(slow_mean).service_ms(1) == 1.0  # its work does not depend on the rows: p50 is typical


# -- on_infeasible and max_cost as a hard limit ----------------------------------------------------------


def test_an_unmeetable_budget_with_reject_names_the_best_achievable() -> None:
    loaded = live(loaded={"m/fast": [("w1", 1)], "m/slow": [("w1", 1)]})
    both = [FAST_PRICEY, SLOW_CHEAP]
    with pytest.raises(Infeasible) as excinfo:
        select(Requirements(model="m", latency_ms=1, on_infeasible="reject"), both, loaded, PRICES)
    error = excinfo.value
    assert (error.status, error.code, error.unmet) == (503, "infeasible", "latency_ms 1")
    # The real best over the placements: fastest is fast's 2 ms, cheapest slow's 1 core × 5 ms, accuracy 0.9.
    assert error.best.latency_ms == 2.0 * P99
    assert error.best.cost == pytest.approx(min(4 * 2.0, 1 * 5.0) * 0.048 / 3_600_000)
    assert error.best.accuracy == 0.9
    assert "latency 2.4 ms, accuracy 0.9, cost $6.67e-08/query" in str(error) and "nothing was run" in str(error)
    # No queue: waiting cannot help, so no Retry-After.
    assert "Retry-After" not in error.headers
    # Best effort (the default) serves the fastest, flagged.
    decision = select(Requirements(model="m", latency_ms=1), both, loaded, PRICES)
    assert decision.variant.name == "fast" and decision.slo_at_risk


def test_the_best_achievable_are_minima_over_every_qualifying_placement() -> None:
    accurate_slow = candidate("m", "accurate", {1: 9.0}, accuracy=0.97, threads=1)
    quick = candidate("m", "quick", {1: 3.0}, accuracy=0.85, threads=2)
    cheap_cold = candidate("m", "cheap", {1: 4.0}, accuracy=0.9, threads=1, load_ms=50.0)
    too_inaccurate = candidate("m", "int8", {1: 0.5}, accuracy=0.5)  # below the floor: not achievable
    snapshot = live(
        worker("w1"), worker("w2"), loaded={"m/accurate": [("w1", 1)], "m/quick": [("w2", 1)], "m/int8": [("w1", 1)]}
    )
    every = [accurate_slow, quick, cheap_cold, too_inaccurate]
    with pytest.raises(Infeasible) as excinfo:
        select(Requirements(model="m", latency_ms=2, min_accuracy=0.8, on_infeasible="reject"), every, snapshot, PRICES)
    best = excinfo.value.best
    per_ms = 0.048 / 3_600_000
    costs = {
        "accurate": [9.0 * per_ms, (100 + 9.0) * per_ms],  # loaded on w1, cold on w2
        "quick": [2 * 3.0 * per_ms, 2 * (100 + 3.0) * per_ms],
        "cheap": [(50 + 4.0) * per_ms],  # cold only
    }
    assert best.latency_ms == 3.0 * P99 and best.accuracy == 0.97
    assert best.cost == pytest.approx(min(c for cs in costs.values() for c in cs))


def test_queueing_is_the_only_reason_that_earns_a_retry_after() -> None:
    # slow alone takes 6 ms (p99); 3 rows outstanding add a batch-8 round (24 ms): once drained it would meet 6 ms.
    busy = live(loaded={"m/slow": [("w1", 1)]}, depth={("w1", "m/slow"): 3})
    with pytest.raises(Infeasible) as excinfo:
        select(Requirements(model="m", latency_ms=6, on_infeasible="reject"), [SLOW_CHEAP], busy, PRICES)
    assert excinfo.value.headers == {"Retry-After": "1"} and excinfo.value.best.latency_ms == (5.0 + 20.0) * P99
    # A budget below the service time itself: retrying cannot help.
    with pytest.raises(Infeasible) as excinfo:
        select(Requirements(model="m", latency_ms=4, on_infeasible="reject"), [SLOW_CHEAP], busy, PRICES)
    assert "Retry-After" not in excinfo.value.headers


def test_max_cost_is_a_hard_limit_whatever_on_infeasible_says() -> None:
    snapshot = live(loaded={"m/fast": [("w1", 1)], "m/slow": [("w1", 1)]})
    cheapest = 5.0 * 0.048 / 3_600_000  # slow: 1 core × 5 ms
    for on_infeasible in ("best_effort", "reject"):
        with pytest.raises(Infeasible) as excinfo:
            select(
                Requirements(model="m", max_cost=cheapest / 2, on_infeasible=on_infeasible),  # type: ignore[arg-type]
                [FAST_PRICEY, SLOW_CHEAP],
                snapshot,
                PRICES,
            )
        assert excinfo.value.unmet.startswith("max_cost") and "a hard limit" in str(excinfo.value)
        assert excinfo.value.best.cost == pytest.approx(cheapest) and excinfo.value.best.latency_ms == 2.0 * P99
        assert "Retry-After" not in excinfo.value.headers
    # At exactly the cheapest cost it is served.
    assert select(Requirements(model="m", max_cost=cheapest), [FAST_PRICEY, SLOW_CHEAP], snapshot, PRICES).loaded


@pytest.mark.parametrize(
    ("value", "expected"), [(None, "best_effort"), ("best_effort", "best_effort"), ("reject", "reject")]
)
def test_on_infeasible_values(value: object, expected: str) -> None:
    assert parse_on_infeasible(value, "on_infeasible") == expected


@pytest.mark.parametrize("value", ["drop", "REJECT", "", 1, True, ["reject"]])
def test_bad_on_infeasible_is_a_bad_request_naming_the_allowed_values(value: object) -> None:
    with pytest.raises(BadRequest, match='\'slo_on_infeasible\' must be "best_effort" or "reject"'):
        parse_on_infeasible(value, "slo_on_infeasible")


# -- room for a cold placement ---------------------------------------------------------------------------


def test_a_cold_placement_needs_free_memory_not_just_budget() -> None:
    # w1 has the budget but 950 of its 1000 MB are held by a busy instance; w2 has room.
    full = worker("w1", memory_used_mb=950.0)
    roomy = worker("w2", memory_used_mb=800.0)
    snapshot = live(full, roomy, loaded={"m/other": [("w1", 1)]}, depth={("w1", "m/other"): 1})
    decision = select(Requirements(model="m"), [SLOW_CHEAP], snapshot, PRICES)  # needs 100 MB
    assert decision.worker == "w2" and not decision.loaded
    with pytest.raises(NoWorkerAvailable, match="has room"):
        select(
            Requirements(model="m"),
            [SLOW_CHEAP],
            live(full, loaded={"m/other": [("w1", 1)]}, depth={("w1", "m/other"): 1}),
            PRICES,
        )


def test_idle_instances_count_as_room_since_the_worker_evicts_them() -> None:
    # The 950 MB used is one idle instance of 100 MB plus others busy: 50 free + 100 idle ≥ 100 needed.
    snapshot = live(
        worker("w1", memory_used_mb=950.0),
        loaded={"m/idle": [("w1", 1)], "m/busy": [("w1", 1)]},
        depth={("w1", "m/busy"): 2},
    )
    decision = select(Requirements(model="m"), [SLOW_CHEAP], snapshot, PRICES)
    assert decision.worker == "w1" and not decision.loaded


def test_excluded_placements_move_the_query_to_the_next_one() -> None:
    snapshot = live(worker("w1"), worker("w2", memory_used_mb=100.0))
    first = select(Requirements(model="m"), [SLOW_CHEAP], snapshot, PRICES)
    assert (first.worker, first.loaded) == ("w1", False)  # cold on the emptiest worker
    second = select(Requirements(model="m"), [SLOW_CHEAP], snapshot, PRICES, exclude={("m/slow", "w1")})
    assert (second.worker, second.loaded) == ("w2", False)
    with pytest.raises(NoWorkerAvailable, match="lack of memory"):
        select(Requirements(model="m"), [SLOW_CHEAP], snapshot, PRICES, exclude={("m/slow", "w1"), ("m/slow", "w2")})
    # A loaded placement can be excluded too (its reload failed): the next cheapest is taken.
    loaded = live(worker("w1"), worker("w2"), loaded={"m/fast": [("w1", 1)]})
    both = [FAST_PRICEY, SLOW_CHEAP]
    assert select(Requirements(model="m"), both, loaded, PRICES).variant.name == "fast"
    after = select(Requirements(model="m"), both, loaded, PRICES, exclude={("m/fast", "w1")})
    assert (after.variant.name, after.loaded) == ("slow", False)


def test_at_risk_only_for_queueing_or_a_load_is_not_infeasible_but_below_the_service_time_is() -> None:
    # slow alone takes 6 ms (p99); 3 rows outstanding add a batch-8 round: at risk, but replicas would fix it.
    busy = live(loaded={"m/slow": [("w1", 1)]}, depth={("w1", "m/slow"): 3})
    queued = select(Requirements(model="m", latency_ms=7), [SLOW_CHEAP], busy, PRICES)
    assert queued.slo_at_risk and not queued.infeasible
    # Cold only: the 100 ms load is what misses 50 ms; loading it (capacity) fixes that.
    cold = select(Requirements(model="m", latency_ms=50), [SLOW_CHEAP], live(), PRICES)
    assert cold.slo_at_risk and not cold.infeasible
    # Below every placement's own service time: nothing capacity can do.
    for snapshot in (busy, live()):
        hopeless = select(Requirements(model="m", latency_ms=4), [SLOW_CHEAP], snapshot, PRICES)
        assert hopeless.slo_at_risk and hopeless.infeasible and "infeasible even with empty queues" in hopeless.reason
    met = select(Requirements(model="m", latency_ms=100), [SLOW_CHEAP], live(loaded={"m/slow": [("w1", 1)]}), PRICES)
    assert not met.slo_at_risk and not met.infeasible


def _dynamic(name: str, latencies: dict[int, float]) -> Candidate:
    """A batch-dependent variant (dynamic INT8): its profiles say a row's answer depends on its batch."""
    c = candidate("m", name, latencies)
    measured = tuple(replace(p, batch_invariant=False) for p in c.variant.profiles)
    return Candidate.of(c.model, replace(c.variant, profiles=measured))


def test_batch_invariant_near_tie_wins_under_load_only() -> None:
    """all-MiniLM-L6-v2's case: dynamic INT8 1.47 ms a row unbatched, static INT8 2.80 ms at batch 1 but 11.40 ms at
    batch 8 (1.43 a row). Idle, the dynamic one is cheaper; with rows outstanding on it, the static one serves."""
    dynamic = _dynamic("dynamic", {1: 1.47, 8: 11.8})
    static = candidate("m", "static", {1: 2.80, 8: 11.40})
    both = {dynamic.key: [("w1", 1)], static.key: [("w1", 1)]}
    idle = select(Requirements(task="classify"), [dynamic, static], live(loaded=both), PRICES)
    assert idle.variant.name == "dynamic"
    busy = live(loaded=both, depth={("w1", dynamic.key): 3})
    chosen = select(Requirements(task="classify"), [dynamic, static], busy, PRICES)
    assert chosen.variant.name == "static"
    assert "batch-invariant" in chosen.reason
    # Rows outstanding on the static variant alone are not load on the dynamic one: nothing to drain row by row.
    other = live(loaded=both, depth={("w1", static.key): 3})
    assert select(Requirements(task="classify"), [dynamic, static], other, PRICES).variant.name == "dynamic"


def test_batch_invariant_outside_the_band_or_cold_loses_under_load() -> None:
    """Batched 12% dearer than the dynamic variant (outside INVARIANT_BAND), or not loaded (its load is priced in):
    the dynamic variant keeps the query."""
    dynamic = _dynamic("dynamic", {1: 1.47, 8: 11.8})
    dear = candidate("m", "static", {1: 2.80, 8: 1.47 * 8 * 1.12})
    busy = {("w1", dynamic.key): 3}
    loaded = live(loaded={dynamic.key: [("w1", 1)], dear.key: [("w1", 1)]}, depth=busy)
    assert select(Requirements(task="classify"), [dynamic, dear], loaded, PRICES).variant.name == "dynamic"
    cheap = candidate("m", "static", {1: 2.80, 8: 11.40})
    cold = live(loaded={dynamic.key: [("w1", 1)]}, depth=busy)
    assert select(Requirements(task="classify"), [dynamic, cheap], cold, PRICES).variant.name == "dynamic"


def test_batched_ms_is_the_rows_share_of_a_best_batch_run() -> None:
    curve = candidate("m", "static", {1: 2.80, 8: 11.40}).curve
    assert curve.batched_ms(1) == pytest.approx(11.40 / 8)
    assert curve.batched_ms(8) == pytest.approx(11.40)
    assert _dynamic("dynamic", {1: 1.47, 8: 11.8}).curve.batched_ms(1) == pytest.approx(1.47)
