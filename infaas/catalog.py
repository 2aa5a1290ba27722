"""Plain, immutable snapshots of catalog rows.

The metadata store hands these out instead of ORM objects so that callers (selector caches, API
responses, other threads) never touch a database session.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infaas.tensors import TensorSpec


@dataclass(frozen=True)
class ProfileInfo:
    """A measurement of a variant at one batch size."""

    batch_size: int
    threads: int
    load_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    memory_mb: float
    accuracy: float | None  # measured on held-out labelled validation rows; None without labels
    accuracy_metric: str | None = "top1"  # ``top1`` or ``1-rel-error``; None when accuracy is
    host: str = ""
    measured_at: datetime | None = None
    fidelity: float | None = None  # vs the original model's outputs (``infaas.accuracy``)
    fidelity_metric: str | None = None  # ``agreement``, ``cosine`` or ``1-rel-error``, ``-synthetic`` on random inputs
    # Rows/s of 1, 2, ... replicas (each ``threads`` threads, one session per replica as a worker runs them) serving
    # this batch size together on the profiling host's cores; empty when not measured. What replicas really add:
    # the selector's queueing and the autoscaler's sizing read it instead of assuming linear scaling.
    replica_throughput_per_s: tuple[float, ...] = ()
    # Whether a row's answer is the same alone and batched with other rows (measured by the profiler). False for
    # dynamic INT8 (activation scales from the whole batch): such a variant is never batched across queries.
    batch_invariant: bool = True


@dataclass(frozen=True)
class VariantInfo:
    """One variant of a model with its profiles (sorted by batch size)."""

    id: int
    model_name: str
    name: str
    kind: str
    precision: str
    hardware: str
    threads: int
    providers: tuple[str, ...]
    artifact_key: str | None
    status: str
    reason: str | None
    profiles: tuple[ProfileInfo, ...] = ()
    # Its model's recorded input shapes (``ModelInfo.input_shapes``), carried to workers: what a session is warmed
    # up at (``runtime.warm_up``). Not part of the variant's identity.
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False, compare=False)

    @property
    def key(self) -> str:
        """Cluster-wide identity of the variant: ``model/variant``."""
        return f"{self.model_name}/{self.name}"

    @property
    def accuracy(self) -> float | None:
        """Measured accuracy on labelled rows (the same at every batch size), None without labels.

        The accuracy the selector, jobs, API and console use is ``infaas.accuracy.accuracy_of``, which adds the
        estimate from a declared accuracy; this is its measured part.
        """
        measured = [p.accuracy for p in self.profiles if p.accuracy is not None]
        return measured[0] if measured else None


@dataclass(frozen=True)
class ModelInfo:
    """A registered model and its variants."""

    id: int
    name: str
    task: str
    framework: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int | None
    declared_accuracy: float | None
    max_batch: int
    owner: str
    public: bool
    status: str
    status_reason: str | None
    artifact_key: str
    validation_key: str | None
    size_bytes: int
    created_at: datetime
    variants: tuple[VariantInfo, ...] = field(default=())
    rewrites: tuple[str, ...] = ()  # what registration changed to serve the upload (``infaas.zipmap``)
    # The shape (batch 1) each input with a dynamic non-batch dimension was checked at (``infaas.input_shapes``).
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class DecisionInfo:
    """An autoscaler decision."""

    id: int
    at: datetime
    level: str
    action: str
    target: str
    inputs: dict[str, Any]
    reason: str
    dry_run: bool
    outcome: str | None


@dataclass(frozen=True)
class JobInfo:
    """An offline (batch) job."""

    id: str
    owner: str
    model_name: str | None
    task: str | None
    input_key: str
    min_accuracy: float
    deadline_s: float | None
    status: str
    progress: float
    variant: str | None
    result_key: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class WorkItemInfo:
    """One recorded piece of background work, its state and its lease (``infaas.jobs.durable``)."""

    id: str
    task: str
    kwargs: dict[str, Any]
    state: str
    attempts: int
    owner: str | None
    lease_expires_at: datetime | None
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class ApiKeyInfo:
    """An API key's public facts (never the secret)."""

    id: str
    tenant: str
    is_admin: bool
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class CascadeDecisionInfo:
    """A decision about a cascade of a task: kept or not, why, with its numbers (``variant_generator.cascades``)."""

    task: str
    owner: str
    cheap: str  # model/variant
    expensive: str  # model/variant
    kept: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)
    variant: str | None = None  # the kept cascade's variant key (model/variant)
    kind: str = "build"  # build | stale | recalibrated
    at: datetime | None = None
    id: int | None = None
