"""Pipelines (``/v1/pipelines``): define, list, show, delete (issue 17).

The body of ``POST /v1/pipelines`` is the definition ``infaas.pipelines.spec`` describes; it is validated
against the models the caller may use before anything is stored. A pipeline is its owner's (and admins').
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, status
from fastapi.concurrency import run_in_threadpool

from api.deps import PrincipalDep, ServicesDep, can_use
from api.schemas import DeletedOut, ErrorOut
from infaas.pipelines.registry import register_pipeline, store_of, visible_pipeline
from infaas.pipelines.store import PipelineInfo

router = APIRouter(
    prefix="/v1/pipelines",
    tags=["pipelines"],
    responses={
        400: {
            "model": ErrorOut,
            "description": "invalid pipeline (code invalid_pipeline): the message says what to fix",
        },
        404: {"model": ErrorOut, "description": "no such pipeline (or not the caller's)"},
        409: {"model": ErrorOut, "description": "a pipeline of that name already exists"},
    },
)


def _out(info: PipelineInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "owner": info.owner,
        "spec": info.spec,
        "models": list(info.models),
        "scale_factors": info.scale_factors,
        "plan": info.plan,
        "created_at": info.created_at.isoformat(),
    }


@router.post("", status_code=status.HTTP_201_CREATED)
async def define(
    services: ServicesDep,
    principal: PrincipalDep,
    body: dict[str, Any] = Body(..., description="name, p99_ms, inputs, stages, edges, arrivals"),
) -> dict[str, Any]:
    """Validate and store a pipeline, with its scale factors measured on its stages' validation rows."""
    info, _spec = await run_in_threadpool(
        register_pipeline, services, body, principal.tenant, lambda m: can_use(principal, m)
    )
    return _out(info)


@router.get("")
def list_pipelines(services: ServicesDep, principal: PrincipalDep) -> list[dict[str, Any]]:
    """The caller's pipelines (every pipeline for an admin)."""
    return [_out(p) for p in store_of(services).list() if principal.is_admin or p.owner == principal.tenant]


@router.get("/{name}")
def describe(name: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """One pipeline: definition, scale factors, plan."""
    return _out(visible_pipeline(services, name, principal.tenant, principal.is_admin))


@router.delete("/{name}", response_model=DeletedOut)
def delete(name: str, services: ServicesDep, principal: PrincipalDep) -> DeletedOut:
    """Delete a pipeline (its models stay)."""
    visible_pipeline(services, name, principal.tenant, principal.is_admin)
    store_of(services).delete(name)
    return DeletedOut(deleted=name)
