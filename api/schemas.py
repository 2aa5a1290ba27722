"""Response and request bodies of the REST API (they also make the OpenAPI document precise)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from infaas.catalog import ModelInfo, ProfileInfo, VariantInfo


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
    accuracy: float | None
    accuracy_metric: str
    host: str
    measured_at: datetime | None

    @classmethod
    def of(cls, p: ProfileInfo) -> ProfileOut:
        return cls(**p.__dict__)


class VariantOut(BaseModel):
    name: str
    kind: str
    precision: str
    hardware: str
    threads: int
    providers: list[str]
    status: str
    reason: str | None
    accuracy: float | None
    profiles: list[ProfileOut]

    @classmethod
    def of(cls, v: VariantInfo) -> VariantOut:
        return cls(
            name=v.name,
            kind=v.kind,
            precision=v.precision,
            hardware=v.hardware,
            threads=v.threads,
            providers=list(v.providers),
            status=v.status,
            reason=v.reason,
            accuracy=v.accuracy,
            profiles=[ProfileOut.of(p) for p in v.profiles],
        )


class VariantCounts(BaseModel):
    ready: int = 0
    failed: int = 0
    skipped: int = 0
    building: int = 0
    pending: int = 0


class ModelOut(BaseModel):
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
            variants=[VariantOut.of(v) for v in m.variants] if with_variants else None,
        )


class ErrorOut(BaseModel):
    """A ``/v1`` error: ``code`` is stable for programs, ``detail`` is for people (``code`` is absent only on
    FastAPI's own request-validation errors)."""

    detail: Any
    code: str | None = None


class DeletedOut(BaseModel):
    deleted: str
