"""The fleet simulator on a tiny fleet: every query counted exactly once, and the real policies doing the work."""

from collections import defaultdict
from dataclasses import replace
from types import SimpleNamespace

import pytest

from autoscaler import model_level, vm_level
from autoscaler.policy_types import PolicyConfig
from benchmarks import fleet_sim
from infaas import fast_selector
from infaas.selector import Candidate
from infaas.worker import instance
from tests.factories import model_info, profiles, variant_info


def _candidates() -> list[Candidate]:
    fast = model_info("fast", task="digits")
    slow = model_info("slow", task="digits")
    return [
        Candidate.of(fast, variant_info("fast", "v1", profiles({1: 0.5, 8: 1.0}, accuracy=0.9))),
        Candidate.of(slow, variant_info("slow", "v1", profiles({1: 5.0, 8: 20.0}, accuracy=0.99))),
    ]


def _counting(monkeypatch: pytest.MonkeyPatch, module: object, name: str, calls: dict[str, int]) -> None:
    real = getattr(module, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)


def test_tiny_fleet_conserves_queries_and_calls_the_real_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: dict[str, int] = {}
    monkeypatch.setattr(fleet_sim, "fast_select", _wrap(fast_selector.fast_select, "select", calls))
    monkeypatch.setattr(fleet_sim, "flush_at", _wrap(instance.flush_at, "flush_at", calls))
    monkeypatch.setattr(fleet_sim, "batch_size", _wrap(instance.batch_size, "batch_size", calls))
    _counting(monkeypatch, model_level, "decide", calls)
    model_calls = calls.get("decide", 0)
    monkeypatch.setattr(vm_level, "decide", _wrap(vm_level.decide, "vm_decide", calls))
    classes = [
        fleet_sim.QueryClass("tight", 20.0, 0.0, 1, 0.5, 0.2),
        fleet_sim.QueryClass("accurate", 200.0, 0.95, 4, 0.5, 0.8),
    ]
    day = fleet_sim.Day(30.0, trough_qps=20.0, peak_qps=600.0, bursts=((0.5, 3.0, 3.0),))
    sim = fleet_sim.FleetSim(
        _candidates(),
        classes,
        fleet_sim.Setup("infaas", True, True, 2, False),
        arrivals=day,
        length_s=30.0,
        cores=2,
        memory_mb=1024.0,
        config=PolicyConfig(vm_cooldown_s=4.0, vm_down_after_up_s=8.0),
        tick_s=0.1,
        group=2,
        vm_period_s=2.0,
        startup_s=(1.0, 2.0),
        failures=[(12.0, "worker"), (20.0, "zone")],
        zones=2,
    )
    report = sim.run()

    total = report["in_time"] + report["missed"] + report["failed"] + report["rejected"]
    assert report["queries"] > 1000 and total == report["queries"] and report["conserved"]
    assert min(report[k] for k in ("in_time", "missed", "failed", "rejected")) >= 0
    assert sum(c["queries"] for c in report["by_class"].values()) == report["queries"]
    assert report["failed"] > 0  # the dead workers' queued queries
    # The real functions decided: selection per chunk, the batching rule, both autoscaler levels each period.
    assert calls["select"] == report["policy_calls"]["select"] > 0
    assert calls["flush_at"] > 0 and calls["batch_size"] > 0
    assert calls["decide"] - model_calls == report["policy_calls"]["model_level.decide"] >= 29
    assert calls["vm_decide"] == report["policy_calls"]["vm_level.decide"] >= 14
    # The accurate class is only served by the variant meeting its floor.
    assert report["served_by"]["slow/v1"] >= report["by_class"]["accurate"]["queries"] - report["failed"]


def _wrap(real, name: str, calls: dict[str, int]):
    def counted(*args, **kwargs):
        calls[name] = calls.get(name, 0) + 1
        return real(*args, **kwargs)

    return counted


def test_the_validation_rebuilds_each_level_of_the_recorded_trace_exactly() -> None:
    # trace.json records per level (levels.<level>.rates_qps, rounded) and the shape as fractions of the spike;
    # validate() read a top-level trace.rates_qps of an older layout and failed with KeyError. The rebuilt
    # arrivals must be the recorded run's: the same count per class at every level.
    import json
    from collections import Counter

    from infaas.examples.zoo import load_digits_split

    measured = json.loads((fleet_sim.RESULTS / "trace.json").read_text())
    samples = len(load_digits_split()[2])
    assert measured["levels"]
    for level, row in measured["levels"].items():
        classes, arrivals, duration = fleet_sim.trace_replay(measured, level, samples)
        assert duration == measured["trace"]["duration_s"]
        assert {c.name for c in classes} == set(row["queries_by_class"])
        assert Counter(name for _t, name in arrivals) == row["queries_by_class"]
        # validate() compares trace.py's feasible group: the classes infeasible on its idle system left out.
        infeasible = set(measured.get("infeasible_classes", {}))
        feasible = sum(1 for _t, name in arrivals if name not in infeasible)
        assert feasible == row["setups"]["infaas"]["feasible"]["queries"]
        times = [t for t, _name in arrivals]
        assert times == sorted(times) and 0 <= times[0] and times[-1] < duration
    config = fleet_sim.trace_config(measured)
    assert config.high_utilization == measured["policy"]["high_utilization"]


def _probe_sim(classes: list[fleet_sim.QueryClass] | None = None) -> fleet_sim.FleetSim:
    """One worker, one cheap class at 50 ms (or ``classes``), 1 s ticks: the smallest simulation a queue or window
    reading needs."""
    return fleet_sim.FleetSim(
        _candidates(),
        classes or [fleet_sim.QueryClass("cheap", 50.0, 0.0, 1, 1.0, 1.0)],
        fleet_sim.Setup("probe", False, False, 1, False),
        arrivals=None,
        length_s=10.0,
        cores=2,
        memory_mb=1024.0,
        config=PolicyConfig(),
        tick_s=1.0,
        group=1,
    )


def test_queries_routed_in_a_tick_are_not_read_as_queued_before_they_arrive() -> None:
    # A tick's queries arrive over the tick. A few at an idle instance leave at most a batch waiting; reading the
    # time until the last of them is done as full-rate queued work made idle instances look queued (overloaded).
    sim = _probe_sim()
    [worker] = sim.workers.values()
    fast = _candidates()[0]
    inst = fleet_sim.Instance(worker.id, fast, 1, 0.0)
    worker.instances[fast.key] = inst
    cls = sim.classes[0]
    choice = fast_selector.fast_select(sim.requirements(cls), [fast], sim.snapshot([worker]), fleet_sim.PRICES)
    sim.serve(inst, worker, cls, choice, 10, 0.0)  # 10 queries over [0, 1 s) at 8,000 queries/s capacity
    inst.assigned_rows = 0  # the tick is over
    k, _service = sim.batch_plan(inst, 1, cls.budget_ms)
    assert sim.depth_rows(inst, 0.0) == 0  # nothing had arrived
    assert max(sim.depth_rows(inst, t) for t in (0.25, 0.5, 0.99, 1.0, 1.5)) <= k
    # A backlog is read as one: 30,000 queries in a tick at 8,000/s leave 22,000 waiting at its end.
    sim.serve(inst, worker, cls, choice, 30_000, 2.0)
    inst.assigned_rows = 0
    rate = sim.round_rate(inst, 1, cls.budget_ms)
    assert sim.depth_rows(inst, 2.0) == 0
    assert sim.depth_rows(inst, 3.0) == pytest.approx(30_000 - rate, rel=0.01)
    assert 0 < sim.depth_rows(inst, 3.5) < sim.depth_rows(inst, 3.0)


def test_chunks_of_one_tick_at_one_instance_arrive_interleaved_not_one_after_the_others_last_arrival() -> None:
    # Two classes share an instance; each sends a few queries over the same tick. The second chunk's queries
    # arrive among the first's, at an instance busy a fraction of the second: they wait for a batch, not for the
    # end of the first chunk's last arrival (~1 s: the cheap class's 886 ms p99 on session 9's 1,000-worker day).
    tight = fleet_sim.QueryClass("tight", 20.0, 0.0, 1, 0.5, 0.5)
    cheap = fleet_sim.QueryClass("cheap", 50.0, 0.0, 1, 0.5, 0.5)
    sim = _probe_sim([tight, cheap])
    [worker] = sim.workers.values()
    fast = _candidates()[0]  # 8 rows in 1.0 ms: 8,000 rows/s
    inst = fleet_sim.Instance(worker.id, fast, 1, 0.0)
    worker.instances[fast.key] = inst
    choice = fast_selector.fast_select(sim.requirements(cheap), [fast], sim.snapshot([worker]), fleet_sim.PRICES)
    sim.serve(inst, worker, tight, choice, 100, 0.0)
    sim.serve(inst, worker, cheap, choice, 100, 0.0)
    assert max(inst.window[-2][1]) < tight.budget_ms
    assert max(inst.window[-1][1]) < cheap.budget_ms
    assert sim.tally["tight"].missed == sim.tally["cheap"].missed == 0
    # When the earlier chunks fill the tick, a later one still queues behind them: 12,000 queries (1.5 s of work)
    # then 400 more (50 ms) are done 1.55 s after the tick began, each of the 400 at least half a second late.
    sim.serve(inst, worker, tight, choice, 12_000, 2.0)
    sim.serve(inst, worker, cheap, choice, 400, 2.0)
    assert min(inst.window[-1][1]) > 500.0
    assert inst.backlog_until == pytest.approx(2.0 + 1.5 + 0.05, abs=0.01)


def test_a_batch_holds_a_replica_as_long_as_its_profiled_throughput_says() -> None:
    # The policies read capacity from the profiled throughput; a profile whose throughput is half of batch / p50
    # (timed with its tails and gaps) serves half as fast here, not at the p50.
    fast = _candidates()[0]  # 8 rows in 1.0 ms p50: 8,000 rows/s
    assert fleet_sim.occupancy_ms(fast, 8) == pytest.approx(1.0)
    slow_profiles = tuple(replace(p, throughput_per_s=p.throughput_per_s / 2) for p in fast.variant.profiles)
    halved = Candidate.of(fast.model, replace(fast.variant, profiles=slow_profiles))
    assert fleet_sim.occupancy_ms(halved, 8) == pytest.approx(2.0)
    assert fleet_sim.occupancy_ms(halved, 16) == pytest.approx(4.0)  # past the largest batch: linear


def test_a_windows_rate_counts_the_queries_that_arrived_in_it() -> None:
    # 1,000 queries routed at each of ticks 0-4, read at 5 s: each window holds its own seconds' arrivals. The chunk
    # routed at the read's own tick (arriving over the next second) is not in it: it doubled the 1 s rate.
    sim = _probe_sim()
    [worker] = sim.workers.values()
    worker.ready = True
    fast = _candidates()[0]
    inst = fleet_sim.Instance(worker.id, fast, 1, 0.0)
    worker.instances[fast.key] = inst
    cls = sim.classes[0]
    choice = fast_selector.fast_select(sim.requirements(cls), [fast], sim.snapshot([worker]), fleet_sim.PRICES)
    for t in range(6):
        sim.serve(inst, worker, cls, choice, 1000, float(t))
    sim.env.run(until=5.0)
    assert sim.instance_stats(1.0)[(worker.id, fast.key)].rate_per_s == 1000.0
    assert sim.instance_stats(5.0)[(worker.id, fast.key)].rate_per_s == 1000.0


def test_the_policies_are_told_replicas_serve_as_the_simulated_workers_run_them() -> None:
    # A simulated worker runs a replica on a free core at its full profile; measured speedups of 1.0 for two
    # replicas (a busy profiling host) told the VM level each instance needed twice the cores the simulation used.
    fast = _candidates()[0]
    profiles = tuple(replace(p, replica_throughput_per_s=(100.0, 104.0)) for p in fast.variant.profiles)
    measured = replace(fast.variant, profiles=profiles)
    linear = fleet_sim._linear_replicas(measured)
    assert all(p.replica_throughput_per_s == () for p in linear.profiles)
    assert [p.throughput_per_s for p in linear.profiles] == [p.throughput_per_s for p in measured.profiles]


def test_the_tracking_bound_pays_the_load_at_its_utilization_and_a_start_up_per_worker_added() -> None:
    sim = _probe_sim()
    per_query = fleet_sim.core_s_per_query(sim, 0.5, 2)
    flat = fleet_sim.Day(10.0, trough_qps=1000.0, peak_qps=1000.0, bursts=())
    workers = 1000.0 * per_query / (2 * 0.5)
    assert fleet_sim.tracking_bound(sim, flat, 2, 0.5, 60.0) == pytest.approx(10 * workers)  # nothing added
    # The same load with a 3 s burst at twice the rate: its workers held 3 s and started once (60 s billed).
    burst = fleet_sim.Day(10.0, trough_qps=1000.0, peak_qps=1000.0, bursts=((0.5, 3.0, 2.0),))
    assert fleet_sim.tracking_bound(sim, burst, 2, 0.5, 60.0) == pytest.approx(13 * workers + 60 * workers)


def test_the_validation_replays_the_recorded_runs_worker_ceiling(monkeypatch: pytest.MonkeyPatch) -> None:
    # trace.py's in-process deployment records its VM ceiling (deployment.max_workers: 1 since 11ce302's run);
    # validate() replayed every level with up to 4 workers, a fleet the measured run could not grow to.
    import json

    measured = json.loads((fleet_sim.RESULTS / "trace.json").read_text())
    ceilings: list[int] = []

    class Recorded:
        def __init__(self, *_args: object, max_workers: int, **_kwargs: object) -> None:
            ceilings.append(max_workers)
            self.tally = defaultdict(fleet_sim.Tally)

        def run(self) -> dict:
            return {"peak_workers": 1, "by_class": {}, "decisions_by_action": {}}

    monkeypatch.setattr(fleet_sim, "FleetSim", Recorded)
    args = SimpleNamespace(seed=1, trace_json=fleet_sim.RESULTS / "trace.json")
    fleet_sim.validate(args, _candidates())  # type: ignore[arg-type]
    assert ceilings == [measured["deployment"]["max_workers"]] * len(measured["levels"])


def _host_replay(
    rate_qps: float, host: fleet_sim.Host | None, budget_ms: float = 200.0, variant: int = 0, **cls_kw: object
) -> dict:
    """A 20 s replay of Poisson arrivals (seeded) of one class on one variant (``_candidates()[variant]``, the fast
    one's 0.5 ms a query by default) on one 2-core in-process worker, as ``validate`` replays trace.py."""
    import random
    from collections import deque

    cls = fleet_sim.QueryClass("cheap", budget_ms, 0.0, 1, 1.0, 1.0, **cls_kw)  # type: ignore[arg-type]
    rng, t, times = random.Random(7), 0.0, []
    while (t := t + rng.expovariate(rate_qps)) < 20.0:
        times.append(t)
    n = len(times)
    arrivals = deque((at, "cheap") for at in times)
    sim = fleet_sim.FleetSim(
        _candidates()[variant : variant + 1],
        [cls],
        fleet_sim.Setup("trace-replay", False, False, 1, False),
        arrivals=arrivals,
        length_s=21.0,
        cores=2,
        memory_mb=1024.0,
        config=PolicyConfig(),
        tick_s=0.01,
        group=4,
        host=host,
    )
    report = sim.run()
    assert report["conserved"] and report["queries"] == n
    return report | {"outcome": fleet_sim.trace_outcome(sim, ["cheap"])}


def test_on_the_trace_host_path_work_queues_for_the_one_interpreter() -> None:
    # trace.py's serving path, client and workers share one interpreter and two cores: with 8 ms of path work a
    # query, 50 q/s keep the interpreter 40% busy and 110 q/s 88%. Without the host the worker alone answers
    # in about a millisecond at any rate (the validation's simulated p99 of ~20 ms against 51-71 ms measured).
    host = fleet_sim.Host(cores=2, path_cpu_ms=8.0, other_cores=0.0, source="test")
    alone = _host_replay(110.0, None)
    light = _host_replay(50.0, host)
    busy = _host_replay(110.0, host)
    assert alone["p99_ms"] < 3.0
    assert light["p50_ms"] >= 8.0  # every query does its path work
    assert busy["p99_ms"] > light["p99_ms"] + 4.0  # and waits for the interpreter more as the rate rises
    assert busy["p99_ms"] >= 16.0  # at least one other query's path ahead of it at the tail
    assert busy["timed_out"] == 0 and busy["outcome"]["miss_rate"] == 0.0


def test_the_host_times_out_what_the_interpreter_cannot_start_within_its_budget() -> None:
    # 150 q/s of 8 ms path work need 1.2 interpreters: the backlog grows until queries wait past their 50 ms budget
    # and the client gives up before sending (trace.py's ``timed-out``), which counts as a miss, not an answer.
    host = fleet_sim.Host(cores=2, path_cpu_ms=8.0, other_cores=0.0, source="test")
    report = _host_replay(150.0, host, budget_ms=50.0)
    outcome = report["outcome"]
    assert report["timed_out"] > 0.05 * report["queries"]
    assert outcome["by_status"]["timed-out"] == report["timed_out"]
    assert outcome["miss_rate"] >= report["timed_out"] / report["queries"]
    assert outcome["p99_ms"] <= 50.0 + 8.0 * 2  # what was answered had started within its budget


def test_the_hosts_other_work_slows_the_path_and_the_runs() -> None:
    # The host's other processes keeping 3 of its 2 cores' worth busy: everything gets 2/4 of a core, so the
    # path's 2 ms take 4 ms.
    quiet = _host_replay(20.0, fleet_sim.Host(cores=2, path_cpu_ms=2.0, other_cores=0.0, source="test"))
    loaded = _host_replay(20.0, fleet_sim.Host(cores=2, path_cpu_ms=2.0, other_cores=3.0, source="test"))
    assert loaded["p50_ms"] >= 1.9 * quiet["p50_ms"]


def test_a_reject_class_gets_the_503_when_the_interpreter_ate_its_budget() -> None:
    # A 10 ms class asking for a 503 rather than a late answer: with 9 ms of path work at 100 q/s the interpreter is
    # 90% busy, and a query that waited for it has too little left for the selector to promise: refused, as the
    # measured run's ``rejected`` (the real selector decides, with the remaining budget trace.py passes).
    host = fleet_sim.Host(cores=2, path_cpu_ms=9.0, other_cores=0.0, source="test")
    best_effort = _host_replay(100.0, host, budget_ms=10.0)
    reject = _host_replay(100.0, host, budget_ms=10.0, on_infeasible="reject")
    assert best_effort["rejected"] == 0
    assert reject["rejected"] > 0
    assert reject["outcome"]["reject_rate"] == pytest.approx(reject["rejected"] / reject["queries"], abs=1e-4)


def test_the_host_asks_the_fair_share_and_sheds_what_it_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    # The front end's fair share is asked once per selected query, by tenant (the class, as trace.py sends them),
    # with at_risk as the engine passes it (at risk from queueing: the selection's slo_at_risk and not infeasible);
    # its 429 is counted as shed, and nothing runs. Here it refuses every query after the first 100.
    from infaas.fair_share import OverFairShare

    asked: list[tuple[str, bool]] = []
    selected: list[bool] = []
    real_select = fleet_sim.fast_select

    def select(*args: object, **kwargs: object) -> object:
        choice = real_select(*args, **kwargs)
        selected.append(choice.slo_at_risk and not choice.infeasible)
        return choice

    class Refusing:
        def __init__(self, clock: object = None) -> None:
            pass

        def admit(self, tenant: str, at_risk: bool) -> None:
            asked.append((tenant, at_risk))
            if len(asked) > 100:
                raise OverFairShare("over its share", retry_after_s=1.0)

    monkeypatch.setattr(fleet_sim, "FairShare", Refusing)
    monkeypatch.setattr(fleet_sim, "fast_select", select)
    host = fleet_sim.Host(cores=2, path_cpu_ms=0.5, other_cores=0.0, source="test")
    report = _host_replay(100.0, host)
    assert len(asked) == report["queries"] == len(selected)
    assert [risk for _t, risk in asked] == selected
    assert {t for t, _risk in asked} == {"cheap"}
    assert report["shed"] == report["queries"] - 100 and sum(report["served_by"].values()) == 100


def test_the_trace_host_comes_from_the_recorded_run() -> None:
    # With the run's CPU recorded, the path's work is the process's CPU less the served runs' profiled CPU, over every
    # query offered; the other processes' cores are the machine's busy CPU less the process's, over the wall time.
    variants = {"m/a": {"p50_b256_ms": 2.0, "threads": 1}, "m/b": {"p50_b256_ms": 1.0, "threads": 2}}
    run = {"served_by": {"m/a": 500, "m/b": 250}, "process": {"cpu_s": 3.0, "host_cpu_s": 63.0, "wall_s": 60.0}}
    measured = {
        "machine": {"cpus": 2},
        "trace": {"classes": [{"name": "c", "rows": 256}]},
        "variants": variants,
        "levels": {"1": {"queries": 1000, "setups": {"infaas": run}}},
    }
    host = fleet_sim.trace_host(measured, "1")
    assert host.cores == 2
    assert host.path_cpu_ms == pytest.approx((3000.0 - 500 * 2.0 - 250 * 1.0 * 2) / 1000)
    assert host.other_cores == pytest.approx(1.0)
    # Without it (older files): the engine's measured path time at the lowest level, for every level; no other load.
    older = {
        "machine": {"cpus": 2},
        "levels": {
            "1.5": {"queries": 10, "setups": {"infaas": {"estimates": {"overhead_ms": 0.6}}}},
            "0.7": {"queries": 10, "setups": {"infaas": {"estimates": {"overhead_ms": 2.1}}}},
        },
    }
    assert fleet_sim.trace_host(older, "1.5").path_cpu_ms == 2.1
    assert fleet_sim.trace_host(older, "1.5").other_cores == 0.0


def test_trace_records_the_cpu_the_host_replay_is_built_from() -> None:
    # trace_host reads a run's process.cpu_s, host_cpu_s and wall_s; trace.py's replay records them (a 0.3 s replay
    # of 30 queries against a serve that burns a little CPU on the loop).
    import asyncio

    import numpy as np

    from benchmarks import trace

    cls = trace.QueryClass("cheap", 1.0, 50.0, 0.0, 1)
    arrivals = [trace.Arrival(i * 0.01, cls, 0) for i in range(30)]

    async def serve(_arrival: object, _x: object, _deadline: float) -> tuple[str, float | None]:
        sum(range(20_000))
        await asyncio.sleep(0)
        return "m/a", 0.9

    run = trace.Run("infaas", 1.0)
    trace.replay(arrivals, np.zeros((4, 1)), serve, run, lambda: (1, 1))
    process = run.summary(0.3, {"cpu-core": 0.048}, set())["process"]
    assert 0.0 < process["cpu_s"] <= process["host_cpu_s"] + 0.05
    assert 0.29 <= process["wall_s"] < 5.0
