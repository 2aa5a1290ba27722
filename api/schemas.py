"""Response and request bodies of the REST API (they also make the OpenAPI document precise)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from infaas.accuracy import Accuracy, accuracy_of, fidelity_of
from infaas.catalog import ModelInfo, ProfileInfo, VariantInfo
from infaas.db.models import VariantStatus


class TensorSpecOut(BaseModel):
    name: str
    dtype: str
    shape: list[int]


class ProfileOut(BaseModel):
    batch_size: int
    threads: int
    load_ms: float
    latency_p50_ms: float
    latency_p99_ms: float
    throughput_per_s: float
    memory_mb: float
    accuracy: float | None  # measured on held-out labelled rows only
    accuracy_metric: str | None
    host: str
    measured_at: datetime | None
    fidelity: float | None
    fidelity_metric: str | None
    replica_throughput_per_s: list[float] = []  # rows/s of 1, 2, ... replicas together; empty: not measured
    batch_invariant: bool = True  # False: a row's answer depends on its batch (dynamic INT8), so it is never batched

    @classmethod
    def of(cls, p: ProfileInfo) -> ProfileOut:
        return cls(**p.__dict__)


class VariantOut(BaseModel):
    """A variant; ``accuracy`` is ``infaas.accuracy.accuracy_of``: value, metric and source (``measured`` on held-out
    labelled rows, ``declared``, ``estimated`` from the declared accuracy and the fidelity, or ``unknown``)."""

    name: str
    kind: str
    precision: str
    hardware: str
    threads: int
    providers: list[str]
    status: str
    reason: str | None
    accuracy: float | None
    accuracy_metric: str | None
    accuracy_source: str
    fidelity: float | None
    fidelity_metric: str | None
    profiles: list[ProfileOut]

    @classmethod
    def of(cls, v: VariantInfo, model: ModelInfo) -> VariantOut:
        accuracy, fidelity = accuracy_of(model, v), fidelity_of(v)
        return cls(
            name=v.name,
            kind=v.kind,
            precision=v.precision,
            hardware=v.hardware,
            threads=v.threads,
            providers=list(v.providers),
            status=v.status,
            reason=v.reason,
            accuracy=accuracy.value,
            accuracy_metric=accuracy.metric,
            accuracy_source=accuracy.source,
            fidelity=fidelity.value,
            fidelity_metric=fidelity.metric,
            profiles=[ProfileOut.of(p) for p in v.profiles],
        )


class VariantCounts(BaseModel):
    ready: int = 0
    failed: int = 0
    skipped: int = 0
    building: int = 0
    pending: int = 0


class AccuracyOut(BaseModel):
    value: float | None
    metric: str | None
    source: str

    @classmethod
    def of(cls, a: Accuracy) -> AccuracyOut:
        return cls(value=a.value, metric=a.metric, source=a.source)


class ModelOut(BaseModel):
    """A model; ``accuracy`` is its most accurate ready variant's (``infaas.accuracy.accuracy_of``), None if none."""

    name: str
    task: str
    framework: str
    inputs: list[TensorSpecOut]
    outputs: list[TensorSpecOut]
    opset: int | None
    declared_accuracy: float | None
    max_batch: int
    owner: str
    public: bool
    status: str
    status_reason: str | None
    size_bytes: int
    created_at: datetime
    rewrites: list[str]
    # The shape (batch 1) each input with a dynamic non-batch dimension was checked and is profiled at.
    input_shapes: dict[str, list[int]]
    variant_counts: VariantCounts
    accuracy: AccuracyOut | None = None
    variants: list[VariantOut] | None = None

    @classmethod
    def of(cls, m: ModelInfo, with_variants: bool = True) -> ModelOut:
        counts = VariantCounts()
        for v in m.variants:
            setattr(counts, v.status, getattr(counts, v.status, 0) + 1)
        return cls(
            name=m.name,
            task=m.task,
            framework=m.framework,
            inputs=[TensorSpecOut(**s.to_json()) for s in m.inputs],
            outputs=[TensorSpecOut(**s.to_json()) for s in m.outputs],
            opset=m.opset,
            declared_accuracy=m.declared_accuracy,
            max_batch=m.max_batch,
            owner=m.owner,
            public=m.public,
            status=m.status,
            status_reason=m.status_reason,
            size_bytes=m.size_bytes,
            created_at=m.created_at,
            rewrites=list(m.rewrites),
            input_shapes={name: list(shape) for name, shape in m.input_shapes.items()},
            variant_counts=counts,
            accuracy=_best_accuracy(m),
            variants=[VariantOut.of(v, m) for v in m.variants] if with_variants else None,
        )


def _best_accuracy(m: ModelInfo) -> AccuracyOut | None:
    known = [a for v in m.variants if v.status == VariantStatus.READY and (a := accuracy_of(m, v)).value is not None]
    return AccuracyOut.of(max(known, key=lambda a: a.value or 0.0)) if known else None


class ErrorOut(BaseModel):
    """A ``/v1`` error: ``code`` is stable for programs, ``detail`` is for people (``code`` is absent only on
    FastAPI's own request-validation errors)."""

    detail: Any
    code: str | None = None


class DeletedOut(BaseModel):
    deleted: str
