"""In-process live state: the embedded default (one front-end, in-process worker).

Writes that happen per query (queue depth, query records) are a dict store or a deque append under
a lock held for a few instructions. Rarely changing facts (workers, instances) are kept as immutable
tuples replaced on change (copy-on-write), so ``snapshot()`` hands them out without copying.
Statistics are computed when read, never when written.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import replace
from types import MappingProxyType

from infaas.live_state.base import (
    PIPELINE_ARRIVALS_KEEP_S,
    PIPELINE_ARRIVALS_MAX,
    WINDOW_SAMPLES,
    InstanceState,
    LiveSnapshot,
    LiveState,
    QueryRecord,
    Rejection,
    RejectionStats,
    VariantStats,
    WorkerState,
    rejection_sample_of,
    rejection_stats_from_samples,
    sample_of,
    stats_from_samples,
)


class _Window:
    """Recent samples of one variant, instance or rejection target, and how many there were since start."""

    __slots__ = ("samples", "total")

    def __init__(self) -> None:
        self.samples: deque[tuple[float, ...]] = deque(maxlen=WINDOW_SAMPLES)
        self.total = 0


class MemoryLiveState(LiveState):
    """Live state held in this process's memory."""

    def __init__(self, recent: int = 1000) -> None:
        self._lock = threading.Lock()
        self._workers: dict[str, WorkerState] = {}
        self._instances: dict[tuple[str, str], InstanceState] = {}
        self._queue_depth: dict[tuple[str, str], int] = {}
        self._windows: dict[str, _Window] = {}
        self._instance_windows: dict[tuple[str, str], _Window] = {}
        self._rejections: dict[str, _Window] = {}
        self._recent: deque[QueryRecord] = deque(maxlen=recent)
        self._arrivals: dict[str, deque[float]] = {}
        self._snapshot = LiveSnapshot(workers=(), instances=MappingProxyType({}), queue_depth=self._queue_depth)

    def _publish(self) -> None:
        """Rebuild the immutable parts of the snapshot; call with the lock held."""
        by_variant: dict[str, list[InstanceState]] = {}
        for inst in self._instances.values():
            by_variant.setdefault(inst.variant_key, []).append(inst)
        self._snapshot = LiveSnapshot(
            workers=tuple(self._workers.values()),
            instances=MappingProxyType({k: tuple(v) for k, v in by_variant.items()}),
            queue_depth=self._queue_depth,
        )

    # -- workers --------------------------------------------------------------------------------
    def register_worker(self, worker: WorkerState) -> None:
        with self._lock:
            self._workers[worker.id] = worker
            # A registration is a fresh process (or a re-registration that re-adds its instances next):
            # what an earlier process of the same id had loaded or queued is not there any more.
            for key in [k for k in self._instances if k[0] == worker.id]:
                del self._instances[key]
            for key in [k for k in self._queue_depth if k[0] == worker.id]:
                self._queue_depth.pop(key, None)
            self._publish()

    def heartbeat(self, worker_id: str, memory_used_mb: float) -> None:
        with self._lock:
            current = self._workers.get(worker_id)
            if current is None:
                return
            self._workers[worker_id] = replace(current, heartbeat_at=time.time(), memory_used_mb=memory_used_mb)
            self._publish()

    def set_draining(self, worker_id: str, draining: bool) -> None:
        with self._lock:
            current = self._workers.get(worker_id)
            if current is None:
                return
            self._workers[worker_id] = replace(current, draining=draining)
            self._publish()

    def remove_worker(self, worker_id: str) -> None:
        with self._lock:
            self._workers.pop(worker_id, None)
            for key in [k for k in self._instances if k[0] == worker_id]:
                del self._instances[key]
                self._queue_depth.pop(key, None)
            for key in [k for k in self._instance_windows if k[0] == worker_id]:
                del self._instance_windows[key]
            self._publish()

    def workers(self) -> list[WorkerState]:
        return list(self._snapshot.workers)

    # -- instances ------------------------------------------------------------------------------
    def set_instance(self, instance: InstanceState) -> None:
        with self._lock:
            self._instances[(instance.worker_id, instance.variant_key)] = instance
            self._publish()

    def remove_instance(self, worker_id: str, variant_key: str) -> None:
        with self._lock:
            self._instances.pop((worker_id, variant_key), None)
            self._queue_depth.pop((worker_id, variant_key), None)
            self._publish()

    def instances(self, worker_id: str | None = None) -> list[InstanceState]:
        found = [i for group in self._snapshot.instances.values() for i in group]
        return [i for i in found if worker_id is None or i.worker_id == worker_id]

    # -- per-query path -------------------------------------------------------------------------
    def set_queue_depth(self, worker_id: str, variant_key: str, depth: int) -> None:
        self._queue_depth[(worker_id, variant_key)] = depth

    def record_query(self, record: QueryRecord) -> None:
        key = record.variant_key
        instance = (record.worker, key)
        sample = sample_of(record)
        # Per query, so appends inline: best of 5 × 200k, 0.67 µs a query with both windows vs 0.60 µs before.
        with self._lock:
            window = self._windows.get(key) or self._windows.setdefault(key, _Window())
            window.samples.append(sample)
            window.total += 1
            window = self._instance_windows.get(instance) or self._instance_windows.setdefault(instance, _Window())
            window.samples.append(sample)
            window.total += 1
            self._recent.append(record)

    def record_rejection(self, rejection: Rejection) -> None:
        with self._lock:
            window = self._rejections.setdefault(rejection.target, _Window())
            window.samples.append(rejection_sample_of(rejection))
            window.total += 1

    def record_pipeline_arrival(self, pipeline: str, at: float) -> None:
        with self._lock:
            times = self._arrivals.get(pipeline)
            if times is None:
                times = self._arrivals[pipeline] = deque(maxlen=PIPELINE_ARRIVALS_MAX)
            times.append(at)
            while times[0] < at - PIPELINE_ARRIVALS_KEEP_S:
                times.popleft()

    def pipeline_arrivals(self, pipeline: str, since: float) -> list[float]:
        with self._lock:
            return sorted(t for t in self._arrivals.get(pipeline, ()) if t >= since)

    def snapshot(self) -> LiveSnapshot:
        return self._snapshot

    # -- reads ----------------------------------------------------------------------------------
    def variant_stats(self, window_s: float = 60.0) -> dict[str, VariantStats]:
        now = time.time()
        with self._lock:
            copied = {k: (list(w.samples), w.total) for k, w in self._windows.items()}
        return {key: stats_from_samples(key, samples, total, now, window_s) for key, (samples, total) in copied.items()}

    def instance_stats(self, window_s: float = 60.0) -> dict[tuple[str, str], VariantStats]:
        now = time.time()
        with self._lock:
            copied = {k: (list(w.samples), w.total) for k, w in self._instance_windows.items()}
        return {
            key: stats_from_samples(key[1], samples, total, now, window_s) for key, (samples, total) in copied.items()
        }

    def rejection_stats(self, window_s: float = 60.0) -> dict[str, RejectionStats]:
        now = time.time()
        with self._lock:
            copied = {k: (list(w.samples), w.total) for k, w in self._rejections.items()}
        return {
            target: rejection_stats_from_samples(target, samples, total, now, window_s)
            for target, (samples, total) in copied.items()
        }

    def recent_queries(self, limit: int = 100) -> list[QueryRecord]:
        with self._lock:
            items = list(self._recent)
        return items[::-1][: max(0, limit)]
