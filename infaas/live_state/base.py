"""The live-state interface: what is running where, how loaded it is, and how queries went.

The selector reads one ``LiveSnapshot`` per query; workers and the query engine write through the
``LiveState`` methods. The in-process implementation (``memory.py``) and the scaled-out one (Redis)
implement the same class, so nothing above this module knows which is in use. Every write method is
meant to be cheap enough for the per-query path: the Redis implementation may buffer and flush them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class WorkerState:
    """A worker as the selector and autoscaler see it."""

    id: str
    address: str  # "local" for the in-process worker, else a base URL
    cores: int
    memory_budget_mb: float
    memory_used_mb: float = 0.0
    hardware: tuple[str, ...] = ("cpu",)  # kinds it runs (``infaas.hardware``), matched to VariantInfo.hardware
    heartbeat_at: float = 0.0  # time.time() of the last heartbeat
    draining: bool = False
    device: str = ""  # the GPU its GPU variants run on ("cuda:0 NVIDIA H200 (143771 MB)"); "" without one
    device_memory_mb: float = 0.0  # that GPU's memory (0 when none or unknown)
    cpus: float = 0.0  # CPUs its cgroup quota allows (``infaas.hardware.cgroup_cpu_limit``); 0: no quota

    @property
    def cpu_share(self) -> float:
        """The share of a whole core each of its ``cores`` really gets: its quota over its cores, at most 1 (a
        0.5-CPU container advertising one core runs its replicas at half their profiled speed); 1 without a quota."""
        return min(1.0, self.cpus / self.cores) if self.cpus > 0 and self.cores > 0 else 1.0

    @property
    def memory_free_mb(self) -> float:
        """Memory left in the budget (may be negative if over-committed)."""
        return self.memory_budget_mb - self.memory_used_mb


@dataclass(frozen=True)
class InstanceState:
    """One variant loaded on one worker."""

    worker_id: str
    variant_key: str  # "model/variant"
    replicas: int
    memory_mb: float
    last_used_at: float = 0.0


@dataclass(frozen=True)
class QueryRecord:
    """One served query: what was asked, what was chosen, what was estimated and what happened."""

    at: float  # time.time()
    tenant: str
    model: str
    variant: str
    worker: str
    batch: int
    latency_ms: float | None
    min_accuracy: float
    max_cost: float | None
    estimated_ms: float
    actual_ms: float
    queue_ms: float
    cost: float
    slo_at_risk: bool
    reason: str
    # At risk because no placement met the budget even with empty queues (the selector's ``infeasible``):
    # a miss that more replicas cannot fix, so statistics count it apart from the misses they can.
    infeasible: bool = False
    # The query's fidelity floor (``Requirements.min_fidelity``): with ``min_accuracy``, what a variant swapped in
    # for this one by the autoscaler must still meet. Records written before the field read 0 (no floor).
    min_fidelity: float = 0.0

    @property
    def variant_key(self) -> str:
        """The ``model/variant`` key this query was served by."""
        return f"{self.model}/{self.variant}"

    @property
    def slo_missed(self) -> bool:
        """Whether the actual latency exceeded the requested budget."""
        return self.latency_ms is not None and self.actual_ms > self.latency_ms


@dataclass(frozen=True)
class VariantStats:
    """Windowed statistics of one variant (over all its instances, or on one worker: ``instance_stats``).

    ``slo_miss_rate`` is over the queries that were feasible when selected: the misses that capacity (more
    replicas, faster variants, more workers) can fix. Queries no placement could serve in time even with
    empty queues are counted apart in ``infeasible_rate``, so that an impossible budget does not read as
    an overloaded instance.
    """

    variant_key: str
    requests: int  # in the window
    rate_per_s: float
    p50_ms: float
    p99_ms: float
    slo_miss_rate: float  # missed / feasible queries in the window
    mean_estimate_error_ms: float  # mean of (actual − estimated); positive means under-estimated
    total_requests: int = 0  # since start
    infeasible_rate: float = 0.0  # infeasible / all queries in the window


@dataclass(frozen=True)
class Rejection:
    """One query refused with ``Infeasible``: nothing ran, so it has no variant, worker or latency."""

    at: float  # time.time()
    tenant: str
    target: str  # the model the query named, or ``task:<name>``
    unmet: str  # the requirement no placement met: ``latency_ms`` or ``max_cost``


@dataclass(frozen=True)
class RejectionStats:
    """Windowed counts of the queries refused for one target (model or ``task:<name>``)."""

    target: str
    rejected: int  # in the window
    rate_per_s: float
    unmet_latency: int  # of ``rejected``: no placement met ``latency_ms`` (``on_infeasible: reject``)
    unmet_max_cost: int  # of ``rejected``: no placement was affordable
    total_rejected: int = 0  # since start


@dataclass(frozen=True)
class LiveSnapshot:
    """What the selector needs, read once per query.

    ``queue_depth`` maps ``(worker_id, variant_key)`` to rows outstanding (of requests waiting or running):
    rows, not requests, so that the selector can price the wait at the instance's batching.
    Implementations may hand out mappings that keep changing underneath (the in-memory one does, to
    stay O(1)); readers must only look keys up, never iterate ``queue_depth``.
    """

    workers: tuple[WorkerState, ...]
    instances: Mapping[str, tuple[InstanceState, ...]]  # variant_key -> where it is loaded
    queue_depth: Mapping[tuple[str, str], int] = field(default_factory=dict)

    def depth(self, worker_id: str, variant_key: str) -> int:
        """Rows outstanding for a variant on a worker (0 when unknown)."""
        return self.queue_depth.get((worker_id, variant_key), 0)


# Latency samples kept per variant and per instance, and rejections kept per target (in memory or in
# Redis): enough for a stable p99, bounded memory.
WINDOW_SAMPLES = 4096

# (unix time, actual ms, estimated ms, 1.0 if a feasible query missed its SLO, 1.0 if infeasible when selected)
Sample = tuple[float, float, float, float, float]
RejectionSample = tuple[float, float]  # (unix time, 1.0 if max_cost was unmet else 0.0: latency_ms was)

# Pipeline arrivals kept per pipeline: the pipeline tuner's longest window (``autoscaler.pipeline_tuner``), and at
# most this many (3,300 q/s for 60 s); beyond, the oldest go first.
PIPELINE_ARRIVALS_KEEP_S = 60.0
PIPELINE_ARRIVALS_MAX = 200_000


def sample_of(record: QueryRecord) -> Sample:
    """What the statistics keep of a served query; a miss of an infeasible query is not a miss capacity fixes."""
    return (
        record.at,
        record.actual_ms,
        record.estimated_ms,
        float(record.slo_missed and not record.infeasible),
        float(record.infeasible),
    )


def rejection_sample_of(rejection: Rejection) -> RejectionSample:
    """What the statistics keep of a rejected query."""
    return (rejection.at, float(rejection.unmet == "max_cost"))


def _span(samples_kept: int, oldest: float, now: float, window_s: float) -> float:
    """Seconds the window's samples cover: when the ring is full, the window really starts at its oldest."""
    return window_s if samples_kept < WINDOW_SAMPLES else max(now - oldest, 1e-3)


def stats_from_samples(key: str, samples: list[Sample], total: int, now: float, window_s: float) -> VariantStats:
    """Window statistics of one variant (or instance) from its recent samples; shared by both implementations."""
    recent = [s for s in samples if s[0] >= now - window_s]
    if not recent:
        return VariantStats(key, 0, 0.0, 0.0, 0.0, 0.0, 0.0, total)
    actual = np.fromiter((s[1] for s in recent), dtype=np.float64, count=len(recent))
    estimated = np.fromiter((s[2] for s in recent), dtype=np.float64, count=len(recent))
    infeasible = sum(1 for s in recent if s[4])
    feasible = len(recent) - infeasible
    return VariantStats(
        variant_key=key,
        requests=len(recent),
        rate_per_s=len(recent) / _span(len(samples), min(s[0] for s in recent), now, window_s),
        p50_ms=float(np.percentile(actual, 50)),
        p99_ms=float(np.percentile(actual, 99)),
        slo_miss_rate=sum(1 for s in recent if s[3]) / feasible if feasible else 0.0,
        mean_estimate_error_ms=float(np.mean(actual - estimated)),
        total_requests=total,
        infeasible_rate=infeasible / len(recent),
    )


def rejection_stats_from_samples(
    target: str, samples: list[RejectionSample], total: int, now: float, window_s: float
) -> RejectionStats:
    """Window counts of one target's rejections from its recent samples; shared by both implementations."""
    recent = [s for s in samples if s[0] >= now - window_s]
    if not recent:
        return RejectionStats(target, 0, 0.0, 0, 0, total)
    cost = sum(1 for s in recent if s[1])
    return RejectionStats(
        target=target,
        rejected=len(recent),
        rate_per_s=len(recent) / _span(len(samples), min(s[0] for s in recent), now, window_s),
        unmet_latency=len(recent) - cost,
        unmet_max_cost=cost,
        total_rejected=total,
    )


class LiveState(ABC):
    """Cluster-wide live state shared by front-ends, workers and the autoscaler."""

    # -- workers --------------------------------------------------------------------------------
    @abstractmethod
    def register_worker(self, worker: WorkerState) -> None:
        """Add or replace a worker (its instances are kept)."""

    @abstractmethod
    def heartbeat(self, worker_id: str, memory_used_mb: float) -> None:
        """Refresh a worker's heartbeat time and memory use."""

    @abstractmethod
    def set_draining(self, worker_id: str, draining: bool) -> None:
        """Mark a worker draining: it finishes its work but is never chosen for new queries."""

    @abstractmethod
    def remove_worker(self, worker_id: str) -> None:
        """Forget a worker and everything loaded on it."""

    @abstractmethod
    def workers(self) -> list[WorkerState]:
        """Every registered worker."""

    # -- instances ------------------------------------------------------------------------------
    @abstractmethod
    def set_instance(self, instance: InstanceState) -> None:
        """Record that a variant is loaded on a worker with ``replicas`` replicas."""

    @abstractmethod
    def remove_instance(self, worker_id: str, variant_key: str) -> None:
        """Record that a variant was unloaded from a worker."""

    @abstractmethod
    def instances(self, worker_id: str | None = None) -> list[InstanceState]:
        """Loaded instances, on one worker or everywhere."""

    # -- per-query path -------------------------------------------------------------------------
    @abstractmethod
    def set_queue_depth(self, worker_id: str, variant_key: str, depth: int) -> None:
        """Rows outstanding (of requests waiting or running) for a variant on a worker. Hot path: O(1)."""

    @abstractmethod
    def record_query(self, record: QueryRecord) -> None:
        """Account one served query (rate, latency, SLO miss, estimate error, recent list), per variant and
        per instance. O(1)."""

    @abstractmethod
    def record_rejection(self, rejection: Rejection) -> None:
        """Account one query refused with ``Infeasible`` (nothing ran; not in ``recent_queries``). O(1)."""

    @abstractmethod
    def record_pipeline_arrival(self, pipeline: str, at: float) -> None:
        """One query of ``pipeline`` reached a front end at ``at`` (``time.time()``). Every front end writes here
        and the pipeline tuner (run by the leader) reads all of them: with several front ends, the leader's own
        arrivals alone understated a burst by the share the others served. O(1)."""

    @abstractmethod
    def pipeline_arrivals(self, pipeline: str, since: float) -> list[float]:
        """The arrival times of ``pipeline`` at or after ``since`` (``time.time()``; at most the last
        ``PIPELINE_ARRIVALS_KEEP_S`` seconds are kept), across every front end, oldest first."""

    @abstractmethod
    def snapshot(self) -> LiveSnapshot:
        """What the selector reads; cheap enough to take once per query."""

    # -- reads for the console and the autoscaler -----------------------------------------------
    @abstractmethod
    def variant_stats(self, window_s: float = 60.0) -> dict[str, VariantStats]:
        """Windowed statistics per variant key (computed on read, not on write)."""

    @abstractmethod
    def instance_stats(self, window_s: float = 60.0) -> dict[tuple[str, str], VariantStats]:
        """Windowed statistics per instance, keyed ``(worker id, variant key)``: one slow worker is not
        another's p99. A removed worker's instances are forgotten with it."""

    @abstractmethod
    def rejection_stats(self, window_s: float = 60.0) -> dict[str, RejectionStats]:
        """Windowed counts of rejected queries per target (the model named, or ``task:<name>``)."""

    @abstractmethod
    def recent_queries(self, limit: int = 100) -> list[QueryRecord]:
        """The newest queries first, at most ``limit``."""

    # -- shared between processes (no-ops when everything lives in one process) -----------------
    def note_local_depth(self, worker_id: str, variant_key: str, depth: int) -> None:
        """Rows this process has outstanding on another process's worker, seen before that worker reports."""
        return None

    def catalog_changed(self, model_name: str) -> None:
        """Tell other processes that a model, its variants or profiles changed (a metadata listener)."""
        return None

    def on_catalog_change(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(model_name)`` when another process changes the catalog."""
        return None

    def close(self) -> None:
        """Flush buffered writes and release connections."""
        return None
