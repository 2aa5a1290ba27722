"""In-process provider: each "worker" is a ``LocalWorker`` in this process.

For the trace benchmark and tests, where a second process or VM would only add start-up time: the
worker registers in the same live state and serves through the same ``WorkerClient`` interface, but
it shares this machine's cores with every other in-process worker, so adding one adds accounting
capacity, not real CPU.
"""

from __future__ import annotations

import itertools
import threading

from autoscaler.providers.base import Provider, ProviderError, WorkerHandle
from infaas.live_state import LiveState
from infaas.model_store import ModelStore
from infaas.worker import LocalWorker, WorkerClient


class InProcessProvider(Provider):
    """Starts ``LocalWorker``s named ``<prefix>-1``, ``<prefix>-2``, … in this process."""

    name = "inprocess"

    def __init__(
        self,
        store: ModelStore,
        live: LiveState,
        *,
        memory_budget_mb: float,
        cores: int,
        heartbeat_s: float = 1.0,
        prefix: str = "inproc",
    ) -> None:
        self._store = store
        self._live = live
        self._memory = memory_budget_mb
        self._cores = cores
        self._heartbeat_s = heartbeat_s
        self._prefix = prefix
        self._ids = itertools.count(1)
        self._workers: dict[str, LocalWorker] = {}
        self._lock = threading.Lock()

    def start_worker(self) -> WorkerHandle:
        worker_id = f"{self._prefix}-{next(self._ids)}"
        worker = LocalWorker(
            worker_id,
            self._store,
            self._live,
            memory_budget_mb=self._memory,
            cores=self._cores,
            heartbeat_s=self._heartbeat_s,
        )
        worker.start()
        with self._lock:
            self._workers[worker_id] = worker
        return WorkerHandle(id=worker_id, address="local", cores=self._cores)

    def connect(self, handle: WorkerHandle) -> WorkerClient:
        with self._lock:
            worker = self._workers.get(handle.id)
        if worker is None:
            raise ProviderError(f"no in-process worker {handle.id!r}")
        return worker

    def stop_worker(self, worker_id: str) -> None:
        with self._lock:
            worker = self._workers.pop(worker_id, None)
        if worker is not None:
            worker.stop()

    def workers(self) -> list[WorkerHandle]:
        with self._lock:
            ids = list(self._workers)
        return [WorkerHandle(id=i, address="local", cores=self._cores) for i in ids]
