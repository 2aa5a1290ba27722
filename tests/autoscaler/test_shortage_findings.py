"""What a fleet-wide shortage taught the policies (found by benchmarks/fleet_sim.py, issue 20 point 4).

During a shortage every worker is crowded, instances queue behind their neighbours, and the selector spreads
queries at risk onto whatever is loaded, slow variants included. Neither is what the workers to add will run.
"""

from autoscaler import model_level, vm_level
from autoscaler.policy_types import ClusterView, History, WorkerLoad
from tests.autoscaler.test_autoscaler_policies import CFG, inst, option, run_periods, view


def test_an_instance_queueing_behind_its_neighbours_is_not_derated() -> None:
    # 80/s on a 200/s replica misses: alone on a 2-core worker (0.4 of a core busy) its profile is wrong, derated.
    missing = inst(rate_per_s=80.0, slo_miss_rate=0.2, p99_ms=40.0)
    _, history = run_periods(lambda now: view([missing], [option()], now=now, cores=2), 2)
    assert history.derate["w1/m/fp32"] == 0.5
    # Beside a neighbour whose demand alone needs its 2 cores (400/s on 200/s), the worker is crowded: the misses
    # are the neighbour's load, and a derating would overstate what this instance needs for the rest of the day.
    neighbour = inst("n/fp32", rate_per_s=400.0)
    crowded = lambda now: view([missing, neighbour], [option(), option("n/fp32")], now=now, cores=2)  # noqa: E731
    _, history = run_periods(crowded, 2)
    assert "w1/m/fp32" not in history.derate


def test_workers_are_added_for_the_demand_at_the_fastest_variant_its_queries_may_use() -> None:
    # Four workers each serving 1,000 rows/s on an FP32 variant of 200 rows/s (5 busy cores each, 20 in all: 17
    # workers at 60% of 2 cores) while an INT8 variant of the same model and accuracy serves 2,000 rows/s a core:
    # the demand needs 2 cores in all, 2 workers, so one more (the minimum step), not the 4 doubling allows.
    slow, fast = option("m/fp32", p50=10.0), option("m/int8", p50=1.0)
    workers = tuple(
        WorkerLoad(f"w{i}", 2, 1000.0, 100.0, (inst("m/fp32", f"w{i}", rate_per_s=1000.0, replicas=2),))
        for i in range(4)
    )
    assert vm_level.needed_cores(ClusterView(0.0, workers, {"m/fp32": slow, "m/int8": fast}), workers[0]) == 0.5
    history, added = History(), []
    for n in range(CFG.vm_up_periods):
        cluster = ClusterView(100.0 + 10 * n, workers, {"m/fp32": slow, "m/int8": fast}, max_workers=100)
        plan = vm_level.decide(cluster, history, CFG)
        history = plan.history
        added.extend(a for a in plan.actions if a.action == "add_worker")
    [action] = added
    assert action.inputs["utilization"] == 2.5  # overloaded as loaded now
    assert action.count == 1
    # An alternative below the floor the queries asked for is not one they may use: sized at FP32.
    low = option("m/int8", p50=1.0, accuracy=0.5)
    floored = (WorkerLoad("w0", 2, 1000.0, 100.0, (inst("m/fp32", "w0", rate_per_s=1000.0, accuracy_floor=0.9),)),)
    assert vm_level.needed_cores(ClusterView(0.0, floored, {"m/fp32": slow, "m/int8": low}), floored[0]) == 5.0


def test_demand_the_variants_other_instances_can_take_is_not_unmet() -> None:
    # w1's instance, 300/s on one 200/s replica, needs 2 more (3 at 60%), 240 rows/s of room, and its 1-core worker
    # has none. The only other worker already holds the variant (placing skips it): at 60/s on one replica it can
    # take 0.6 x 200 - 60 = 60 rows/s more, idle 120: unmet. With two idle replicas, 240: nothing unmet.
    def cluster(other_rate: float, other_replicas: int) -> ClusterView:
        hot = inst(rate_per_s=300.0)
        other = WorkerLoad("w2", 1, 1000.0, 100.0, (inst(worker="w2", rate_per_s=other_rate, replicas=other_replicas),))
        return view([hot], [option()], cores=1, extra_workers=(other,))

    streak = History(streaks={"w1/m/fp32": CFG.up_periods})
    assert model_level.decide(cluster(60.0, 1), streak, CFG).unmet == ("w1/m/fp32",)
    assert model_level.decide(cluster(0.0, 1), streak, CFG).unmet == ("w1/m/fp32",)
    assert model_level.decide(cluster(0.0, 2), streak, CFG).unmet == ()
