"""The VM level adds as many workers as the load is short, not one per cool-down (found by benchmarks/fleet_sim.py)."""

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


def test_a_fleet_far_short_adds_the_workers_it_needs_at_once() -> None:
    # 4 workers × 1,000 rows/s: 10 busy cores each wanted, 40 in all; 2-core workers at 60% need 34 workers.
    [action] = additions(lambda now: fleet(1000.0, now))
    assert action.count == 30 and action.inputs["workers_added"] == 30


def test_workers_still_starting_count_and_max_workers_caps() -> None:
    busy = {f"w{i}": 10.0 for i in range(4)}
    active = list(fleet(1000.0).workers)
    assert vm_level.workers_short(active, busy, pending=10, config=CFG) == 20
    assert vm_level.workers_short(active, busy, pending=40, config=CFG) == 1  # overloaded all the same: one
    [action] = additions(lambda now: fleet(1000.0, now, max_workers=10))
    assert action.count == 6  # 10 - 4 active


def test_slightly_short_adds_one() -> None:
    # 4 workers at 1.8 busy cores of 2 (90%): 7.2 / (0.6 × 2) = 6 workers wanted: 2 more.
    [action] = additions(lambda now: fleet(180.0, now))
    assert action.count == 2
