"""SQLAlchemy ORM models for the metadata store.

The schema itself is created by the Alembic migrations under ``migrations/``; a test checks that
autogenerate finds no difference between these classes and the migrated database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Timezone-aware now, so timestamps compare correctly across hosts."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base shared by every table."""


class ModelStatus:
    """Lifecycle of a registered model: its registration, its variant build, its deletion.

    ``registering`` and ``deleting`` mark a registration or deletion that is still writing or removing
    files: a row left in either state by a process that died is finished (deleted) by the start-up and
    periodic sweep (``infaas.orphans``), so neither ever shows a model whose files are incomplete.
    """

    REGISTERING = "registering"
    PENDING = "pending"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    DELETING = "deleting"


class VariantStatus:
    """Lifecycle of one variant; ``skipped`` always carries a reason."""

    PENDING = "pending"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"
    SKIPPED = "skipped"
    STALE = "stale"  # a cascade whose live escalation share drifted: not selected until recalibrated


class Model(Base):
    """A registered model, as uploaded by its owner."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    task: Mapped[str] = mapped_column(String(128), index=True)
    framework: Mapped[str] = mapped_column(String(32), default="onnx")
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # What registration changed to serve the upload (``infaas.zipmap``), one description each.
    rewrites: Mapped[list[str]] = mapped_column(JSON, default=list, server_default=text("'[]'"))
    # The shape each input with a dynamic non-batch dimension was checked at, {name: [1, 3, 320, 320]}
    # (``infaas.input_shapes``): what builds profile and make synthetic data at.
    input_shapes: Mapped[dict[str, list[int]]] = mapped_column(JSON, default=dict, server_default=text("'{}'"))
    opset: Mapped[int | None] = mapped_column(Integer, nullable=True)
    declared_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_batch: Mapped[int] = mapped_column(Integer, default=16)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    public: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default=ModelStatus.PENDING)
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    artifact_key: Mapped[str] = mapped_column(String(512))
    validation_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    variants: Mapped[list[Variant]] = relationship(
        back_populates="model", cascade="all, delete-orphan", passive_deletes=True, order_by="Variant.id"
    )


class Variant(Base):
    """One build of a model: a precision, a hardware target, a thread count."""

    __tablename__ = "variants"
    __table_args__ = (UniqueConstraint("model_id", "name", name="uq_variant_model_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(64))
    precision: Mapped[str] = mapped_column(String(16))
    hardware: Mapped[str] = mapped_column(String(16))
    threads: Mapped[int] = mapped_column(Integer, default=0)
    providers: Mapped[list[str]] = mapped_column(JSON, default=list)
    artifact_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=VariantStatus.PENDING)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    model: Mapped[Model] = relationship(back_populates="variants")
    profiles: Mapped[list[Profile]] = relationship(
        back_populates="variant",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="Profile.batch_size",
    )


class Profile(Base):
    """A measurement of one variant at one batch size on one host."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    variant_id: Mapped[int] = mapped_column(ForeignKey("variants.id", ondelete="CASCADE"), index=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int] = mapped_column(Integer)
    load_ms: Mapped[float] = mapped_column(Float)
    latency_p50_ms: Mapped[float] = mapped_column(Float)
    latency_p99_ms: Mapped[float] = mapped_column(Float)
    throughput_per_s: Mapped[float] = mapped_column(Float)
    memory_mb: Mapped[float] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)  # on held-out labelled rows
    accuracy_metric: Mapped[str | None] = mapped_column(String(32), nullable=True)
    fidelity: Mapped[float | None] = mapped_column(Float, nullable=True)  # vs the original's outputs
    fidelity_metric: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # rows/s of 1, 2, ... replicas together (``ProfileInfo.replica_throughput_per_s``); null when not measured
    replica_throughput: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)
    # False when a row's answer changed with the rows batched beside it (``ProfileInfo.batch_invariant``).
    batch_invariant: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    host: Mapped[str] = mapped_column(String(255))
    measured_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    variant: Mapped[Variant] = relationship(back_populates="profiles")


class Decision(Base):
    """One autoscaler decision with the inputs that triggered it and why."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    level: Mapped[str] = mapped_column(String(16))
    action: Mapped[str] = mapped_column(String(32))
    target: Mapped[str] = mapped_column(String(255))
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    reason: Mapped[str] = mapped_column(Text)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str | None] = mapped_column(Text, nullable=True)


class Job(Base):
    """An offline (batch) query run in the background."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    model_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    task: Mapped[str | None] = mapped_column(String(128), nullable=True)
    input_key: Mapped[str] = mapped_column(String(512))
    min_accuracy: Mapped[float] = mapped_column(Float, default=0.0)
    deadline_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    variant: Mapped[str | None] = mapped_column(String(255), nullable=True)
    result_key: Mapped[str | None] = mapped_column(String(512), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class WorkState:
    """Lifecycle of a work item: ``pending → running → done | failed`` (a failed attempt goes back to pending)."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class WorkItem(Base):
    """One piece of background work (a variant build, a re-profile, an offline job), recorded before it runs.

    ``owner`` and ``lease_expires_at`` are the lease: the process holding the item renews it while it
    lives, and an item whose lease expired belongs to a dead process and may be claimed again
    (``infaas.jobs.durable``).
    """

    __tablename__ = "work_items"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    task: Mapped[str] = mapped_column(String(64))
    kwargs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=WorkState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    owner: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class ApiKey(Base):
    """An API key of a tenant; only a hash of the secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    key_hash: Mapped[str] = mapped_column(String(128), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Pipeline(Base):
    """A DAG of models planned to an end-to-end P99 objective (``infaas.pipelines``).

    ``spec`` is the validated definition as the owner gave it (stages, edges, objective, arrivals); ``plan`` the
    planner's last answer (per stage variant, batch, replicas, utilisation, cost), ``None`` until planned.
    ``models`` lists the registered models the stages name, so a model deletion finds its users without reading
    every spec.
    """

    __tablename__ = "pipelines"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True, index=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    scale_factors: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    plan: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CascadeDecision(Base):
    """One decision about a cascade of a task (``variant_generator.cascades``): kept or not, why, with the numbers.

    The construction replaces a task's rows each time it runs (``kind`` ``build``); drift appends ``stale`` and
    ``recalibrated`` rows. ``variant`` names the kept cascade's variant on the expensive member's model.
    """

    __tablename__ = "cascade_decisions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(128), index=True)
    owner: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="build")
    cheap: Mapped[str] = mapped_column(String(255))
    expensive: Mapped[str] = mapped_column(String(255))
    kept: Mapped[bool] = mapped_column(Boolean, default=False)
    variant: Mapped[str | None] = mapped_column(String(255), nullable=True)
    reason: Mapped[str] = mapped_column(Text)
    numbers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
