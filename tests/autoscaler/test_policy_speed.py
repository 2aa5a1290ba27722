"""The indexes that make both policies fast at 2,000 workers decide as the scans they replaced did.

``benchmarks/policy_speed.py`` measures the cost; these check the decisions: placement looks only at workers with
room (kept up to date as the period plans), the VM level's hardware rule counts kinds instead of copying the fleet,
and one history copy notes every action.
"""

from __future__ import annotations

from autoscaler import model_level, vm_level
from autoscaler.policy_types import ClusterView, History, InstanceLoad, PolicyConfig, VariantOption, WorkerLoad

CFG = PolicyConfig()


def _option(key: str, hardware: tuple[str, ...] = ("cpu",), memory_mb: float = 100.0) -> VariantOption:
    return VariantOption(
        key=key,
        model=key.split("/")[0],
        accuracy=0.9,
        curve=((1, 10.0, 100.0),),
        p99_ms=15.0,
        memory_mb=memory_mb,
        cores=1,
        cost_per_hour=0.05,
        hardware=hardware,
    )


HOT = _option("m/hot")
COLD = _option("c/cold", memory_mb=900.0)


def _hot(worker: str, rate: float) -> InstanceLoad:
    return InstanceLoad(worker, "m/hot", 1, 0, rate, 12.0, 0.0, 0.0, budget_ms=40.0)


def _worker(wid: str, instances: tuple[InstanceLoad, ...], used_mb: float) -> WorkerLoad:
    return WorkerLoad(wid, 1, 1000.0, used_mb, instances)


def test_placement_goes_to_the_roomiest_worker_with_room_even_one_freed_this_period() -> None:
    # w0 holds an idle cold variant (900 MB, past idle_unload_s): unloading it this period frees the most memory.
    # w1 is overloaded with nothing free; w2..w5 are full (their one core busy), w6 has a little room.
    cold = InstanceLoad("w0", "c/cold", 1, 0, 0.0, 0.0, 0.0, CFG.idle_unload_s + 1)
    workers = [
        _worker("w0", (cold,), used_mb=900.0),
        _worker("w1", (_hot("w1", 300.0),), used_mb=100.0),
        *(_worker(f"w{i}", (_hot(f"w{i}", 100.0),), used_mb=100.0) for i in range(2, 6)),
        _worker("w6", (), used_mb=500.0),
    ]
    view = ClusterView(100.0, tuple(workers), {"m/hot": HOT, "c/cold": COLD}, max_workers=10)
    history = History(streaks={"w1/m/hot": CFG.up_periods})
    plan = model_level.decide(view, history, CFG)
    by_action = {(a.action, a.worker) for a in plan.actions}
    assert ("unload", "w0") in by_action
    placed = [a for a in plan.actions if a.action == "place"]
    # w0 (1,000 MB free once unloaded) before w6 (500 MB); never w2..w5 (holding it, no core), never w1 itself.
    assert [a.worker for a in placed] == ["w0", "w6"]
    assert sum(a.count for a in placed) == sum(a.count for a in placed if a.worker in {"w0", "w6"})


def test_placement_skips_workers_that_already_hold_the_variant_and_reports_unmet() -> None:
    # Every other worker has room but already holds the hot variant: nothing to place on. Idle, their instances
    # take the overflow (the selector sends it there): not unmet. Busy at target utilization, they cannot: unmet.
    for others, unmet in ((0.0, ()), (60.0, ("w0/m/hot",))):
        workers = [_worker(f"w{i}", (_hot(f"w{i}", 300.0 if i == 0 else others),), used_mb=100.0) for i in range(50)]
        view = ClusterView(100.0, tuple(workers), {"m/hot": HOT}, max_workers=100)
        plan = model_level.decide(view, History(streaks={"w0/m/hot": CFG.up_periods}), CFG)
        assert not [a for a in plan.actions if a.action == "place"]
        assert plan.unmet == unmet


def test_the_view_indexes_workers_and_holders() -> None:
    workers = tuple(_worker(f"w{i}", (_hot(f"w{i}", 1.0),) if i % 2 else (), 0.0) for i in range(6))
    view = ClusterView(0.0, workers, {"m/hot": HOT})
    assert view.worker("w3") is workers[3] and view.worker("nope") is None
    assert view.holders("m/hot") == {"w1", "w3", "w5"} and view.holders("x/y") == frozenset()


def test_many_idle_workers_drain_together_but_never_the_only_one_running_a_busy_gpu_variant() -> None:
    gpu = _option("g/gpu", hardware=("cpu", "gpu"))
    # 60 CPU workers idler than the GPU worker, 140 busier: drained idlest first, the GPU worker is passed over.
    cpu_workers = [
        WorkerLoad(
            f"w{i:03d}", 2, 1000.0, 0.0, (InstanceLoad(f"w{i:03d}", "m/hot", 1, 0, 0.5 if i < 60 else 5.0, 12.0, 0, 0),)
        )
        for i in range(200)
    ]
    gpu_worker = WorkerLoad(
        "g000", 2, 1000.0, 0.0, (InstanceLoad("g000", "g/gpu", 1, 0, 1.0, 12.0, 0.0, 0.0),), hardware=("cpu", "gpu")
    )
    history = History()
    drained: list[str] = []
    for n in range(CFG.vm_down_periods):
        view = ClusterView(1000.0 + 10 * n, (gpu_worker, *cpu_workers), {"m/hot": HOT, "g/gpu": gpu}, max_workers=400)
        plan = vm_level.decide(view, history, CFG)
        history = plan.history
        drained += [a.target for a in plan.actions if a.action == "drain_worker"]
    assert "g000" not in drained
    assert len(drained) == 100  # half the active workers in one period, all CPU ones
    assert set(drained) >= {f"w{i:03d}" for i in range(60)}


def test_one_history_copy_notes_every_action_as_one_copy_per_action_did() -> None:
    base = History(streaks={"a": 3, "b": -2}, last_action={"c": 1.0}, last_up={"c": 1.0})
    one_by_one = base.acted("a", 5.0, up=True).acted("b", 5.0, up=False)
    assert base.acted_all([("a", True), ("b", False)], 5.0) == one_by_one
    assert one_by_one.streaks == {"a": 0, "b": 0} and one_by_one.last_up == {"c": 1.0, "a": 5.0}
