"""The admin console (``/console``): server-rendered pages over the catalog, live state and autoscaler log.

Pages read the same services the REST API uses (``services.metadata`` for models and decisions, the
query engine's live state for workers and queries), so the console never has its own copy of
anything. Every page and action depends on ``console_session`` (admin only); actions also check the
form's CSRF token and ask for confirmation (a JS ``confirm()``, or a confirm page without JS).
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, File, Form, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from api.console import charts
from api.console.auth import (
    ConsoleSession,
    ConsoleSessionDep,
    LoginRequired,
    check_csrf,
    check_origin,
    clear_session_cookie,
    issue_cookie,
    set_session_cookie,
)
from api.console.throttle import SignInThrottle
from api.deps import ServicesDep
from api.routes.cascades import cascades_of
from api.uploads import save_upload
from autoscaler.pipeline_tuner import LEVEL as PIPELINE_LEVEL
from infaas.accuracy import accuracy_of, fidelity_of
from infaas.catalog import ModelInfo
from infaas.errors import InfaasError, NotFound
from infaas.live_state import LiveState
from infaas.pipelines.store import PipelineStore
from infaas.registration import NAME_PATTERN, RegistrationRequest, delete_model, register_model
from infaas.scratch import make_scratch
from infaas.services import Services

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
templates = Jinja2Templates(directory=str(HERE / "templates"))

# Scripts and styles come only from /console/static: an injected <script> could not run.
_HTML_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
_STATIC_NAME = re.compile(r"[a-z0-9_-]+\.(css|js|txt)")  # fullmatch: "$" would let a trailing newline in
LIVE_WINDOW_S = 10.0


def _safe_next(target: str | None) -> str:
    """Only console paths on this host: never an open redirect."""
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


def _login_page(request: Request, error: str | None, status_code: int, next_path: str | None = None) -> Response:
    context = {"error": error, "next": _safe_next(next_path or request.url.path), "csrf": "", "nav": None}
    return templates.TemplateResponse(request, "login.html", context, status_code=status_code)


def sign_in_answer(request: Request, refusal: LoginRequired) -> Response:
    """What a browser gets for a console page or form without a valid session: the sign-in page, as a 401.

    Used by the console's routes and by admission (``api.admission``), which refuses console forms from
    their headers before the body is read.
    """
    response = _login_page(request, None, refusal.status)
    response.headers.update(refusal.headers)
    response.headers.update(_HTML_HEADERS)
    return response


class ConsoleRoute(APIRoute):
    """Console routes answer 401 with a sign-in page (not JSON) and carry strict security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler: auth failures of page routes become the sign-in page."""
        handler = super().get_route_handler()

        async def console_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except LoginRequired as exc:
                if request.url.path.startswith("/console/api/"):
                    raise
                response = sign_in_answer(request, exc)
            if response.headers.get("content-type", "").startswith("text/html"):
                response.headers.update(_HTML_HEADERS)
            return response

        return console_handler


router = APIRouter(prefix="/console", tags=["console"], route_class=ConsoleRoute, include_in_schema=False)


def _render(
    request: Request, session: ConsoleSession, name: str, context: dict[str, Any], status_code: int = 200
) -> Response:
    """A page with the session's CSRF token; sends the cookie when the session is new."""
    response = templates.TemplateResponse(
        request,
        name,
        {**context, "csrf": session.csrf_token, "principal": session.principal},
        status_code=status_code,
    )
    if session.new_cookie:
        set_session_cookie(request, response, session.new_cookie)
    return response


def _live(services: Services) -> LiveState:
    return services.live


def _model_rates(services: Services) -> dict[str, float]:
    rates: dict[str, float] = {}
    for key, stats in _live(services).variant_stats(LIVE_WINDOW_S).items():
        model = key.split("/", 1)[0]
        rates[model] = rates.get(model, 0.0) + stats.rate_per_s
    return rates


def _counts(model: ModelInfo) -> dict[str, int]:
    counts = {"ready": 0, "failed": 0, "skipped": 0, "building": 0, "pending": 0}
    for variant in model.variants:
        counts[variant.status] = counts.get(variant.status, 0) + 1
    return counts


def _model_or_404(services: Services, name: str) -> ModelInfo:
    model = services.metadata.get_model(name)
    if model is None:
        raise NotFound(f"model {name!r} not found")
    return model


def _points(services: Services, model: ModelInfo) -> list[charts.ScatterPoint]:
    settings = services.settings
    return charts.scatter_points(model, settings.prices, settings.worker_cores)


# -- sign-in --------------------------------------------------------------------------------------
@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next_path: str = Query("/console", alias="next")) -> Response:
    """The sign-in form (a browser cannot send a bearer header on navigation)."""
    return _login_page(request, None, status.HTTP_200_OK, next_path)


@router.post("/login")
def login(
    request: Request,
    services: ServicesDep,
    key: str = Form(..., max_length=512),
    next_path: str = Form("/console", alias="next"),
) -> Response:
    """Trade an admin key for a session cookie; tenant keys are refused, repeated failures throttled.

    A correct admin key signs in even while its address is throttled (see ``api.console.throttle``).
    """
    check_origin(request)
    throttle: SignInThrottle = request.app.state.signin_throttle
    address = request.client.host if request.client else ""
    principal = services.keyring.verify(key.strip()) if key.strip() else None
    if principal is None or not principal.is_admin:
        wait_s = throttle.retry_after(address)
        if wait_s:
            message = f"Too many failed sign-ins: try again in {wait_s} s."
            response = _login_page(request, message, status.HTTP_429_TOO_MANY_REQUESTS, next_path)
            response.headers["Retry-After"] = str(wait_s)
            return response
        throttle.failed(address)
        if principal is None:
            return _login_page(request, "That key is not valid.", status.HTTP_401_UNAUTHORIZED, next_path)
        refused = "That is a tenant key: the console needs an admin key."
        return _login_page(request, refused, status.HTTP_403_FORBIDDEN, next_path)
    _, cookie = issue_cookie(services, principal.key_id)
    response = RedirectResponse(_safe_next(next_path), status.HTTP_303_SEE_OTHER)
    set_session_cookie(request, response, cookie)
    return response


@router.post("/logout")
def logout(request: Request, session: ConsoleSessionDep, csrf: str = Form("")) -> Response:
    """Drop the session cookie."""
    check_csrf(request, session, csrf)
    response = RedirectResponse("/console/login", status.HTTP_303_SEE_OTHER)
    clear_session_cookie(response)
    return response


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    """The console's CSS and JS (public: they hold nothing secret, and the sign-in page needs them)."""
    path = STATIC_DIR / name
    if not _STATIC_NAME.fullmatch(name) or not path.is_file():
        raise NotFound("no such file")
    return FileResponse(path, headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


# -- pages ----------------------------------------------------------------------------------------
@router.get("", response_class=HTMLResponse)
def models_page(request: Request, session: ConsoleSessionDep, services: ServicesDep) -> Response:
    """Every registered model with its status, variant counts and current request rate."""
    rates = _model_rates(services)
    rows = [{"model": m, "counts": _counts(m), "rate": rates.get(m.name, 0.0)} for m in services.metadata.list_models()]
    return _render(request, session, "models.html", {"nav": "models", "rows": rows})


@router.get("/models/{name}", response_class=HTMLResponse)
def model_page(
    request: Request,
    name: str,
    session: ConsoleSessionDep,
    services: ServicesDep,
) -> Response:
    """One model: variants (accuracy with its metric and source, fidelity), build errors and skip reasons, and the
    latency–accuracy scatter."""
    model = _model_or_404(services, name)
    context = {
        "nav": "models",
        "model": model,
        "counts": _counts(model),
        "points": _points(services, model),
        "accuracy": {v.name: accuracy_of(model, v) for v in model.variants},
        "fidelity": {v.name: fidelity_of(v) for v in model.variants},
        "cascades": cascades_of(services, {model.name: model}),  # beside the variants (docs/cascades.md)
    }
    return _render(request, session, "model.html", context)


@router.get("/models/{name}/scatter.svg")
async def model_scatter(name: str, _session: ConsoleSessionDep, services: ServicesDep) -> Response:
    """The scatter plot as SVG (rendered off the event loop: matplotlib takes tens of milliseconds)."""
    model = _model_or_404(services, name)
    points = _points(services, model)
    svg = await run_in_threadpool(charts.scatter_svg, f"{model.name}: latency vs accuracy", points)
    return Response(svg, media_type="image/svg+xml", headers={"Cache-Control": "no-store"})


def _worker_rows(services: Services) -> list[dict[str, Any]]:
    live = _live(services)
    snapshot = live.snapshot()
    now = time.time()
    ttl = services.settings.heartbeat_ttl_s
    rows = []
    for worker in sorted(live.workers(), key=lambda w: w.id):
        instances = [
            {"instance": i, "depth": snapshot.depth(worker.id, i.variant_key)}
            for i in sorted(live.instances(worker.id), key=lambda i: i.variant_key)
        ]
        age = max(0.0, now - worker.heartbeat_at) if worker.heartbeat_at else None
        budget = worker.memory_budget_mb or 1.0
        rows.append(
            {
                "worker": worker,
                "instances": instances,
                "queue": sum(i["depth"] for i in instances),
                "heartbeat_age": age,
                "stale": age is None or age > ttl,
                "memory_pct": max(0.0, min(100.0, 100.0 * worker.memory_used_mb / budget)),
            }
        )
    return rows


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: ConsoleSessionDep, services: ServicesDep) -> Response:
    """Each worker: loaded instances, memory used of its budget, queue depth, heartbeat age."""
    return _render(request, session, "workers.html", {"nav": "workers", "rows": _worker_rows(services)})


def live_rows(services: Services) -> list[dict[str, Any]]:
    """Per-variant windowed statistics, busiest first (shared by the page and its JSON endpoint)."""
    stats = _live(services).variant_stats(LIVE_WINDOW_S)
    rows = [
        {
            "variant": s.variant_key,
            "rate_per_s": round(s.rate_per_s, 3),
            "requests": s.requests,
            "p50_ms": round(s.p50_ms, 3),
            "p99_ms": round(s.p99_ms, 3),
            "slo_miss_rate": round(s.slo_miss_rate, 4),
            "estimate_error_ms": round(s.mean_estimate_error_ms, 3),
            "total_requests": s.total_requests,
            "infeasible_rate": round(s.infeasible_rate, 4),
        }
        for s in stats.values()
    ]
    return sorted(rows, key=lambda r: (-r["rate_per_s"], r["variant"]))


def rejected_rows(services: Services) -> list[dict[str, Any]]:
    """Queries refused as infeasible (nothing ran) per model or task, most first; kept apart from served ones."""
    rows = [
        asdict(s) | {"rate_per_s": round(s.rate_per_s, 3)}
        for s in _live(services).rejection_stats(LIVE_WINDOW_S).values()
    ]
    return sorted(rows, key=lambda r: (-r["rejected"], -r["total_rejected"], r["target"]))


@router.get("/live", response_class=HTMLResponse)
def live_page(request: Request, session: ConsoleSessionDep, services: ServicesDep) -> Response:
    """Live per-variant statistics; ``console.js`` refreshes the table from ``/console/api/live``."""
    rows = live_rows(services)
    context = {
        "nav": "live",
        "rows": rows,
        "window_s": LIVE_WINDOW_S,
        "total": sum(r["total_requests"] for r in rows),
        "rejected": rejected_rows(services),
        "estimates": services.engine.calibration.report(),
    }
    return _render(request, session, "live.html", context)


@router.get("/api/live")
def live_json(_session: ConsoleSessionDep, services: ServicesDep) -> JSONResponse:
    """What the live page polls: the same rows, the total number of requests served, and the rejected queries."""
    rows = live_rows(services)
    body = {
        "at": time.time(),
        "window_s": LIVE_WINDOW_S,
        "total": sum(r["total_requests"] for r in rows),
        "rows": rows,
        "rejected": rejected_rows(services),
    }
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


@router.get("/decisions", response_class=HTMLResponse)
def decisions_page(
    request: Request,
    session: ConsoleSessionDep,
    services: ServicesDep,
    level: str | None = None,
) -> Response:
    """The autoscaler's decision log, newest first, with the inputs it acted on and its reason."""
    decisions = services.metadata.list_decisions(limit=200, level=level or None)
    return _render(request, session, "decisions.html", {"nav": "decisions", "decisions": decisions, "level": level})


@router.get("/pipelines", response_class=HTMLResponse)
def pipelines_page(request: Request, session: ConsoleSessionDep, services: ServicesDep) -> Response:
    """Every pipeline: its DAG, scale factors, stored plan per stage, and the tuner's recent decisions."""
    decisions = services.metadata.list_decisions(limit=500, level=PIPELINE_LEVEL)
    rows = [
        {"pipeline": p, "decisions": [d for d in decisions if d.target.startswith(f"{p.name}/")][:20]}
        for p in PipelineStore(services.db).list()
    ]
    return _render(request, session, "pipelines.html", {"nav": "pipelines", "rows": rows})


@router.get("/queries", response_class=HTMLResponse)
def queries_page(request: Request, session: ConsoleSessionDep, services: ServicesDep) -> Response:
    """The most recent queries: requirements, chosen variant, estimated against actual latency."""
    queries = [asdict(q) | {"slo_missed": q.slo_missed} for q in _live(services).recent_queries(200)]
    return _render(request, session, "queries.html", {"nav": "queries", "queries": queries, "now": time.time()})


# -- actions --------------------------------------------------------------------------------------
@router.get("/actions", response_class=HTMLResponse)
def actions_page(request: Request, session: ConsoleSessionDep, services: ServicesDep) -> Response:
    """Register or delete a model, unload a variant, drain or resume a worker."""
    context = {"nav": "actions", "models": services.metadata.list_models(), "workers": _worker_rows(services)}
    return _render(request, session, "actions.html", context)


def _result(request: Request, session: ConsoleSession, ok: bool, title: str, message: str, code: int) -> Response:
    context = {"nav": "actions", "ok": ok, "title": title, "message": message}
    return _render(request, session, "result.html", context, status_code=code)


def _confirm(request: Request, session: ConsoleSession, question: str, fields: dict[str, str]) -> Response:
    """Without JS the form arrives unconfirmed: ask on a page that re-posts with ``confirmed=yes``."""
    context = {"nav": "actions", "question": question, "action": request.url.path, "fields": fields}
    return _render(request, session, "confirm.html", context)


@router.post("/actions/register")
async def register_action(
    request: Request,
    session: ConsoleSessionDep,
    services: ServicesDep,
    model: UploadFile = File(...),
    name: str = Form(..., max_length=128),
    task: str = Form(..., max_length=128),
    accuracy: str = Form(""),
    max_batch: int = Form(16),
    public: bool = Form(False),
    validation: UploadFile | None = File(None),
    csrf: str = Form(""),
) -> Response:
    """Register an uploaded model exactly like ``POST /v1/models`` (same checks, build queued)."""
    check_csrf(request, session, csrf)
    try:
        declared = float(accuracy) if accuracy.strip() else None
    except ValueError:
        return _result(request, session, False, "Registration failed", "accuracy must be a number", 400)
    limit = int(services.settings.max_upload_mb * 1e6)
    workdir = make_scratch(services.settings, "console-")
    try:
        model_path = await save_upload(model, workdir, limit, "the model file")
        validation_path = None
        if validation is not None and validation.filename:
            validation_path = await save_upload(validation, workdir, limit, "the validation file")
        registration = RegistrationRequest(
            name=name.strip(),
            task=task.strip(),
            model_path=model_path,
            validation_path=validation_path,
            declared_accuracy=declared,
            max_batch=max_batch,
            owner=session.principal.tenant,
            public=public,
        )
        info = await run_in_threadpool(register_model, services, registration)
    except InfaasError as exc:  # a refused field, file, name or upload size: shown on the result page
        return _result(request, session, False, "Registration failed", exc.message, exc.status)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    message = f"Model {info.name!r} registered for task {info.task!r}; its variants are being built."
    return _result(request, session, True, "Model registered", message, status.HTTP_201_CREATED)


@router.post("/actions/delete")
def delete_action(
    request: Request,
    session: ConsoleSessionDep,
    services: ServicesDep,
    name: str = Form(...),
    confirmed: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Delete a model with its variants, profiles and files."""
    check_csrf(request, session, csrf)
    if not NAME_PATTERN.fullmatch(name):  # e.g. ".." or "a/../../b": not a name, so no store prefix either
        return _result(request, session, False, "Nothing deleted", f"{name[:200]!r} is not a model name.", 400)
    if confirmed != "yes":
        return _confirm(request, session, f"Delete model {name!r} and every file of it?", {"name": name})
    if not delete_model(services, name):
        return _result(request, session, False, "Nothing deleted", f"There is no model {name!r}.", 404)
    return _result(request, session, True, "Model deleted", f"Model {name!r} and its files are gone.", 200)


@router.post("/actions/unload")
def unload_action(
    request: Request,
    session: ConsoleSessionDep,
    services: ServicesDep,
    worker: str = Form(...),
    variant: str = Form(...),
    confirmed: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Unload a variant from a worker (the next query that needs it loads it again)."""
    check_csrf(request, session, csrf)
    fields = {"worker": worker, "variant": variant}
    if confirmed != "yes":
        return _confirm(request, session, f"Unload {variant} from worker {worker}?", fields)
    client = services.engine.workers.get(worker)
    if client is None:
        return _result(request, session, False, "Not unloaded", f"Worker {worker!r} is not reachable from here.", 404)
    if not client.unload(variant):
        return _result(request, session, False, "Not unloaded", f"{variant} is not loaded on {worker}.", 404)
    return _result(request, session, True, "Variant unloaded", f"{variant} was unloaded from {worker}.", 200)


@router.post("/actions/drain")
def drain_action(
    request: Request,
    session: ConsoleSessionDep,
    services: ServicesDep,
    worker: str = Form(...),
    drain: str = Form("yes"),
    confirmed: str = Form(""),
    csrf: str = Form(""),
) -> Response:
    """Drain a worker (no new queries are sent to it) or put a drained worker back in service."""
    check_csrf(request, session, csrf)
    draining = drain == "yes"
    verb = "Drain" if draining else "Resume"
    if confirmed != "yes":
        return _confirm(request, session, f"{verb} worker {worker}?", {"worker": worker, "drain": drain})
    live = _live(services)
    if worker not in {w.id for w in live.workers()}:
        return _result(request, session, False, f"{verb} failed", f"There is no worker {worker!r}.", 404)
    live.set_draining(worker, draining)
    message = (
        f"Worker {worker} is draining: it finishes its work and gets no new queries."
        if draining
        else f"Worker {worker} takes new queries again."
    )
    return _result(request, session, True, "Worker draining" if draining else "Worker resumed", message, 200)


__all__ = ["live_rows", "router"]
