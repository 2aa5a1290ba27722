"""The provider interface: how the VM-level autoscaler gets and gives back workers.

A provider only starts and stops machines (processes, VMs, pods) that run a worker and returns a
``WorkerClient`` for each; the worker registers itself in live state. That is all a Kubernetes
provider would have to implement too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from infaas.worker import WorkerClient


class ProviderError(RuntimeError):
    """A worker could not be started, reached or stopped."""


@dataclass(frozen=True)
class WorkerHandle:
    """A worker this provider started: its id in live state and where it listens."""

    id: str
    address: str  # base URL, or "local" for an in-process worker
    cores: int
    meta: dict[str, str] = field(default_factory=dict)


class Provider(ABC):
    """Starts and stops workers; the autoscaler never removes a worker a provider did not start."""

    name: str

    @abstractmethod
    def start_worker(self) -> WorkerHandle:
        """Start one worker and return once it can be connected to (or raise ``ProviderError``)."""

    @abstractmethod
    def connect(self, handle: WorkerHandle) -> WorkerClient:
        """A client the query engine and the autoscaler call the worker through."""

    @abstractmethod
    def stop_worker(self, worker_id: str) -> None:
        """Stop a worker this provider started (its in-flight work has been drained already)."""

    @abstractmethod
    def workers(self) -> list[WorkerHandle]:
        """The workers this provider started and has not stopped."""

    def owns(self, worker_id: str) -> bool:
        """Whether the worker was started here (only those are ever removed)."""
        return any(h.id == worker_id for h in self.workers())

    def close(self) -> None:
        """Stop every worker this provider started (process shutdown)."""
        for handle in self.workers():
            self.stop_worker(handle.id)
