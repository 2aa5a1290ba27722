"""Pipelines (``/v1/pipelines``): define, list, show, delete, plan, serve (issue 17).

The body of ``POST /v1/pipelines`` is the definition ``infaas.pipelines.spec`` describes; it is validated
against the models the caller may use before anything is stored. A pipeline is its owner's (and admins').
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Body, Request, Response, status
from fastapi.concurrency import run_in_threadpool

from api.deps import PrincipalDep, ServicesDep, can_use
from api.request_body import read_body
from api.schemas import DeletedOut, ErrorOut
from autoscaler.pipeline_tuner import LEVEL as PIPELINE_LEVEL
from infaas.auth import Principal, model_namespace
from infaas.catalog import ModelInfo
from infaas.errors import BadRequest
from infaas.oip import InferRequest, tensor_metadata
from infaas.pipelines.registry import plan_pipeline, register_pipeline, store_of, visible_pipeline
from infaas.pipelines.serving import PipelineAnswer, serve_pipeline
from infaas.pipelines.spec import PipelineSpec, parse_spec
from infaas.pipelines.store import PipelineInfo, UnknownPipeline
from infaas.services import Services

DECISIONS_SHOWN = 20

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
    """One pipeline: definition, scale factors, plan, and the newest autoscaler decisions on its stages (the plan
    applied, the tuner's resizing) with their inputs."""
    info = visible_pipeline(services, name, principal.tenant, principal.is_admin)
    decisions = services.metadata.list_decisions(limit=500, level=PIPELINE_LEVEL)
    recent = [d for d in decisions if d.target.startswith(f"{info.name}/")][:DECISIONS_SHOWN]
    return _out(info) | {
        "decisions": [
            {
                "at": d.at.isoformat(),
                "action": d.action,
                "target": d.target,
                "reason": d.reason,
                "inputs": d.inputs,
                "outcome": d.outcome,
                "dry_run": d.dry_run,
            }
            for d in recent
        ]
    }


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
    arrived_at = time.time()  # the tuner's arrival, before any wait for the body or a thread
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
        arrived_at,
    )
    content = {
        "pipeline": name,
        "outputs": answer.outputs,
        "stages": answer.stages,
        "rows": answer.rows,
        "latency_ms": answer.latency_ms,
    }
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


# -- a pipeline called by name as an OIP model (``/v2/models/{name}``, when no model has that name) ---------------


def oip_pipeline(services: Services, principal: Principal, name: str) -> PipelineInfo | None:
    """The pipeline an OIP model name means: one the caller may see, when no model the caller may use is so named
    (a model wins: existing clients of a model keep getting the model)."""
    model = services.engine.cache.model(name)
    if model is not None and can_use(principal, model):
        return None
    try:
        return visible_pipeline(services, name, principal.tenant, principal.is_admin)
    except UnknownPipeline:
        return None


def _sink_models(services: Services, spec: PipelineSpec, plan: dict[str, Any] | None) -> dict[str, ModelInfo | None]:
    planned = (plan or {}).get("stages", {})
    out: dict[str, ModelInfo | None] = {}
    cache = services.engine.cache
    for sink in spec.sinks():
        stage = spec.stage(sink)
        name = stage.model or (planned.get(sink) or {}).get("model")
        if name is not None:
            out[sink] = cache.model(name)
        else:
            of_task = cache.models_for_task(stage.task or "")
            out[sink] = of_task[0] if of_task else None
    return out


def oip_metadata(services: Services, info: PipelineInfo) -> dict[str, Any]:
    """OIP model metadata of a pipeline: its inputs; per sink stage ``<stage>.<output>`` and ``<stage>.rows`` (the
    input rows that reached the sink: a conditional edge may drop some, so the sink's rows are not the input's)."""
    spec = parse_spec(info.spec)
    outputs: list[dict[str, Any]] = []
    for sink, model in _sink_models(services, spec, info.plan).items():
        outputs.append({"name": f"{sink}.rows", "datatype": "INT64", "shape": [-1]})
        for tensor in model.outputs if model is not None else ():
            outputs.append(tensor_metadata(tensor) | {"name": f"{sink}.{tensor.name}"})
    return {
        "name": info.name,
        "versions": ["1"],
        "platform": "infaas_pipeline",
        "inputs": [tensor_metadata(t) for t in spec.inputs],
        "outputs": outputs,
    }


def oip_ready(services: Services, info: PipelineInfo) -> bool:
    """Every stage has a ready variant (of its model, or of one of its task's models)."""
    cache = services.engine.cache
    spec = parse_spec(info.spec)
    for stage in spec.stages:
        names = [stage.model] if stage.model else [m.name for m in cache.models_for_task(stage.task or "")]
        if not any(cache.for_model(n) for n in names):
            return False
    return True


def oip_infer(
    services: Services, principal: Principal, info: PipelineInfo, request: InferRequest
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run an OIP request through the pipeline (blocking): the flat outputs ``oip_metadata`` names, and response
    parameters per stage (``<stage>.variant``, ``.worker``, ``.batch``, ``.ms``, ``.rows``) and ``latency_ms``."""
    answer: PipelineAnswer = serve_pipeline(
        services.engine,
        parse_spec(info.spec),
        info.plan,
        request.inputs,
        lambda m: can_use(principal, m),
        principal.tenant,
    )
    outputs: dict[str, Any] = {}
    for sink, tensors in answer.outputs.items():
        for name, value in tensors.items():
            outputs[f"{sink}.{name}"] = np.asarray(value, dtype=np.int64 if name == "rows" else None)
    parameters: dict[str, Any] = {"latency_ms": round(answer.latency_ms, 3)}
    for stage, report in answer.stages.items():
        parameters[f"{stage}.rows"] = report["rows_reached"]
        if "variant" in report:
            parameters[f"{stage}.variant"] = f"{report['model']}/{report['variant']}"
            parameters[f"{stage}.worker"] = report["worker"]
            parameters[f"{stage}.batch"] = report["batch"]
            parameters[f"{stage}.ms"] = round(report["stage_ms"], 3)
    return outputs, parameters
