"""Approximate top-K queries (``POST /v1/topk``): the k best of N rows by one output column (issue 16 point 5).

The route parses and renders; ``infaas.topk_serving`` chooses the (cheap, expensive) pair and its ratio and runs
both stages through the query engine. One ``TopKService`` per app keeps the choices it made.
"""

from __future__ import annotations

import threading
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import PrincipalDep, ServicesDep, can_use
from api.request_body import read_body
from infaas.errors import BadRequest
from infaas.services import Services
from infaas.topk import DEFAULT_MIN_PRECISION
from infaas.topk_serving import TopKRequest, TopKService

router = APIRouter(tags=["inference"])
_STARTING = threading.Lock()

_TOPK_BODY = {
    "type": "object",
    "required": ["inputs", "k"],
    "properties": {
        "model": {"type": "string", "description": "a registered model name (or give 'task')"},
        "task": {"type": "string", "description": "any model registered for this task may serve"},
        "inputs": {
            "type": "object",
            "additionalProperties": {"description": "a nested list shaped like the model input: N rows, batch first"},
        },
        "k": {"type": "integer", "minimum": 1, "description": "how many of the N rows to return (at most N)"},
        "column": {
            "type": "integer",
            "minimum": 0,
            "description": "the column of the model's score output to rank by (a class); may be left out for a "
            "one-column score",
        },
        "min_precision": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1,
            "default": DEFAULT_MIN_PRECISION,
            "description": "the share of the most accurate variant's own top k the answer must hold (in 99 of 100 "
            "bootstrap resamples of held-out rows)",
        },
        "latency_ms": {"type": "number", "exclusiveMinimum": 0, "description": "latency budget of the whole query"},
    },
}


def parse_topk_body(body: bytes) -> TopKRequest:
    """A ``/v1/topk`` body as a request; ``BadRequest`` naming what to fix."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest("the body must be a JSON object")
    model, task = document.get("model"), document.get("task")
    if (model is None) == (task is None) or not isinstance(model or task, str):
        raise BadRequest("give exactly one of 'model' or 'task' (a string)")
    inputs = document.get("inputs")
    if not isinstance(inputs, dict) or not inputs:
        raise BadRequest("'inputs' must be an object of name → nested list")
    if "k" not in document:
        raise BadRequest("'k' is missing: how many of the rows to return")
    min_precision = document.get("min_precision", DEFAULT_MIN_PRECISION)
    if isinstance(min_precision, bool) or not isinstance(min_precision, int | float):
        raise BadRequest("'min_precision' must be a number in (0, 1]")
    latency_ms = document.get("latency_ms")
    if latency_ms is not None and (isinstance(latency_ms, bool) or not isinstance(latency_ms, int | float)):
        raise BadRequest("'latency_ms' must be a number > 0")
    if latency_ms is not None and latency_ms <= 0:
        raise BadRequest("'latency_ms' must be > 0")
    return TopKRequest(
        inputs=inputs,
        k=document["k"],
        column=document.get("column"),
        model=model,
        task=task,
        min_precision=float(min_precision),
        latency_ms=None if latency_ms is None else float(latency_ms),
    )


def topk_service(app: FastAPI, services: Services) -> TopKService:
    """The app's top-K service, made on first use."""
    service = getattr(app.state, "topk", None)
    if service is None:
        with _STARTING:
            service = getattr(app.state, "topk", None)
            if service is None:
                settings = services.settings
                service = TopKService(
                    services.engine, services.store, settings.max_batch_per_query, settings.max_inputs_per_request
                )
                app.state.topk = service
    return service


@router.post(
    "/v1/topk",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _TOPK_BODY}}}},
    responses={
        400: {
            "description": "malformed body; k <= 0 or k > N; 'column' out of range (code column_out_of_range) or "
            "missing for a multi-column output; inputs of the wrong name, dtype or shape"
        },
        404: {"description": "unknown model or task (or one the caller may not use)"},
        422: {
            "description": "code no_score_to_rank: the model has no per-row score (a float [N] or [N, C] output; "
            "C > 1 only for classification tasks)"
        },
        503: {"description": "the model has no ready variant yet, or no worker has room for one"},
    },
)
async def topk(request: Request, services: ServicesDep, principal: PrincipalDep) -> Response:
    """The k best of the input rows by one output column: a cheap variant scores every row, the most accurate
    re-scores the cheap one's top r*k (r chosen on held-out rows), or every row when no pair is precise enough
    for less. The answer gives the indices (best first), the expensive variant's scores, r, the estimated
    precision and both variants."""
    body = await read_body(request)
    parsed = parse_topk_body(body)
    service = topk_service(request.app, services)
    answer = await run_in_threadpool(service.serve, parsed, lambda m: can_use(principal, m), principal.tenant)
    content: dict[str, Any] = answer.to_json()
    return Response(orjson.dumps(content), media_type="application/json")
