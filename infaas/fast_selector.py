"""Indexed selection: the decisions of ``infaas.selector.select`` without scanning every candidate × worker.

The reference scans every qualified candidate against every live worker (its usable-worker filter and its
cold choice each walk all workers): measured at 10,000 variants and 1,000 workers, p50 2.7 s per task query
(issue 20). This module makes the same decision with three structures (``benchmarks/scale.py`` measures
them against the reference):

* per snapshot (built once per ``LiveSnapshot.workers`` tuple): workers by id, and per hardware kind the
  non-draining workers sorted by (free memory, id) descending, so a candidate's cold worker — the reference's
  ``max(cold, key=(memory_free_mb, id))`` — is the first one in that order that is usable, not loaded and not
  excluded; the loaded options come from ``LiveSnapshot.instances`` (already indexed by variant);
* per candidate list (cached by the identity of the qualified candidates, batch, prices and the smallest
  worker's cores): the candidates sorted by a lower bound on the cost of any of their placements (the loaded
  cost on the cheapest worker; a cold one adds ``load_ms``);
* early termination: once a feasible placement is found, no candidate whose bound exceeds the cheapest
  feasible cost (within the reference's cost tie) can win or tie, so the scan stops there.

When no placement is feasible (best effort at risk, ``Infeasible``, ``NoWorkerAvailable``) every option is
needed (the fastest, the best achievable, the wait): the scan is then complete, still one pass over each
candidate's instances plus its cold worker instead of over all workers, and kept cheap because ~11% of task
queries take it (budgets below every profile): options as plain tuples, queue waits memoised per candidate, the
qualified list kept per candidate list and floors, the eviction-room index once per snapshot. Measured at 10,000
variants and 1,000 workers (200-candidate task queries): that path went from 1.2 ms to ~0.4 ms p50 CPU, the
task p99 from 1.78 to ~0.5-0.8 ms (``benchmarks/scale.py``). The reference stays the test oracle
(``tests/infaas/test_fast_selector.py`` compares the two on thousands of random cases); its private helpers
are reused so that messages and the selection's fields are built in one place. The one difference: the
reason of a feasible choice does not count every feasible placement (that count needs the full scan).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace

from infaas.calibration import Correction
from infaas.hardware_kinds import runs_on
from infaas.live_state.base import InstanceState, LiveSnapshot, WorkerState
from infaas.selector import (
    _COST_TIE,
    Achievable,
    Candidate,
    Infeasible,
    NoWorkerAvailable,
    Requirements,
    Selection,
    _Option,
    _qualified,
    _queue_ms,
    _selection,
    query_cost,
    select,
    under_load,
)

_ORDER_CACHE_MAX = 1024  # distinct candidate lists (task × tenant × floors × batch) kept sorted


def usable(candidate: Candidate, worker: WorkerState) -> bool:
    """The reference's usable-worker filter (``selector._options``): kept in step with it by the oracle tests."""
    needs = candidate.hardware
    return (
        not worker.draining
        and needs[0] in worker.hardware
        and worker.memory_budget_mb >= candidate.curve.memory_mb
        and (len(needs) == 1 or runs_on(needs, worker.hardware))
    )


class _WorkerIndex:
    """One snapshot's workers: by id, and per hardware kind the non-draining ones by (free memory, id) descending
    (a candidate's cold worker is looked for under the first kind it needs)."""

    __slots__ = ("workers", "by_id", "by_kind", "min_cores")

    def __init__(self, workers: tuple[WorkerState, ...]) -> None:
        self.workers = workers  # held: the cache is keyed by this tuple's identity
        self.by_id = {w.id: w for w in workers}
        kinds: dict[str, list[WorkerState]] = {}
        for w in workers:
            if not w.draining:
                for kind in w.hardware:
                    kinds.setdefault(kind, []).append(w)
        self.by_kind = {
            kind: tuple(sorted(ws, key=lambda w: (w.memory_free_mb, w.id), reverse=True)) for kind, ws in kinds.items()
        }
        self.min_cores = min((w.cores for w in workers), default=0)


@dataclass(slots=True, frozen=True)
class _Ranked:
    """A qualified candidate with what its options share, in the order the scan visits them."""

    bound: float  # no placement of this candidate costs less
    index: int  # position in the qualified list: the reference's order among equal options
    candidate: Candidate
    key: str
    service_ms: float
    tail_ms: float
    fixed_cost: float | None  # the loaded cost when it does not depend on the worker (not a CPU variant on all cores)
    fixed_cold_cost: float | None  # the same for a cold placement (its load held too)
    queues: dict[tuple[int, int], float]  # ``_queue_ms`` by (rows, replicas): depths repeat across queries


class _MinCores:
    """The worker ``query_cost`` prices a bound on: only its cores are read."""

    __slots__ = ("cores",)

    def __init__(self, cores: int) -> None:
        self.cores = cores


class _Room:
    """``selector._Room`` per worker: the idle instances of one worker are summed only when that worker is asked.

    Sums in the reference's order (``live.instances`` order), so that the float comparison is the same.
    """

    __slots__ = ("_live", "_placements", "_idle")

    def __init__(self, live: LiveSnapshot, placements: _Placements) -> None:
        self._live = live
        self._placements = placements
        self._idle: dict[str, float] = {}

    def fits(self, worker: WorkerState, needed_mb: float) -> bool:
        free = worker.memory_free_mb
        if free >= needed_mb:
            return True
        idle = self._idle.get(worker.id)
        if idle is None:
            idle = 0.0
            depth = self._live.depth
            for inst in self._placements.on_worker(worker.id):
                if depth(inst.worker_id, inst.variant_key) == 0:
                    idle += inst.memory_mb
            self._idle[worker.id] = idle
        return free + idle >= needed_mb


_DEPENDS = object()  # a cold choice that depends on queue depths (eviction room): made per query


class _Placements:
    """One snapshot's placements per candidate: its loaded instances on usable workers and, when no queue depth
    decides it (the roomiest usable worker has the memory free), its cold worker. Built per candidate on first use;
    what depends on depths or ``exclude`` is decided per query."""

    __slots__ = ("workers", "instances", "by_candidate", "by_worker")

    def __init__(self, live: LiveSnapshot) -> None:
        self.workers, self.instances = live.workers, live.instances  # held: the cache is keyed by their identity
        self.by_worker: dict[str, list[InstanceState]] | None = None
        self.by_candidate: dict[
            tuple[str, tuple[str, ...], float],
            tuple[tuple[InstanceState, ...], tuple[tuple[int, WorkerState, int, tuple[str, str]], ...], object],
        ] = {}

    def on_worker(self, worker_id: str) -> list[InstanceState]:
        """The worker's loaded instances in ``live.instances`` order (indexed on first use: 20,000 instances at
        scale, once per snapshot rather than once per query that needs eviction room)."""
        by_worker = self.by_worker
        if by_worker is None:
            by_worker = {}
            for instances in self.instances.values():
                for inst in instances:
                    by_worker.setdefault(inst.worker_id, []).append(inst)
            self.by_worker = by_worker
        return by_worker.get(worker_id, [])

    def of(
        self, r: _Ranked, index: _WorkerIndex
    ) -> tuple[tuple[InstanceState, ...], tuple[tuple[int, WorkerState, int, tuple[str, str]], ...], object]:
        candidate = r.candidate
        key = (r.key, candidate.hardware, candidate.curve.memory_mb)
        entry = self.by_candidate.get(key)
        if entry is None:
            instances = self.instances.get(r.key, ())
            loaded = []
            for seq, inst in enumerate(instances):
                worker = index.by_id.get(inst.worker_id)
                if worker is not None and usable(candidate, worker):
                    loaded.append((seq, worker, max(inst.replicas, 1), (worker.id, r.key)))  # the depth's key
            entry = (instances, tuple(loaded), _static_cold(candidate, instances, index))
            self.by_candidate[key] = entry
        return entry


class FastSelector:
    """Same decisions as ``infaas.selector.select``, from indexes kept across queries. Thread-safe.

    One per process (``fast_select`` uses a module-level one); the indexes follow the snapshots and candidate
    lists they are given, so there is nothing to invalidate.
    """

    def __init__(self) -> None:
        self._index: _WorkerIndex | None = None
        self._placements: _Placements | None = None
        self._orders: dict[tuple[object, ...], tuple[tuple[Candidate, ...], tuple[_Ranked, ...] | None]] = {}
        self._floors: dict[tuple[object, ...], tuple[tuple[Candidate, ...], Sequence[Candidate]]] = {}
        self._lock = threading.Lock()

    def select(
        self,
        requirements: Requirements,
        candidates: Sequence[Candidate],
        live: LiveSnapshot,
        prices: Mapping[str, float],
        exclude: Collection[tuple[str, str]] = (),
        correct: Correction | None = None,
    ) -> Selection:
        """``infaas.selector.select``'s decision (same arguments, same errors)."""
        qualified = self._qualified(requirements, candidates)
        index = self._workers(live.workers)
        order = self._order(qualified, requirements.batch, prices, index.min_cores)
        if order is None:  # a negative price or load time: bounds would not bound; the reference decides
            return select(requirements, candidates, live, prices, exclude, correct)
        return self._scan(
            requirements, candidates, order, live, index, self._placements_of(live), prices, exclude, correct
        )

    # -- indexes --------------------------------------------------------------------------------
    def _workers(self, workers: tuple[WorkerState, ...]) -> _WorkerIndex:
        index = self._index
        if index is None or index.workers is not workers:
            index = _WorkerIndex(workers)
            self._index = index
        return index

    def _placements_of(self, live: LiveSnapshot) -> _Placements:
        placements = self._placements
        if placements is None or placements.workers is not live.workers or placements.instances is not live.instances:
            placements = _Placements(live)
            self._placements = placements
        return placements

    def _qualified(self, requirements: Requirements, candidates: Sequence[Candidate]) -> Sequence[Candidate]:
        """``selector._qualified``, kept per candidate list and floors: reading an accuracy floor's metric over the
        200 candidates of a task took 0.24 ms, a quarter of the 1 ms target (``benchmarks/scale.py``). The errors
        (no candidate qualifies) are not kept: the reference raises them again."""
        floor, fidelity = requirements.min_accuracy, requirements.min_fidelity
        if floor <= 0 and fidelity <= 0:
            return candidates
        key = (tuple(map(id, candidates)), floor, fidelity)
        hit = self._floors.get(key)
        if hit is not None:
            return hit[1]
        qualified = _qualified(requirements, candidates)
        with self._lock:
            if len(self._floors) >= _ORDER_CACHE_MAX:
                self._floors.clear()
            self._floors[key] = (tuple(candidates), qualified)  # the candidates held: their ids stay theirs
        return qualified

    def _order(
        self, qualified: Sequence[Candidate], batch: int, prices: Mapping[str, float], min_cores: int
    ) -> tuple[_Ranked, ...] | None:
        key = (tuple(map(id, qualified)), batch, tuple(prices.items()), min_cores)
        hit = self._orders.get(key)
        if hit is not None:
            return hit[1]
        order = _rank(qualified, batch, prices, min_cores)
        with self._lock:
            if len(self._orders) >= _ORDER_CACHE_MAX:
                self._orders.clear()
            self._orders[key] = (tuple(qualified), order)  # the candidates held: their ids stay theirs
        return order

    # -- the scan -------------------------------------------------------------------------------
    def _scan(
        self,
        requirements: Requirements,
        candidates: Sequence[Candidate],
        order: tuple[_Ranked, ...],
        live: LiveSnapshot,
        index: _WorkerIndex,
        placements: _Placements,
        prices: Mapping[str, float],
        exclude: Collection[tuple[str, str]],
        correct: Correction | None,
    ) -> Selection:
        """Visit candidates by cost bound; stop once none left can cost as little as the cheapest feasible.

        Until a placement is feasible every option is kept (as a ``_Priced`` tuple: no object per option), since
        without one the other rules need them all.
        """
        budget, max_cost = requirements.latency_ms, requirements.max_cost
        limit = math.inf if max_cost is None else max_cost  # above it: neither affordable nor tied with the cheapest
        cheapest = math.inf
        # (cost, cold, estimate, key, candidate index, option index, candidate, worker, raw)
        feasible: list[tuple[float, bool, float, str, int, int, Candidate, WorkerState, float]] = []
        every: list[_Priced] = []  # while none is feasible
        depths, room = live.queue_depth, _Room(live, placements)
        for r in order:
            if feasible and r.bound > limit:
                break
            candidate, key, curve = r.candidate, r.key, r.candidate.curve
            tail, fixed_cost, queues, i = r.tail_ms, r.fixed_cost, r.queues, r.index  # read per option below
            instances, loaded, cold = placements.of(r, index)
            for seq, worker, replicas, pair in loaded:
                if exclude and (key, worker.id) in exclude:
                    continue
                cost = fixed_cost if fixed_cost is not None else query_cost(candidate, worker, r.service_ms, prices)
                if feasible and cost > limit:
                    continue
                rows = depths.get(pair, 0)
                if rows < replicas:
                    queue = 0.0
                else:
                    queue = queues.get((rows, replicas))  # type: ignore[assignment]  # None: not priced yet
                    if queue is None:
                        queue = queues[(rows, replicas)] = _queue_ms(rows, replicas, curve)
                raw = tail + queue
                est = raw if correct is None else correct(key, worker.id, raw)
                if cost <= limit and (budget is None or est <= budget):
                    feasible.append((cost, False, est, key, i, seq, candidate, worker, raw))
                    if cost < cheapest:
                        cheapest = cost
                        limit = min(limit, cheapest * (1 + _COST_TIE))
                elif not feasible:
                    every.append((est, cost, False, key, i, seq, r, worker, raw, queue))
            if exclude or cold is _DEPENDS:
                worker = _cold_worker(candidate, key, instances, index, room, exclude)
            else:
                worker = cold  # type: ignore[assignment]  # a WorkerState or None
            if worker is None:
                continue
            cost = r.fixed_cold_cost
            if cost is None:
                cost = query_cost(candidate, worker, curve.load_ms + r.service_ms, prices)
            if feasible and cost > limit:
                continue
            raw = curve.load_ms + r.tail_ms
            est = raw if correct is None else correct(key, worker.id, raw)
            if cost <= limit and (budget is None or est <= budget):
                feasible.append((cost, True, est, key, r.index, len(instances), candidate, worker, raw))
                if cost < cheapest:
                    cheapest = cost
                    limit = min(limit, cheapest * (1 + _COST_TIE))
            elif not feasible:
                every.append((est, cost, True, key, r.index, len(instances), r, worker, raw, 0.0))
        if not feasible:
            return _none_feasible(requirements, every, exclude, correct)
        threshold = cheapest * (1 + _COST_TIE)
        best = min((f for f in feasible if f[0] <= threshold), key=lambda f: f[1:6])
        cost, cold, est, _key, _i, _s, candidate, worker, raw = best
        if under_load(candidate, live):
            # A batch-invariant placement may win within INVARIANT_BAND, priced batched (not what the bounds
            # bound): the reference decides. Only when a batch-dependent variant (dynamic INT8) is the cheapest and
            # has rows outstanding.
            return select(requirements, candidates, live, prices, exclude, correct)
        option = _Option(candidate, worker, not cold, est, raw, 0.0, cost)
        why = "cheapest placement meeting" + (f" {budget:g} ms" if budget is not None else " no latency budget")
        return _selection(option, requirements.batch, False, why)


# An option priced while none is feasible: (estimate, cost, cold, key, candidate index, option index, candidate,
# worker, raw estimate, queue). The first six are the reference's order among the fastest (``min`` over tuples:
# key, candidate index and option index together are unique, so the comparison never reaches the candidate).
_Priced = tuple[float, float, bool, str, int, int, _Ranked, WorkerState, float, float]


def _none_feasible(
    requirements: Requirements,
    every: list[_Priced],
    exclude: Collection[tuple[str, str]],
    correct: Correction | None,
) -> Selection:
    """No feasible placement: the reference's rules for that case, over every option."""
    if not every:
        raise NoWorkerAvailable(
            "no live, non-draining worker has room for a variant meeting the accuracy floor"
            + (" (loads that failed for lack of memory excluded)" if exclude else "")
        )
    budget, max_cost = requirements.latency_ms, requirements.max_cost
    affordable = every if max_cost is None else [e for e in every if e[1] <= max_cost]
    if not affordable:
        raise Infeasible(f"max_cost ${max_cost:.3g}/query (a hard limit)", _achievable_of(every))
    assert budget is not None  # affordable yet none feasible: only the budget is unmet
    if requirements.on_infeasible == "reject":
        # The reference's wait: estimate less the queue's share (a cold option has none), against the budget.
        waits_ms = [e[0] - budget for e in affordable if e[0] - _queue_share(e, correct) <= budget]
        wait_s = min(waits_ms) / 1000.0 if waits_ms else None
        raise Infeasible(f"latency_ms {budget:g}", _achievable_of(affordable), wait_s)
    est, cost, cold, _key, _i, _s, r, worker, raw, queue = min(affordable)
    best = _Option(r.candidate, worker, not cold, est, raw, queue, cost)
    why = f"SLO at risk: no placement meets {budget:g} ms; serving the fastest ({est:.2f} ms est)"
    # ``selector._unqueued_ms``: a loaded option without its queue's share, a cold one without its load time.
    infeasible = True
    for e in affordable:
        if e[2]:
            unqueued = e[0] - e[6].candidate.curve.load_ms
        elif e[9] and correct is not None:
            unqueued = e[0] - (e[0] - correct(e[3], e[7].id, e[6].tail_ms))  # as the reference: est - queue share
        else:
            unqueued = e[0] - e[9]
        if unqueued <= budget:
            infeasible = False
            break
    if infeasible:
        why += "; infeasible even with empty queues"
    return replace(_selection(best, requirements.batch, True, why), infeasible=infeasible)


def _queue_share(e: _Priced, correct: Correction | None) -> float:
    """The queue's share of an option's estimate as the reference computes it: corrected, the estimate less the
    corrected estimate without the queue (the correction is affine)."""
    queue = e[9]
    if queue and correct is not None:
        return e[0] - correct(e[3], e[7].id, e[6].tail_ms)
    return queue


def _achievable_of(options: Sequence[_Priced]) -> Achievable:
    """``selector._achievable`` over priced tuples."""
    accuracies = [e[6].candidate.accuracy for e in options if e[6].candidate.accuracy is not None]
    return Achievable(
        latency_ms=min(e[0] for e in options),
        accuracy=max(accuracies) if accuracies else None,
        cost=min(e[1] for e in options),
    )


def _rank(
    qualified: Sequence[Candidate], batch: int, prices: Mapping[str, float], min_cores: int
) -> tuple[_Ranked, ...] | None:
    """The candidates by cost bound (then position); ``None`` when a bound could exceed a real cost."""
    if any(p < 0 for p in prices.values()):
        return None
    cheapest_worker = _MinCores(min_cores)
    ranked = []
    for i, c in enumerate(qualified):
        curve = c.curve
        if curve.load_ms < 0:
            return None
        service = curve.service_ms(batch)
        bound = query_cost(c, cheapest_worker, service, prices)  # type: ignore[arg-type]  # reads .cores only
        fixed = c.variant.hardware != "cpu" or bool(c.variant.threads)
        cold = query_cost(c, cheapest_worker, curve.load_ms + service, prices)  # type: ignore[arg-type]
        ranked.append(
            _Ranked(
                bound, i, c, c.key, service, curve.tail_ms(batch), bound if fixed else None, cold if fixed else None, {}
            )
        )
    ranked.sort(key=lambda r: (r.bound, r.index))
    return tuple(ranked)


def _static_cold(candidate: Candidate, instances: Sequence[InstanceState], index: _WorkerIndex) -> object:
    """``_cold_worker`` without exclusions when no depth decides it: the roomiest usable worker not hosting the
    variant if it has the memory free, ``None`` when there is no such worker, else ``_DEPENDS``."""
    loaded_on = {inst.worker_id for inst in instances}
    for w in index.by_kind.get(candidate.hardware[0], ()):
        if w.id in loaded_on or not usable(candidate, w):
            continue
        return w if w.memory_free_mb >= candidate.curve.memory_mb else _DEPENDS
    return None


def _cold_worker(
    candidate: Candidate,
    key: str,
    instances: Sequence[InstanceState],
    index: _WorkerIndex,
    room: _Room,
    exclude: Collection[tuple[str, str]],
) -> WorkerState | None:
    """The reference's one cold placement: the usable worker with the most free memory (then highest id) not
    hosting the variant nor excluded, if it has room; else the first such worker that can make room."""
    needed = candidate.curve.memory_mb
    loaded_on = {inst.worker_id for inst in instances} if instances else ()
    # The reference takes the roomiest such worker if it fits, else the roomiest that fits by evicting idle
    # instances: either way the first in (free memory, id) descending order that fits.
    for w in index.by_kind.get(candidate.hardware[0], ()):
        if w.id in loaded_on or not usable(candidate, w) or (exclude and (key, w.id) in exclude):
            continue
        if room.fits(w, needed):
            return w
    return None


_DEFAULT = FastSelector()


def fast_select(
    requirements: Requirements,
    candidates: Sequence[Candidate],
    live: LiveSnapshot,
    prices: Mapping[str, float],
    exclude: Collection[tuple[str, str]] = (),
    correct: Correction | None = None,
) -> Selection:
    """The selection entry point of the engine (and of simulators): ``infaas.selector.select``'s arguments,
    decisions and errors, from the process's ``FastSelector``."""
    return _DEFAULT.select(requirements, candidates, live, prices, exclude, correct)
