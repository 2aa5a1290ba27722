"""Model-less inference (``POST /v1/infer``) and what it observed (``/v1/stats``, ``/v1/queries``).

The body is parsed with orjson and checked by hand rather than through pydantic: tensors arrive as
nested lists and must reach numpy without a per-element validation pass. The route is an adapter: it
authenticates, hands the engine a parse function (``QueryEngine.serve`` decides which thread runs what)
and renders the answer.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Query, Request, Response

from api.deps import PrincipalDep, ServicesDep, can_use, get_principal
from api.request_body import read_body
from api.routes.cascades import requested_cascade
from infaas.engine import Query as EngineQuery
from infaas.errors import BadRequest
from infaas.selector import ON_INFEASIBLE, Requirements, parse_on_infeasible
from infaas.services import Services

router = APIRouter(tags=["inference"])

_INFER_BODY = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "model": {"type": "string", "description": "a registered model name (or give 'task')"},
        "task": {"type": "string", "description": "any model registered for this task may serve"},
        "inputs": {
            "type": "object",
            "additionalProperties": {"description": "a nested list shaped like the model input, batch first"},
        },
        "latency_ms": {"type": "number", "exclusiveMinimum": 0, "description": "latency budget"},
        "min_accuracy": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
            "description": "accuracy on the task's metric: measured on held-out labelled rows, or estimated from "
            "the declared accuracy; a variant whose accuracy is unknown only meets 0",
        },
        "min_fidelity": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
            "description": "agreement (classifiers) or cosine (vector outputs) with the registered model's own "
            "outputs; serves models without labels or a declared accuracy",
        },
        "max_cost": {
            "type": "number",
            "minimum": 0,
            "description": "dollars per query, a hard limit: when no placement is this cheap the answer is a 503",
        },
        "cascade": {
            "description": "serve with a cascade of the model (or task): true for any, or a cascade variant's name "
            "(e.g. 'cascade-cpu-fp32'); 404 'cascade_not_found' when it has none ready. Without it the selector "
            "chooses a cascade like any variant when it is the cheapest meeting the needs",
        },
        "on_infeasible": {
            "type": "string",
            "enum": list(ON_INFEASIBLE),
            "default": ON_INFEASIBLE[0],
            "description": "when no placement meets latency_ms: serve the fastest flagged slo_at_risk "
            "(best_effort), or answer 503 'infeasible' naming the best achievable and run nothing (reject)",
        },
    },
}


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(
        orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY, default=_fallback),
        status_code=status_code,
        media_type="application/json",
    )


def _fallback(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _number(document: dict[str, Any], key: str, low: float, high: float | None = None) -> float | None:
    value = document.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"'{key}' must be a number")
    if value < low or (high is not None and value > high) or (key == "latency_ms" and value == 0):
        bounds = f"in [{low:g}, {high:g}]" if high is not None else f"> {low:g}"
        raise BadRequest(f"'{key}' must be {bounds}")
    return float(value)


def parse_infer_body(body: bytes) -> tuple[Requirements, dict[str, Any], object]:
    """Requirements, raw inputs and the ``cascade`` asked for (``None``: any variant) of a ``/v1/infer`` body;
    ``BadRequest`` on anything malformed."""
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
    requirements = Requirements(
        model=model,
        task=task,
        latency_ms=_number(document, "latency_ms", 0.0),
        min_accuracy=_number(document, "min_accuracy", 0.0, 1.0) or 0.0,
        min_fidelity=_number(document, "min_fidelity", 0.0, 1.0) or 0.0,
        max_cost=_number(document, "max_cost", 0.0),
        on_infeasible=parse_on_infeasible(document.get("on_infeasible"), "on_infeasible"),
    )
    return requirements, inputs, document.get("cascade")


@router.post(
    "/v1/infer",
    openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": _INFER_BODY}}}},
    responses={
        400: {
            "description": "malformed body (including an 'on_infeasible' other than best_effort or reject), "
            "or inputs of the wrong name, dtype or shape"
        },
        404: {"description": "unknown model or task (or one the caller may not use)"},
        422: {
            "description": "no variant reaches min_accuracy (code accuracy_unavailable) or min_fidelity (code "
            "fidelity_unavailable); the message names the best available, or what to register"
        },
        503: {
            "description": "code 'infeasible': no placement costs at most max_cost (always), or none meets latency_ms "
            "with on_infeasible 'reject'; nothing was run, and the message names the best achievable latency (ms), "
            "accuracy and cost ($/query); Retry-After only when queueing is the cause. Other codes: the model has "
            "no ready variant yet, or no worker has room for one (Retry-After)"
        },
    },
)
async def infer(request: Request) -> Response:
    """Serve a query with whichever variant meets its latency, accuracy and cost needs most cheaply."""
    # No FastAPI dependencies (each costs tens of microseconds per request): see api.fast_routes.
    principal = await get_principal(request)
    services: Services = request.app.state.services
    body = await read_body(request)

    def parse() -> tuple[EngineQuery, None]:
        requirements, inputs, cascade = parse_infer_body(body)
        allowed = lambda m: can_use(principal, m)  # noqa: E731 - one closure for the query and the cascade check
        pinned = None
        if cascade is not None:  # a cascade by name (docs/cascades.md)
            pinned = requested_cascade(services, allowed, requirements.model, requirements.task, cascade)
        return EngineQuery(requirements, inputs, allowed, principal.tenant, pinned), None

    answer, _ = await services.engine.serve(parse, len(body))
    return _json({"outputs": answer.outputs, "served_by": dict(vars(answer.served_by))})  # flat: no recursive asdict


@router.get("/v1/stats")
def stats(services: ServicesDep, principal: PrincipalDep, window_s: float = Query(60.0, gt=0, le=3600)) -> Response:
    """Per variant over the window: requests, rate, p50/p99 latency, SLO-miss rate (of the queries that were
    feasible when selected), the share that was infeasible, estimate error. ``rejected``: apart, the queries refused
    as infeasible (nothing ran) per model named (and per task, for admins only: a task spans other tenants' models).

    ``estimates``: this front-end's latency estimates against what its recent queries took, before (raw: profile
    p99 + queueing + load) and after the online correction (``infaas.calibration``): p50/p99 of actual − estimate,
    and of the queries whose estimate was within their budget, the share that met it. Admins also see the
    correction per (variant, worker), and the workers with their loaded instances and rows queued.
    """
    engine = services.engine
    out = []
    for key, s in sorted(engine.live.variant_stats(window_s).items()):
        model = engine.cache.model(key.split("/", 1)[0])
        if model is not None and can_use(principal, model):
            out.append(asdict(s))
    rejected = []
    for target, r in sorted(engine.live.rejection_stats(window_s).items()):
        model = None if target.startswith("task:") else engine.cache.model(target)
        if principal.is_admin or (model is not None and can_use(principal, model)):
            rejected.append(asdict(r))
    estimates = engine.calibration.report()
    if not principal.is_admin:
        estimates.pop("factors")  # names every variant served, whoever's
        estimates.pop("worker_priors")  # names the workers, which only admins see
    content: dict[str, Any] = {"window_s": window_s, "variants": out, "rejected": rejected, "estimates": estimates}
    if engine.cascades is not None:  # live escalation share per cascade and whether drift made it stale
        content["cascades"] = {
            key: status
            for key, status in engine.cascades.snapshot().items()
            if (m := engine.cache.model(key.split("/", 1)[0])) is not None and can_use(principal, m)
        }
    if principal.is_admin:
        snapshot = engine.live.snapshot()
        content["workers"] = [
            asdict(w)
            | {
                "instances": [
                    asdict(i) | {"queue_depth": snapshot.depth(w.id, i.variant_key)}
                    for i in engine.live.instances(w.id)
                ]
            }
            for w in snapshot.workers
        ]
    return _json(content)


@router.get("/v1/queries")
def queries(services: ServicesDep, principal: PrincipalDep, limit: int = Query(100, ge=1, le=1000)) -> Response:
    """Recent queries, newest first: requirements, chosen variant, estimated vs actual latency."""
    engine = services.engine
    records = engine.live.recent_queries(1000 if not principal.is_admin else limit)
    mine = [r for r in records if principal.is_admin or r.tenant == principal.tenant][:limit]
    return _json({"queries": [asdict(r) | {"slo_missed": r.slo_missed} for r in mine]})
