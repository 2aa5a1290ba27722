"""The in-process worker: loaded instances within a memory budget, reported to live state.

Public interface (``WorkerClient``) is what a remote (HTTP) worker client implements too. It is
synchronous on purpose: ``session.run`` releases the GIL, so blocking calls from FastAPI's thread
pool (or the caller's own thread) are the fastest path for in-process serving; a remote client
would use a pooled sync HTTP client behind the same calls. Deadlines are ``time.monotonic()``
based; a remote client sends the remaining budget (deadline − now) on the wire instead.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import partial

import numpy as np

from infaas.catalog import VariantInfo
from infaas.hardware import CPU_ONLY, Hardware
from infaas.live_state.base import InstanceState, LiveState, WorkerState
from infaas.model_store import ModelStore
from infaas.runtime import Session, SessionOpener, open_session
from infaas.selector import ProfileCurve
from infaas.worker.instance import InferResult, Instance, InstanceClosed


class WorkerError(RuntimeError):
    """A worker cannot do what was asked (no memory, no artifact, unknown instance)."""


class OutOfMemory(WorkerError):
    """Loading would exceed the memory budget even after evicting every idle instance."""


@dataclass(frozen=True)
class InstanceStatus:
    """One loaded variant as reported by ``status()``."""

    variant_key: str
    replicas: int
    outstanding: int
    memory_mb: float
    max_batch: int
    idle_s: float


@dataclass(frozen=True)
class WorkerStatus:
    """A worker's resources and what it holds."""

    id: str
    cores: int
    memory_budget_mb: float
    memory_used_mb: float
    instances: tuple[InstanceStatus, ...]


class WorkerClient(ABC):
    """What the query engine and the autoscaler call, in-process or remote."""

    id: str

    @abstractmethod
    def infer(self, variant: VariantInfo, inputs: dict[str, np.ndarray], deadline_s: float | None) -> InferResult:
        """Run a request on ``variant``, loading it first if needed."""

    def try_infer_now(self, variant: VariantInfo, inputs: dict[str, np.ndarray]) -> InferResult | None:
        """Run on the caller's thread only if a replica is free right now; ``None`` otherwise.

        Lets an event loop run tiny models without a thread hand-off; remote workers never can.
        """
        return None

    @abstractmethod
    def load(self, variant: VariantInfo) -> None:
        """Load a variant (no-op if loaded), evicting idle instances if memory requires."""

    @abstractmethod
    def unload(self, variant_key: str) -> bool:
        """Unload a variant; ``False`` if it was not loaded."""

    @abstractmethod
    def add_replica(self, variant: VariantInfo) -> int:
        """Add a replica (loading the variant if needed); returns the replica count."""

    @abstractmethod
    def remove_replica(self, variant_key: str) -> int:
        """Remove a replica, never the last; returns the replica count (0 if not loaded)."""

    @abstractmethod
    def status(self) -> WorkerStatus:
        """Resources and loaded instances."""

    @abstractmethod
    def set_max_batch(self, variant_key: str, max_batch: int) -> int:
        """Cap the rows one session run of a loaded variant takes (a planned pipeline stage's batch); returns the
        cap in force (1 for an instance that never concatenates requests, 0 if not loaded)."""


class LocalWorker(WorkerClient):
    """Runs variants in this process, opened as the profiler opened them (``runtime.open_session``).

    ``hardware`` is what it advertises (``infaas.hardware.detect``: CPU only unless told); GPU variants are
    opened on its device. ``opener`` is ``open_session`` except in tests, where a fake GPU worker opens
    its variants on the CPU.
    """

    def __init__(
        self,
        worker_id: str,
        store: ModelStore,
        live: LiveState,
        *,
        memory_budget_mb: float,
        cores: int,
        hardware: Hardware = CPU_ONLY,
        heartbeat_s: float = 1.0,
        opener: SessionOpener = open_session,
    ) -> None:
        self.id = worker_id
        self._store = store
        self._live = live
        self._budget = memory_budget_mb
        self._cores = cores
        self.hardware = hardware
        self._open = opener
        self._heartbeat_s = heartbeat_s
        self._instances: dict[str, Instance] = {}
        self._memory: dict[str, float] = {}  # per-replica memory of each loaded variant
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Register in live state and start heartbeating."""
        self._live.register_worker(self.registration("local"))
        self._stop.clear()
        self._heartbeat_thread = threading.Thread(target=self._beat, name=f"heartbeat-{self.id}", daemon=True)
        self._heartbeat_thread.start()

    def stop(self) -> None:
        """Stop heartbeating, unload everything, leave live state."""
        self._stop.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join(5)
        for key in list(self._instances):
            self.unload(key)
        self._live.remove_worker(self.id)

    def registration(self, address: str) -> WorkerState:
        """This worker as live state lists it, reachable at ``address`` ("local" in process): its cores,
        memory, the hardware kinds and GPU it really has, and the CPUs its quota allows."""
        return WorkerState(
            id=self.id,
            address=address,
            cores=self._cores,
            memory_budget_mb=self._budget,
            memory_used_mb=self.memory_used_mb,
            hardware=self.hardware.kinds,
            device=self.hardware.device.describe() if self.hardware.device is not None else "",
            device_memory_mb=self.hardware.device_memory_mb,
            cpus=self.hardware.cpus or 0.0,
            heartbeat_at=time.time(),
        )

    def _beat(self) -> None:
        while not self._stop.wait(self._heartbeat_s):
            self._live.heartbeat(self.id, self.memory_used_mb)

    @property
    def memory_used_mb(self) -> float:
        """Profiled memory of every loaded replica."""
        return sum(self._memory[k] * inst.replicas for k, inst in list(self._instances.items()))

    # -- serving --------------------------------------------------------------------------------
    def infer(self, variant: VariantInfo, inputs: dict[str, np.ndarray], deadline_s: float | None) -> InferResult:
        instance = self._instances.get(variant.key) or self._load(variant)
        try:
            return instance.infer(inputs, deadline_s)
        except InstanceClosed:  # evicted or unloaded just now: load it again
            return self._load(variant).infer(inputs, deadline_s)

    def try_infer_now(self, variant: VariantInfo, inputs: dict[str, np.ndarray]) -> InferResult | None:
        instance = self._instances.get(variant.key)
        return instance.try_run_now(inputs) if instance is not None else None

    def load(self, variant: VariantInfo) -> None:
        self._load(variant)

    def _load(self, variant: VariantInfo) -> Instance:
        with self._load_lock:  # single flight: concurrent first requests load once
            instance = self._instances.get(variant.key)
            if instance is not None:
                return instance
            if not variant.artifact_key:
                raise WorkerError(f"variant {variant.key} has no artifact")
            curve = ProfileCurve.of(variant)
            self._make_room(curve.memory_mb, keep=None)
            path = self._store.local_path(variant.artifact_key)
            key = variant.key

            def make_session() -> Session:
                return self._open(
                    path, variant.providers, variant.threads, self.hardware.device_id, shapes=variant.input_shapes
                )

            # Rows outstanding: what the selector prices the queue with. A partial, not a closure: called twice
            # per query, and one Python frame fewer each time.
            on_depth = partial(self._live.set_queue_depth, self.id, key)
            # A variant whose answer to a row depends on its batch (dynamic INT8: activation scales from the whole
            # tensor changed an MLP's outputs by more than 1.0) runs its requests one at a time: its profile says so.
            instance = Instance(key, make_session, curve, on_depth=on_depth, batch_invariant=curve.batch_invariant)
            self._instances[key] = instance
            self._memory[key] = curve.memory_mb
        self._report(key)
        return instance

    def _make_room(self, needed_mb: float, keep: str | None) -> None:
        """Evict least-recently-used idle instances until ``needed_mb`` fits (load lock held)."""
        if needed_mb > self._budget:
            raise OutOfMemory(f"needs {needed_mb:.0f} MB, budget is {self._budget:.0f} MB")
        while self.memory_used_mb + needed_mb > self._budget:
            idle = [(i.last_used, k) for k, i in self._instances.items() if k != keep and i.outstanding == 0]
            if not idle:
                raise OutOfMemory(
                    f"needs {needed_mb:.0f} MB, {self._budget - self.memory_used_mb:.0f} MB free and nothing idle"
                )
            self._unload_locked(min(idle)[1])

    def unload(self, variant_key: str) -> bool:
        with self._load_lock:
            return self._unload_locked(variant_key)

    def _unload_locked(self, variant_key: str) -> bool:
        instance = self._instances.pop(variant_key, None)
        if instance is None:
            return False
        self._memory.pop(variant_key, None)
        self._live.remove_instance(self.id, variant_key)
        instance.close()
        self._live.heartbeat(self.id, self.memory_used_mb)
        return True

    def add_replica(self, variant: VariantInfo) -> int:
        instance = self._load(variant)
        with self._load_lock:
            self._make_room(self._memory[variant.key], keep=variant.key)
            instance.add_replica()
        self._report(variant.key)
        return instance.replicas

    def remove_replica(self, variant_key: str) -> int:
        instance = self._instances.get(variant_key)
        if instance is None:
            return 0
        instance.remove_replica()
        self._report(variant_key)
        return instance.replicas

    def set_max_batch(self, variant_key: str, max_batch: int) -> int:
        instance = self._instances.get(variant_key)
        if instance is None:
            return 0
        if instance.batchable:
            instance.max_batch = max(1, int(max_batch))
        return instance.max_batch

    def _report(self, key: str) -> None:
        instance = self._instances.get(key)
        if instance is None:
            return
        self._live.set_instance(
            InstanceState(
                worker_id=self.id,
                variant_key=key,
                replicas=instance.replicas,
                memory_mb=self._memory.get(key, 0.0) * instance.replicas,
                last_used_at=time.time(),
            )
        )
        self._live.heartbeat(self.id, self.memory_used_mb)

    def status(self) -> WorkerStatus:
        now = time.monotonic()
        return WorkerStatus(
            id=self.id,
            cores=self._cores,
            memory_budget_mb=self._budget,
            memory_used_mb=self.memory_used_mb,
            instances=tuple(
                InstanceStatus(
                    variant_key=k,
                    replicas=i.replicas,
                    outstanding=i.outstanding,
                    memory_mb=self._memory.get(k, 0.0) * i.replicas,
                    max_batch=i.max_batch,
                    idle_s=now - i.last_used,
                )
                for k, i in list(self._instances.items())
            ),
        )
