"""Prometheus metrics: per-query counters and histograms, and the cluster's state read at scrape time.

Two kinds, one registry per process (``GET /metrics`` on a front-end and on every ``infaas worker``):

* ``QueryMetrics``: what must be counted as queries happen (requests by outcome, latency, queue and service
  time, batch size, SLO misses, estimate error). The engine calls it once per query; the label children of a
  ``(endpoint, model, variant, worker)`` are bound once and kept in a dict, so a served query costs a dict
  lookup plus the increments (measured by ``benchmarks/overhead.py``, metrics on vs off).
* ``StateCollector``: everything that already has a source of truth is read from it when Prometheus scrapes,
  never counted twice: workers, instances, replicas, memory and free cores from ``LiveState`` (what the console's
  workers page shows), the served and rejected totals the console's live page shows, background jobs,
  autoscaler decisions and variant builds from the metadata database.

Labels are bounded: models, variants and workers are the catalog's and the cluster's, endpoints and outcomes are
fixed sets; nothing per tenant or per query. The per-query numbers are this process's (a front-end counts the
queries it served); the state families are cluster-wide as live state sees them (with Redis, every front-end
exports the same values: aggregate them with ``max``, not ``sum``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from infaas.db.models import Decision, Job, Variant
from infaas.errors import InfaasError
from infaas.live_state import LiveState

if TYPE_CHECKING:
    from infaas.candidates import CandidateCache
    from infaas.live_state import QueryRecord
    from infaas.metadata import MetadataStore

log = logging.getLogger(__name__)

# Where a query came in (``QueryEngine.serve``'s ``endpoint``). Offline jobs do not go through the engine: they
# are counted by state (``infaas_jobs``) from the jobs table.
ENDPOINTS = ("v1", "oip")
OUTCOMES = ("ok", "client_error", "server_error", "rejected", "slo_at_risk")

# 1-2.5-5 per decade from 0.1 ms to 10 s: 16 buckets. ``Histogram.observe`` scans its bounds linearly, so a
# finer ladder costs every query; at this one a p50 between 1 and 2.5 ms is interpolated within that bucket.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# actual − estimated (s): negative when the estimate was pessimistic, as the selector's tail estimates mostly are.
ESTIMATE_ERROR_BUCKETS = (-1.0, -0.1, -0.01, -0.001, -0.0001, 0.0, 0.0001, 0.001, 0.01, 0.1, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_MB = 1e6


class _Bound:
    """The label children one ``(endpoint, model, variant, worker)`` updates, resolved once."""

    __slots__ = ("ok", "at_risk", "latency", "queue", "service", "batch", "error", "missed", "missed_infeasible")

    def __init__(self, metrics: QueryMetrics, endpoint: str, model: str, variant: str, worker: str) -> None:
        requests = metrics.requests
        self.ok = requests.labels(model, variant, worker, endpoint, "ok")
        self.at_risk = requests.labels(model, variant, worker, endpoint, "slo_at_risk")
        self.latency = metrics.latency.labels(model, variant)
        self.queue = metrics.queue.labels(model, variant)
        self.service = metrics.service.labels(model, variant)
        self.batch = metrics.batch.labels(model, variant)
        self.error = metrics.estimate_error.labels(model, variant)
        self.missed = metrics.slo_misses.labels(model, variant, "capacity")
        self.missed_infeasible = metrics.slo_misses.labels(model, variant, "infeasible")


class QueryMetrics:
    """Counters and histograms updated by the query engine, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "infaas_requests",
            "Inference requests by model, variant, worker, endpoint and outcome (a failure before a variant was "
            "chosen has empty model, variant and worker; slo_at_risk: served, flagged as likely to miss its budget)",
            ("model", "variant", "worker", "endpoint", "outcome"),
            registry=registry,
        )
        per_variant = ("model", "variant")
        self.latency = Histogram(
            "infaas_request_duration_seconds",
            "End-to-end latency of served queries in the engine (arrival to answer), per variant",
            per_variant,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.queue = Histogram(
            "infaas_queue_duration_seconds",
            "Time a served query waited for a replica on its worker",
            per_variant,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.service = Histogram(
            "infaas_service_duration_seconds",
            "Model run time of the session run that served the query",
            per_variant,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch = Histogram(
            "infaas_batch_size",
            "Rows in the session run that served the query (several queries batched together count all rows)",
            per_variant,
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.estimate_error = Histogram(
            "infaas_estimate_error_seconds",
            "Actual latency minus the corrected estimate the budget was compared with (positive: under-estimated)",
            per_variant,
            buckets=ESTIMATE_ERROR_BUCKETS,
            registry=registry,
        )
        self.slo_misses = Counter(
            "infaas_slo_misses",
            "Served queries slower than their latency budget; cause 'infeasible': no placement could meet it even "
            "with empty queues (the console's SLO-miss rate counts only cause 'capacity')",
            ("model", "variant", "cause"),
            registry=registry,
        )
        self._bound: dict[tuple[str, str, str, str], _Bound] = {}
        self._failed: dict[tuple[str, str], Callable[[], None]] = {}

    def served(self, endpoint: str, record: QueryRecord, service_ms: float, batch: int) -> None:
        """Account one served query (the engine's ``_account``)."""
        key = (endpoint, record.model, record.variant, record.worker)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = _Bound(self, *key)
        (bound.at_risk if record.slo_at_risk else bound.ok).inc()
        actual_s = record.actual_ms / 1000.0
        bound.latency.observe(actual_s)
        bound.queue.observe(record.queue_ms / 1000.0)
        bound.service.observe(service_ms / 1000.0)
        bound.batch.observe(batch)
        bound.error.observe(actual_s - record.estimated_ms / 1000.0)
        if record.slo_missed:
            (bound.missed_infeasible if record.infeasible else bound.missed).inc()

    def failed(self, endpoint: str, error: BaseException) -> None:
        """Account one query answered with an error: refused as infeasible, the caller's fault, or ours."""
        outcome = outcome_of(error)
        inc = self._failed.get((endpoint, outcome))
        if inc is None:
            inc = self._failed[(endpoint, outcome)] = self.requests.labels("", "", "", endpoint, outcome).inc
        inc()


def outcome_of(error: BaseException) -> str:
    """The outcome label of a failed query: ``rejected`` when infaas refused to run it (the selector's
    ``Infeasible``, a 503 with code ``infeasible``; a 429 such as the fair share's), ``client_error`` for any other
    4xx, ``server_error`` for the rest (not ready, no worker, a bug)."""
    if isinstance(error, InfaasError):
        if error.code == "infeasible" or error.status == 429:
            return "rejected"
        if error.status < 500:
            return "client_error"
    return "server_error"


@dataclass(frozen=True)
class WorkerGauges:
    """One worker's resources as the metrics and the console show them."""

    worker: str
    state: str  # ready, draining or stale (no heartbeat within the TTL)
    instances: int
    replicas: int
    memory_used_mb: float
    memory_budget_mb: float
    cores: int
    free_cores: float  # cores minus the threads its loaded replicas hold


def free_cores(cores: int, replicas_and_threads: Iterable[tuple[int, int]]) -> float:
    """Cores left by loaded replicas, each holding its variant's threads (0 threads: ONNX Runtime's default, all
    cores), as the autoscaler prices a variant (``autoscaler.loop.variant_option``)."""
    return max(0.0, float(cores - sum(replicas * (threads or cores) for replicas, threads in replicas_and_threads)))


def worker_gauges(live: LiveState, threads_of: Callable[[str], int], heartbeat_ttl_s: float) -> list[WorkerGauges]:
    """Every worker's gauges from live state; ``threads_of(variant_key)`` is a replica's threads (0: all cores)."""
    now = time.time()
    out = []
    for worker in live.workers():
        instances = live.instances(worker.id)
        stale = not worker.heartbeat_at or now - worker.heartbeat_at > heartbeat_ttl_s
        out.append(
            WorkerGauges(
                worker=worker.id,
                state="stale" if stale else "draining" if worker.draining else "ready",
                instances=len(instances),
                replicas=sum(i.replicas for i in instances),
                memory_used_mb=worker.memory_used_mb,
                memory_budget_mb=worker.memory_budget_mb,
                cores=worker.cores,
                free_cores=free_cores(worker.cores, ((i.replicas, threads_of(i.variant_key)) for i in instances)),
            )
        )
    return out


def cached_threads(cache: CandidateCache) -> Callable[[str], int]:
    """``threads_of(variant_key)`` from the engine's candidate cache (0 when the variant is no longer ready)."""

    def threads_of(key: str) -> int:
        model, _, name = key.partition("/")
        return next((c.variant.threads for c in cache.for_model(model) if c.variant.name == name), 0)

    return threads_of


WORKER_STATES = ("ready", "draining", "stale")


def worker_families(gauges: Iterable[WorkerGauges], with_states: bool = True) -> list[Metric]:
    """Gauge families of each worker's instances, replicas, memory and cores, and (``with_states``) of workers by
    state: the front-ends' view of the cluster only, since a worker's own endpoint would count just itself."""
    by_state = GaugeMetricFamily(
        "infaas_workers", "Workers by state (stale: no heartbeat within the TTL)", labels=["state"]
    )
    families = {
        "instances": GaugeMetricFamily("infaas_worker_instances", "Variants loaded on the worker", labels=["worker"]),
        "replicas": GaugeMetricFamily("infaas_worker_replicas", "Replicas loaded on the worker", labels=["worker"]),
        "memory_used": GaugeMetricFamily(
            "infaas_worker_memory_used_bytes", "Profiled memory of the worker's loaded replicas", labels=["worker"]
        ),
        "memory_budget": GaugeMetricFamily(
            "infaas_worker_memory_budget_bytes", "The worker's memory budget", labels=["worker"]
        ),
        "cores": GaugeMetricFamily("infaas_worker_cores", "The worker's cores", labels=["worker"]),
        "free_cores": GaugeMetricFamily(
            "infaas_worker_free_cores", "Cores not held by the worker's loaded replicas' threads", labels=["worker"]
        ),
    }
    counts = dict.fromkeys(WORKER_STATES, 0)
    for g in gauges:
        counts[g.state] += 1
        families["instances"].add_metric([g.worker], g.instances)
        families["replicas"].add_metric([g.worker], g.replicas)
        families["memory_used"].add_metric([g.worker], g.memory_used_mb * _MB)
        families["memory_budget"].add_metric([g.worker], g.memory_budget_mb * _MB)
        families["cores"].add_metric([g.worker], g.cores)
        families["free_cores"].add_metric([g.worker], g.free_cores)
    for state, count in counts.items():
        by_state.add_metric([state], count)
    return [by_state, *families.values()] if with_states else list(families.values())


class WorkerCollector(Collector):
    """One ``infaas worker``'s own gauges, read from it at scrape time (its state is the front-ends' to count)."""

    def __init__(self, read: Callable[[], WorkerGauges]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from worker_families([self._read()], with_states=False)


class StateCollector(Collector):
    """Reads live state and the metadata database at scrape time (a scrape costs three GROUP BY queries).

    A backend that does not answer leaves its families out of this scrape (logged) rather than failing it:
    the per-query metrics are still worth having while the database restarts.
    """

    def __init__(
        self,
        live: LiveState,
        metadata: MetadataStore,
        threads_of: Callable[[str], int],
        heartbeat_ttl_s: float,
    ) -> None:
        self._live = live
        self._metadata = metadata
        self._threads_of = threads_of
        self._ttl = heartbeat_ttl_s

    def collect(self) -> Iterator[Metric]:
        for source in (self._live_families, self._metadata_families):
            try:
                families = source()
            except Exception:  # a backend away for a moment: export what the others have
                log.warning("metrics: %s failed; its families are left out of this scrape", source.__name__)
                continue
            yield from families

    def _live_families(self) -> list[Metric]:
        families = worker_families(worker_gauges(self._live, self._threads_of, self._ttl))
        served = CounterMetricFamily(
            "infaas_variant_served",
            "Queries served per variant since live state started, as the console's live page counts them "
            "(cluster-wide with Redis)",
            labels=["model", "variant"],
        )
        for key, stats in sorted(self._live.variant_stats().items()):
            model, _, variant = key.partition("/")
            served.add_metric([model, variant], stats.total_requests)
        rejected = CounterMetricFamily(
            "infaas_rejected_queries",
            "Queries refused as infeasible (nothing ran) per model named or task:<name>, as the console counts them",
            labels=["target"],
        )
        for target, stats in sorted(self._live.rejection_stats().items()):
            rejected.add_metric([target], stats.total_rejected)
        return [*families, served, rejected]

    def _metadata_families(self) -> list[Metric]:
        with self._metadata.db.session() as session:
            jobs = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            decisions = session.execute(
                select(Decision.level, Decision.action, func.count()).group_by(Decision.level, Decision.action)
            ).all()
            variants = session.execute(select(Variant.status, func.count()).group_by(Variant.status)).all()
        job_family = GaugeMetricFamily("infaas_jobs", "Background (offline) jobs by state", labels=["state"])
        for status, count in jobs:
            job_family.add_metric([status], count)
        decision_family = CounterMetricFamily(
            "infaas_autoscaler_decisions",
            "Autoscaler decisions recorded, by level (model, vm, leader) and action",
            labels=["level", "action"],
        )
        for level, action, count in decisions:
            decision_family.add_metric([level, action], count)
        build_family = GaugeMetricFamily(
            "infaas_variant_builds",
            "Variants by build outcome (ready, failed, skipped) or stage (pending, building)",
            labels=["outcome"],
        )
        for status, count in variants:
            build_family.add_metric([status], count)
        return [job_family, decision_family, build_family]
