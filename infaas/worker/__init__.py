"""Workers: where variants are loaded and run."""

from __future__ import annotations

from infaas.worker.instance import InferResult, Instance
from infaas.worker.worker import (
    InstanceStatus,
    LocalWorker,
    OutOfMemory,
    WorkerClient,
    WorkerError,
    WorkerStatus,
)

__all__ = [
    "InferResult",
    "Instance",
    "InstanceStatus",
    "LocalWorker",
    "OutOfMemory",
    "WorkerClient",
    "WorkerError",
    "WorkerStatus",
]
