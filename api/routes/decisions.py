"""Autoscaler decisions (``GET /v1/decisions``): admin only, since targets name models and workers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import AdminDep, ServicesDep
from infaas.catalog import DecisionInfo

router = APIRouter(prefix="/v1/decisions", tags=["autoscaler"])


class DecisionOut(BaseModel):
    """One autoscaler decision: what, to what, why, from which inputs, and what came of it."""

    id: int
    at: datetime
    level: str
    action: str
    target: str
    inputs: dict[str, Any]
    reason: str
    dry_run: bool
    outcome: str | None

    @classmethod
    def of(cls, d: DecisionInfo) -> DecisionOut:
        return cls(**d.__dict__)


@router.get("", response_model=list[DecisionOut])
def list_decisions(
    services: ServicesDep,
    _admin: AdminDep,
    limit: int = Query(100, ge=1, le=1000, description="newest first, at most this many"),
    level: str | None = Query(
        None,
        pattern="^(model|vm|leader|pipeline)$",
        description="only this level (leader: leadership changes; pipeline: plans applied and the tuner's)",
    ),
) -> list[DecisionOut]:
    """The newest autoscaler decisions (recorded in dry-run mode too, flagged ``dry_run``)."""
    return [DecisionOut.of(d) for d in services.metadata.list_decisions(limit=limit, level=level)]
