"""Open Inference Protocol (KServe v2) REST, so Triton/KServe clients work unmodified.

A v2 model name is an infaas model; the variant is chosen per query from the flat request
``parameters`` ``slo_latency_ms`` / ``slo_min_accuracy`` / ``slo_min_fidelity`` / ``slo_max_cost`` /
``slo_on_infeasible`` (``"best_effort"`` or ``"reject"``) and reported back in the response ``parameters``. Errors are
``{"error": "..."}`` with Triton's statuses: 400 bad request (including an unreachable accuracy floor),
404 unknown model, 503 not ready or infeasible. An infeasible query (``slo_max_cost`` unmeetable, or
``slo_latency_ms`` with ``slo_on_infeasible: "reject"``) is a 503 as on ``/v1``: Triton answers its
UNAVAILABLE status with 503, KServe's ``ModelNotReady`` is 503, and INFaaS answered such queries with
UNAVAILABLE.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.types import Scope

from api.deps import PrincipalDep, ServicesDep, can_use, get_principal
from api.request_body import read_body
from api.routes.pipelines import oip_infer, oip_metadata, oip_pipeline, oip_ready
from infaas import __version__, offload
from infaas.auth import Principal
from infaas.catalog import ModelInfo
from infaas.engine import Query
from infaas.errors import BadRequest, NotFound
from infaas.oip import HEADER, InferRequest, OipError, decode_request, encode_response, tensor_metadata
from infaas.selector import Requirements, parse_on_infeasible
from infaas.services import Services

router = APIRouter(prefix="/v2", tags=["open inference protocol"])
VERSION = "1"


def _ok(content: Any) -> Response:
    return Response(orjson.dumps(content), media_type="application/json")


def _model(services: Services, principal: Principal, name: str, version: str | None) -> ModelInfo:
    """The model the path names, if the caller may use it; ``NotFound`` otherwise."""
    model = services.engine.cache.model(name)
    if model is None or not can_use(principal, model) or version not in (None, "", VERSION):
        suffix = f" version {version!r}" if version not in (None, "", VERSION) else ""
        raise NotFound(f"unknown model {name!r}{suffix}")
    return model


@router.get("/health/live")
def live() -> Response:
    """The process is up."""
    return _ok({"live": True})


@router.get("/health/ready", responses={503: {"description": "no worker is available to run queries"}})
def ready(services: ServicesDep) -> Response:
    """Ready when the query engine has a worker to run on."""
    is_ready = bool(services.live.workers())
    return Response(
        orjson.dumps({"ready": is_ready}), status_code=200 if is_ready else 503, media_type="application/json"
    )


@router.get("")
def server_metadata(_: PrincipalDep) -> Response:
    """Server name, version and protocol extensions."""
    return _ok({"name": "infaas", "version": __version__, "extensions": ["binary_tensor_data"]})


_MODEL_ERRORS: dict[int | str, dict] = {
    404: {"description": "unknown model (or not visible to this key)", "content": {"application/json": {}}},
}
_INFER_ERRORS: dict[int | str, dict] = {
    **_MODEL_ERRORS,
    400: {
        "description": "bad request: inputs, binary header, a malformed hint (slo_on_infeasible other than "
        "best_effort or reject, an slo_min_accuracy or slo_min_fidelity outside [0, 1]) or an unreachable "
        "slo_min_accuracy or slo_min_fidelity",
        "content": {"application/json": {}},
    },
    503: {
        "description": "model not ready, or infeasible: no placement costs at most slo_max_cost (always), or none "
        "meets slo_latency_ms with slo_on_infeasible 'reject'; nothing was run and the error names the best "
        "achievable latency (ms), accuracy and cost ($/query); Retry-After only when queueing is the cause",
        "content": {"application/json": {}},
    },
}


@router.get("/models/{name}", responses=_MODEL_ERRORS)
@router.get("/models/{name}/versions/{version}", responses=_MODEL_ERRORS)
def model_metadata(name: str, services: ServicesDep, principal: PrincipalDep, version: str | None = None) -> Response:
    """A model's tensors as OIP metadata (``-1`` marks a dynamic dimension); a pipeline's when no model has the
    name (``api.routes.pipelines.oip_metadata``)."""
    if version in (None, "", VERSION) and (pipeline := oip_pipeline(services, principal, name)) is not None:
        return _ok(oip_metadata(services, pipeline))
    model = _model(services, principal, name, version)
    return _ok(
        {
            "name": model.name,
            "versions": [VERSION],
            "platform": "onnxruntime_onnx",
            "inputs": [tensor_metadata(t) for t in model.inputs],
            "outputs": [tensor_metadata(t) for t in model.outputs],
        }
    )


@router.get("/models/{name}/ready", responses=_MODEL_ERRORS)
@router.get("/models/{name}/versions/{version}/ready", responses=_MODEL_ERRORS)
def model_ready(name: str, services: ServicesDep, principal: PrincipalDep, version: str | None = None) -> Response:
    """200 when the model has a ready variant (a pipeline: every stage), 503 while it is still being built."""
    if version in (None, "", VERSION) and (pipeline := oip_pipeline(services, principal, name)) is not None:
        is_ready = oip_ready(services, pipeline)
    else:
        _model(services, principal, name, version)
        is_ready = bool(services.engine.cache.for_model(name))
    return Response(
        orjson.dumps({"name": name, "ready": is_ready}),
        status_code=200 if is_ready else 503,
        media_type="application/json",
    )


def _slo(parameters: dict[str, Any], key: str, high: float | None = None) -> float | None:
    value = parameters.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:  # NaN fails >= too
        raise OipError(f"parameter {key!r} must be a non-negative number")
    if high is not None and value > high:
        raise OipError(f"parameter {key!r} must be in [0, {high:g}]")
    return float(value)


# Large bodies are decoded in the thread pool (``infaas.offload``), one at a time: a decode holds the GIL
# throughout (orjson, then the list to an array), so two at once take no less time, and each extra thread waiting
# for the GIL forces a switch every switch interval. ResNet-18's 296 KB bodies at 16 connections on 2 cores, 5
# paired rounds beside other sessions' work (load 2-8): 215 / 195 / 186 / 197 / 252 req/s without the lock, 230 /
# 213 / 191 / 192 / 252 with it, +3% on average; server CPU per request lower with it in 4 of the 5 pairs.
_LARGE_DECODES = threading.Lock()
_HEADER_NAME = HEADER.lower().encode("latin-1")


def _body_headers(scope: Scope) -> tuple[str, str | None]:
    """The request's Content-Encoding (``identity`` when absent) and binary header length, each at its first
    occurrence as ``Headers.get`` reads it, in one pass: two ``get`` calls cost every query 1.1 us, the
    pass 0.3 us (measured)."""
    encoding = length = None
    for name, value in scope["headers"]:
        if name == b"content-encoding":
            encoding = value if encoding is None else encoding
        elif name == _HEADER_NAME:
            length = value if length is None else length
    return (
        "identity" if encoding is None else encoding.decode("latin-1"),
        None if length is None else length.decode("latin-1"),
    )


# The inference routes take their parameters from the request rather than as FastAPI parameters and
# dependencies (whose per-request cost exceeds the selection itself), so that ``api.fast_routes`` can call
# them directly; the parameters are documented here instead.
_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "title": "Name"}}
_VERSION_IN_PATH = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "title": "Version"}}
_VERSION_IN_QUERY = {
    "name": "version",
    "in": "query",
    "required": False,
    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Version"},
}


@router.post("/models/{name}/infer", openapi_extra={"parameters": [_NAME, _VERSION_IN_QUERY]}, responses=_INFER_ERRORS)
@router.post(
    "/models/{name}/versions/{version}/infer",
    openapi_extra={"parameters": [_NAME, _VERSION_IN_PATH]},
    responses=_INFER_ERRORS,
)
async def model_infer(request: Request) -> Response:
    """Run a query; JSON or binary tensors in, JSON or binary tensors out, as the client asks."""
    path_params = request.path_params
    name: str = path_params["name"]
    if "version" in path_params:
        version: str | None = path_params["version"]
    else:  # parsing an empty query string still costs a QueryParams: most requests have none
        version = request.query_params.get("version") if request.scope["query_string"] else None
    principal = await get_principal(request)
    services: Services = request.app.state.services
    pipeline = None
    try:
        _model(services, principal, name, version)
    except NotFound:
        if version in (None, "", VERSION):
            pipeline = oip_pipeline(services, principal, name)  # a pipeline called by name as a model
        if pipeline is None:
            raise
    encoding, binary_header = _body_headers(request.scope)
    if encoding != "identity":
        raise BadRequest("compressed request bodies are not supported")
    body = await read_body(request)
    if pipeline is not None:
        decoded = decode_request(body, binary_header)
        outputs, parameters = await run_in_threadpool(oip_infer, services, principal, pipeline, decoded)
        return _encoded(decoded, name, outputs, parameters)

    def parse() -> tuple[Query, InferRequest]:
        if offload.body_is_small(len(body)):
            decoded = decode_request(body, binary_header)
        else:
            with _LARGE_DECODES:
                decoded = decode_request(body, binary_header)
        requirements = Requirements(
            model=name,
            latency_ms=_slo(decoded.parameters, "slo_latency_ms") or None,
            min_accuracy=_slo(decoded.parameters, "slo_min_accuracy", 1.0) or 0.0,
            min_fidelity=_slo(decoded.parameters, "slo_min_fidelity", 1.0) or 0.0,
            max_cost=_slo(decoded.parameters, "slo_max_cost"),
            on_infeasible=parse_on_infeasible(decoded.parameters.get("slo_on_infeasible"), "slo_on_infeasible"),
        )
        return Query(requirements, decoded.inputs, lambda m: can_use(principal, m), principal.tenant), decoded

    answer, decoded = await services.engine.serve(parse, len(body), "oip")
    served = answer.served_by
    parameters = {
        "variant": f"{served.model}/{served.variant}",
        "worker": served.worker,
        "batch": served.batch,
        "estimated_ms": round(served.estimated_ms, 3),
        "actual_ms": round(served.actual_ms, 3),
        "queue_ms": round(served.queue_ms, 3),
        "cost": served.cost,
        "slo_at_risk": served.slo_at_risk,
        "reason": served.reason,
    }
    return _encoded(decoded, name, answer.outputs, parameters)


def _encoded(decoded: InferRequest, name: str, outputs: Any, parameters: dict[str, Any]) -> Response:
    body, header_length = encode_response(decoded, name, outputs, parameters, VERSION)
    headers = {HEADER: str(header_length)} if header_length is not None else None
    media_type = "application/octet-stream" if header_length is not None else "application/json"
    return Response(body, headers=headers, media_type=media_type)
