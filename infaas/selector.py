"""Variant selection: a pure function from (requirements, candidates, live state, prices) to a decision.

Pure so that it is testable with hand-made profiles and identical in every front-end. The estimate
for a placement is: profiled p50 latency at the batch the query runs at + expected queueing from
live state + load time if the variant is not loaded on that worker. Among placements meeting the
latency budget (and ``max_cost``) the cheapest wins, loaded before cold on equal cost; if none
meets the budget, the fastest is served and flagged ``slo_at_risk``.

A cold placement's cost includes the load it triggers (the hardware is held for ``load_ms`` too):
otherwise a variant a few percent cheaper per query would be loaded next to a loaded one that already
meets the need, and a hot model would be split across variants by the query path while the
autoscaler sizes replicas for one of them.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from infaas.catalog import ModelInfo, VariantInfo
from infaas.errors import Unavailable, Unprocessable
from infaas.live_state.base import LiveSnapshot, WorkerState

_COST_TIE = 1e-9  # relative: costs this close are equal, so loaded instances win


class AccuracyUnavailable(Unprocessable):
    """No candidate reaches the accuracy floor; carries the best accuracy that is available."""

    code = "accuracy_unavailable"

    def __init__(self, required: float, best: float | None) -> None:
        self.required = required
        self.best = best
        best_text = "no variant has a measured accuracy" if best is None else f"best available is {best:.4g}"
        super().__init__(f"no variant reaches min_accuracy {required:.4g}; {best_text}")


class NoWorkerAvailable(Unavailable):
    """Candidates exist but no live, non-draining worker can host any of them.

    A passing state (a worker restarting, or registering again after Redis came back empty, is found
    within a heartbeat), so the answer says when to retry.
    """

    code = "no_worker_available"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"Retry-After": "1"})


@dataclass(frozen=True)
class Requirements:
    """What one query asks for. Exactly one of ``model`` / ``task`` is set."""

    model: str | None = None
    task: str | None = None
    latency_ms: float | None = None
    min_accuracy: float = 0.0
    max_cost: float | None = None
    batch: int = 1


@dataclass(frozen=True)
class ProfileCurve:
    """A variant's profiles reduced to what estimates need; shared by the selector and the worker."""

    batches: tuple[int, ...]  # profiled batch sizes, ascending
    latencies_ms: tuple[float, ...]  # p50 at each profiled batch
    load_ms: float
    memory_mb: float
    best_batch: int  # profiled batch with the highest throughput

    @classmethod
    def of(cls, variant: VariantInfo) -> ProfileCurve:
        """Reduce a profiled variant's measurements."""
        profiles = sorted(variant.profiles, key=lambda p: p.batch_size)
        if not profiles:
            raise ValueError(f"variant {variant.key} has no profiles")
        best = max(profiles, key=lambda p: (p.throughput_per_s, -p.batch_size))
        return cls(
            batches=tuple(p.batch_size for p in profiles),
            latencies_ms=tuple(p.latency_p50_ms for p in profiles),
            load_ms=max(p.load_ms for p in profiles),
            memory_mb=max(p.memory_mb for p in profiles),
            best_batch=best.batch_size,
        )

    def service_ms(self, batch: int) -> float:
        """Profiled p50 at the smallest profiled batch ≥ ``batch``; linear beyond the largest."""
        i = bisect.bisect_left(self.batches, batch)
        if i < len(self.batches):
            return self.latencies_ms[i]
        b_last, l_last = self.batches[-1], self.latencies_ms[-1]
        if len(self.batches) >= 2:
            slope = (l_last - self.latencies_ms[-2]) / (b_last - self.batches[-2])
        else:
            slope = l_last / b_last
        return l_last + max(slope, 0.0) * (batch - b_last)


@dataclass(frozen=True)
class Candidate:
    """A ready variant with its model and profile curve, built once per catalog change."""

    model: ModelInfo
    variant: VariantInfo
    accuracy: float | None
    curve: ProfileCurve

    @classmethod
    def of(cls, model: ModelInfo, variant: VariantInfo) -> Candidate:
        """The selector's view of a profiled variant."""
        return cls(model=model, variant=variant, accuracy=variant.accuracy, curve=ProfileCurve.of(variant))

    @property
    def key(self) -> str:
        """``model/variant``."""
        return self.variant.key


@dataclass(frozen=True)
class Selection:
    """Where and how a query runs, and why."""

    candidate: Candidate
    worker: str
    batch: int
    estimated_ms: float
    estimated_cost: float
    loaded: bool
    slo_at_risk: bool
    reason: str

    @property
    def variant(self) -> VariantInfo:
        """The chosen variant."""
        return self.candidate.variant


@dataclass(frozen=True)
class _Option:
    candidate: Candidate
    worker: WorkerState
    loaded: bool
    estimated_ms: float
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


def _queue_ms(depth: int, replicas: int, per_request_ms: float) -> float:
    """Expected wait behind ``depth`` outstanding requests served by ``replicas`` replicas."""
    waiting = depth - replicas + 1
    return waiting * per_request_ms / replicas if waiting > 0 else 0.0


def _options(candidate: Candidate, batch: int, live: LiveSnapshot, prices: Mapping[str, float]) -> list[_Option]:
    curve = candidate.curve
    service = curve.service_ms(batch)
    per_request = curve.latencies_ms[0]
    usable = [
        w
        for w in live.workers
        if not w.draining and candidate.variant.hardware in w.hardware and w.memory_budget_mb >= curve.memory_mb
    ]
    if not usable:
        return []
    by_id = {w.id: w for w in usable}
    out: list[_Option] = []
    for inst in live.instances.get(candidate.key, ()):
        worker = by_id.get(inst.worker_id)
        if worker is None:
            continue
        depth = live.depth(worker.id, candidate.key)
        est = service + _queue_ms(depth, max(inst.replicas, 1), per_request)
        out.append(_Option(candidate, worker, True, est, query_cost(candidate, worker, service, prices)))
    loaded_on = {o.worker.id for o in out}
    cold = [w for w in usable if w.id not in loaded_on]
    if cold:
        # One cold option per candidate: the worker with the most free memory (least eviction).
        worker = max(cold, key=lambda w: (w.memory_free_mb, w.id))
        est = curve.load_ms + service
        out.append(_Option(candidate, worker, False, est, query_cost(candidate, worker, est, prices)))
    return out


def select(
    requirements: Requirements,
    candidates: Sequence[Candidate],
    live: LiveSnapshot,
    prices: Mapping[str, float],
) -> Selection:
    """Choose the variant and worker for one query (see the module docstring for the rules)."""
    floor = requirements.min_accuracy
    qualified = [
        c for c in candidates if (c.accuracy is not None and c.accuracy >= floor) or (c.accuracy is None and floor <= 0)
    ]
    if not qualified:
        measured = [c.accuracy for c in candidates if c.accuracy is not None]
        raise AccuracyUnavailable(floor, max(measured) if measured else None)

    batch = requirements.batch
    options = [o for c in qualified for o in _options(c, batch, live, prices)]
    if not options:
        raise NoWorkerAvailable("no live, non-draining worker can host a variant meeting the accuracy floor")

    budget, max_cost = requirements.latency_ms, requirements.max_cost
    affordable = [o for o in options if max_cost is None or o.cost <= max_cost]
    feasible = [o for o in affordable if budget is None or o.estimated_ms <= budget]
    if feasible:
        cheapest = min(o.cost for o in feasible)
        ties = [o for o in feasible if o.cost <= cheapest * (1 + _COST_TIE)]
        best = min(ties, key=lambda o: (not o.loaded, o.estimated_ms, o.candidate.key))
        why = f"cheapest of {len(feasible)} placement(s) meeting"
        why += f" {budget:g} ms" if budget is not None else " no latency budget"
        return _selection(best, batch, False, why)
    pool = affordable or options
    best = min(pool, key=lambda o: (o.estimated_ms, o.cost, not o.loaded, o.candidate.key))
    fastest = f"fastest ({best.estimated_ms:.2f} ms est)"
    if affordable:
        why = f"SLO at risk: no placement meets {budget:g} ms; serving the {fastest}"
    else:
        why = f"SLO at risk: no placement costs ≤ ${max_cost:.3g}; serving the {fastest}"
    return _selection(best, batch, True, why)


def _selection(option: _Option, batch: int, at_risk: bool, why: str) -> Selection:
    where = "loaded" if option.loaded else f"cold, +{option.candidate.curve.load_ms:.0f} ms load"
    reason = f"{option.candidate.key} on {option.worker.id} ({where}): {why}"
    return Selection(
        candidate=option.candidate,
        worker=option.worker.id,
        batch=batch,
        estimated_ms=option.estimated_ms,
        estimated_cost=option.cost,
        loaded=option.loaded,
        slo_at_risk=at_risk,
        reason=reason,
    )
