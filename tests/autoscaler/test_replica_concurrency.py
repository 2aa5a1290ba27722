"""The model level sizes replicas with the profiler's measured replica throughput, not by assuming linear scaling."""

from __future__ import annotations

from dataclasses import replace

from autoscaler import model_level
from autoscaler.loop import variant_option
from autoscaler.policy_types import History, InstanceLoad, PolicyConfig, VariantOption, effective_capacity
from autoscaler.policy_types import replicas_needed as needed
from infaas.selector import Candidate
from tests.autoscaler.test_autoscaler_policies import inst, option, view
from tests.factories import model_info, profiles, variant_info

CFG = PolicyConfig(idle_unload_s=60.0, up_periods=1)


def measured(opt: VariantOption, *speedups: float) -> VariantOption:
    """``opt`` with the same measured speedups of 1, 2, ... replicas at every profiled batch."""
    return replace(opt, replica_speedups=tuple((1.0, *speedups) for _ in opt.curve))


def test_replicas_needed_follows_the_measured_speedup() -> None:
    assert needed(300.0, 100.0, 0.6) == 5  # linear: 5 × 100 × 0.6 = 300
    # Two replicas together serve 1.5 of one; further ones are on other workers in pairs.
    assert needed(300.0, 100.0, 0.6, (1.0, 1.5)) == 7  # 3 pairs (4.5) + 1 = 5.5 single replicas' worth x 60 >= 300
    assert needed(50.0, 100.0, 0.6, (1.0, 1.5)) == 1


def test_effective_capacity_is_shared_among_the_replicas_as_measured() -> None:
    opt = measured(option(p50=10.0), 1.5)  # alone: 200/s at batch 4
    two = inst(replicas=2)
    assert effective_capacity(two, opt, {}) == 150.0  # 1.5 × 200 / 2
    assert effective_capacity(two, option(p50=10.0), {}) == 200.0  # unmeasured: linear, as before


def test_a_load_linear_scaling_calls_in_band_is_overloaded_as_measured() -> None:
    """2 replicas at 280/s: 70% of 2 × 200/s when assumed linear; 93% of the measured 300/s."""
    load = inst(replicas=2, rate_per_s=280.0)
    linear = model_level.decide(view([load], [option(p50=10.0)]), History(), CFG)
    assert linear.actions == ()
    plan = model_level.decide(view([load], [measured(option(p50=10.0), 1.5, 2.0)]), History(), CFG)
    (action,) = plan.actions
    assert action.action == "add_replica" and action.inputs["utilization"] > 0.9
    assert action.inputs["capacity_per_replica_per_s"] == 150.0


def test_a_replica_that_would_serve_less_together_is_placed_on_another_worker() -> None:
    """Two one-thread replicas of a tiny model served less than one (0.91-0.96× measured: the GIL): not here."""
    other = view([], [option()], cores=4).workers[0]
    other = replace(other, id="w2", memory_used_mb=0.0)
    opt = measured(option(p50=10.0), 0.48)
    load = inst(rate_per_s=190.0)  # 95% of one replica alone
    plan = model_level.decide(view([load], [opt], extra_workers=(other,)), History(), CFG)
    assert [(a.action, a.worker) for a in plan.actions] == [("place", "w2")]
    # The same load with linear scaling replicates where it is.
    plan = model_level.decide(view([load], [option(p50=10.0)], extra_workers=(other,)), History(), CFG)
    assert [(a.action, a.worker) for a in plan.actions] == [("add_replica", "w1")]


def test_one_two_thread_replica_beats_two_one_thread_ones_when_measured_so() -> None:
    """1×2 against 2×1 on two cores, same $/hour: the measured figures decide, not the linear assumption."""
    t1 = option("m/t1", p50=10.0, cores=1, cost=0.048)  # 200/s alone
    t2 = option("m/t2", p50=6.0, cores=2, cost=0.096)  # 333/s alone (1×2)
    load = inst("m/t1", rate_per_s=170.0)  # 85% of one: two replicas of either variant are enough at 70%
    cfg = replace(CFG, target_utilization=0.7)
    linear = model_level.decide(view([load], [t1, t2], cores=2), History(), cfg)
    assert [a.action for a in linear.actions] == ["add_replica"]  # 2 × 200 assumed > 333
    plan = model_level.decide(view([load], [measured(t1, 1.3), t2], cores=2), History(), cfg)  # 2×1: 260/s
    (action,) = plan.actions
    assert (action.action, action.to_variant) == ("upgrade", "m/t2")
    assert "replicated (measured)" in action.reason


def test_replicas_are_removed_down_to_what_the_measured_speedup_needs() -> None:
    """4 replicas at 160/s: linear keeps 2 (2 × 200 × 0.6 = 240); measured, 2 serve 1.2 of one, so it keeps 3."""
    load = inst(replicas=4, rate_per_s=160.0, idle_s=0.0)
    history = History(streaks={"w1/m/fp32": -10})
    cfg = replace(CFG, down_periods=1)
    linear = model_level.decide(view([load], [option(p50=10.0)], cores=8), history, cfg)
    assert [(a.action, a.inputs["keep_replicas"]) for a in linear.actions] == [("remove_replica", 2)]
    plan = model_level.decide(view([load], [measured(option(p50=10.0), 1.2, 1.8, 2.8)], cores=8), history, cfg)
    assert [(a.action, a.inputs["keep_replicas"]) for a in plan.actions] == [("remove_replica", 3)]


def test_the_loop_reads_the_measured_throughput_from_the_profiles() -> None:
    rows = profiles({1: 2.0, 4: 4.0})
    rows = tuple(replace(p, replica_throughput_per_s=(p.throughput_per_s, 1.5 * p.throughput_per_s)) for p in rows)
    candidate = Candidate.of(model_info("m"), variant_info("m", "t1", rows))
    assert variant_option(candidate, 2, {}).replica_speedups == ((1.0, 1.5), (1.0, 1.5))
    plain = Candidate.of(model_info("m"), variant_info("m", "t1", profiles({1: 2.0})))
    assert variant_option(plain, 2, {}).replica_speedups == ()
    assert isinstance(inst(), InstanceLoad)


def test_the_queue_drains_at_the_replicas_measured_joint_rate() -> None:
    """6 rows waiting behind 2 replicas of 10 ms: 30 ms if they drained at 2x one, 50 ms at the measured 1.2x, which
    is over half the 80 ms budget."""
    load = inst(replicas=2, queue_depth=8, rate_per_s=10.0, budget_ms=80.0)
    assert model_level.decide(view([load], [option(p50=10.0)]), History(), CFG).actions == ()
    (action,) = model_level.decide(view([load], [measured(option(p50=10.0), 1.2, 2.0)]), History(), CFG).actions
    assert action.action == "add_replica" and action.inputs["queue_ms"] == 50.0


def test_a_batch_dependent_variant_is_judged_at_its_queries_own_rows() -> None:
    """Dynamic INT8 is never batched across queries: its capacity is that of a batch of one query's rows, not the
    best batch's (an 8-row query still runs at batch 8)."""
    rows = tuple(replace(p, batch_invariant=False) for p in profiles({1: 2.0, 8: 8.0}))
    dynamic = variant_option(Candidate.of(model_info("m"), variant_info("m", "dynamic", rows)), 2, {})
    assert not dynamic.batch_invariant
    assert dynamic.capacity(None) == 500.0 and dynamic.capacity(None, 8.0) == 1000.0
    static = variant_option(
        Candidate.of(model_info("m"), variant_info("m", "static", profiles({1: 2.0, 8: 8.0}))), 2, {}
    )
    assert static.capacity(None) == 1000.0
