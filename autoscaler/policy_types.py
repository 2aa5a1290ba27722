"""The autoscaler's inputs and outputs as plain immutable values.

Both policies (``model_level.decide``, ``vm_level.decide``) are pure functions of these: the control
loop (``loop.py``) builds a ``ClusterView`` from live state, worker status and the catalog, passes the
``History`` returned last time, and executes (or, in dry-run, only records) the returned ``Action``s.
Keeping I/O out of the policies is what lets the tests cover every rule with hand-made states.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from infaas.accuracy import Fidelity
from infaas.replica_scaling import speedup


@dataclass(frozen=True)
class PolicyConfig:
    """Thresholds of both levels. Scale-up and scale-down thresholds are far apart (hysteresis)."""

    high_utilization: float = 0.8  # above: overloaded
    low_utilization: float = 0.3  # below: underloaded
    target_utilization: float = 0.6  # replicas are sized so that each runs at this
    slo_miss_threshold: float = 0.02  # windowed miss rate above which objectives are not met
    slow_factor: float = 1.5  # observed p99 above profiled p99 × this counts as slow
    derate_floor: float = 0.25  # an instance is never assumed to sustain less than this of its profile
    derate_recovery: float = 0.02  # per calm period, a derating moves this fraction of the way back to 1
    up_periods: int = 2  # consecutive overloaded periods before scaling up
    # A surge scales up in its first overloaded period: demand at or above this share of what the replicas serve
    # with rows already waiting or queries missing, or a queue whose drain alone takes the budget (``model_level``).
    # Not above 1: live state counts served queries, so a saturated instance reads about 1 whatever is offered
    # (0.94 in the end-to-end burst test, with 1.6x its capacity offered and a queue growing).
    surge_utilization: float = 0.8
    down_periods: int = 5  # consecutive underloaded periods before scaling down
    cooldown_s: float = 3.0  # no second action on the same instance within this
    down_after_up_s: float = 10.0  # no scale-down of an instance within this of its last scale-up
    idle_unload_s: float = 120.0
    faster_factor: float = 1.25  # an upgrade must raise per-replica capacity at least this much
    # The VM level's own underload threshold (the cluster's utilization below it drains workers down to
    # target_utilization), None: low_utilization. Billed by the second, a fleet idling below target is pure cost.
    vm_low_utilization: float | None = None
    vm_up_periods: int = 2
    vm_down_periods: int = 3
    vm_cooldown_s: float = 20.0
    vm_down_after_up_s: float = 60.0  # no worker is drained within this of the last one added
    # A worker is not drained before it has run this long (a VM takes minutes to start and is billed by the
    # minute at least; the trace's bursts came back within two minutes), unless clearly idle (below
    # vm_idle_utilization of its cores, nothing outstanding) for vm_idle_periods periods in a row.
    vm_min_lifetime_s: float = 600.0
    vm_idle_periods: int = 6
    # How long a worker asked for takes to take queries (the provider's start-up, billed): a VM step is sized for the
    # demand this far ahead, from the trend over the last this long (``vm_level_forecast``). 0: the demand now, read
    # from the current period alone (in-process workers start at once).
    vm_startup_s: float = 0.0
    vm_idle_utilization: float = 0.05
    drain_timeout_s: float = 60.0  # a draining worker is stopped after this even if work remains


@dataclass(frozen=True)
class VariantOption:
    """A ready, profiled variant as the policies see it.

    ``curve`` holds ``(batch, p50 ms, throughput/s)`` per profiled batch size, ascending by batch, and
    ``replica_speedups`` (when measured) at each of them the rows/s of 1, 2, ... replicas on one worker relative to
    one (``infaas.replica_scaling``): what a replica added next to another really serves.
    ``cores`` is what one replica holds (its thread count, or all the worker's cores when 0).
    ``accuracy`` is in ``accuracy_metric`` and, with ``fidelity``, comes from ``infaas.accuracy`` (the selector's
    ``Candidate``): what an upgrade or downgrade must still offer the queries that asked for floors.
    """

    key: str
    model: str
    accuracy: float | None
    curve: tuple[tuple[int, float, float], ...]
    p99_ms: float  # profiled p99 at batch 1
    memory_mb: float
    cores: int
    cost_per_hour: float  # of one replica
    accuracy_metric: str | None = None  # None with accuracy None (or in hand-made views: all in one metric)
    fidelity: Fidelity = Fidelity(None, None)
    hardware: tuple[str, ...] = ("cpu",)  # every kind a worker must run (``infaas.hardware_kinds.required_hardware``)
    replica_speedups: tuple[tuple[float, ...], ...] = ()  # one per curve point; empty: not measured (linear)
    # False for a variant the worker never batches across queries (dynamic INT8): a query runs at its own rows.
    batch_invariant: bool = True

    @property
    def service_ms(self) -> float:
        """Profiled p50 at the smallest batch."""
        return self.curve[0][1]

    def latency_ms(self, rows: float = 1.0) -> float:
        """Profiled p50 of one query of ``rows`` rows.

        The smallest profiled batch that holds it, or, past the largest, that batch's time scaled by
        rows (a query bigger than any profiled batch runs as one session call of its size).
        """
        for batch, p50, _thr in self.curve:
            if batch >= rows:
                return p50
        batch, p50, _thr = self.curve[-1]
        return p50 * rows / batch

    def p99_at(self, rows: float = 1.0) -> float:
        """Profiled p99 of one query of ``rows`` rows (the batch-1 tail ratio applied to its p50)."""
        return self.latency_ms(rows) * self.p99_ms / self.service_ms if self.service_ms > 0 else self.p99_ms

    def capacity(self, budget_ms: float | None, rows_per_query: float = 1.0) -> float:
        """Rows/s one replica sustains when a batch must finish within half the budget.

        Half, because a request waits for the batch in front of it as well as its own; with no budget
        the best profiled throughput counts. Batches smaller than a query's rows never happen, so only
        profiled batches of at least that size count (the largest one when queries are bigger still).
        """
        return self.curve[self._point(budget_ms, rows_per_query)][2]

    def speedups(self, budget_ms: float | None, rows_per_query: float = 1.0) -> tuple[float, ...]:
        """Measured speedups of 1, 2, ... replicas at the batch ``capacity`` is taken at (empty: not measured)."""
        if not self.replica_speedups:
            return ()
        return self.replica_speedups[self._point(budget_ms, rows_per_query)]

    def _point(self, budget_ms: float | None, rows_per_query: float) -> int:
        """The curve point ``capacity`` reads: the highest throughput among usable batches (the first big enough
        batch when none is usable, and always for a batch-dependent variant: its queries are never batched, so
        all-MiniLM-L6-v2's dynamic INT8 on two threads read at batch 8-16 "served 863/s" against 637/s for one
        thread, both ~650 rows/s row by row, and the model level swapped one for the other under load)."""
        big_enough = [i for i, c in enumerate(self.curve) if c[0] >= rows_per_query] or [len(self.curve) - 1]
        if not self.batch_invariant:
            return big_enough[0]
        usable = [i for i in big_enough if budget_ms is None or self.curve[i][1] <= budget_ms / 2]
        return max(usable, key=lambda i: self.curve[i][2]) if usable else big_enough[0]


@dataclass(frozen=True)
class InstanceLoad:
    """One variant loaded on one worker, with what it is being asked to do."""

    worker_id: str
    variant_key: str
    replicas: int
    queue_depth: int  # rows outstanding now (of requests waiting or running), as live state counts them
    rate_per_s: float  # this instance's own windowed arrival rate (queries sent to it), in rows/s like profiles
    p99_ms: float  # observed on this worker, windowed (0 when no requests)
    slo_miss_rate: float  # observed on this worker, windowed, over queries that were feasible when selected
    idle_s: float  # since the last request
    accuracy_floor: float = 0.0  # the highest min_accuracy among recent queries it served
    budget_ms: float | None = None  # the tightest latency budget among recent queries it served
    rows_per_query: float = 1.0  # mean rows of recent queries
    infeasible_rate: float = 0.0  # share of its windowed queries no placement could serve in time (not overload)
    fidelity_floor: float = 0.0  # the highest min_fidelity among recent queries it served
    # Arrival rate over the last second (rows/s): a windowed rate lags a burst (``rate_per_s`` over a 5 s window
    # reads a burst 1 s old at a fifth of its rate), so scaling up reads the larger of the two.
    recent_rate_per_s: float = 0.0
    # The share of a whole core each of its worker's cores gets (``WorkerState.cpu_share``: a CPU quota below the
    # advertised cores). Profiles are measured without a quota; a replica on a 0.5-CPU container serves half its
    # profile, and both levels read its load against that (the docker trace's VM level, reading it against the
    # profile, saw its containers at 7-41% while they refused queries, and never added one).
    cpu_share: float = 1.0

    @property
    def demand_per_s(self) -> float:
        """The rate scaling up sizes for: the windowed rate, or the last second's when a burst makes it higher."""
        return max(self.rate_per_s, self.recent_rate_per_s)

    def capacity(self, option: VariantOption) -> float:
        """Rows/s one replica of ``option`` sustains alone for the queries this instance receives: as profiled, at its
        worker's ``cpu_share`` of the profiling host's cores."""
        return option.capacity(self.budget_ms, self.rows_per_query) * self.cpu_share

    def speedups(self, option: VariantOption) -> tuple[float, ...]:
        """``option``'s measured replica speedups at the batch its capacity for these queries is taken at."""
        return option.speedups(self.budget_ms, self.rows_per_query)


def instance_target(worker_id: str, variant_key: str) -> str:
    """The history key of one instance: ``worker/model/variant``."""
    return f"{worker_id}/{variant_key}"


def effective_capacity(inst: InstanceLoad, option: VariantOption, derate: Mapping[str, float]) -> float:
    """Rows/s one replica of ``option`` really sustains on ``inst``'s worker: the one capacity model of both levels.

    The profiled capacity for the queries it receives, shared as measured among the instance's replicas (its
    ``replicas`` serve ``speedup`` single replicas' worth, ``infaas.replica_scaling``: not ``replicas`` times one
    unless measured so), times the derating the model level learned for this instance (``History.derate``, 1 when
    it never missed objectives below ``high_utilization``). The VM level counting busy cores from the profile alone
    saw a derated instance as lighter than the model level did, and could drain the worker whose replicas the model
    level had just added for misses.
    """
    replicas = max(inst.replicas, 1)
    shared = speedup(inst.speedups(option), replicas) / replicas
    return inst.capacity(option) * shared * derate.get(instance_target(inst.worker_id, inst.variant_key), 1.0)


@dataclass(frozen=True)
class WorkerLoad:
    """A worker's budget and what is loaded on it."""

    id: str
    cores: int
    memory_budget_mb: float
    memory_used_mb: float
    instances: tuple[InstanceLoad, ...] = ()
    draining: bool = False
    removable: bool = True  # false for the front-end's own in-process worker
    hardware: tuple[str, ...] = ("cpu",)  # the kinds it advertises (``WorkerState.hardware``)

    @property
    def outstanding(self) -> int:
        """Rows waiting or running on this worker (0 exactly when no request is outstanding)."""
        return sum(i.queue_depth for i in self.instances)


@dataclass(frozen=True)
class ClusterView:
    """Everything both policies decide from, taken at ``now`` (seconds, any monotonic clock)."""

    now: float
    workers: tuple[WorkerLoad, ...]
    variants: Mapping[str, VariantOption]
    min_workers: int = 1
    max_workers: int = 4
    pending_workers: int = 0  # asked of the provider, not yet registered

    def worker(self, worker_id: str) -> WorkerLoad | None:
        """A worker by id (indexed: the VM level looks up every worker it remembers, each period)."""
        return self._by_id.get(worker_id)

    @cached_property
    def _by_id(self) -> dict[str, WorkerLoad]:
        # A scan per lookup made vm_level.decide quadratic: 2,000 remembered workers × 2,000 workers a period.
        return {w.id: w for w in self.workers}

    def holders(self, variant_key: str) -> frozenset[str]:
        """Ids of the workers the variant is loaded on (indexed, as ``worker``)."""
        return self._holders.get(variant_key, frozenset())

    @cached_property
    def _holders(self) -> dict[str, frozenset[str]]:
        out: dict[str, set[str]] = {}
        for w in self.workers:
            for i in w.instances:
                out.setdefault(i.variant_key, set()).add(w.id)
        return {k: frozenset(v) for k, v in out.items()}


@dataclass(frozen=True)
class Action:
    """One decision: what to do, to what, why, and the inputs that triggered it."""

    level: str  # "model" or "vm"
    action: str
    target: str  # "worker/model/variant" at model level, a worker id at VM level
    reason: str
    inputs: dict[str, Any] = field(default_factory=dict)
    worker: str | None = None
    variant: str | None = None
    to_variant: str | None = None
    count: int = 1


@dataclass(frozen=True)
class History:
    """What the policies remember between periods.

    ``streaks`` counts consecutive periods a target was overloaded (positive) or underloaded
    (negative); ``last_up`` / ``last_action`` hold when a target was last scaled up / acted on;
    ``derate`` is the fraction of its profiled capacity an instance has shown it really sustains
    (see ``model_level``), 1 when it has not missed objectives below the utilization threshold;
    ``started`` holds when each worker the VM level added was started (its minimum lifetime; ``-inf`` for
    workers already there when the level began); ``demand`` the VM level's recent samples of the cores the load
    needs at the profiles, the trend its steps are sized on (``vm_level_forecast``).
    """

    streaks: Mapping[str, int] = field(default_factory=dict)
    last_action: Mapping[str, float] = field(default_factory=dict)
    last_up: Mapping[str, float] = field(default_factory=dict)
    derate: Mapping[str, float] = field(default_factory=dict)
    started: Mapping[str, float] = field(default_factory=dict)
    demand: tuple[tuple[float, float], ...] = ()  # the VM level's (time, busy cores at the profiles) samples

    def streak(self, target: str) -> int:
        """The signed streak of a target (0 when in band or unknown)."""
        return self.streaks.get(target, 0)

    def cooling(self, target: str, now: float, cooldown_s: float) -> bool:
        """Whether the target was acted on less than ``cooldown_s`` ago."""
        last = self.last_action.get(target)
        return last is not None and now - last < cooldown_s

    def with_streaks(self, streaks: Mapping[str, int]) -> History:
        """A copy with new streaks (targets not present are forgotten)."""
        return replace(self, streaks=dict(streaks))

    def with_derate(self, derate: Mapping[str, float]) -> History:
        """A copy with new capacity deratings (targets not present are forgotten)."""
        return replace(self, derate=dict(derate))

    def acted(self, target: str, now: float, up: bool) -> History:
        """A copy noting an action on ``target`` at ``now``; its streak restarts."""
        return self.acted_all([(target, up)], now)

    def acted_all(self, targets: Iterable[tuple[str, bool]], now: float) -> History:
        """A copy noting actions on each ``(target, up)`` at ``now`` (one copy of the maps, not one per action:
        1,700 actions on 6,000 instances copied 10 million entries a period)."""
        streaks, last_action, last_up = dict(self.streaks), dict(self.last_action), dict(self.last_up)
        for target, up in targets:
            streaks[target] = 0
            last_action[target] = now
            if up:
                last_up[target] = now
        return replace(self, streaks=streaks, last_action=last_action, last_up=last_up)


def next_streak(previous: int, over: bool, under: bool) -> int:
    """Extend a signed streak: consecutive overloaded periods count up, underloaded ones count down."""
    if over:
        return previous + 1 if previous > 0 else 1
    if under:
        return previous - 1 if previous < 0 else -1
    return 0


MAX_REPLICAS = 1_000  # a search bound, far above any worker count


def replicas_needed(
    rate_per_s: float, capacity_per_s: float, target_utilization: float, speedups: tuple[float, ...] = ()
) -> int:
    """Replicas that serve ``rate_per_s`` at ``target_utilization``; at least one.

    ``capacity_per_s`` is one replica's alone; ``speedups`` (measured, ``infaas.replica_scaling``) what several
    serve together: with them, the fewest replicas whose measured total is enough (linear when not measured).
    """
    if capacity_per_s <= 0:
        return 1
    needed = max(1, math.ceil(rate_per_s / (capacity_per_s * target_utilization)))  # a lower bound: speedup <= n
    if not speedups:
        return needed
    while needed < MAX_REPLICAS and capacity_per_s * speedup(speedups, needed) * target_utilization < rate_per_s:
        needed += 1
    return needed
