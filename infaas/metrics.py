"""Prometheus metrics: per-query counters and histograms, and the cluster's state read at scrape time.

Two kinds, one registry per process (``GET /metrics`` on a front-end and on every ``infaas worker``):

* ``QueryMetrics``: what must be counted as queries happen (requests by outcome, latency, queue and service
  time, batch size, SLO misses, estimate error). The engine hands it each query; it keeps them in a list and
  folds them into the counts (numpy) when Prometheus scrapes, so a served query costs one append
  (``benchmarks/metrics_cost.py``; ``benchmarks/overhead.py`` compares metrics on and off over HTTP).
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
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select

from infaas.db.models import Decision, Job, Variant
from infaas.errors import InfaasError
from infaas.live_state import LiveState

if TYPE_CHECKING:
    from infaas.candidates import CandidateCache
    from infaas.live_state import QueryRecord
    from infaas.metadata import MetadataStore

log = logging.getLogger(__name__)

# Where a query came in (``QueryEngine.serve``'s and ``infer``'s ``endpoint``; ``pipeline``: each stage of a
# pipeline query; ``topk``: each stage query of a top-K query). Offline jobs do not go through the engine: they are
# counted by state (``infaas_jobs``).
ENDPOINTS = ("v1", "oip", "pipeline", "topk")
OUTCOMES = ("ok", "client_error", "server_error", "rejected", "slo_at_risk")

# 1-2.5-5 per decade from 0.1 ms to 10 s: 16 buckets, each series exported with 18 samples per scrape; a p50
# between 1 and 2.5 ms is interpolated within that bucket.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# actual − estimated (s): negative when the estimate was pessimistic, as the selector's tail estimates mostly are.
ESTIMATE_ERROR_BUCKETS = (-1.0, -0.1, -0.01, -0.001, -0.0001, 0.0, 0.0001, 0.001, 0.01, 0.1, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

_MB = 1e6


class _Histogram:
    """Bucket counts (not cumulative; the last one is +Inf) and the sum of one labelled histogram."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.total = 0.0

    def add(self, values: np.ndarray) -> None:
        # side="left": a value equal to a bound counts in that bound's bucket (Prometheus's ``le``).
        self.counts += np.bincount(np.searchsorted(self.bounds, values, side="left"), minlength=len(self.counts))
        self.total += float(values.sum())

    def buckets(self) -> list[tuple[str, float]]:
        cumulative = np.cumsum(self.counts)
        names = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        return [(name, float(count)) for name, count in zip(names, cumulative, strict=True)]


# The per-variant histograms: (name, help, bucket bounds).
_HISTOGRAMS = (
    (
        "infaas_request_duration_seconds",
        "End-to-end latency of served queries in the engine (arrival to answer), per variant",
        LATENCY_BUCKETS,
    ),
    ("infaas_queue_duration_seconds", "Time a served query waited for a replica on its worker", LATENCY_BUCKETS),
    ("infaas_service_duration_seconds", "Model run time of the session run that served the query", LATENCY_BUCKETS),
    (
        "infaas_batch_size",
        "Rows in the session run that served the query (several queries batched together count all rows)",
        BATCH_BUCKETS,
    ),
    (
        "infaas_estimate_error_seconds",
        "Actual latency minus the corrected estimate the budget was compared with (positive: under-estimated); "
        "no _sum or _count, as with any histogram with negative buckets: the mean error is "
        "(infaas_request_duration_seconds_sum - infaas_estimated_latency_seconds_total) / _count",
        ESTIMATE_ERROR_BUCKETS,
    ),
)

# A served query as ``served`` keeps it until the next fold: endpoint, model, variant, worker, then at risk, actual
# ms, queue ms, service ms, batch rows, estimated ms, missed its budget, infeasible.
_Served = tuple[str, str, str, str, bool, float, float, float, int, float, bool, bool]
FOLD_AT = 1024  # pending queries that make the next ``served`` fold them: bounded memory, ~1 ms per fold


class QueryMetrics(Collector):
    """Requests by outcome, per-variant histograms and SLO misses, counted as the engine serves queries.

    A query costs one tuple appended to a list (0.2 µs), folded into the counts with numpy when Prometheus scrapes
    or every ``FOLD_AT`` queries (0.5 µs a query): 0.7 µs in all. Observing the official client's ``Histogram``s
    directly, with label children bound once, cost 5.6-6.6 µs per query here (five histograms at ~1.5 µs each
    under their locks; best of 5 × 200k calls on two loaded cores): 3% of the ~210 µs of server CPU a
    ``/v1/infer`` request takes (``benchmarks/overhead.py``), too close to the 5% budget. The exposition is still
    the client's (``generate_latest`` over these families).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._pending: list[_Served] = []
        self._failures: list[tuple[str, str]] = []
        self._lock = threading.Lock()  # one fold at a time; a scrape reads the counts under it too
        self._requests: dict[tuple[str, str, str, str, str], int] = {}  # (model, variant, worker, endpoint, outcome)
        self._misses: dict[tuple[str, str, str], int] = {}  # (model, variant, cause)
        self._estimated_s: dict[tuple[str, str], float] = {}  # (model, variant): sum of the estimates
        self._histograms: dict[tuple[str, str], tuple[_Histogram, ...]] = {}  # (model, variant), as _HISTOGRAMS
        registry.register(self)

    def served(self, endpoint: str, record: QueryRecord, service_ms: float, batch: int) -> None:
        """Account one served query (``QueryEngine.serve``, with what ``_account`` recorded)."""
        pending = self._pending
        pending.append(
            (
                endpoint,
                record.model,
                record.variant,
                record.worker,
                record.slo_at_risk,
                record.actual_ms,
                record.queue_ms,
                service_ms,
                batch,
                record.estimated_ms,
                record.slo_missed,
                record.infeasible,
            )
        )
        if len(pending) >= FOLD_AT:
            self.fold()

    def failed(self, endpoint: str, error: BaseException) -> None:
        """Account one query answered with an error: refused, the caller's fault, or ours."""
        failures = self._failures
        failures.append((endpoint, outcome_of(error)))
        if len(failures) >= FOLD_AT:
            self.fold()

    def fold(self) -> None:
        """Move the pending queries into the counts. Appends are atomic and a slice taken then deleted by length
        keeps every append that lands meanwhile for the next fold."""
        with self._lock:
            n = len(self._failures)
            failures = self._failures[:n]
            del self._failures[:n]
            for endpoint, outcome in failures:
                key = ("", "", "", endpoint, outcome)
                self._requests[key] = self._requests.get(key, 0) + 1
            n = len(self._pending)
            served = self._pending[:n]
            del self._pending[:n]
            groups: dict[tuple[str, str, str, str], list[_Served]] = {}
            for row in served:
                groups.setdefault(row[:4], []).append(row)
            for (endpoint, model, variant, worker), rows in groups.items():
                self._fold_group(endpoint, model, variant, worker, rows)

    def _fold_group(self, endpoint: str, model: str, variant: str, worker: str, rows: list[_Served]) -> None:
        columns = np.array([row[4:] for row in rows], dtype=np.float64)
        at_risk = int(columns[:, 0].sum())
        for outcome, count in (("ok", len(rows) - at_risk), ("slo_at_risk", at_risk)):
            key = (model, variant, worker, endpoint, outcome)
            self._requests[key] = self._requests.get(key, 0) + count
        missed, infeasible = columns[:, 6] > 0, columns[:, 7] > 0
        for cause, count in (("capacity", missed & ~infeasible), ("infeasible", missed & infeasible)):
            key = (model, variant, cause)
            self._misses[key] = self._misses.get(key, 0) + int(count.sum())
        histograms = self._histograms.get((model, variant))
        if histograms is None:
            histograms = self._histograms[(model, variant)] = tuple(_Histogram(b) for _, _, b in _HISTOGRAMS)
        actual_s, estimated_s = columns[:, 1] / 1000.0, columns[:, 5] / 1000.0
        self._estimated_s[(model, variant)] = self._estimated_s.get((model, variant), 0.0) + float(estimated_s.sum())
        observed = (
            actual_s,
            columns[:, 2] / 1000.0,
            columns[:, 3] / 1000.0,
            columns[:, 4],
            actual_s - estimated_s,
        )
        for histogram, values in zip(histograms, observed, strict=True):
            histogram.add(values)

    def collect(self) -> Iterator[Metric]:
        self.fold()
        requests = CounterMetricFamily(
            "infaas_requests",
            "Inference requests by model, variant, worker, endpoint and outcome (a failure before a variant was "
            "chosen has empty model, variant and worker; slo_at_risk: served, flagged as likely to miss its budget)",
            labels=["model", "variant", "worker", "endpoint", "outcome"],
        )
        misses = CounterMetricFamily(
            "infaas_slo_misses",
            "Served queries slower than their latency budget; cause 'infeasible': no placement could meet it even "
            "with empty queues (the console's SLO-miss rate counts only cause 'capacity')",
            labels=["model", "variant", "cause"],
        )
        estimated = CounterMetricFamily(
            "infaas_estimated_latency_seconds",
            "Sum of the corrected latency estimates of served queries, per variant (beside "
            "infaas_request_duration_seconds_sum: the estimate error's mean)",
            labels=["model", "variant"],
        )
        families = [HistogramMetricFamily(name, doc, labels=["model", "variant"]) for name, doc, _ in _HISTOGRAMS]
        with self._lock:
            for labels, count in sorted(self._requests.items()):
                requests.add_metric(labels, count)
            for labels, count in sorted(self._misses.items()):
                misses.add_metric(labels, count)
            for labels, seconds in sorted(self._estimated_s.items()):
                estimated.add_metric(labels, seconds)
            for labels, histograms in sorted(self._histograms.items()):
                for family, histogram in zip(families, histograms, strict=True):
                    family.add_metric(labels, histogram.buckets(), histogram.total)
        yield requests
        yield misses
        yield estimated
        yield from families


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
