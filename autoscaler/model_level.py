"""Model-level autoscaling: replicas and variants of what is loaded on each worker.

Per loaded instance, every period (``autoscaler_period_s``):

* utilization = arrival rate / (replicas × per-replica capacity), where the rate, p99 and misses are
  this instance's own (live state's per-instance statistics: one slow worker does not make every
  instance of its variant look slow) and capacity is ``policy_types.effective_capacity``, the one the
  VM level uses too: the profiled throughput at the largest batch that still fits half the tightest
  latency budget seen, derated as below;
* *overloaded* when utilization > ``high_utilization``, or SLO misses exceed the threshold while the
  observed p99 is well above the profiled p99 and the load is not negligible (the profile is too
  optimistic under this load; misses at near-zero load are not something replicas fix, and neither are
  misses of queries that were infeasible when selected, which are not counted as misses), or when the
  rows waiting now (queue depth, in rows, beyond one query of the mean size per replica) would take more
  than half the tightest budget to drain: queue time reacts within a period, while a windowed rate lags a
  burst; with no budget, any rows waiting at all (a standing queue means they arrive faster than the replicas
  serve them, whatever the profile says);
* *underloaded* when utilization < ``low_utilization`` with no misses and nothing queued.

Profiles are measured alone on a quiet machine; an instance that is overloaded (misses, queue time) below
``high_utilization`` has shown it sustains less, so its capacity is derated to match what it showed
(``_next_derate``) and recovers slowly while it is calm. That keeps a replica added for misses from being removed
again as soon as the rate alone looks low. No instance is derated on a *crowded* worker, whose demand at the
profiles already exceeds ``high_utilization`` of its cores (``_crowded``: its queue is its neighbours' load).

Scaling up reads the instance's demand (``InstanceLoad.demand_per_s``): its windowed rate, or the last second's
when that is higher, since a 5 s window reads a burst 1 s old at a fifth of its rate.

A scale-up waits for ``up_periods`` overloaded periods in a row and a scale-down for
``down_periods`` underloaded ones (hysteresis), except a *surge*, scaled up in its first overloaded period:
demand at or above ``surge_utilization`` of what the replicas serve with rows already waiting or queries missing
their budgets, or a queue whose drain alone takes the latency budget. Waiting a second period there only lets the
queue grow. ``benchmarks/burst.py`` (a 10 s burst at 1.6x one replica's rows/s on a cold instance, production loop
defaults): the second replica came 1.5 s after the burst started instead of 5.5-6.4 s without a latency budget,
0.6-0.7 s instead of 1.4-1.5 s with a 40 ms one, where 22-31% of the burst's queries missed instead of 55%. No instance
is touched twice within ``cooldown_s``, and none is scaled down within ``down_after_up_s`` of being scaled up, so
load near a threshold does not make it flap. Replicas are sized to ``target_utilization``, which lies between the
two thresholds, so the state reached by an action is inside the band and does not trigger the opposite action.

Scaling up replicates within the worker's memory and core budget (cores counted as the busy cores of
what is loaded, see ``_Budget``), or *upgrades* to a faster variant of the same model (INT8, more
threads, a better batch curve) that still meets the accuracy and fidelity floors its queries asked for
(``meets_floors``), whichever adds less $/hour, or when replication does not fit; what fits on neither
is placed on another worker, and what fits nowhere is reported as unmet demand for the VM level. Every
variant swapped in or placed elsewhere runs on its worker by the selector's rule
(``infaas.hardware_kinds.required_hardware``, matched by ``runs_on``).
Scaling down removes replicas, then *downgrades* a lone replica to a cheaper variant when the load is
low and the latency budget loose. Instances idle past ``idle_unload_s`` are unloaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.policy_types import (
    Action,
    ClusterView,
    History,
    InstanceLoad,
    PolicyConfig,
    VariantOption,
    WorkerLoad,
    effective_capacity,
    instance_target,
    next_streak,
    replicas_needed,
)
from infaas.hardware_kinds import runs_on
from infaas.replica_scaling import speedup

LEVEL = "model"
UP_ACTIONS = frozenset({"add_replica", "upgrade", "place"})  # actions that start the down-after-up guard


@dataclass(frozen=True)
class ModelPlan:
    """The model level's decisions, its updated memory, and what it could not place."""

    actions: tuple[Action, ...]
    history: History
    unmet: tuple[str, ...]  # targets overloaded with no room anywhere


def meets_floors(alt: VariantOption, inst: InstanceLoad, serving: VariantOption) -> bool:
    """Whether ``alt`` may take over the queries ``inst`` (a loaded ``serving``) receives: both floors they asked for.

    Read as the selector reads them (``infaas.accuracy``): the accuracy floor in one metric only, the one
    ``serving`` has (it met those floors, so it is the metric they were read in; a variant whose accuracy is in
    another metric or unknown meets only 0), and the fidelity floor, which an unknown fidelity meets only at 0.
    Checking accuracy alone let an upgrade swap in a variant less faithful than queries' ``min_fidelity``.
    """
    if inst.accuracy_floor > 0 and (
        alt.accuracy is None or alt.accuracy_metric != serving.accuracy_metric or alt.accuracy < inst.accuracy_floor
    ):
        return False
    return alt.fidelity.reaches(inst.fidelity_floor)


class _Budget:
    """Memory and cores left per worker, debited as actions are planned within one period.

    Memory is what loaded replicas hold. Cores are what loaded instances keep *busy* (arrival rate ÷
    per-replica capacity × threads, at most their replicas × threads): a loaded but idle variant kept
    warm against cold starts holds a thread, not a core, and must not stop a hot variant on the same
    worker from replicating. Replicas planned this period are debited at their full thread count.
    An instance's own replicas may together run no more threads than the cores its neighbours leave:
    past that, another replica adds contention, not capacity.
    """

    def __init__(self, view: ClusterView, derate: Mapping[str, float]) -> None:
        self.memory = {w.id: w.memory_budget_mb - w.memory_used_mb for w in view.workers}
        self.cores: dict[str, float] = {}
        self._busy: dict[tuple[str, str], float] = {}
        for w in view.workers:
            for i in w.instances:
                self._busy[(w.id, i.variant_key)] = _busy_cores(view, i, derate)
            self.cores[w.id] = w.cores - sum(self._busy[(w.id, i.variant_key)] for i in w.instances)
        # Workers with a whole core and some memory free: the only ones a replica (one core at least) can be
        # placed on. Kept up to date by ``take``, so placing scans these, not the fleet (``by_room``).
        self._position = {w.id: n for n, w in enumerate(view.workers)}
        self._roomy = {w.id for w in view.workers if self._has_room(w.id)}

    def _has_room(self, worker_id: str) -> bool:
        return self.cores[worker_id] >= 1 and self.memory[worker_id] > 0

    def by_room(self, option: VariantOption, exclude: frozenset[str]) -> list[str]:
        """Workers not in ``exclude`` that ``option`` may fit on, most free memory first (ties in view order).

        Every other worker has ``fits`` 0 for it. Sorting and scanning all 2,000 workers for each overloaded
        instance took 7.4 s of CPU a model period at 2,000 workers with 2,373 instances overloaded
        (``benchmarks/policy_speed.py``), most of it finding no room anywhere.
        """
        if option.cores > 0 and option.memory_mb > 0:
            pool = [
                w for w in self._roomy - exclude if self.cores[w] >= option.cores and self.memory[w] >= option.memory_mb
            ]
        else:  # no core or memory footprint (hand-made views): any worker may fit it
            pool = [w for w in self.memory if w not in exclude]
        return sorted(pool, key=lambda w: (-self.memory[w], self._position[w]))

    def fits(self, worker_id: str, option: VariantOption, loaded: InstanceLoad | None = None) -> int:
        """How many more replicas of ``option`` fit on the worker (``loaded``: its instance there)."""
        by_memory = self.memory[worker_id] / option.memory_mb if option.memory_mb > 0 else math.inf
        by_cores = self.cores[worker_id] / option.cores if option.cores > 0 else math.inf
        if loaded is not None and option.cores > 0:
            left_by_neighbours = self.cores[worker_id] + self._busy.get((worker_id, loaded.variant_key), 0.0)
            # Rounded to the nearest core: a neighbour keeping 1% of a core busy does not take it.
            by_cores = min(by_cores, round(left_by_neighbours) / option.cores - loaded.replicas)
        return max(0, int(min(by_memory, by_cores, 1_000)))

    def take(self, worker_id: str, option: VariantOption, replicas: int) -> None:
        """Debit (or, negative, credit) ``replicas`` replicas of ``option``."""
        self.memory[worker_id] -= replicas * option.memory_mb
        self.cores[worker_id] -= replicas * option.cores
        if self._has_room(worker_id):
            self._roomy.add(worker_id)
        else:
            self._roomy.discard(worker_id)


def _busy_cores(view: ClusterView, instance: InstanceLoad, derate: Mapping[str, float]) -> float:
    option = view.variants.get(instance.variant_key)
    if option is None:
        return 0.0
    held = instance.replicas * option.cores
    capacity = effective_capacity(instance, option, derate)
    return min(held, instance.rate_per_s / capacity * option.cores) if capacity > 0 else float(held)


def decide(
    view: ClusterView, history: History, config: PolicyConfig, pinned: frozenset[str] = frozenset()
) -> ModelPlan:
    """Plan this period's model-level actions (pure: no I/O, time comes from ``view.now``). ``pinned``: instance
    targets a pipeline plan sizes (``autoscaler.pipeline_apply``): left alone here, counted in the budgets."""
    budget = _Budget(view, history.derate)
    spare = _spare(view, history.derate, config)
    crowded = {w.id for w in view.workers if _crowded(view, w, config)}
    streaks: dict[str, int] = {}
    derates: dict[str, float] = {}
    actions: list[Action] = []
    unmet: list[str] = []
    for worker in sorted(view.workers, key=lambda w: w.id):
        for inst in worker.instances:
            option = view.variants.get(inst.variant_key)
            if option is None or instance_target(worker.id, inst.variant_key) in pinned:
                continue  # no longer a ready variant (the query engine unloads it), or a planned pipeline stage
            target = instance_target(worker.id, inst.variant_key)
            derate = history.derate.get(target, 1.0)
            capacity = effective_capacity(inst, option, history.derate)
            utilization = inst.demand_per_s / (max(inst.replicas, 1) * capacity)
            # Misses count as overload only under real load: at negligible utilization more replicas cannot help.
            slow = (
                inst.slo_miss_rate > config.slo_miss_threshold
                and inst.p99_ms > option.p99_at(inst.rows_per_query) * config.slow_factor
                and utilization >= config.low_utilization
            )
            waiting = _waiting_rows(inst)
            # The replicas drain the queue together at their measured speedup over one (``replicas`` if not measured).
            drains = speedup(inst.speedups(option), max(inst.replicas, 1))
            queue_ms = waiting / inst.rows_per_query / drains * option.latency_ms(inst.rows_per_query)
            # Without a budget, rows waiting beyond what the replicas run are overload by themselves: they arrive
            # faster than the replicas serve them, whatever the profiled capacity says (the serving path, not the
            # model, may be what limits). all-MiniLM-L6-v2 at 16 connections (peers benchmark): 15 rows waiting
            # at every read, utilization by the profile 0.56, and no second replica ever came.
            queued = queue_ms > inst.budget_ms / 2 if inst.budget_ms is not None else waiting > 0
            over = utilization > config.high_utilization or slow or queued
            # The replicas do not keep up now (a queue stands, or queries miss), or what waits already misses.
            behind = waiting > 0 or inst.slo_miss_rate > config.slo_miss_threshold
            surge = (utilization >= config.surge_utilization and behind) or (
                inst.budget_ms is not None and queue_ms > inst.budget_ms
            )
            under = (
                utilization < config.low_utilization
                and inst.slo_miss_rate <= config.slo_miss_threshold
                and inst.queue_depth == 0
            )
            streak = next_streak(history.streak(target), over, under)
            streaks[target] = streak
            calm = not over and inst.slo_miss_rate <= config.slo_miss_threshold and waiting == 0
            # On a crowded worker the queue is its neighbours' load, not this profile's error: not derated.
            learn = over and streak >= config.up_periods and worker.id not in crowded
            derates[target] = _next_derate(derate, utilization, learn, calm, config)
            if worker.draining or history.cooling(target, view.now, config.cooldown_s):
                continue
            unload = inst.idle_s >= config.idle_unload_s and inst.queue_depth == 0
            up = streak >= config.up_periods or (over and surge)
            last_up = history.last_up.get(target)
            down = streak <= -config.down_periods and (last_up is None or view.now - last_up >= config.down_after_up_s)
            if not (unload or up or down):
                continue  # the inputs of a decision are built only for one (a third of the period at 2,000 workers)
            inputs = {
                "rate_per_s": round(inst.rate_per_s, 3),
                "recent_rate_per_s": round(inst.recent_rate_per_s, 3),
                "replicas": inst.replicas,
                "capacity_per_replica_per_s": round(capacity, 3),
                "capacity_derate": round(derate, 3),
                "utilization": round(utilization, 3),
                "queue_depth": inst.queue_depth,
                "waiting_rows": round(waiting, 1),
                "queue_ms": round(queue_ms, 3),
                "p99_ms": round(inst.p99_ms, 3),
                "profiled_p99_ms": round(option.p99_at(inst.rows_per_query), 3),
                "slo_miss_rate": round(inst.slo_miss_rate, 4),
                "infeasible_rate": round(inst.infeasible_rate, 4),
                "idle_s": round(inst.idle_s, 1),
                "accuracy_floor": inst.accuracy_floor,
                "fidelity_floor": inst.fidelity_floor,
                "budget_ms": inst.budget_ms,
                "rows_per_query": round(inst.rows_per_query, 1),
                "streak": streak,
                "surge": over and surge,
            }
            if unload:
                actions.append(
                    Action(
                        LEVEL,
                        "unload",
                        target,
                        f"idle for {inst.idle_s:.0f} s ≥ idle_unload_s {config.idle_unload_s:g} s",
                        inputs,
                        worker=worker.id,
                        variant=inst.variant_key,
                    )
                )
                budget.take(worker.id, option, -inst.replicas)
            elif up:
                planned, missing = _scale_up(view, worker, inst, option, derate, budget, config, inputs, spare)
                actions.extend(planned)
                if missing:
                    unmet.append(target)
            else:
                actions.extend(_scale_down(view, worker, inst, option, derate, budget, config, inputs))
    new_history = history.with_streaks(streaks).with_derate({k: v for k, v in derates.items() if v < 1.0})
    acted: list[tuple[str, bool]] = []
    for action in actions:
        up = action.action in UP_ACTIONS
        acted.append((action.target, up))
        if action.to_variant is not None and action.worker is not None:
            acted.append((instance_target(action.worker, action.to_variant), up))
    return ModelPlan(tuple(actions), new_history.acted_all(acted, view.now), tuple(unmet))


def _waiting_rows(inst: InstanceLoad) -> float:
    """Rows waiting behind what the replicas are running now.

    Live state's queue depth counts rows outstanding (waiting or running), not requests: each replica is taken
    to be running one query of the instance's mean size, and the rest waits. Subtracting one *row* per replica,
    as when depth counted requests, read one 8-row query waiting behind another as 15 queries waiting: 600 ms
    of queue instead of 40 ms (the policy tests' case), a scale-up for a queue that did not exist.
    """
    return max(0.0, inst.queue_depth - inst.replicas * inst.rows_per_query)


def _spare(view: ClusterView, derate: Mapping[str, float], config: PolicyConfig) -> dict[str, float]:
    """Per variant, the rows/s its loaded instances with nothing waiting and no misses can still take below
    ``target_utilization`` (at their effective capacity): demand an overloaded instance cannot place goes there
    through the selector. An instance overloaded by its queue or misses offers nothing, not even to itself.

    Placing elsewhere skips workers that hold the variant (their instance scales itself), so once the selector had
    loaded a variant on every worker with room, an overloaded instance found room nowhere and was reported unmet,
    and the VM level added workers for it: in ``benchmarks/fleet_sim.py`` (240 s day) 40-50 instances of one
    variant were unmet for 30 periods after the shortage while the fleet ran at 17-50% of its cores.
    """
    spare: dict[str, float] = {}
    for worker in view.workers:
        if worker.draining:
            continue
        for inst in worker.instances:
            option = view.variants.get(inst.variant_key)
            if option is None:
                continue
            if _waiting_rows(inst) > 0 or inst.slo_miss_rate > config.slo_miss_threshold:
                continue  # behind already (a queue, misses): it takes nothing more, whatever its rate says
            room = effective_capacity(inst, option, derate) * max(inst.replicas, 1) * config.target_utilization
            if room > inst.demand_per_s:
                spare[inst.variant_key] = spare.get(inst.variant_key, 0.0) + room - inst.demand_per_s
    return spare


def _crowded(view: ClusterView, worker: WorkerLoad, config: PolicyConfig) -> bool:
    """Whether the demand on the worker's instances, at their profiles, keeps more than ``high_utilization`` of its
    cores busy: its instances queue behind each other, whatever their profiles are worth.

    Derating an instance for queueing there is a wrong lesson. In ``benchmarks/fleet_sim.py`` (240 s day, 60-worker
    peak) a shortage crowded every worker, derated 150 instances to the floor (a quarter of their profile), and the
    derating, recovering 2% a calm period, still read those instances as overloaded 40 s after the shortage had
    passed (no worker slowed by its load, 100 workers for a third of that): the model level reported 40-50 of
    them as demand with no room anywhere and the VM level added workers at 17-140% utilization.
    """
    busy = 0.0
    for inst in worker.instances:
        option = view.variants.get(inst.variant_key)
        if option is not None:
            capacity = effective_capacity(inst, option, {})
            busy += inst.demand_per_s / capacity * option.cores if capacity > 0 else option.cores * inst.replicas
    return busy > worker.cores * config.high_utilization


def _next_derate(derate: float, utilization: float, overloaded: bool, calm: bool, config: PolicyConfig) -> float:
    """Learn how much of its profile an instance really sustains.

    Overloaded (by misses or queue time) while its utilization is still below ``high_utilization``
    means the profile, measured alone on a quiet machine, promises more than the instance delivers
    here: derate its capacity so that this load reads as ``high_utilization``. Without this, the
    replica added for the misses is removed again as soon as the rate alone looks low, and added
    again at the next misses. Calm periods let the derating recover, so a passing disturbance is
    forgotten.
    """
    if overloaded and utilization < config.high_utilization:
        return max(config.derate_floor, derate * utilization / config.high_utilization)
    if calm:
        return min(1.0, derate + (1.0 - derate) * config.derate_recovery)
    return derate


def _alt_capacity(inst: InstanceLoad, derate: float, alt: VariantOption) -> float:
    """Capacity of one replica of ``alt`` alone for this instance's queries, derated as much as the loaded variant
    has shown on this worker (``derate``): the contention applies to any variant."""
    return inst.capacity(alt) * derate


def _total(inst: InstanceLoad, option: VariantOption, derate: float, replicas: int) -> float:
    """Rows/s ``replicas`` replicas of ``option`` serve together for this instance's queries: one alone times the
    measured speedup (``infaas.replica_scaling``; linear when not measured), derated."""
    return _alt_capacity(inst, derate, option) * speedup(inst.speedups(option), replicas)


def _useful_here(inst: InstanceLoad, option: VariantOption, fits: int) -> int:
    """Of the ``fits`` replicas that fit on the instance's worker, how many to add there: the count whose measured
    joint rows/s is highest (the fewest on a tie). A replica that shares the cores so badly that the replicas
    together serve less (two one-thread replicas of a tiny model served 0.91-0.96× one: each run is mostly Python
    holding the GIL) is not added here; the demand goes to another worker or a faster variant instead.
    Nor are more replicas put on one worker than were measured together (the profiler measures up to its cores)."""
    speedups = inst.speedups(option)
    if not speedups:
        return fits
    most = max(0, min(fits, len(speedups) - inst.replicas))
    gains = [speedup(speedups, inst.replicas + h) for h in range(most + 1)]
    return max(range(most + 1), key=lambda h: (gains[h], -h))


def _alternatives(
    view: ClusterView, worker: WorkerLoad, option: VariantOption, inst: InstanceLoad
) -> list[VariantOption]:
    """Other variants of the same model that run on ``worker`` and meet the floors and the budget its queries
    asked for (the selector's hardware rule, ``infaas.hardware_kinds.runs_on``: a GPU variant never replaces a CPU
    one on a CPU worker, nor a TensorRT one a CUDA one where TensorRT is missing)."""
    return [
        alt
        for alt in view.variants.values()
        if alt.model == option.model
        and alt.key != option.key
        and runs_on(alt.hardware, worker.hardware)
        and meets_floors(alt, inst, option)
        and (inst.budget_ms is None or alt.latency_ms(inst.rows_per_query) <= inst.budget_ms)
    ]


def _scale_up(
    view: ClusterView,
    worker: WorkerLoad,
    inst: InstanceLoad,
    option: VariantOption,
    derate: float,
    budget: _Budget,
    config: PolicyConfig,
    inputs: dict,
    spare: dict[str, float],
) -> tuple[list[Action], bool]:
    """Replicate, upgrade or place elsewhere; the flag says demand is left that fits nowhere, not even in what the
    variant's other instances can still take (``spare``, debited here: the selector sends the overflow there).

    Sized with the measured replica speedups (``infaas.replica_scaling``): replicas are added until their measured
    joint rows/s is enough, only as many on this worker as raise what it serves, and a faster variant wins a tie on
    cost when it serves more than the replicas would (1×2 against 2×1 on two cores, as measured)."""
    target = instance_target(worker.id, inst.variant_key)
    alone = _alt_capacity(inst, derate, option)
    capacity = _total(inst, option, derate, max(inst.replicas, 1)) / max(inst.replicas, 1)
    speedups = inst.speedups(option)
    needed = max(replicas_needed(inst.demand_per_s, alone, config.target_utilization, speedups), inst.replicas + 1)
    add = needed - inst.replicas
    here = _useful_here(inst, option, min(add, budget.fits(worker.id, option, inst)))
    replicate_cost = add * option.cost_per_hour
    replicated = _total(inst, option, derate, needed)
    inputs = {
        **inputs,
        "worker_free_cores": round(budget.cores[worker.id], 3),
        "worker_free_memory_mb": round(budget.memory[worker.id], 1),
        "replicas_fitting_here": here,
    }

    best: tuple[float, float, VariantOption, int] | None = None
    for alt in _alternatives(view, worker, option, inst):
        alt_capacity = _alt_capacity(inst, derate, alt)
        if alt_capacity < capacity * config.faster_factor:
            continue
        # Enough replicas to beat what is loaded now as a whole: one two-thread replica that is faster
        # than one one-thread replica is still slower than the two one-thread replicas it would replace.
        alt_speedups = inst.speedups(alt)
        alt_replicas = max(
            replicas_needed(inst.demand_per_s, alt_capacity, config.target_utilization, alt_speedups),
            replicas_needed(inst.replicas * capacity * config.faster_factor, alt_capacity, 1.0, alt_speedups),
        )
        freed_memory = inst.replicas * option.memory_mb
        freed_cores = inst.replicas * option.cores
        if (
            alt_replicas * alt.memory_mb - freed_memory > budget.memory[worker.id]
            or alt_replicas * alt.cores - freed_cores > budget.cores[worker.id]
        ):
            continue
        extra_cost = alt_replicas * alt.cost_per_hour - inst.replicas * option.cost_per_hour
        rank = (extra_cost, -alt_capacity, alt, alt_replicas)
        if best is None or rank[:2] < best[:2]:
            best = rank
    serves_more = best is not None and _total(inst, best[2], derate, best[3]) > replicated
    if best is not None and (here < add or best[0] < replicate_cost or (best[0] == replicate_cost and serves_more)):
        extra_cost, minus_alt_capacity, alt, alt_replicas = best
        if here < add:
            why = "replication does not fit" if budget.fits(worker.id, option, inst) < add else "replication adds less"
        elif best[0] < replicate_cost:
            why = f"+${extra_cost:.4f}/h < +${replicate_cost:.4f}/h"
        else:
            why = (
                f"same +${extra_cost:.4f}/h, serves {_total(inst, alt, derate, alt_replicas):.0f}/s vs "
                f"{replicated:.0f}/s replicated (measured)"
            )
        budget.take(worker.id, option, -inst.replicas)
        budget.take(worker.id, alt, alt_replicas)
        return [
            Action(
                LEVEL,
                "upgrade",
                target,
                f"overloaded ({inputs['utilization']:.2f} utilization); {alt.key} serves "
                f"{-minus_alt_capacity:.0f}/s per replica vs {capacity:.0f}/s; {why}",
                {**inputs, "to_capacity_per_s": round(-minus_alt_capacity, 3)},
                worker=worker.id,
                variant=inst.variant_key,
                to_variant=alt.key,
                count=alt_replicas,
            )
        ], False

    actions: list[Action] = []
    if here > 0:
        budget.take(worker.id, option, here)
        actions.append(
            Action(
                LEVEL,
                "add_replica",
                target,
                f"{'surge' if inputs['surge'] else 'overloaded'}: {inst.demand_per_s:.1f}/s needs {needed} "
                f"replica(s) at {config.target_utilization:.0%} of {capacity:.0f}/s each; {inst.replicas} loaded",
                {**inputs, "needed_replicas": needed},
                worker=worker.id,
                variant=inst.variant_key,
                count=here,
            )
        )
    remaining = add - here
    # Not on a worker that holds it already (its own instance there scales itself), nor back on this one.
    holders = view.holders(inst.variant_key) | {worker.id}
    for other_id in budget.by_room(option, holders) if remaining > 0 else ():
        other = view.worker(other_id)
        if remaining <= 0:
            break
        if other is None or other.draining or not runs_on(option.hardware, other.hardware):
            continue
        fits = min(remaining, budget.fits(other.id, option))
        if fits <= 0:
            continue
        budget.take(other.id, option, fits)
        remaining -= fits
        actions.append(
            Action(
                LEVEL,
                "place",
                instance_target(other.id, inst.variant_key),
                f"{worker.id} has no room for {remaining + fits} more replica(s) of {inst.variant_key}; "
                f"loading {fits} on {other.id}",
                {**inputs, "needed_replicas": needed, "from_worker": worker.id},
                worker=other.id,
                variant=inst.variant_key,
                count=fits,
            )
        )
    if remaining > 0 and spare.get(inst.variant_key, 0.0) > 0:
        left = remaining * alone * config.target_utilization  # rows/s the replicas not placed were for
        taken = min(left, spare[inst.variant_key])
        spare[inst.variant_key] -= taken
        remaining = math.ceil((left - taken) / (alone * config.target_utilization) - 1e-9) if left > taken else 0
    return actions, remaining > 0


def _scale_down(
    view: ClusterView,
    worker: WorkerLoad,
    inst: InstanceLoad,
    option: VariantOption,
    derate: float,
    budget: _Budget,
    config: PolicyConfig,
    inputs: dict,
) -> list[Action]:
    """Remove replicas down to what the load needs (by their measured joint rows/s), or downgrade a lone busy one."""
    target = instance_target(worker.id, inst.variant_key)
    alone = _alt_capacity(inst, derate, option)
    if inst.replicas > 1:
        keep = replicas_needed(inst.demand_per_s, alone, config.target_utilization, inst.speedups(option))
        if keep >= inst.replicas:
            return []
        budget.take(worker.id, option, -(inst.replicas - keep))
        return [
            Action(
                LEVEL,
                "remove_replica",
                target,
                f"underloaded: {inst.rate_per_s:.1f}/s needs {keep} of {inst.replicas} replica(s)",
                {**inputs, "keep_replicas": keep},
                worker=worker.id,
                variant=inst.variant_key,
                count=inst.replicas - keep,
            )
        ]
    if inst.rate_per_s <= 0:
        return []  # nothing served: unloading when idle long enough is cheaper than any variant
    cheaper = [
        alt
        for alt in _alternatives(view, worker, option, inst)
        if (
            alt.cost_per_hour < option.cost_per_hour
            or (alt.cost_per_hour == option.cost_per_hour and alt.memory_mb < 0.8 * option.memory_mb)
        )
        and (inst.budget_ms is None or alt.p99_at(inst.rows_per_query) <= inst.budget_ms / 2)
        and inst.demand_per_s <= _alt_capacity(inst, derate, alt) * config.target_utilization
        and alt.memory_mb - option.memory_mb <= budget.memory[worker.id]
        and alt.cores - option.cores <= budget.cores[worker.id]
    ]
    if not cheaper:
        return []
    alt = min(cheaper, key=lambda a: (a.cost_per_hour, a.memory_mb, a.key))
    budget.take(worker.id, option, -1)
    budget.take(worker.id, alt, 1)
    return [
        Action(
            LEVEL,
            "downgrade",
            target,
            f"underloaded and objectives loose: {alt.key} costs ${alt.cost_per_hour:.4f}/h vs "
            f"${option.cost_per_hour:.4f}/h, p99 {alt.p99_at(inst.rows_per_query):.2f} ms within half of the "
            f"{'unbounded' if inst.budget_ms is None else f'{inst.budget_ms:g} ms'} budget",
            inputs,
            worker=worker.id,
            variant=inst.variant_key,
            to_variant=alt.key,
        )
    ]
