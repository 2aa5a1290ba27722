"""Pipelines in the metadata database (table ``pipelines``, migration 0006): add, read, list, plan, delete.

Kept apart from ``infaas.metadata`` (the models' store) because nothing on the query path reads it: a pipeline is
read when it is served, planned or shown, and the one cross-check -- a model deletion refused while a pipeline
uses the model -- asks ``users_of``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from infaas.db.models import Pipeline
from infaas.db.session import Database
from infaas.errors import Conflict, NotFound


class DuplicatePipeline(Conflict):
    """A pipeline with that name already exists."""

    code = "duplicate_pipeline"


class ModelInUse(Conflict):
    """A model that a pipeline's stage names was asked to be deleted."""

    code = "model_in_use"


class UnknownPipeline(NotFound):
    """No such pipeline, or one the caller may not see."""

    code = "unknown_pipeline"


@dataclass(frozen=True)
class PipelineInfo:
    """A stored pipeline: its definition as given, the models it names, its scale factors and its plan."""

    name: str
    owner: str
    spec: dict[str, Any]
    models: tuple[str, ...]
    scale_factors: dict[str, float]
    plan: dict[str, Any] | None
    created_at: datetime


def _info(row: Pipeline) -> PipelineInfo:
    return PipelineInfo(
        name=row.name,
        owner=row.owner,
        spec=dict(row.spec),
        models=tuple(row.models or ()),
        scale_factors=dict(row.scale_factors or {}),
        plan=dict(row.plan) if row.plan is not None else None,
        created_at=row.created_at,
    )


class PipelineStore:
    """CRUD over the ``pipelines`` table."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def add(
        self, name: str, owner: str, spec: dict[str, Any], models: list[str], scale: dict[str, float]
    ) -> PipelineInfo:
        """Insert a validated pipeline; ``DuplicatePipeline`` if the name is taken."""
        row = Pipeline(name=name, owner=owner, spec=spec, models=models, scale_factors=scale, plan=None)
        try:
            with self.db.session() as session:
                session.add(row)
                session.flush()
                return _info(row)
        except IntegrityError as exc:
            raise DuplicatePipeline(
                f"a pipeline named {name!r} already exists; delete it or pick another name"
            ) from exc

    def get(self, name: str) -> PipelineInfo | None:
        with self.db.session() as session:
            row = session.scalar(select(Pipeline).where(Pipeline.name == name))
            return _info(row) if row is not None else None

    def list(self) -> list[PipelineInfo]:
        with self.db.session() as session:
            return [_info(r) for r in session.scalars(select(Pipeline).order_by(Pipeline.name))]

    def set_plan(self, name: str, plan: dict[str, Any]) -> PipelineInfo:
        with self.db.session() as session:
            row = session.scalar(select(Pipeline).where(Pipeline.name == name))
            if row is None:
                raise UnknownPipeline(f"pipeline {name!r} not found")
            row.plan = plan
            session.flush()
            return _info(row)

    def delete(self, name: str) -> bool:
        with self.db.session() as session:
            row = session.scalar(select(Pipeline).where(Pipeline.name == name))
            if row is None:
                return False
            session.delete(row)
            return True

    def users_of(self, model: str) -> list[str]:
        """Names of the pipelines whose stages name ``model`` (read in Python: JSON containment is not portable
        between SQLite and PostgreSQL, and pipelines are few)."""
        with self.db.session() as session:
            rows = session.execute(select(Pipeline.name, Pipeline.models).order_by(Pipeline.name)).all()
        return [name for name, models in rows if model in (models or ())]

    def refuse_if_used(self, model: str) -> None:
        """``ModelInUse`` (409) naming the pipelines whose stages name ``model``."""
        users = self.users_of(model)
        if users:
            raise ModelInUse(f"model {model!r} is a stage of pipeline(s) {users}: delete or change them first")


__all__ = ["DuplicatePipeline", "ModelInUse", "PipelineInfo", "PipelineStore", "UnknownPipeline"]
