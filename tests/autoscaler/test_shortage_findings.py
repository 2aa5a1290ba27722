"""What a fleet-wide shortage taught the policies (found by benchmarks/fleet_sim.py, issue 20 point 4).

During a shortage every worker is crowded and instances queue behind their neighbours: that is not what their
profiles are worth. Afterwards, the variant is loaded nearly everywhere, and an overloaded instance's overflow
goes to its other instances through the selector.
"""

from autoscaler import model_level
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


def test_an_instance_behind_on_its_queue_offers_no_room_even_to_itself() -> None:
    # 50/s on two 200/s replicas (budget 100 ms) reads as 190 rows/s of room by its rate, but 12 queries wait
    # (60 ms of queue, over half the budget): overloaded, no room for a third replica on its 2-core worker, no other
    # worker: unmet. Counting its rate's room as spare absorbed its own overflow, and no worker was added (the
    # integration burst test: nothing was placed on a new worker).
    queued = inst(rate_per_s=50.0, replicas=2, queue_depth=14, budget_ms=100.0)
    plan = model_level.decide(view([queued], [option()], cores=2), History(streaks={"w1/m/fp32": CFG.up_periods}), CFG)
    assert [a.action for a in plan.actions] == []
    assert plan.unmet == ("w1/m/fp32",)
