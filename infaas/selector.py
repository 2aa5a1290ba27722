"""Variant selection: a pure function from (requirements, candidates, live state, prices) to a decision.

Pure so that it is testable with hand-made profiles and identical in every front-end. The estimate
for a placement is a tail, since the budget is a promise: profiled p99 latency at the batch the query runs
at + the tail time to drain the rows outstanding on that instance (live state counts rows, not requests,
so one 64-row query weighs what it costs) + load time if the variant is not loaded on that worker; then
corrected online by the caller's ``correct`` (``infaas.calibration``: the serving path's overhead and how
much slower each worker runs each variant than profiled). Comparing the profiled p50 instead missed about
half the queries whose budget sat near it, by construction: on the example zoo under mixed load 70% of the
queries whose p50 was within budget met it, 99.4% of those whose corrected estimate was
(``benchmarks/estimate_honesty.py``). Among placements meeting the
latency budget (and ``max_cost``) the cheapest wins, loaded before cold on equal cost; if none
meets the budget, the fastest is served and flagged ``slo_at_risk`` — or, when the query says
``on_infeasible: "reject"``, nothing is served and ``Infeasible`` names the best achievable. ``max_cost`` is
a hard limit whatever ``on_infeasible`` says: when no placement is affordable the answer is ``Infeasible``
(INFaaS answered both with UNAVAILABLE; so do we: a 503, ``code`` ``infeasible``).

A cold placement is only offered on a worker with room for the variant: its free memory, plus what it
would free by evicting instances with nothing outstanding (the worker's own eviction rule). A worker whose
memory is taken by busy instances would fail the load, so it is never offered; when live state is stale and
a load fails anyway, the engine chooses again without that placement (``exclude``).

A cold placement's cost includes the load it triggers (the hardware is held for ``load_ms`` too):
otherwise a variant a few percent cheaper per query would be loaded next to a loaded one that already
meets the need, and a hot model would be split across variants by the query path while the
autoscaler sizes replicas for one of them.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal, get_args

from infaas.accuracy import UNKNOWN, Accuracy, Fidelity, accuracy_of, fidelity_of, floor_metric
from infaas.calibration import Correction
from infaas.cascade_session import KIND as CASCADE_KIND
from infaas.catalog import ModelInfo, ProfileInfo, VariantInfo
from infaas.errors import BadRequest, Unavailable, Unprocessable
from infaas.hardware_kinds import required_hardware, runs_on
from infaas.live_state.base import LiveSnapshot, WorkerState
from infaas.replica_scaling import speedup, speedups

_COST_TIE = 1e-9  # relative: costs this close are equal, so loaded instances win
# Under load, a batch-invariant placement whose batched cost is within this share of the cheapest batch-dependent
# one wins (``_prefer_invariant``). It is the profiler's repeatability: the same variant measured twice in one build
# (its profile and the one-replica run of its replica measurement, all-MiniLM-L6-v2 in the peers benchmark, load
# average ~5 on 2 cores) differed by 0.5-11% in rows/s at batches 4-16 (static INT8 "fast", one thread: 636 vs
# 685 rows/s at 4, 678 vs 755 at 16), so a smaller gap is not a difference the profiles can show.
INVARIANT_BAND = 0.10

OnInfeasible = Literal["best_effort", "reject"]
ON_INFEASIBLE: tuple[str, ...] = get_args(OnInfeasible)  # what a query may say; the first is the default


class AccuracyUnavailable(Unprocessable):
    """No candidate reaches the accuracy floor; says the best accuracy available and, when none is known, why
    and what to register (``infaas.accuracy``)."""

    code = "accuracy_unavailable"

    def __init__(self, required: float, metric: str | None, candidates: Sequence[Candidate]) -> None:
        self.required = required
        comparable = [c.accuracy_info for c in candidates if c.accuracy_info.metric == metric and metric is not None]
        best = max(comparable, key=lambda a: a.value or 0.0, default=None)
        self.best = best.value if best is not None else None
        if best is not None:
            why = f"best available is {best.value:.4g} ({best.metric}, {best.source})"
        else:
            why = (
                "no variant has a known accuracy: register labels in the validation set (validation.npz "
                "'labels': accuracy measured on held-out rows) or a declared accuracy (estimated for each variant); "
                "min_fidelity bounds agreement with the registered model without either"
            )
        other = sorted(
            {
                f"{c.model.name} ({c.accuracy_info.metric})"
                for c in candidates
                if c.accuracy_info.metric not in (None, metric)
            }
        )
        if other:
            why += f"; not comparable with {metric}, so only meeting min_accuracy 0: {', '.join(other)}"
        super().__init__(f"no variant reaches min_accuracy {required:.4g}; {why}")


class FidelityUnavailable(Unprocessable):
    """No candidate meeting the accuracy floor reaches ``min_fidelity`` (agreement or cosine with the original)."""

    code = "fidelity_unavailable"

    def __init__(self, required: float, best: float | None) -> None:
        self.required = required
        self.best = best
        why = "no variant has a measured fidelity" if best is None else f"best available is {best:.4g}"
        super().__init__(
            f"no variant reaches min_fidelity {required:.4g} (agreement or cosine with the registered model's own "
            f"outputs); {why}"
        )


class NoWorkerAvailable(Unavailable):
    """Candidates exist but no live, non-draining worker can host any of them.

    A passing state (a worker restarting, or registering again after Redis came back empty, is found
    within a heartbeat), so the answer says when to retry.
    """

    code = "no_worker_available"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


@dataclass(frozen=True)
class Achievable:
    """The best a query could get, each number on its own (not one placement achieving all three).

    Taken over the placements that meet the query's accuracy floor and, when any does, its ``max_cost``:
    what the caller could ask for instead without breaking a hard limit.
    """

    latency_ms: float  # fastest estimate
    accuracy: float | None  # highest accuracy (None: no such variant has a known accuracy)
    cost: float  # cheapest $ per query

    def __str__(self) -> str:
        accuracy = "unknown" if self.accuracy is None else f"{self.accuracy:.4g}"
        return f"latency {self.latency_ms:.3g} ms, accuracy {accuracy}, cost ${self.cost:.3g}/query"


class Infeasible(Unavailable):
    """No placement meets the query's latency budget (with ``on_infeasible: "reject"``) or its ``max_cost``.

    Nothing ran. ``Retry-After`` is set only where waiting can help: some placement misses the budget only
    because of queueing and would meet it once its queue drains (the header says about when, at least 1 s).
    An unmeetable ``max_cost`` never gets one: queueing does not change a placement's cost.
    """

    code = "infeasible"

    def __init__(self, unmet: str, best: Achievable, retry_after_s: float | None = None) -> None:
        self.unmet = unmet
        self.best = best
        headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))} if retry_after_s is not None else None
        super().__init__(f"no placement meets {unmet}; nothing was run; best achievable: {best}", headers=headers)


def parse_on_infeasible(value: object, key: str) -> OnInfeasible:
    """A query's ``on_infeasible`` hint as it arrived under ``key`` (absent: the default); ``BadRequest`` naming
    the allowed values otherwise."""
    if value is None:
        return ON_INFEASIBLE[0]  # type: ignore[return-value]  # a member of OnInfeasible
    if not isinstance(value, str) or value not in ON_INFEASIBLE:
        allowed = " or ".join(f'"{v}"' for v in ON_INFEASIBLE)
        raise BadRequest(f"'{key}' must be {allowed}, not {value!r:.100}")
    return value  # type: ignore[return-value]  # checked against ON_INFEASIBLE above


@dataclass(frozen=True)
class Requirements:
    """What one query asks for. Exactly one of ``model`` / ``task`` is set."""

    model: str | None = None
    task: str | None = None
    latency_ms: float | None = None
    min_accuracy: float = 0.0  # in the metric of the candidates' accuracies (``infaas.accuracy.floor_metric``)
    min_fidelity: float = 0.0  # agreement / cosine with the registered model's own outputs
    max_cost: float | None = None  # a hard limit, $ per query
    batch: int = 1
    on_infeasible: OnInfeasible = "best_effort"  # when the latency budget cannot be met: serve flagged, or reject


def mean_ms(profile: ProfileInfo) -> float:
    """Mean time per batch of a profile: its batch over its measured throughput (the profiler's throughput is
    rows over the elapsed time of every timed run). The p50 when no throughput was measured."""
    if profile.throughput_per_s <= 0:
        return profile.latency_p50_ms
    return profile.batch_size / profile.throughput_per_s * 1000.0


def typical_ms(variant: VariantInfo, profile: ProfileInfo) -> float:
    """What one batch of ``profile`` holds the hardware for, typically: the p50, or a cascade's mean (``mean_ms``;
    why: ``ProfileCurve.of``). Costs are priced by it (the selector, offline job plans)."""
    return mean_ms(profile) if variant.kind == CASCADE_KIND else profile.latency_p50_ms


@dataclass(frozen=True)
class ProfileCurve:
    """A variant's profiles reduced to what estimates need; shared by the selector and the worker."""

    batches: tuple[int, ...]  # profiled batch sizes, ascending
    latencies_ms: tuple[float, ...]  # p50 at each profiled batch (a cascade's mean: ``of``)
    tails_ms: tuple[float, ...]  # p99 at each profiled batch
    load_ms: float
    memory_mb: float
    best_batch: int  # profiled batch with the highest throughput
    # At ``best_batch``, rows/s of 1, 2, ... replicas on one worker relative to one (``infaas.replica_scaling``);
    # empty when not measured (read as linear).
    speedups: tuple[float, ...] = ()
    # False when the profiler saw a row's answer change with its batch (dynamic INT8): the worker never batches
    # it, so ``best_batch`` is 1 and its queue drains one row per round (``_queue_ms``).
    batch_invariant: bool = True

    @classmethod
    def of(cls, variant: VariantInfo) -> ProfileCurve:
        """Reduce a profiled variant's measurements.

        A cascade's (``infaas.cascade_session``) typical time is its measured *mean*, not its p50: its work
        depends on the rows (a batch either escalates some or not), so when most rows are answered by the cheap
        stage the p50 is the cheap stage alone and hides the escalated batches' time, and a cost priced by it
        is understated by the escalation share times the expensive stage's time (``mean_ms``).
        """
        profiles = sorted(variant.profiles, key=lambda p: p.batch_size)
        if not profiles:
            raise ValueError(f"variant {variant.key} has no profiles")
        invariant = all(p.batch_invariant for p in profiles)
        best = max(profiles if invariant else profiles[:1], key=lambda p: (p.throughput_per_s, -p.batch_size))
        return cls(
            batches=tuple(p.batch_size for p in profiles),
            latencies_ms=tuple(typical_ms(variant, p) for p in profiles),
            tails_ms=tuple(max(p.latency_p99_ms, typical_ms(variant, p)) for p in profiles),
            load_ms=max(p.load_ms for p in profiles),
            memory_mb=max(p.memory_mb for p in profiles),
            best_batch=best.batch_size,
            speedups=speedups(best.replica_throughput_per_s),
            batch_invariant=invariant,
        )

    def service_ms(self, batch: int) -> float:
        """Profiled p50 (a cascade's mean) at the smallest profiled batch ≥ ``batch``; linear beyond the largest
        (the typical time: what a query's hardware is held for, and what batching and inlining plan with)."""
        return self._at(self.latencies_ms, batch)

    def batched_ms(self, batch: int) -> float:
        """What ``batch`` rows hold the hardware for when they run in the instance's batches under load: their share of
        a ``best_batch`` run for a batch-invariant variant (a queue lets the batcher fill it), ``service_ms`` for one
        that is never batched or a query as big as a batch."""
        service = self.service_ms(batch)
        if not self.batch_invariant or batch >= self.best_batch:
            return service
        return min(service, self.service_ms(self.best_batch) * batch / self.best_batch)

    def tail_ms(self, batch: int) -> float:
        """Profiled p99 at ``batch``, interpolated like ``service_ms`` (what a latency promise is made with)."""
        return self._at(self.tails_ms, batch)

    def _at(self, latencies: tuple[float, ...], batch: int) -> float:
        i = bisect.bisect_left(self.batches, batch)
        if i < len(self.batches):
            return latencies[i]
        b_last, l_last = self.batches[-1], latencies[-1]
        if len(self.batches) >= 2:
            slope = (l_last - latencies[-2]) / (b_last - self.batches[-2])
        else:
            slope = l_last / b_last
        return l_last + max(slope, 0.0) * (batch - b_last)


@dataclass(frozen=True)
class Candidate:
    """A ready variant with its model and profile curve, built once per catalog change."""

    model: ModelInfo
    variant: VariantInfo
    accuracy: float | None  # accuracy_info.value
    curve: ProfileCurve
    hardware: tuple[str, ...]  # every kind a worker must advertise (``infaas.hardware_kinds.required_hardware``)
    accuracy_info: Accuracy = UNKNOWN  # value, metric, measured or estimated (``infaas.accuracy.accuracy_of``)
    fidelity: Fidelity = Fidelity(None, None)

    @classmethod
    def of(cls, model: ModelInfo, variant: VariantInfo) -> Candidate:
        """The selector's view of a profiled variant."""
        accuracy = accuracy_of(model, variant)
        return cls(
            model=model,
            variant=variant,
            accuracy=accuracy.value,
            curve=ProfileCurve.of(variant),
            hardware=required_hardware(variant),
            accuracy_info=accuracy,
            fidelity=fidelity_of(variant),
        )

    @cached_property
    def key(self) -> str:
        """``model/variant``; kept on first use (the selector and the engine read it per placement per query,
        and ``VariantInfo.key`` formats a new string each time)."""
        return self.variant.key


@dataclass(frozen=True)
class Selection:
    """Where and how a query runs, and why."""

    candidate: Candidate
    worker: str
    batch: int
    estimated_ms: float  # corrected tail estimate, the one compared with the budget
    raw_estimated_ms: float  # before correction: profile p99 + queueing + load
    estimated_cost: float
    loaded: bool
    slo_at_risk: bool
    reason: str
    # At risk even with empty queues and the variant loaded: no placement meets the budget at all, so the miss
    # is not one that replicas fix (the autoscaler's statistics count it apart). False when not at risk.
    infeasible: bool = False

    @property
    def variant(self) -> VariantInfo:
        """The chosen variant."""
        return self.candidate.variant


@dataclass(slots=True)  # not frozen: a frozen init costs ~0.1 µs a field, and options are made per query
class _Option:
    candidate: Candidate
    worker: WorkerState
    loaded: bool
    estimated_ms: float  # corrected
    raw_ms: float  # before correction
    queue_ms: float  # of estimated_ms, the (corrected) wait behind outstanding rows
    cost: float


def query_cost(candidate: Candidate, worker: WorkerState, service_ms: float, prices: Mapping[str, float]) -> float:
    """Dollars for ``service_ms`` of the hardware this variant holds on ``worker``.

    A CPU variant holds ``threads`` cores (all the worker's cores when ``threads`` is 0) priced per
    ``cpu-core``; any other hardware kind holds one unit priced under its own name (e.g. ``gpu``).
    """
    hardware = candidate.variant.hardware
    if hardware == "cpu":
        units = candidate.variant.threads or worker.cores
        per_hour = prices.get("cpu-core", 0.0) * units
    else:
        per_hour = prices.get(hardware, prices.get(f"{hardware}-core", 0.0))
    return per_hour * service_ms / 3_600_000.0


def _queue_ms(rows: int, replicas: int, curve: ProfileCurve) -> float:
    """Tail wait behind ``rows`` outstanding rows (waiting or running) on ``replicas`` replicas.

    Fewer rows than replicas leaves a replica free: no wait. Otherwise the replicas drain the rows in rounds of
    at most ``best_batch`` rows (the instance's batching), spread evenly, each round taking its profiled p99
    stretched by how much less than ``replicas`` times one replica's rows/s they were measured to serve together
    (``ProfileCurve.speedups``; not measured: not stretched). Counting requests instead priced a queued 64-row
    query like a 1-row one.
    """
    if rows < replicas:
        return 0.0
    full, rest = divmod(math.ceil(rows / replicas), curve.best_batch)
    wait = full * curve.tail_ms(curve.best_batch) + (curve.tail_ms(rest) if rest else 0.0)
    if replicas > 1 and curve.speedups:
        wait *= replicas / speedup(curve.speedups, replicas)
    return wait


class _Room:
    """Memory a worker could give a new instance: free, plus its idle instances' (those it would evict).

    The idle part needs a pass over every loaded instance, so it is computed at most once per selection and
    only when some worker's free memory alone is too small.
    """

    def __init__(self, live: LiveSnapshot) -> None:
        self._live = live
        self._idle_mb: dict[str, float] | None = None

    def fits(self, worker: WorkerState, needed_mb: float) -> bool:
        free = worker.memory_free_mb
        if free >= needed_mb:
            return True
        if self._idle_mb is None:
            idle: dict[str, float] = {}
            for key, instances in self._live.instances.items():
                for inst in instances:
                    if self._live.depth(inst.worker_id, key) == 0:
                        idle[inst.worker_id] = idle.get(inst.worker_id, 0.0) + inst.memory_mb
            self._idle_mb = idle
        return free + self._idle_mb.get(worker.id, 0.0) >= needed_mb


def _options(
    candidate: Candidate,
    batch: int,
    live: LiveSnapshot,
    prices: Mapping[str, float],
    room: _Room,
    exclude: Collection[tuple[str, str]],
    correct: Correction | None,
) -> list[_Option]:
    curve = candidate.curve
    service = curve.service_ms(batch)  # typical: what the hardware is held for (cost)
    tail = curve.tail_ms(batch)
    key = candidate.key
    needs = candidate.hardware
    usable = [
        w for w in live.workers if not w.draining and needs[0] in w.hardware and w.memory_budget_mb >= curve.memory_mb
    ]
    if len(needs) > 1:  # TensorRT variants need "tensorrt" too; most need one kind, checked above at no extra cost
        usable = [w for w in usable if runs_on(needs, w.hardware)]
    if not usable:
        return []
    by_id = {w.id: w for w in usable}
    out: list[_Option] = []
    instances = live.instances.get(key, ())
    for inst in instances:
        worker = by_id.get(inst.worker_id)
        if worker is None or (exclude and (key, worker.id) in exclude):
            continue
        queue = _queue_ms(live.depth(worker.id, key), max(inst.replicas, 1), curve)
        raw = tail + queue
        est = raw if correct is None else correct(key, worker.id, raw)
        if queue and correct is not None:
            queue = est - correct(key, worker.id, tail)  # the correction is affine: this is queue's share of est
        out.append(_Option(candidate, worker, True, est, raw, queue, query_cost(candidate, worker, service, prices)))
    loaded_on = {inst.worker_id for inst in instances}
    cold = [w for w in usable if w.id not in loaded_on]
    if exclude:
        cold = [w for w in cold if (key, w.id) not in exclude]
    if cold:
        # One cold option per candidate: the worker with the most free memory (least eviction), if it has room;
        # else the one with the most free memory among those that can make room by evicting idle instances.
        worker = max(cold, key=lambda w: (w.memory_free_mb, w.id))
        if worker.memory_free_mb < curve.memory_mb and not room.fits(worker, curve.memory_mb):
            roomy = [w for w in cold if room.fits(w, curve.memory_mb)]
            worker = max(roomy, key=lambda w: (w.memory_free_mb, w.id)) if roomy else None
        if worker is not None:
            raw = curve.load_ms + tail
            est = raw if correct is None else correct(key, worker.id, raw)
            cost = query_cost(candidate, worker, curve.load_ms + service, prices)
            out.append(_Option(candidate, worker, False, est, raw, 0.0, cost))
    return out


def select(
    requirements: Requirements,
    candidates: Sequence[Candidate],
    live: LiveSnapshot,
    prices: Mapping[str, float],
    exclude: Collection[tuple[str, str]] = (),
    correct: Correction | None = None,
) -> Selection:
    """Choose the variant and worker for one query (see the module docstring for the rules).

    ``exclude`` holds ``(variant key, worker id)`` placements not to offer (a load there just failed).
    ``correct`` maps a placement's raw estimate to the calibrated one (``Calibration.correct``); ``None``
    compares the raw estimates.
    """
    qualified = _qualified(requirements, candidates)

    batch = requirements.batch
    room = _Room(live)
    options = [o for c in qualified for o in _options(c, batch, live, prices, room, exclude, correct)]
    if not options:
        raise NoWorkerAvailable(
            "no live, non-draining worker has room for a variant meeting the accuracy floor"
            + (" (loads that failed for lack of memory excluded)" if exclude else "")
        )

    budget, max_cost = requirements.latency_ms, requirements.max_cost
    affordable = [o for o in options if max_cost is None or o.cost <= max_cost]
    feasible = [o for o in affordable if budget is None or o.estimated_ms <= budget]
    if feasible:
        cheapest = min(o.cost for o in feasible)
        ties = [o for o in feasible if o.cost <= cheapest * (1 + _COST_TIE)]
        best = min(ties, key=lambda o: (not o.loaded, o.estimated_ms, o.candidate.key))
        why = f"cheapest of {len(feasible)} placement(s) meeting"
        why += f" {budget:g} ms" if budget is not None else " no latency budget"
        if under_load(best.candidate, live):
            invariant = _prefer_invariant(best.cost, feasible, batch, prices)
            if invariant is not None:
                why = f"batch-invariant, within {INVARIANT_BAND:.0%} of the cheapest under load, of {len(feasible)}"
                why += f" meeting {budget:g} ms" if budget is not None else " meeting no latency budget"
                return _selection(invariant, batch, False, why)
        return _selection(best, batch, False, why)
    if not affordable:  # a hard limit: never served over it
        raise Infeasible(f"max_cost ${max_cost:.3g}/query (a hard limit)", _achievable(options))
    best = min(affordable, key=lambda o: (o.estimated_ms, o.cost, not o.loaded, o.candidate.key))
    assert budget is not None  # affordable but not feasible: only the budget can be unmet
    if requirements.on_infeasible == "reject":
        # Waiting helps only where queueing is what makes a placement miss: once its queue drains, it meets.
        waits_ms = [o.estimated_ms - budget for o in affordable if o.estimated_ms - o.queue_ms <= budget]
        wait_s = min(waits_ms) / 1000.0 if waits_ms else None
        raise Infeasible(f"latency_ms {budget:g}", _achievable(affordable), wait_s)
    why = f"SLO at risk: no placement meets {budget:g} ms; serving the fastest ({best.estimated_ms:.2f} ms est)"
    infeasible = all(_unqueued_ms(o) > budget for o in affordable)
    if infeasible:
        why += "; infeasible even with empty queues"
    return replace(_selection(best, batch, True, why), infeasible=infeasible)


def under_load(candidate: Candidate, live: LiveSnapshot) -> bool:
    """Whether ``candidate`` is a batch-dependent variant with rows outstanding on one of its instances: the case where
    a batch-invariant variant of about the same cost serves more (its queue is batched; this one runs row by row)."""
    if candidate.curve.batch_invariant:
        return False
    key = candidate.key
    return any(live.depth(inst.worker_id, key) > 0 for inst in live.instances.get(key, ()))


def _prefer_invariant(
    cheapest: float, feasible: Sequence[_Option], batch: int, prices: Mapping[str, float]
) -> _Option | None:
    """Under load (``under_load``), the feasible batch-invariant placement to serve instead of the cheapest
    batch-dependent one, or ``None``: priced at what its rows cost batched (``ProfileCurve.batched_ms``; a cold one
    with its load too), it must be within ``INVARIANT_BAND`` of ``cheapest``; the cheapest such wins, loaded first.

    Why: dynamic INT8 is never batched, so under load its queue drains row by row while a batch-invariant variant's
    drains a batch at a time. all-MiniLM-L6-v2: dynamic INT8 on one thread 1.47 ms a row unbatched, static INT8
    ("fast") 2.80 ms at batch 1 but 1.43 ms a row at batch 8 (peers benchmark profiles): priced at batch 1 the
    dynamic one always won.
    """
    limit = cheapest * (1 + INVARIANT_BAND)
    best: tuple[float, bool, float, str] | None = None
    chosen = None
    for o in feasible:
        curve = o.candidate.curve
        if not curve.batch_invariant:
            continue
        held = curve.batched_ms(batch) + (0.0 if o.loaded else curve.load_ms)
        cost = query_cost(o.candidate, o.worker, held, prices)
        rank = (cost, not o.loaded, o.estimated_ms, o.candidate.key)
        if cost <= limit and (best is None or rank < best):
            best, chosen = rank, o
    return chosen


def _unqueued_ms(option: _Option) -> float:
    """An option's estimate once loaded with nothing queued: what capacity (replicas, loads) can bring it down to.

    The queue's share is removed, and for a cold placement its load time (raw: the correction of a cold
    estimate is fitted mostly on its service part, so this is close and errs towards "infeasible").
    """
    if option.loaded:
        return option.estimated_ms - option.queue_ms
    return option.estimated_ms - option.candidate.curve.load_ms


def _qualified(requirements: Requirements, candidates: Sequence[Candidate]) -> Sequence[Candidate]:
    """The candidates meeting the accuracy floor (read in one metric: ``floor_metric``) and ``min_fidelity``.

    Unknown accuracy or fidelity meets only a floor of 0. Raises ``AccuracyUnavailable`` / ``FidelityUnavailable``.
    """
    floor, fidelity_floor = requirements.min_accuracy, requirements.min_fidelity
    if floor <= 0 and fidelity_floor <= 0:
        return candidates
    qualified: Sequence[Candidate] = candidates
    if floor > 0:
        metric = floor_metric((c.model.name, c.accuracy_info) for c in candidates)
        qualified = [c for c in candidates if c.accuracy_info.reaches(floor, metric)]
        if not qualified:
            raise AccuracyUnavailable(floor, metric, candidates)
    if fidelity_floor > 0:
        faithful = [c for c in qualified if c.fidelity.reaches(fidelity_floor)]
        if not faithful:
            known = [c.fidelity.value for c in qualified if c.fidelity.value is not None]
            raise FidelityUnavailable(fidelity_floor, max(known, default=None))
        qualified = faithful
    return qualified


def _achievable(options: Sequence[_Option]) -> Achievable:
    """The best latency, accuracy and cost over ``options`` (only on the way to an error: off the hot path)."""
    accuracies = [o.candidate.accuracy for o in options if o.candidate.accuracy is not None]
    return Achievable(
        latency_ms=min(o.estimated_ms for o in options),
        accuracy=max(accuracies) if accuracies else None,
        cost=min(o.cost for o in options),
    )


def _selection(option: _Option, batch: int, at_risk: bool, why: str) -> Selection:
    where = "loaded" if option.loaded else f"cold, +{option.candidate.curve.load_ms:.0f} ms load"
    reason = f"{option.candidate.key} on {option.worker.id} ({where}): {why}"
    return Selection(
        candidate=option.candidate,
        worker=option.worker.id,
        batch=batch,
        estimated_ms=option.estimated_ms,
        raw_estimated_ms=option.raw_ms,
        estimated_cost=option.cost,
        loaded=option.loaded,
        slo_at_risk=at_risk,
        reason=reason,
    )
