"""The VM level adds as many workers as the load is short in one step, not one per cool-down (found by
benchmarks/fleet_sim.py)."""

from dataclasses import replace

from autoscaler import vm_level
from autoscaler.policy_types import ClusterView, History, InstanceLoad, PolicyConfig, VariantOption, WorkerLoad

CFG = PolicyConfig()
OPTION = VariantOption(
    key="m/v",
    model="m",
    accuracy=0.9,
    curve=((1, 10.0, 100.0),),
    p99_ms=15.0,
    memory_mb=10.0,
    cores=1,
    cost_per_hour=0.05,
)  # 100 rows/s per one-core replica


def fleet(
    rate_per_worker: float, now: float = 100.0, workers: int = 4, pending: int = 0, max_workers: int = 1000
) -> ClusterView:
    loads = tuple(
        WorkerLoad(
            f"w{i}",
            2,
            1000.0,
            10.0,
            (InstanceLoad(f"w{i}", "m/v", 2, 0, rate_per_worker, 20.0, 0.0, 0.0),),
        )
        for i in range(workers)
    )
    return ClusterView(now, loads, {"m/v": OPTION}, max_workers=max_workers, pending_workers=pending)


def additions(view_at, periods: int = 2) -> list:
    history, actions = History(), []
    for n in range(periods):
        plan = vm_level.decide(view_at(100.0 + 10.0 * n), history, CFG)
        history = plan.history
        actions.extend(a for a in plan.actions if a.action == "add_worker")
    return actions


def test_a_fleet_far_short_grows_by_what_it_is_short_in_one_step() -> None:
    # 4 workers × 1,000 rows/s: 10 busy cores each wanted, 40 in all; 2-core workers at 60% need 34 workers.
    assert vm_level.workers_short(list(fleet(1000.0).workers), 40.0, 0, CFG) == 30
    [action] = additions(lambda now: fleet(1000.0, now))
    assert action.count == 30 == action.inputs["workers_added"]  # no doubling cap: it only slowed the climb
    [action] = additions(lambda now: fleet(1000.0, now, workers=20))  # 20 × 10 cores: 167 wanted
    assert action.count == 147


def test_workers_still_starting_count_and_max_workers_caps() -> None:
    active = list(fleet(1000.0).workers)
    assert vm_level.workers_short(active, 40.0, pending=10, config=CFG) == 20
    assert vm_level.workers_short(active, 40.0, pending=40, config=CFG) == -10  # none short
    [action] = additions(lambda now: fleet(1000.0, now, pending=40))
    assert action.count == 1  # overloaded all the same: one
    [action] = additions(lambda now: fleet(1000.0, now, workers=20, max_workers=25))
    assert action.count == 5  # 25 - 20 active


def test_slightly_short_adds_what_it_needs() -> None:
    # 4 workers at 1.8 busy cores of 2 (90%): 7.2 / (0.6 × 2) = 6 workers wanted: 2 more.
    [action] = additions(lambda now: fleet(180.0, now))
    assert action.count == 2


def test_an_idle_fleet_drains_several_workers_a_period_while_the_rest_stay_below_target() -> None:
    # 20 workers at 0.1 busy cores each (2 in all): 2 / (0.6 × 2) = 2 workers would do; half go in one period.
    history, drains = History(), []
    for n in range(4):
        plan = vm_level.decide(fleet(10.0, 100.0 + 10.0 * n, workers=20), history, CFG)
        history = plan.history
        drains.extend(a.target for a in plan.actions if a.action == "drain_worker")
    assert len(drains) == 10 == len(set(drains))  # half of the 20 in one period (then the cool-down)
    # Nothing drained when the rest would run above target: 20 workers at 1.0 busy cores (50%).
    history = History()
    for n in range(4):
        plan = vm_level.decide(fleet(100.0, 100.0 + 10.0 * n, workers=20), history, CFG)
        history = plan.history
        assert not [a for a in plan.actions if a.action == "drain_worker"]


def test_a_burst_the_window_still_lags_is_sized_at_the_last_seconds_rate() -> None:
    # 4 workers whose 5 s window reads 100 rows/s (50% busy) while the last second ran at 1,000 rows/s: the
    # model level scales up on the latter, so the VM level sizes on it too (not "in band, nothing to do").
    def burst(now: float) -> ClusterView:
        base = fleet(100.0, now)
        workers = tuple(
            WorkerLoad(
                w.id,
                w.cores,
                w.memory_budget_mb,
                w.memory_used_mb,
                (replace(w.instances[0], recent_rate_per_s=1000.0),),
            )
            for w in base.workers
        )
        return replace(base, workers=workers)

    [action] = additions(burst)
    assert action.count == 30  # short by 30, as the first test
    assert not additions(lambda now: fleet(100.0, now))  # the window's rate alone: in band


def test_the_workers_still_starting_count_against_a_step() -> None:
    # 20 registered, 20 more starting, 167 wanted: 127 more, not 147.
    [action] = additions(lambda now: fleet(1000.0, now, workers=20, pending=20))
    assert action.count == 127


def test_a_step_is_sized_at_the_profile_not_at_the_derating_a_shortage_causes() -> None:
    # 20 workers, each instance 180 rows/s on two 100 rows/s replicas (1.8 busy cores of 2 as profiled), and every
    # instance derated to the floor (0.25) by the queues the shortage builds: derated, 7.2 busy cores a worker.
    # The derating still says overloaded; the step is sized at the profile, since the workers added start empty:
    # 36 busy cores / (0.6 x 2) = 30 workers, 10 more (derated: 120, 100 more).
    derate = {f"w{i}/m/v": 0.25 for i in range(20)}
    history, added = History(), []
    for n in range(2):
        plan = vm_level.decide(fleet(180.0, 100.0 + 10.0 * n, workers=20), history, CFG, derate=derate)
        history = plan.history
        added.extend(a for a in plan.actions if a.action == "add_worker")
    [action] = added
    assert action.inputs["utilization"] == 3.6  # judged derated, as the model level does
    assert action.count == 10


def test_the_vm_level_may_drain_at_its_own_threshold() -> None:
    # 20 workers at 0.4 utilization: in band at the model level's low_utilization (0.3), nothing drained; with the
    # VM level's own threshold at 0.45 the fleet is underloaded and drained down towards target (16 cores busy:
    # 14 workers would run them at 0.57; the first period drains half the fleet at most).
    def drains(config: PolicyConfig) -> list[str]:
        history, out = History(), []
        for n in range(4):
            plan = vm_level.decide(fleet(80.0, 100.0 + 10.0 * n, workers=20), history, config)
            history = plan.history
            out.extend(a.target for a in plan.actions if a.action == "drain_worker")
        return out

    assert drains(CFG) == []
    assert len(drains(replace(CFG, vm_low_utilization=0.45))) == 6
    assert replace(CFG, vm_low_utilization=0.45).low_utilization == 0.3  # the model level's band is its own


def _missing(view: ClusterView, miss: float) -> ClusterView:
    workers = tuple(
        replace(w, instances=tuple(replace(i, slo_miss_rate=miss) for i in w.instances)) for w in view.workers
    )
    return replace(view, workers=workers)


def test_misses_at_near_zero_load_do_not_hold_a_fleet_that_idles() -> None:
    # 20 workers at 0.05 utilization whose few queries miss 5% (cold loads, batches waiting at a trickle): not
    # capacity's misses (they do not count as overload below low_utilization either), so the idle fleet is drained.
    def drains(rate: float, config: PolicyConfig) -> int:
        history, out = History(), 0
        for n in range(4):
            plan = vm_level.decide(_missing(fleet(rate, 100.0 + 10.0 * n, workers=20), 0.05), history, config)
            history = plan.history
            out += sum(1 for a in plan.actions if a.action == "drain_worker")
        return out

    assert drains(10.0, CFG) == 10
    # Between low_utilization and the VM level's own threshold, misses still hold the scale-down back.
    assert drains(80.0, replace(CFG, vm_low_utilization=0.45)) == 0
