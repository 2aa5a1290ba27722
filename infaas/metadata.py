"""Metadata store: create/read/update/delete functions over the SQL catalog.

Everything here returns the frozen snapshots of ``infaas.catalog``. Each change to models, variants or
profiles bumps the catalog version and calls the registered listeners, which is how the selector's
in-memory candidate cache (and, scaled out, every other front-end's) learns to refresh.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from infaas.catalog import (
    ApiKeyInfo,
    CascadeDecisionInfo,
    DecisionInfo,
    JobInfo,
    ModelInfo,
    ProfileInfo,
    VariantInfo,
    WorkItemInfo,
)
from infaas.db.models import (
    ApiKey,
    CascadeDecision,
    Decision,
    Job,
    Model,
    ModelStatus,
    Profile,
    Variant,
    VariantStatus,
    WorkItem,
    WorkState,
)
from infaas.db.session import Database
from infaas.errors import Conflict, NotFound
from infaas.tensors import TensorSpec


class DuplicateModel(Conflict):
    """A model with that name already exists."""

    code = "duplicate_model"

    def __init__(self, name: str) -> None:
        super().__init__(f"a model named {name!r} already exists; pick another name")


@dataclass(frozen=True)
class NewModel:
    """The fields of a model being registered."""

    name: str
    task: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int | None
    declared_accuracy: float | None
    max_batch: int
    owner: str
    public: bool
    artifact_key: str
    validation_key: str | None
    size_bytes: int
    framework: str = "onnx"
    status: str = ModelStatus.PENDING
    rewrites: tuple[str, ...] = ()  # what registration changed to serve the upload (``infaas.zipmap``)
    input_shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # ``infaas.input_shapes``


@dataclass(frozen=True)
class NewWorkItem:
    """A piece of background work about to be recorded, with the lease of the process that queues it."""

    id: str
    task: str
    kwargs: dict[str, Any]
    owner: str | None
    lease_expires_at: datetime


def _profile_info(row: Profile) -> ProfileInfo:
    return ProfileInfo(
        batch_size=row.batch_size,
        threads=row.threads,
        load_ms=row.load_ms,
        latency_p50_ms=row.latency_p50_ms,
        latency_p99_ms=row.latency_p99_ms,
        throughput_per_s=row.throughput_per_s,
        memory_mb=row.memory_mb,
        accuracy=row.accuracy,
        accuracy_metric=row.accuracy_metric,
        host=row.host,
        measured_at=row.measured_at,
        fidelity=row.fidelity,
        fidelity_metric=row.fidelity_metric,
        replica_throughput_per_s=tuple(row.replica_throughput or ()),
        batch_invariant=row.batch_invariant is not False,
    )


def _variant_info(row: Variant, model_name: str, input_shapes: Mapping[str, list[int]] | None) -> VariantInfo:
    return VariantInfo(
        id=row.id,
        model_name=model_name,
        name=row.name,
        kind=row.kind,
        precision=row.precision,
        hardware=row.hardware,
        threads=row.threads,
        providers=tuple(row.providers or ()),
        artifact_key=row.artifact_key,
        status=row.status,
        reason=row.reason,
        profiles=tuple(_profile_info(p) for p in row.profiles),
        input_shapes=_shapes(input_shapes),
    )


def _shapes(raw: Mapping[str, list[int]] | None) -> dict[str, tuple[int, ...]]:
    return {name: tuple(shape) for name, shape in (raw or {}).items()}


def _model_info(row: Model, with_variants: bool = True) -> ModelInfo:
    return ModelInfo(
        id=row.id,
        name=row.name,
        task=row.task,
        framework=row.framework,
        inputs=tuple(TensorSpec.from_json(raw) for raw in row.inputs),
        outputs=tuple(TensorSpec.from_json(raw) for raw in row.outputs),
        opset=row.opset,
        declared_accuracy=row.declared_accuracy,
        max_batch=row.max_batch,
        owner=row.owner,
        public=row.public,
        status=row.status,
        status_reason=row.status_reason,
        artifact_key=row.artifact_key,
        validation_key=row.validation_key,
        size_bytes=row.size_bytes,
        created_at=row.created_at,
        variants=tuple(_variant_info(v, row.name, row.input_shapes) for v in row.variants) if with_variants else (),
        rewrites=tuple(row.rewrites or ()),
        input_shapes=_shapes(row.input_shapes),
    )


def _decision_info(row: Decision) -> DecisionInfo:
    return DecisionInfo(
        id=row.id,
        at=row.at,
        level=row.level,
        action=row.action,
        target=row.target,
        inputs=dict(row.inputs or {}),
        reason=row.reason,
        dry_run=row.dry_run,
        outcome=row.outcome,
    )


def _cascade_row(info: CascadeDecisionInfo) -> CascadeDecision:
    return CascadeDecision(
        task=info.task,
        owner=info.owner,
        kind=info.kind,
        cheap=info.cheap,
        expensive=info.expensive,
        kept=info.kept,
        variant=info.variant,
        reason=info.reason,
        numbers=info.numbers,
        at=info.at or datetime.now(UTC),
    )


def _job_info(row: Job) -> JobInfo:
    return JobInfo(
        id=row.id,
        owner=row.owner,
        model_name=row.model_name,
        task=row.task,
        input_key=row.input_key,
        min_accuracy=row.min_accuracy,
        deadline_s=row.deadline_s,
        status=row.status,
        progress=row.progress,
        variant=row.variant,
        result_key=row.result_key,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _work_info(row: WorkItem) -> WorkItemInfo:
    return WorkItemInfo(
        id=row.id,
        task=row.task,
        kwargs=dict(row.kwargs or {}),
        state=row.state,
        attempts=row.attempts,
        owner=row.owner,
        lease_expires_at=row.lease_expires_at,
        error=row.error,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _key_info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        id=row.id,
        tenant=row.tenant,
        is_admin=row.is_admin,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _work_row(work: NewWorkItem) -> WorkItem:
    return WorkItem(
        id=work.id,
        task=work.task,
        kwargs=dict(work.kwargs),
        state=WorkState.PENDING,
        attempts=0,
        owner=work.owner,
        lease_expires_at=work.lease_expires_at,
    )


_MODEL_LOAD = (selectinload(Model.variants).selectinload(Variant.profiles),)


class MetadataStore:
    """CRUD over the catalog, with change notification for caches."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._listeners: list[Callable[[str], None]] = []
        self._version = 0
        self._lock = threading.Lock()

    # -- change notification -------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Local catalog version, bumped on every change made through this store."""
        return self._version

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(model_name)`` after any change to a model, its variants or profiles."""
        self._listeners.append(listener)

    def _changed(self, model_name: str) -> None:
        with self._lock:
            self._version += 1
        for listener in list(self._listeners):
            listener(model_name)

    # -- models --------------------------------------------------------------------------------
    def add_model(self, new: NewModel) -> ModelInfo:
        """Insert a model; raises ``DuplicateModel`` if the name is taken."""
        row = Model(
            **{
                **new.__dict__,
                "inputs": [spec.to_json() for spec in new.inputs],
                "outputs": [spec.to_json() for spec in new.outputs],
                "rewrites": list(new.rewrites),
                "input_shapes": {name: list(shape) for name, shape in new.input_shapes.items()},
            }
        )
        try:
            with self.db.session() as session:
                session.add(row)
                session.flush()
                info = _model_info(row, with_variants=False)
        except IntegrityError as exc:
            raise DuplicateModel(new.name) from exc
        self._changed(new.name)
        return info

    def model_exists(self, name: str) -> bool:
        """Whether a model of that name exists (whoever owns it)."""
        with self.db.session() as session:
            return session.scalar(select(Model.id).where(Model.name == name)) is not None

    def get_model(self, name: str) -> ModelInfo | None:
        """A model with its variants and profiles, or ``None``."""
        with self.db.session() as session:
            row = session.scalar(select(Model).where(Model.name == name).options(*_MODEL_LOAD))
            return _model_info(row) if row else None

    def list_models(self) -> list[ModelInfo]:
        """Every model, with variants and profiles, by name."""
        with self.db.session() as session:
            rows = session.scalars(select(Model).options(*_MODEL_LOAD).order_by(Model.name)).all()
            return [_model_info(r) for r in rows]

    def delete_model(self, name: str) -> bool:
        """Delete a model with its variants and profiles; ``False`` if it did not exist."""
        with self.db.session() as session:
            row = session.scalar(select(Model).where(Model.name == name))
            if row is None:
                return False
            session.delete(row)
        self._changed(name)
        return True

    def complete_registration(self, name: str, work: NewWorkItem | None) -> None:
        """Commit a registration whose files are stored: ``registering`` → ``pending`` and its build recorded.

        One transaction, so a process that dies at any moment leaves either a ``registering`` row (swept
        with its files) or a pending model whose build is recorded (and so resumed). Raises ``NotFound``
        when the row is gone or no longer ``registering`` (deleted meanwhile, or swept as abandoned).
        """
        with self.db.session() as session:
            moved = session.execute(
                update(Model)
                .where(Model.name == name, Model.status == ModelStatus.REGISTERING)
                .values(status=ModelStatus.PENDING)
                .execution_options(synchronize_session=False)
            )
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                raise NotFound(f"model {name!r} was deleted while it was being registered")
            if work is not None:
                session.add(_work_row(work))
        self._changed(name)

    def mark_model_deleting(self, name: str, *, model_id: int | None = None, status: str | None = None) -> bool:
        """Record the intent to delete (``deleting``) before any file goes; ``False`` if there is no such model.

        ``model_id`` and ``status`` narrow it to one row in one state (a registration taking back only
        its own row, the sweep only a row still ``registering``).
        """
        conditions = [Model.name == name]
        if model_id is not None:
            conditions.append(Model.id == model_id)
        if status is not None:
            conditions.append(Model.status == status)
        with self.db.session() as session:
            moved = session.execute(
                update(Model)
                .where(*conditions)
                .values(status=ModelStatus.DELETING, status_reason=None)
                .execution_options(synchronize_session=False)
            )
            found = moved.rowcount == 1  # type: ignore[attr-defined]
        if found:
            self._changed(name)
        return found

    def models_with_status(self, *statuses: str) -> list[ModelInfo]:
        """Models in any of ``statuses`` (without variants): what the recovery sweep looks for."""
        with self.db.session() as session:
            rows = session.scalars(select(Model).where(Model.status.in_(statuses)).order_by(Model.name)).all()
            return [_model_info(r, with_variants=False) for r in rows]

    def model_names(self) -> set[str]:
        """The name of every model row, whatever its status."""
        with self.db.session() as session:
            return set(session.scalars(select(Model.name)))

    def set_model_status(self, name: str, status: str, reason: str | None = None) -> None:
        """Move a model through pending → building → ready/failed; a model being deleted stays so (``NotFound``)."""
        with self.db.session() as session:
            row = self._model_row(session, name)
            if row.status == ModelStatus.DELETING:
                raise NotFound(f"model {name!r} is being deleted")
            row.status = status
            row.status_reason = reason
        self._changed(name)

    @staticmethod
    def _model_row(session: Session, name: str) -> Model:
        row = session.scalar(select(Model).where(Model.name == name))
        if row is None:
            raise NotFound(f"model {name!r} not found")
        return row

    # -- variants and profiles -----------------------------------------------------------------
    def upsert_variant(
        self,
        model_name: str,
        name: str,
        *,
        kind: str,
        precision: str,
        hardware: str,
        threads: int = 0,
        providers: Sequence[str] = (),
        status: str = VariantStatus.PENDING,
        reason: str | None = None,
        artifact_key: str | None = None,
    ) -> VariantInfo:
        """Create or update a variant row (idempotent, so a redone build job is safe)."""
        with self.db.session() as session:
            model = self._model_row(session, model_name)
            row = session.scalar(select(Variant).where(Variant.model_id == model.id, Variant.name == name))
            if row is None:
                row = Variant(model_id=model.id, name=name)
                session.add(row)
            row.kind, row.precision, row.hardware, row.threads = kind, precision, hardware, threads
            row.providers = list(providers)
            row.status, row.reason, row.artifact_key = status, reason, artifact_key
            session.flush()
            session.refresh(row, ["profiles"])
            info = _variant_info(row, model_name, model.input_shapes)
        self._changed(model_name)
        return info

    def set_variant_status(
        self,
        model_name: str,
        name: str,
        status: str,
        reason: str | None = None,
        artifact_key: str | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        """Update a variant's status (and where its artifact is, once built)."""
        with self.db.session() as session:
            row = self._variant_row(session, model_name, name)
            row.status, row.reason = status, reason
            if artifact_key is not None:
                row.artifact_key = artifact_key
            if providers is not None:
                row.providers = list(providers)
        self._changed(model_name)

    @staticmethod
    def _variant_row(session: Session, model_name: str, name: str) -> Variant:
        row = session.scalar(select(Variant).join(Model).where(Model.name == model_name, Variant.name == name))
        if row is None:
            raise NotFound(f"variant {model_name}/{name} not found")
        return row

    def replace_profiles(self, model_name: str, variant_name: str, profiles: Iterable[ProfileInfo]) -> None:
        """Replace a variant's profile rows with a fresh measurement."""
        with self.db.session() as session:
            variant = self._variant_row(session, model_name, variant_name)
            session.execute(delete(Profile).where(Profile.variant_id == variant.id))
            for p in profiles:
                session.add(
                    Profile(
                        variant_id=variant.id,
                        batch_size=p.batch_size,
                        threads=p.threads,
                        load_ms=p.load_ms,
                        latency_p50_ms=p.latency_p50_ms,
                        latency_p99_ms=p.latency_p99_ms,
                        throughput_per_s=p.throughput_per_s,
                        memory_mb=p.memory_mb,
                        accuracy=p.accuracy,
                        accuracy_metric=p.accuracy_metric,
                        fidelity=p.fidelity,
                        fidelity_metric=p.fidelity_metric,
                        replica_throughput=list(p.replica_throughput_per_s) or None,
                        batch_invariant=p.batch_invariant,
                        host=p.host,
                        measured_at=p.measured_at or datetime.now(UTC),
                    )
                )
        self._changed(model_name)

    def ready_variants(self) -> list[tuple[ModelInfo, VariantInfo]]:
        """Every ready, profiled variant with its model: the selector's candidate set."""
        out: list[tuple[ModelInfo, VariantInfo]] = []
        for model in self.list_models():
            if model.status in (ModelStatus.REGISTERING, ModelStatus.DELETING):  # files incomplete or going
                continue
            for variant in model.variants:
                if variant.status == VariantStatus.READY and variant.profiles:
                    out.append((model, variant))
        return out

    # -- decisions -----------------------------------------------------------------------------
    def record_decision(
        self,
        *,
        level: str,
        action: str,
        target: str,
        inputs: dict[str, Any],
        reason: str,
        dry_run: bool = False,
        outcome: str | None = None,
    ) -> DecisionInfo:
        """Keep an autoscaler decision with its inputs and reason."""
        with self.db.session() as session:
            row = Decision(
                level=level,
                action=action,
                target=target,
                inputs=inputs,
                reason=reason,
                dry_run=dry_run,
                outcome=outcome,
            )
            session.add(row)
            session.flush()
            return _decision_info(row)

    def list_decisions(self, limit: int = 100, level: str | None = None) -> list[DecisionInfo]:
        """Newest decisions first."""
        with self.db.session() as session:
            query = select(Decision).order_by(Decision.id.desc()).limit(limit)
            if level:
                query = query.where(Decision.level == level)
            return [_decision_info(r) for r in session.scalars(query)]

    # -- jobs ----------------------------------------------------------------------------------
    # -- cascade decisions (variant_generator.cascades) ----------------------------------------
    def replace_cascade_decisions(self, task: str, owner: str, decisions: Iterable[CascadeDecisionInfo]) -> None:
        """Replace the construction's decisions for ``task`` of ``owner`` (drift rows stay)."""
        with self.db.session() as session:
            session.execute(
                delete(CascadeDecision).where(
                    CascadeDecision.task == task, CascadeDecision.owner == owner, CascadeDecision.kind == "build"
                )
            )
            session.add_all(_cascade_row(d) for d in decisions)

    def add_cascade_decision(self, decision: CascadeDecisionInfo) -> None:
        """Append one decision (a cascade marked stale, or recalibrated)."""
        with self.db.session() as session:
            session.add(_cascade_row(decision))

    def list_cascade_decisions(self, task: str) -> list[CascadeDecisionInfo]:
        """Every recorded decision about ``task``'s cascades: kept first, then by expensive member, newest first."""
        with self.db.session() as session:
            rows = session.scalars(
                select(CascadeDecision)
                .where(CascadeDecision.task == task)
                .order_by(CascadeDecision.kept.desc(), CascadeDecision.expensive, CascadeDecision.id.desc())
            ).all()
            return [
                CascadeDecisionInfo(
                    task=r.task,
                    owner=r.owner,
                    cheap=r.cheap,
                    expensive=r.expensive,
                    kept=r.kept,
                    reason=r.reason,
                    numbers=dict(r.numbers or {}),
                    variant=r.variant,
                    kind=r.kind,
                    at=r.at,
                    id=r.id,
                )
                for r in rows
            ]

    def add_job(self, job: Job) -> JobInfo:
        """Insert a new offline job row."""
        with self.db.session() as session:
            session.add(job)
            session.flush()
            return _job_info(job)

    def get_job(self, job_id: str) -> JobInfo | None:
        """One job or ``None``."""
        with self.db.session() as session:
            row = session.get(Job, job_id)
            return _job_info(row) if row else None

    def list_jobs(self, owner: str | None = None, limit: int = 100) -> list[JobInfo]:
        """Newest jobs first, optionally one owner's."""
        with self.db.session() as session:
            query = select(Job).order_by(Job.created_at.desc()).limit(limit)
            if owner is not None:
                query = query.where(Job.owner == owner)
            return [_job_info(r) for r in session.scalars(query)]

    def jobs_with_status(self, status: str, created_before: datetime) -> list[JobInfo]:
        """Jobs in ``status`` created before ``created_before``, oldest first (the recovery sweep's question)."""
        with self.db.session() as session:
            query = select(Job).where(Job.status == status, Job.created_at < created_before).order_by(Job.created_at)
            return [_job_info(r) for r in session.scalars(query)]

    def update_job(self, job_id: str, **fields: Any) -> JobInfo:
        """Set fields of a job (status, progress, variant, result_key, error)."""
        with self.db.session() as session:
            row = session.get(Job, job_id)
            if row is None:
                raise NotFound(f"job {job_id!r} not found")
            for key, value in fields.items():
                setattr(row, key, value)
            session.flush()
            return _job_info(row)

    # -- durable work (infaas.jobs.durable) -----------------------------------------------------
    def add_work_item(self, work: NewWorkItem) -> WorkItemInfo:
        """Record a piece of background work as ``pending``, leased to the process that queues it."""
        with self.db.session() as session:
            row = _work_row(work)
            session.add(row)
            session.flush()
            return _work_info(row)

    def get_work_item(self, item_id: str) -> WorkItemInfo | None:
        """One work item or ``None``."""
        with self.db.session() as session:
            row = session.get(WorkItem, item_id)
            return _work_info(row) if row else None

    def list_work_items(
        self, *states: str, task: str | None = None, created_since: datetime | None = None
    ) -> list[WorkItemInfo]:
        """Work items in any of ``states`` (every item when none is given), of one task if given, oldest first."""
        with self.db.session() as session:
            query = select(WorkItem).order_by(WorkItem.created_at, WorkItem.id)
            if states:
                query = query.where(WorkItem.state.in_(states))
            if task is not None:
                query = query.where(WorkItem.task == task)
            if created_since is not None:
                query = query.where(WorkItem.created_at >= created_since)
            return [_work_info(r) for r in session.scalars(query)]

    def claim_work_item(
        self, item_id: str, owner: str, lease_expires_at: datetime, now: datetime, max_attempts: int
    ) -> WorkItemInfo | None:
        """Take an item to run it: pending, or running under a lease that expired; ``None`` if not claimable.

        One conditional UPDATE, so of two processes claiming at once (a redelivered Celery message and a
        sweep's resubmission, say) exactly one wins on SQLite and PostgreSQL alike, and a live lease is
        never taken over.
        """
        claimable = or_(
            WorkItem.state == WorkState.PENDING,
            (WorkItem.state == WorkState.RUNNING) & (WorkItem.lease_expires_at < now),
        )
        with self.db.session() as session:
            claimed = session.execute(
                update(WorkItem)
                .where(WorkItem.id == item_id, WorkItem.attempts < max_attempts, claimable)
                .values(
                    state=WorkState.RUNNING,
                    owner=owner,
                    lease_expires_at=lease_expires_at,
                    attempts=WorkItem.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            row = session.get(WorkItem, item_id)
            return _work_info(row) if row else None

    def renew_work_leases(self, owner: str, item_ids: Sequence[str], lease_expires_at: datetime) -> int:
        """Extend the lease of the pending or running items of ``item_ids`` that ``owner`` holds; how many."""
        with self.db.session() as session:
            renewed = session.execute(
                update(WorkItem)
                .where(
                    WorkItem.id.in_(list(item_ids)),
                    WorkItem.owner == owner,
                    WorkItem.state.in_((WorkState.PENDING, WorkState.RUNNING)),
                )
                .values(lease_expires_at=lease_expires_at)
                .execution_options(synchronize_session=False)
            )
            return int(renewed.rowcount)  # type: ignore[attr-defined]

    def expired_work_items(self, now: datetime) -> list[WorkItemInfo]:
        """Pending or running items whose lease expired: their process died (or their message was lost)."""
        with self.db.session() as session:
            query = (
                select(WorkItem)
                .where(
                    WorkItem.state.in_((WorkState.PENDING, WorkState.RUNNING)),
                    or_(WorkItem.lease_expires_at.is_(None), WorkItem.lease_expires_at < now),
                )
                .order_by(WorkItem.created_at, WorkItem.id)
            )
            return [_work_info(r) for r in session.scalars(query)]

    def requeue_expired_work_item(
        self, item_id: str, owner: str | None, lease_expires_at: datetime, now: datetime
    ) -> bool:
        """Put an expired item back to ``pending`` under a fresh lease, if it is still expired (atomic)."""
        return self._move_expired(item_id, now, state=WorkState.PENDING, owner=owner, lease_expires_at=lease_expires_at)

    def fail_expired_work_item(self, item_id: str, error: str, now: datetime) -> bool:
        """Give up on an expired item that used all its attempts (atomic); ``False`` if someone took it."""
        return self._move_expired(item_id, now, state=WorkState.FAILED, owner=None, lease_expires_at=None, error=error)

    def _move_expired(self, item_id: str, now: datetime, **values: Any) -> bool:
        expired = or_(WorkItem.lease_expires_at.is_(None), WorkItem.lease_expires_at < now)
        with self.db.session() as session:
            moved = session.execute(
                update(WorkItem)
                .where(
                    WorkItem.id == item_id,
                    WorkItem.state.in_((WorkState.PENDING, WorkState.RUNNING)),
                    expired,
                )
                .values(**values)
                .execution_options(synchronize_session=False)
            )
            return moved.rowcount == 1  # type: ignore[attr-defined]

    def delete_finished_work_items(self, updated_before: datetime) -> int:
        """Forget ``done`` and ``failed`` items last changed before ``updated_before``; returns how many."""
        with self.db.session() as session:
            deleted = session.execute(
                delete(WorkItem)
                .where(WorkItem.state.in_((WorkState.DONE, WorkState.FAILED)), WorkItem.updated_at < updated_before)
                .execution_options(synchronize_session=False)
            )
            return int(deleted.rowcount)  # type: ignore[attr-defined]

    def release_work_item(
        self,
        item_id: str,
        owner: str,
        state: str,
        *,
        error: str | None = None,
        lease_expires_at: datetime | None = None,
        new_owner: str | None = None,
    ) -> bool:
        """End ``owner``'s run of an item (done, failed, or pending again to retry); ``False`` if it lost the lease."""
        with self.db.session() as session:
            released = session.execute(
                update(WorkItem)
                .where(WorkItem.id == item_id, WorkItem.owner == owner, WorkItem.state == WorkState.RUNNING)
                .values(state=state, error=error, owner=new_owner, lease_expires_at=lease_expires_at)
                .execution_options(synchronize_session=False)
            )
            return released.rowcount == 1  # type: ignore[attr-defined]

    # -- API keys ------------------------------------------------------------------------------
    def add_api_key(self, key_id: str, tenant: str, key_hash: str, is_admin: bool) -> ApiKeyInfo:
        """Store a new key's hash."""
        with self.db.session() as session:
            row = ApiKey(id=key_id, tenant=tenant, key_hash=key_hash, is_admin=is_admin)
            session.add(row)
            session.flush()
            return _key_info(row)

    def find_api_key(self, key_hash: str) -> ApiKeyInfo | None:
        """The key with this hash (revoked or not), or ``None``."""
        with self.db.session() as session:
            row = session.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))
            return _key_info(row) if row else None

    def list_api_keys(self) -> list[ApiKeyInfo]:
        """Every key, oldest first."""
        with self.db.session() as session:
            return [_key_info(r) for r in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]

    def revoke_api_key(self, key_id: str) -> bool:
        """Mark a key revoked; ``False`` if unknown."""
        with self.db.session() as session:
            row = session.get(ApiKey, key_id)
            if row is None:
                return False
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            return True
