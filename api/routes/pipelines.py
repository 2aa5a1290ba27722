"""Pipelines (``/v1/pipelines``): define, list, show, delete, plan, serve (issue 17).

The body of ``POST /v1/pipelines`` is the definition ``infaas.pipelines.spec`` describes; it is validated
against the models the caller may use before anything is stored. A pipeline is its owner's (and admins').
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Body, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from api.deps import PrincipalDep, ServicesDep, can_use
from api.request_body import read_body
from api.schemas import DeletedOut, ErrorOut
from infaas.auth import model_namespace
from infaas.errors import BadRequest
from infaas.pipelines.registry import plan_pipeline, register_pipeline, store_of, visible_pipeline
from infaas.pipelines.serving import serve_pipeline
from infaas.pipelines.spec import parse_spec
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
        422: {
            "model": ErrorOut,
            "description": "the objective is below the service time (code objective_below_service_time), or a stage "
            "has no ready profiled variant meeting its floor yet (code nothing_to_plan)",
        },
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
    """Validate and store a pipeline, with its scale factors measured on its stages' validation rows; a tenant's
    is named ``<tenant>.<name>`` (as its models are)."""
    info, _spec = await run_in_threadpool(
        register_pipeline, services, body, principal.tenant, lambda m: can_use(principal, m), model_namespace(principal)
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


@router.post("/{name}/plan")
async def make_plan(name: str, services: ServicesDep, principal: PrincipalDep) -> dict[str, Any]:
    """Plan the pipeline on its arrivals with the current profiles (InferLine's greedy planner) and store the
    plan: per stage variant, batch, replicas, utilisation, cost per hour; the simulated P99."""
    info = visible_pipeline(services, name, principal.tenant, principal.is_admin)
    planned = await run_in_threadpool(plan_pipeline, services, info, lambda m: can_use(principal, m))
    return _out(planned)


@router.post("/{name}/infer")
async def infer(name: str, request: Request, services: ServicesDep, principal: PrincipalDep) -> Response:
    """Run one query through the DAG: ``{"inputs": {name: nested list}}`` -> the sink stages' outputs (with the
    rows that reached each) and, per stage, who served it and how long it took."""
    info = visible_pipeline(services, name, principal.tenant, principal.is_admin)
    body = await read_body(request)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), dict):
        raise BadRequest('the body must be {"inputs": {name: nested list}}')
    spec = parse_spec(info.spec)
    answer = await run_in_threadpool(
        serve_pipeline,
        services.engine,
        spec,
        info.plan,
        document["inputs"],
        lambda m: can_use(principal, m),
        principal.tenant,
    )
    content = {
        "pipeline": name,
        "outputs": answer.outputs,
        "stages": answer.stages,
        "rows": answer.rows,
        "latency_ms": answer.latency_ms,
    }
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
