"""How a front-end reaches workers by id: its own in-process worker, and pooled HTTP clients for workers
other processes registered in live state; a worker that just failed is skipped for a while.

The selector returns a worker id; this turns it into something to call. The engine (queries) and the
autoscaler (replicas, loads) both go through one registry, so they share connection pools and agree on
which workers to avoid.
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import replace

from infaas.live_state import LiveSnapshot, LiveState
from infaas.worker.remote import RemoteWorkerClient
from infaas.worker.worker import LocalWorker, WorkerClient


class WorkerClients:
    """Worker clients by id, plus the workers this front-end failed to reach lately."""

    def __init__(self, live: LiveState, *, local: LocalWorker | None = None, avoid_s: float = 10.0) -> None:
        self.live = live
        self.local = local
        self._avoid_s = avoid_s
        self._in_process: dict[str, WorkerClient] = {}
        self._remote: dict[str, RemoteWorkerClient] = {}
        self._avoid: dict[str, float] = {}  # worker id -> monotonic time until which it is skipped
        self._lock = threading.Lock()
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start this process's own worker (if it has one) and register it in live state."""
        with self._lock:
            if self._started:
                return
            if self.local is not None:
                self.local.start()
                self._in_process[self.local.id] = self.local
            self._started = True

    def stop(self) -> None:
        """Stop the own worker (unloading everything, leaving live state) and close remote pools."""
        with self._lock:
            if self.local is not None and self._started:
                self.local.stop()
                self._in_process.pop(self.local.id, None)
            for client in self._remote.values():
                client.close()
            self._remote.clear()
            self._started = False

    def add(self, client: WorkerClient) -> None:
        """Make an in-process worker reachable by id (the autoscaler's ``inprocess`` provider adds them)."""
        self._in_process[client.id] = client

    def remove(self, worker_id: str) -> None:
        """Forget an in-process worker."""
        self._in_process.pop(worker_id, None)

    # -- lookup ---------------------------------------------------------------------------------
    def get(self, worker_id: str, snapshot: LiveSnapshot | None = None) -> WorkerClient | None:
        """The client for ``worker_id``: in-process, or a pooled HTTP client for a registered address."""
        client = self._in_process.get(worker_id)
        if client is not None:
            return client
        snapshot = snapshot or self.live.snapshot()
        state = next((w for w in snapshot.workers if w.id == worker_id), None)
        if state is None or not state.address.startswith(("http://", "https://")):
            return None
        remote = self._remote.get(worker_id)
        if remote is not None and remote.address == state.address:
            return remote
        with self._lock:
            remote = self._remote.get(worker_id)
            if remote is None or remote.address != state.address:  # new, or restarted elsewhere
                on_depth = functools.partial(self.live.note_local_depth, worker_id)
                remote = self._remote[worker_id] = RemoteWorkerClient(worker_id, state.address, on_depth=on_depth)
            return remote

    def avoid(self, worker_id: str) -> None:
        """Skip a worker that could not be reached until live state would have forgotten it anyway."""
        self._avoid[worker_id] = time.monotonic() + self._avoid_s

    def snapshot(self) -> LiveSnapshot:
        """Live state without the workers being avoided."""
        snapshot = self.live.snapshot()
        if not self._avoid:
            return snapshot
        now = time.monotonic()
        for worker_id, until in list(self._avoid.items()):
            if until <= now:
                self._avoid.pop(worker_id, None)
        return replace(snapshot, workers=tuple(w for w in snapshot.workers if w.id not in self._avoid))
