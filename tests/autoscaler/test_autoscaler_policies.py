"""The autoscaler policies as pure functions of hand-made cluster states: every rule, and no flapping."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from autoscaler import model_level, vm_level
from autoscaler.policy_types import (
    ClusterView,
    History,
    InstanceLoad,
    PolicyConfig,
    VariantOption,
    WorkerLoad,
    effective_capacity,
    next_streak,
)
from infaas.accuracy import Fidelity

CFG = PolicyConfig(idle_unload_s=60.0)


def option(
    key: str = "m/fp32",
    accuracy: float = 0.95,
    p50: float = 10.0,
    memory: float = 100.0,
    cores: int = 1,
    cost: float = 0.048,
) -> VariantOption:
    """One replica serves 1000/p50 per second at batch 1 and twice that at batch 4 (2×p50)."""
    return VariantOption(
        key=key,
        model=key.split("/")[0],
        accuracy=accuracy,
        curve=((1, p50, 1000.0 / p50), (4, 2 * p50, 4000.0 / (2 * p50))),
        p99_ms=p50 * 1.5,
        memory_mb=memory,
        cores=cores,
        cost_per_hour=cost,
    )


def inst(key: str = "m/fp32", worker: str = "w1", **kw: float) -> InstanceLoad:
    fields = dict(replicas=1, queue_depth=0, rate_per_s=0.0, p99_ms=0.0, slo_miss_rate=0.0, idle_s=0.0)
    fields.update(kw)
    return InstanceLoad(worker_id=worker, variant_key=key, **fields)  # type: ignore[arg-type]


def view(
    instances: list[InstanceLoad],
    variants: list[VariantOption],
    now: float = 100.0,
    cores: int = 4,
    memory: float = 1000.0,
    extra_workers: tuple[WorkerLoad, ...] = (),
) -> ClusterView:
    used = sum(i.replicas * next(v.memory_mb for v in variants if v.key == i.variant_key) for i in instances)
    worker = WorkerLoad("w1", cores, memory, used, tuple(instances), removable=False)
    return ClusterView(now=now, workers=(worker, *extra_workers), variants={v.key: v for v in variants})


def run_periods(make_view, periods: int, history: History | None = None, start: float = 100.0, step: float = 1.0):
    """Run the model policy ``periods`` times; returns every action and the final history."""
    history = history or History()
    actions = []
    for n in range(periods):
        plan = model_level.decide(make_view(start + n * step), history, CFG)
        history = plan.history
        actions.extend(plan.actions)
    return actions, history


# -- streaks -----------------------------------------------------------------------------------


def test_streak_counts_consecutive_periods_and_resets_in_band() -> None:
    assert next_streak(0, True, False) == 1
    assert next_streak(2, True, False) == 3
    assert next_streak(3, False, True) == -1
    assert next_streak(-2, False, True) == -3
    assert next_streak(5, False, False) == 0


# -- model level: scale up ---------------------------------------------------------------------


def test_overload_must_persist_before_a_replica_is_added() -> None:
    # 1 replica serves 200/s (batch 4 within half of no budget); 300/s is 1.5× over.
    hot = lambda now: view([inst(rate_per_s=300.0)], [option()], now=now)  # noqa: E731
    first = model_level.decide(hot(100.0), History(), CFG)
    assert first.actions == ()  # one overloaded period is not enough (hysteresis)
    second = model_level.decide(hot(101.0), first.history, CFG)
    assert [a.action for a in second.actions] == ["add_replica"]
    action = second.actions[0]
    assert action.count == 2  # 300/s at 60% of 200/s per replica needs 3
    assert action.inputs["utilization"] == 1.5 and action.inputs["rate_per_s"] == 300.0
    assert "overloaded" in action.reason


def test_replicas_are_limited_by_the_worker_core_budget() -> None:
    plan, _ = run_periods(lambda now: view([inst(rate_per_s=1000.0)], [option()], now=now, cores=2), 2)
    assert [(a.action, a.count) for a in plan] == [("add_replica", 1)]


def test_an_idle_warm_variant_does_not_hold_a_core_against_a_hot_one() -> None:
    # 2 cores: the hot variant runs at 0.9 of one replica, another model's variant is loaded but idle.
    idle = option("other/fp32", accuracy=0.9)
    hot = lambda now: view(  # noqa: E731
        [inst(rate_per_s=180.0), inst("other/fp32", rate_per_s=0.0)], [option(), idle], now=now, cores=2
    )
    actions, _ = run_periods(hot, 2)
    assert [(a.action, a.count) for a in actions] == [("add_replica", 1)]


def test_replicas_never_run_more_threads_than_the_worker_has_cores() -> None:
    # 2 one-thread replicas on 2 cores missing objectives at 0.4 utilization (0.8 busy cores): the cores
    # left idle are not room for a third replica, it would only contend with the two.
    slow = dict(rate_per_s=160.0, replicas=2, slo_miss_rate=0.1, p99_ms=100.0)
    hot = lambda now: view([inst(**slow)], [option()], now=now, cores=2)  # noqa: E731
    plan = model_level.decide(hot(101.0), model_level.decide(hot(100.0), History(), CFG).history, CFG)
    assert [a.action for a in plan.actions] == [] and plan.unmet == ("w1/m/fp32",)


def test_a_busy_neighbour_does_hold_its_core() -> None:
    # The neighbour keeps one core busy (200/s of its 200/s): the hot variant's 0.9 leaves 0.1 core.
    busy = option("other/fp32", accuracy=0.9)
    hot = lambda now: view(  # noqa: E731
        [inst(rate_per_s=180.0), inst("other/fp32", rate_per_s=150.0)], [option(), busy], now=now, cores=2
    )
    plan = model_level.decide(hot(101.0), model_level.decide(hot(100.0), History(), CFG).history, CFG)
    assert [a.action for a in plan.actions] == []
    assert plan.unmet == ("w1/m/fp32",)  # reported to the VM level instead


def test_cooldown_stops_a_second_action_on_the_same_instance() -> None:
    hot = lambda now: view([inst(rate_per_s=300.0)], [option()], now=now)  # noqa: E731
    actions, history = run_periods(hot, 2)
    assert len(actions) == 1
    # Still overloaded (the new replicas are not reported yet) one second later: cooling, no action.
    again = model_level.decide(hot(102.0), history, CFG)
    again = model_level.decide(hot(102.5), again.history, CFG)
    assert again.actions == ()


def test_slow_instance_with_slo_misses_is_overloaded_even_at_low_rate() -> None:
    slow = lambda now: view(  # noqa: E731
        [inst(rate_per_s=80.0, slo_miss_rate=0.2, p99_ms=40.0)], [option()], now=now
    )
    actions, _ = run_periods(slow, 2)
    assert [a.action for a in actions] == ["add_replica"]


def test_a_queue_that_would_eat_half_the_budget_is_overload_before_the_rate_shows_it() -> None:
    # 10 ms per query, 100 ms budget: 6 waiting behind 1 replica is 60 ms of queue.
    def burst(depth: int):  # type: ignore[no-untyped-def]
        return lambda now: view([inst(rate_per_s=50.0, queue_depth=depth, budget_ms=100.0)], [option()], now=now)

    actions, _ = run_periods(burst(7), 2)
    assert [a.action for a in actions] == ["add_replica"] and actions[0].inputs["queue_ms"] == 60.0
    assert run_periods(burst(5), 5)[0] == []  # 40 ms of queue is within half the budget


def test_without_a_budget_rows_waiting_two_periods_in_a_row_are_overload() -> None:
    # 16 connections, no latency budget, the profile says 25% utilization (50/s of 200/s): the serving path, not
    # the model, limits, and 15 rows wait at every read (the peers benchmark's MiniLM). A replica comes after
    # up_periods; a queue that is not standing (one row per replica, nothing waiting) adds nothing.
    def load(depth: int):  # type: ignore[no-untyped-def]
        return lambda now: view([inst(rate_per_s=50.0, queue_depth=depth)], [option()], now=now)

    assert run_periods(load(16), 1)[0] == []
    actions, _ = run_periods(load(16), 2)
    assert [a.action for a in actions] == ["add_replica"] and actions[0].inputs["waiting_rows"] == 15.0
    assert run_periods(load(1), 5)[0] == []


def test_queue_depth_is_rows_so_multi_row_queries_are_not_counted_row_by_row() -> None:
    # 8-row queries take 40 ms by profile (20 ms per 4 rows); depth counts rows outstanding. 16 rows on one replica
    # is one query running and one waiting: 40 ms of queue, within half the 100 ms budget. Counting each row as a
    # request read it as 15 waiting (600 ms) and scaled up.
    def burst(depth: int):  # type: ignore[no-untyped-def]
        load = inst(rate_per_s=50.0, queue_depth=depth, budget_ms=100.0, rows_per_query=8.0)
        return lambda now: view([load], [option()], now=now)

    assert run_periods(burst(16), 5)[0] == []
    actions, _ = run_periods(burst(24), 2)  # two 8-row queries waiting: 80 ms > 50 ms
    assert [a.action for a in actions] == ["add_replica"]
    assert actions[0].inputs["queue_ms"] == 80.0 and actions[0].inputs["waiting_rows"] == 16.0


def test_misses_below_the_threshold_derate_the_profile_so_the_new_replica_stays() -> None:
    # 80/s on one replica profiled at 200/s is 0.4 utilization, yet it misses: it really sustains less.
    missing = lambda now: view([inst(rate_per_s=80.0, slo_miss_rate=0.2, p99_ms=40.0)], [option()], now=now)  # noqa: E731
    actions, history = run_periods(missing, 2)
    assert [a.action for a in actions] == ["add_replica"]
    assert history.derate["w1/m/fp32"] == 0.5  # 0.4 / high_utilization 0.8
    # Two replicas, same rate, no misses: 0.2 by the profile would be removed; derated it is 0.4, kept.
    calm = lambda now: view([inst(rate_per_s=80.0, replicas=2)], [option()], now=now)  # noqa: E731
    later, history = run_periods(calm, CFG.down_periods + 10, history, start=120.0)
    assert later == []
    assert 0.5 < history.derate["w1/m/fp32"] < 1.0  # calm periods let it recover slowly


def test_a_derating_is_forgotten_with_its_instance() -> None:
    history = History(derate={"w1/m/fp32": 0.5, "w1/gone/fp32": 0.4})
    plan = model_level.decide(view([inst(rate_per_s=10.0)], [option()]), history, CFG)
    assert set(plan.history.derate) == {"w1/m/fp32"}


def test_misses_at_negligible_load_do_not_replicate() -> None:
    idle = lambda now: view([inst(rate_per_s=5.0, slo_miss_rate=0.2, p99_ms=40.0)], [option()], now=now)  # noqa: E731
    actions, _ = run_periods(idle, 10)
    assert actions == []


def test_upgrade_to_a_faster_variant_when_replication_does_not_fit() -> None:
    fp32 = option("m/fp32", accuracy=0.95, p50=10.0)
    int8 = option("m/int8", accuracy=0.94, p50=2.0)  # 5× the capacity, same cost
    hot = lambda now: view([inst(rate_per_s=300.0, accuracy_floor=0.9)], [fp32, int8], now=now, cores=1)  # noqa: E731
    actions, history = run_periods(hot, 2)
    assert [(a.action, a.to_variant) for a in actions] == [("upgrade", "m/int8")]
    assert "does not fit" in actions[0].reason
    # The new instance starts in its scale-up cool-down: no immediate downgrade back.
    assert "w1/m/int8" in history.last_up


def test_upgrade_is_preferred_when_it_adds_less_cost_than_replicating() -> None:
    fp32 = option("m/fp32", p50=10.0)
    int8 = option("m/int8", p50=2.0, accuracy=0.94)
    actions, _ = run_periods(lambda now: view([inst(rate_per_s=300.0)], [fp32, int8], now=now), 2)
    assert [a.action for a in actions] == ["upgrade"]


def test_capacity_is_judged_at_the_rows_queries_really_send() -> None:
    fp32 = option("m/fp32", p50=10.0)  # 100 rows/s at batch 1, 200 at batch 4
    # Five times faster at batch 1, but no faster at batch 4: useless for 4-row queries.
    small_only = VariantOption("m/int8", "m", 0.95, ((1, 2.0, 500.0), (4, 20.0, 200.0)), 3.0, 100.0, 1, 0.048)
    hot = lambda now: view([inst(rate_per_s=300.0, rows_per_query=4.0)], [fp32, small_only], now=now)  # noqa: E731
    actions, _ = run_periods(hot, 2)
    assert [a.action for a in actions] == ["add_replica"]
    assert actions[0].inputs["capacity_per_replica_per_s"] == 200.0
    one_row = lambda now: view([inst(rate_per_s=300.0)], [fp32, small_only], now=now)  # noqa: E731
    assert [a.action for a in run_periods(one_row, 2)[0]] == ["upgrade"]  # 500/s vs 200/s for 1-row queries


def test_an_upgrade_must_beat_every_replica_it_replaces() -> None:
    # Two one-thread replicas fill the 2 cores; the two-thread variant is 1.4× one of them, 0.7× both.
    t1 = option("m/t1", p50=10.0, cores=1)
    t2 = VariantOption("m/t2", "m", 0.95, ((1, 7.0, 140.0), (4, 14.0, 280.0)), 10.5, 100.0, 2, 0.096)
    slow = dict(rate_per_s=160.0, replicas=2, slo_miss_rate=0.1, p99_ms=100.0)
    hot = lambda now: view([inst("m/t1", **slow)], [t1, t2], now=now, cores=2)  # noqa: E731
    actions, _ = run_periods(hot, 3)
    assert [a.action for a in actions] == []  # neither more replicas nor that upgrade fit: left to the VM level


def test_no_upgrade_below_the_accuracy_floor_queries_asked_for() -> None:
    fp32 = option("m/fp32", accuracy=0.95, p50=10.0)
    int8 = option("m/int8", accuracy=0.80, p50=2.0)
    hot = lambda now: view([inst(rate_per_s=300.0, accuracy_floor=0.9)], [fp32, int8], now=now)  # noqa: E731
    actions, _ = run_periods(hot, 2)
    assert [a.action for a in actions] == ["add_replica"]


def test_no_upgrade_below_the_fidelity_floor_queries_asked_for() -> None:
    fp32 = replace(option("m/fp32", p50=10.0), fidelity=Fidelity(1.0, "agreement"))
    int8 = replace(option("m/int8", p50=2.0), fidelity=Fidelity(0.90, "agreement"))  # 5× faster, less faithful

    def hot(floor: float):  # type: ignore[no-untyped-def]
        load = inst(rate_per_s=300.0, accuracy_floor=0.9, fidelity_floor=floor)
        return lambda now: view([load], [fp32, int8], now=now)

    assert [a.action for a in run_periods(hot(0.95), 2)[0]] == ["add_replica"]
    assert [a.to_variant for a in run_periods(hot(0.9), 2)[0]] == ["m/int8"]  # faithful enough: upgraded


def test_an_accuracy_in_another_metric_does_not_meet_the_floor() -> None:
    fp32 = replace(option("m/fp32", accuracy=0.95, p50=10.0), accuracy_metric="top1")
    int8 = replace(option("m/int8", accuracy=0.95, p50=2.0), accuracy_metric="1-rel-error")
    hot = lambda floor: lambda now: view([inst(rate_per_s=300.0, accuracy_floor=floor)], [fp32, int8], now=now)  # noqa: E731
    assert [a.action for a in run_periods(hot(0.9), 2)[0]] == ["add_replica"]
    assert [a.action for a in run_periods(hot(0.0), 2)[0]] == ["upgrade"]  # no floor: any metric will do


def test_no_downgrade_below_the_fidelity_floor() -> None:
    two_threads = replace(option("m/t2", p50=5.0, cores=2, cost=0.096), fidelity=Fidelity(1.0, "cosine"))
    one_thread = replace(option("m/t1", p50=8.0, cores=1, cost=0.048), fidelity=Fidelity(None, None))  # unmeasured

    def quiet(floor: float):  # type: ignore[no-untyped-def]
        load = inst("m/t2", rate_per_s=10.0, budget_ms=100.0, fidelity_floor=floor)
        return lambda now: view([load], [two_threads, one_thread], now=now)

    assert run_periods(quiet(0.99), CFG.down_periods + 3)[0] == []
    assert [a.action for a in run_periods(quiet(0.0), CFG.down_periods)[0]] == ["downgrade"]


def test_demand_that_fits_nowhere_here_is_placed_on_another_worker_else_unmet() -> None:
    other = WorkerLoad("w2", 2, 1000.0, 0.0)
    hot = lambda now: view([inst(rate_per_s=1000.0)], [option()], now=now, cores=1, extra_workers=(other,))  # noqa: E731
    first = model_level.decide(hot(100.0), History(), CFG)
    plan = model_level.decide(hot(101.0), first.history, CFG)
    assert [(a.action, a.worker, a.count) for a in plan.actions] == [("place", "w2", 2)]
    assert plan.unmet == ("w1/m/fp32",)  # needs 9 replicas, 2 fit on w2


TRT = ("gpu", "tensorrt")  # what infaas.hardware_kinds.required_hardware says a TensorRT variant needs


def _on(worker_kinds: tuple[str, ...], cluster: ClusterView) -> ClusterView:
    """``cluster`` with its first worker (w1) advertising ``worker_kinds``."""
    first, *rest = cluster.workers
    return replace(cluster, workers=(replace(first, hardware=worker_kinds), *rest))


def test_an_upgrade_only_swaps_in_a_variant_the_worker_runs() -> None:
    cuda = replace(option("m/cuda", p50=10.0), hardware=("gpu",))
    trt = replace(option("m/trt", p50=2.0), hardware=TRT)  # 5× faster, same cost
    hot = lambda kinds: lambda now: _on(kinds, view([inst("m/cuda", rate_per_s=300.0)], [cuda, trt], now=now))  # noqa: E731
    assert [a.action for a in run_periods(hot(("cpu", "gpu")), 2)[0]] == ["add_replica"]
    assert [a.to_variant for a in run_periods(hot(("cpu", "gpu", "tensorrt")), 2)[0]] == ["m/trt"]


def test_demand_is_placed_only_on_workers_that_run_the_variant() -> None:
    trt = replace(option("m/trt"), hardware=TRT)
    gpu_only = WorkerLoad("g2", 2, 1000.0, 0.0, hardware=("cpu", "gpu"))  # more room, but no TensorRT
    with_trt = WorkerLoad("t3", 1, 500.0, 0.0, hardware=("cpu", "gpu", "tensorrt"))
    hot = lambda now: _on(  # noqa: E731
        ("cpu", "gpu", "tensorrt"),
        view([inst("m/trt", rate_per_s=1000.0)], [trt], now=now, cores=1, extra_workers=(gpu_only, with_trt)),
    )
    first = model_level.decide(hot(100.0), History(), CFG)
    plan = model_level.decide(hot(101.0), first.history, CFG)
    assert [(a.action, a.worker) for a in plan.actions] == [("place", "t3")]


# -- model level: scale down -------------------------------------------------------------------


def test_underload_removes_replicas_only_after_down_periods() -> None:
    cold = lambda now: view([inst(replicas=3, rate_per_s=20.0)], [option()], now=now)  # noqa: E731
    actions, _ = run_periods(cold, CFG.down_periods - 1)
    assert actions == []
    actions, _ = run_periods(cold, CFG.down_periods)
    assert [(a.action, a.count) for a in actions] == [("remove_replica", 2)]


def test_no_scale_down_right_after_a_scale_up() -> None:
    cold = lambda now: view([inst(replicas=3, rate_per_s=20.0)], [option()], now=now)  # noqa: E731
    history = History(last_up={"w1/m/fp32": 100.0}, last_action={"w1/m/fp32": 100.0})
    actions, _ = run_periods(cold, CFG.down_periods + 2, history=history, start=100.0)
    assert actions == []  # down_after_up_s (10 s) has not passed


def test_load_in_the_band_between_thresholds_does_nothing() -> None:
    # 2 replicas × 200/s at 50% utilization: neither over 0.8 nor under 0.3.
    steady = lambda now: view([inst(replicas=2, rate_per_s=200.0)], [option()], now=now)  # noqa: E731
    actions, history = run_periods(steady, 30)
    assert actions == [] and history.streak("w1/m/fp32") == 0


def test_alternating_load_around_a_threshold_does_not_flap() -> None:
    def flicker(now: float) -> ClusterView:
        rate = 170.0 if int(now) % 2 else 100.0  # over 0.8 every other period only
        return view([inst(rate_per_s=rate)], [option()], now=now)

    actions, _ = run_periods(flicker, 20)
    assert actions == []


def test_scale_down_lands_inside_the_band_so_it_does_not_scale_back_up() -> None:
    cold = lambda now: view([inst(replicas=4, rate_per_s=150.0)], [option()], now=now)  # noqa: E731
    actions, _ = run_periods(cold, CFG.down_periods)
    assert [(a.action, a.count) for a in actions] == [("remove_replica", 2)]
    kept = 4 - actions[0].count
    after = lambda now: view([inst(replicas=kept, rate_per_s=150.0)], [option()], now=now)  # noqa: E731
    more, _ = run_periods(after, 20, start=200.0)
    assert more == []


def test_downgrade_to_a_cheaper_variant_when_load_is_low_and_budget_loose() -> None:
    two_threads = option("m/t2", p50=5.0, cores=2, cost=0.096)
    one_thread = option("m/t1", p50=8.0, cores=1, cost=0.048)
    quiet = lambda now: view([inst("m/t2", rate_per_s=10.0, budget_ms=100.0)], [two_threads, one_thread], now=now)  # noqa: E731
    actions, _ = run_periods(quiet, CFG.down_periods)
    assert [(a.action, a.to_variant) for a in actions] == [("downgrade", "m/t1")]


def test_no_downgrade_when_the_budget_is_tight() -> None:
    two_threads = option("m/t2", p50=5.0, cores=2, cost=0.096)
    one_thread = option("m/t1", p50=8.0, cores=1, cost=0.048)  # p99 12 ms > half of 20 ms
    quiet = lambda now: view([inst("m/t2", rate_per_s=10.0, budget_ms=20.0)], [two_threads, one_thread], now=now)  # noqa: E731
    actions, _ = run_periods(quiet, CFG.down_periods + 3)
    assert actions == []


def test_a_downgrade_is_judged_at_the_rows_queries_really_send() -> None:
    two_threads = option("m/t2", p50=5.0, cores=2, cost=0.096)
    one_thread = option("m/t1", p50=8.0, cores=1, cost=0.048)  # 4-row query: p50 16 ms, p99 24 ms

    def quiet(rows: float):  # type: ignore[no-untyped-def]
        load = inst("m/t2", rate_per_s=10.0, budget_ms=40.0, rows_per_query=rows)
        return lambda now: view([load], [two_threads, one_thread], now=now)

    assert [a.action for a in run_periods(quiet(1.0), CFG.down_periods)[0]] == ["downgrade"]  # p99 12 ≤ 20
    assert run_periods(quiet(4.0), CFG.down_periods + 3)[0] == []  # p99 24 ms > half of 40 ms


def test_slowness_is_judged_against_the_profile_at_the_query_size() -> None:
    # 4-row queries take 20 ms by profile (p99 30 ms): an observed p99 of 40 ms is not slow at 4 rows.
    observed = dict(rate_per_s=80.0, slo_miss_rate=0.2, p99_ms=40.0)
    at_four = lambda now: view([inst(rows_per_query=4.0, **observed)], [option()], now=now)  # noqa: E731
    assert run_periods(at_four, 3)[0] == []
    at_one = lambda now: view([inst(**observed)], [option()], now=now)  # noqa: E731
    assert [a.action for a in run_periods(at_one, 2)[0]] == ["add_replica"]


def test_idle_instance_is_unloaded_after_idle_unload_s() -> None:
    fresh = view([inst(idle_s=30.0)], [option()])
    assert model_level.decide(fresh, History(), CFG).actions == ()
    stale = view([inst(idle_s=61.0)], [option()])
    assert [a.action for a in model_level.decide(stale, History(), CFG).actions] == ["unload"]
    busy = view([inst(idle_s=61.0, queue_depth=1)], [option()])
    assert model_level.decide(busy, History(), CFG).actions == ()


# -- VM level ----------------------------------------------------------------------------------


def cluster(
    rates: dict[str, float],
    now: float = 100.0,
    draining: tuple[str, ...] = (),
    depth: dict[str, int] | None = None,
    miss: float = 0.0,
    min_workers: int = 1,
    max_workers: int = 3,
    pending: int = 0,
) -> ClusterView:
    """Workers with 2 cores each running one 1-core variant at 200/s per replica."""
    depth = depth or {}
    workers = tuple(
        WorkerLoad(
            wid,
            2,
            1000.0,
            100.0,
            (inst(worker=wid, rate_per_s=rate, queue_depth=depth.get(wid, 0), slo_miss_rate=miss),),
            draining=wid in draining,
            removable=wid != "local",
        )
        for wid, rate in rates.items()
    )
    return ClusterView(
        now=now,
        workers=workers,
        variants={"m/fp32": option()},
        min_workers=min_workers,
        max_workers=max_workers,
        pending_workers=pending,
    )


def run_vm(make_view, periods: int, history: History | None = None, start: float = 100.0, step: float = 10.0, **kw):
    history = history or History()
    actions = []
    for n in range(periods):
        plan = vm_level.decide(make_view(start + n * step), history, CFG, **kw)
        history = plan.history
        actions.extend(plan.actions)
    return actions, history


def test_high_utilization_adds_a_worker_after_vm_up_periods() -> None:
    hot = lambda now: cluster({"local": 400.0}, now=now)  # noqa: E731  # 2 busy cores of 2
    first = vm_level.decide(hot(100.0), History(), CFG)
    assert first.actions == ()
    second = vm_level.decide(hot(110.0), first.history, CFG)
    assert [a.action for a in second.actions] == ["add_worker"]
    assert second.actions[0].inputs["utilization"] == 1.0


def test_persistent_slo_misses_or_unmet_demand_add_a_worker() -> None:
    actions, _ = run_vm(lambda now: cluster({"local": 150.0}, now=now, miss=0.1), 2)
    assert [a.action for a in actions] == ["add_worker"]
    assert run_vm(lambda now: cluster({"local": 20.0}, now=now, miss=0.1), 5)[0] == []  # negligible load
    actions, _ = run_vm(lambda now: cluster({"local": 50.0}, now=now), 2, unmet=("local/m/fp32",))
    assert [a.action for a in actions] == ["add_worker"]


def test_never_more_than_max_workers_and_pending_workers_count() -> None:
    full = lambda now: cluster({"local": 400.0, "w2": 400.0, "w3": 400.0}, now=now)  # noqa: E731
    assert run_vm(full, 5)[0] == []
    pending = lambda now: cluster({"local": 400.0, "w2": 400.0}, now=now, pending=1)  # noqa: E731
    assert run_vm(pending, 5)[0] == []


def test_at_zero_min_and_max_workers_the_vm_level_leaves_operator_started_workers_alone() -> None:
    """The README's router-only front-end: the workers the operator started are all there is."""
    for rates in ({"local": 400.0}, {"local": 1.0}, {}):  # overloaded, idle, every worker gone
        actions, _ = run_vm(lambda now, r=rates: cluster(r, now=now, min_workers=0, max_workers=0), 10)
        assert actions == [], rates


def test_vm_cooldown_spaces_additions() -> None:
    hot = lambda now: cluster({"local": 400.0}, now=now, max_workers=5)  # noqa: E731
    actions, _ = run_vm(hot, 4, step=5.0)  # 20 s cool-down: the second addition waits
    assert [a.action for a in actions] == ["add_worker"]
    actions, _ = run_vm(hot, 8, step=5.0)
    assert [a.action for a in actions] == ["add_worker", "add_worker"]


def test_low_utilization_drains_the_idlest_removable_worker() -> None:
    quiet = lambda now: cluster({"local": 10.0, "w2": 5.0, "w3": 20.0}, now=now)  # noqa: E731
    actions, history = run_vm(quiet, CFG.vm_down_periods)
    assert [(a.action, a.target) for a in actions] == [("drain_worker", "w2")]
    assert "drain:w2" in history.last_action


def test_no_drain_soon_after_a_worker_was_added() -> None:
    quiet = lambda now: cluster({"local": 10.0, "w2": 5.0}, now=now)  # noqa: E731
    just_added = History(last_up={vm_level.CLUSTER: 95.0})
    # 10 s periods from t=100: the drain waits until vm_down_after_up_s (60 s) after the addition at t=95.
    assert run_vm(quiet, 6, just_added)[0] == []  # up to t=150, 55 s after
    actions, _ = run_vm(quiet, 7, just_added)  # t=160
    assert [(a.action, a.target) for a in actions] == [("drain_worker", "w2")]
    assert [a.action for a in run_vm(quiet, CFG.vm_down_periods)[0]] == ["drain_worker"]  # no addition: no wait


def test_never_below_min_workers_and_never_the_in_process_worker() -> None:
    quiet = lambda now: cluster({"local": 0.0, "w2": 0.0}, now=now, min_workers=2)  # noqa: E731
    assert run_vm(quiet, 10)[0] == []
    only_local = lambda now: cluster({"local": 0.0}, now=now)  # noqa: E731
    assert run_vm(only_local, 10)[0] == []


def test_below_min_workers_adds_one_at_once() -> None:
    actions, _ = run_vm(lambda now: cluster({"local": 0.0}, now=now, min_workers=2), 1)
    assert [a.action for a in actions] == ["add_worker"]


def test_the_only_worker_that_runs_a_busy_variant_is_not_drained() -> None:
    gpu = replace(option(), hardware=("gpu",))
    quiet = lambda now: replace(  # noqa: E731
        cluster({"local": 10.0, "w2": 5.0, "w3": 20.0}, now=now),
        variants={"m/fp32": gpu},
    )

    def kinds(gpus: set[str]):  # type: ignore[no-untyped-def]
        return lambda now: replace(
            quiet(now),
            workers=tuple(
                replace(w, hardware=("cpu", "gpu") if w.id in gpus else ("cpu",)) for w in quiet(now).workers
            ),
        )

    assert run_vm(kinds({"w2"}), CFG.vm_down_periods + 3)[0] == []  # w2, the idlest, is the only GPU worker
    actions, _ = run_vm(kinds({"local", "w2", "w3"}), CFG.vm_down_periods)
    assert [(a.action, a.target) for a in actions] == [("drain_worker", "w2")]


def test_drain_when_the_rest_stays_below_target_utilization() -> None:
    # 1.15 busy cores: 0.29 of 4 cores is underloaded, and 0.575 of the 2 left is under the 0.6 target.
    ok = lambda now: cluster({"local": 230.0, "w2": 0.0}, now=now)  # noqa: E731  # 1.15 busy: 0.29, then 0.575
    assert [a.action for a in run_vm(ok, CFG.vm_down_periods)[0]] == ["drain_worker"]


def test_drain_needs_the_rest_below_target_utilization() -> None:
    cfg = PolicyConfig(low_utilization=0.4)  # under 0.4 of 4 cores, yet 0.7 of the 2 that would remain
    quiet = lambda now: cluster({"local": 280.0, "w2": 0.0}, now=now)  # noqa: E731
    history = History()
    for n in range(cfg.vm_down_periods + 2):
        plan = vm_level.decide(quiet(100.0 + 10 * n), history, cfg)
        history = plan.history
        assert plan.actions == ()
    assert history.streak("cluster") <= -cfg.vm_down_periods


def test_drained_worker_is_removed_once_nothing_is_outstanding() -> None:
    history = History(last_action={"drain:w2": 100.0})
    busy = vm_level.decide(cluster({"local": 10.0, "w2": 0.0}, draining=("w2",), depth={"w2": 3}), history, CFG)
    assert [a.action for a in busy.actions] == []
    done = vm_level.decide(cluster({"local": 10.0, "w2": 0.0}, now=101.0, draining=("w2",)), busy.history, CFG)
    assert [(a.action, a.target) for a in done.actions] == [("remove_worker", "w2")]
    assert "drain:w2" not in done.history.last_action


def test_drain_times_out() -> None:
    history = History(last_action={"drain:w2": 0.0})
    stuck = cluster({"local": 10.0, "w2": 0.0}, now=CFG.drain_timeout_s + 1, draining=("w2",), depth={"w2": 1})
    assert [a.action for a in vm_level.decide(stuck, history, CFG).actions] == ["remove_worker"]


def test_load_returning_during_a_drain_takes_the_worker_back() -> None:
    hot = lambda now: cluster({"local": 400.0, "w2": 0.0}, now=now, draining=("w2",), depth={"w2": 1})  # noqa: E731
    actions, _ = run_vm(hot, 2)
    assert [(a.action, a.target) for a in actions] == [("undrain", "w2")]


# -- one capacity model for both levels ----------------------------------------------------------


def test_both_levels_judge_an_instance_by_the_same_derated_capacity() -> None:
    # 100/s on a 200/s replica is 0.5 busy cores as profiled; derated to a quarter it is 2 busy cores of 2.
    derate = {"local/m/fp32": 0.25}
    load = lambda now: cluster({"local": 100.0}, now=now)  # noqa: E731
    inst_load, option_ = load(0.0).workers[0].instances[0], option()
    assert effective_capacity(inst_load, option_, derate) == 50.0 == inst_load.capacity(option_) * 0.25
    assert vm_level.busy_cores(load(0.0), load(0.0).workers[0], derate) == pytest.approx(2.0)
    assert run_vm(load, 3)[0] == []  # as profiled: 0.25 utilization, in band
    actions, _ = run_vm(load, 2, derate=derate)  # as the model level sees it: overloaded
    assert [a.action for a in actions] == ["add_worker"] and actions[0].inputs["utilization"] == 1.0
    # The model level uses the same number: at 100/s on 50/s it needs ceil(100 / (50 × 0.6)) = 4 replicas.
    derated = History(derate={"w1/m/fp32": 0.25})
    actions, _ = run_periods(lambda now: view([inst(rate_per_s=100.0)], [option()], now=now), CFG.up_periods, derated)
    assert actions[0].inputs["capacity_per_replica_per_s"] == 50.0 and actions[0].inputs["needed_replicas"] == 4


# -- VM level: no flapping ------------------------------------------------------------------------

TRACE_CFG = PolicyConfig(vm_up_periods=2, vm_down_periods=3, vm_cooldown_s=4.0, vm_down_after_up_s=10.0)


def simulate(rate_at, config: PolicyConfig, seconds: float = 120.0, period_s: float = 1.5):  # type: ignore[no-untyped-def]
    """Run the VM level over a load sequence on a simulated cluster; returns every action.

    Workers have 2 cores and share the load evenly; an added worker registers one period later and a drained
    one is removed when the policy says so. ``local`` is the front-end's own worker (never removed).
    """
    workers, draining, pending, history, actions = ["local"], set(), 0, History(), []
    next_id = 2
    for n in range(int(seconds / period_s)):
        now = n * period_s
        workers += [f"w{next_id + k}" for k in range(pending)]
        next_id, pending = next_id + pending, 0
        active = [w for w in workers if w not in draining]
        rates = {w: (rate_at(now) / len(active) if w in active else 0.0) for w in workers}
        plan = vm_level.decide(
            cluster(rates, now=now, draining=tuple(draining), max_workers=3, pending=pending), history, config
        )
        history = plan.history
        for action in plan.actions:
            actions.append((now, action))
            if action.action == "add_worker":
                pending += 1
            elif action.action == "drain_worker":
                draining.add(action.target)
            elif action.action == "undrain":
                draining.discard(action.target)
            elif action.action == "remove_worker":
                workers.remove(action.target)
                draining.discard(action.target)
    return actions


def bursts(now: float) -> float:
    """The trace's shape: a 10 s burst every 40 s (1.1 of one worker's cores), and a trickle in between."""
    return 440.0 if now % 40.0 < 10.0 else 80.0


def test_bursts_every_40_s_add_one_worker_and_keep_it() -> None:
    actions = simulate(bursts, TRACE_CFG)
    names = [a.action for _t, a in actions]
    assert names.count("add_worker") == 1 and "drain_worker" not in names
    [(_t, keep)] = [(t, a) for t, a in actions if a.action == "keep_worker"]  # said once, not every period
    assert keep.target == "w2" and "vm_min_lifetime_s 600 s" in keep.reason and "not clearly idle" in keep.reason
    assert keep.inputs["worker_idle_periods"] == 0 and keep.inputs["worker_age_s"] < 600


def test_the_same_bursts_flap_without_the_minimum_lifetime() -> None:
    # What the trace run did before: added and drained a worker three times in 120 s.
    names = [a.action for _t, a in simulate(bursts, replace(TRACE_CFG, vm_min_lifetime_s=0.0))]
    assert names.count("add_worker") == 3 and names.count("drain_worker") == 3


def test_a_young_worker_is_drained_once_clearly_idle_for_several_periods() -> None:
    one_burst = lambda now: 440.0 if now < 10.0 else 0.0  # noqa: E731
    actions = simulate(one_burst, TRACE_CFG, seconds=60.0)
    [(added_at, _add)] = [(t, a) for t, a in actions if a.action == "add_worker"]
    [(drained_at, drain)] = [(t, a) for t, a in actions if a.action == "drain_worker"]
    assert drain.target == "w2" and drained_at - added_at < TRACE_CFG.vm_min_lifetime_s
    assert drain.inputs["worker_idle_periods"] >= TRACE_CFG.vm_idle_periods
    assert f"clearly idle for {drain.inputs['worker_idle_periods']} periods" in drain.reason
    # One period of trickle before that (at t=15) restarts the idle count: the drain waits idle_periods more.
    blip = lambda now: 440.0 if now < 10.0 else (80.0 if 15.0 <= now < 16.5 else 0.0)  # noqa: E731
    [(blip_drained_at, _)] = [(t, a) for t, a in simulate(blip, TRACE_CFG, seconds=60.0) if a.action == "drain_worker"]
    assert drained_at < 15.0 + TRACE_CFG.vm_idle_periods * 1.5 <= blip_drained_at


def test_workers_there_before_the_first_period_are_not_new() -> None:
    # A front-end that starts (or takes the lease) with workers running does not treat them as just added.
    quiet = lambda now: cluster({"local": 10.0, "w2": 5.0}, now=now)  # noqa: E731
    actions, history = run_vm(quiet, CFG.vm_down_periods)
    assert [(a.action, a.target) for a in actions] == [("drain_worker", "w2")]
    assert actions[0].inputs["worker_age_s"] is None and "before this level's first period" in actions[0].reason
    assert history.started["w2"] == -math.inf
    # A worker whose start the decision log recorded keeps its age across a leader change.
    restarted = History(started={"w2": 95.0})
    assert [a.action for a in run_vm(quiet, CFG.vm_down_periods, restarted)[0]] == ["keep_worker"]
