"""Renders every ``InfaasError`` in one place, for every route and for the inference fast path.

``/v1`` and the console answer ``{"detail": message, "code": code}`` (``detail`` as FastAPI's own errors,
so clients read one field whatever raised). ``/v2`` answers ``{"error": message}`` with the statuses
Triton uses: it has no 422, so an unreachable accuracy floor is a 400 there.

A backing service that does not answer (PostgreSQL, Redis, the broker: their drivers raise their own
connection errors from deep inside any route) is translated here, once, into ``BackendUnavailable``: a
503 with ``Retry-After``, which tells a client to retry rather than that the request was wrong or the
server broken. ``Retry-After`` is 2 s: a restarted PostgreSQL or Redis answers again within about a
second on this machine, and a client retrying sooner only adds load while it is down.
"""

from __future__ import annotations

import logging

import kombu.exceptions
import orjson
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from infaas.errors import BackendUnavailable, InfaasError

log = logging.getLogger(__name__)

OIP_PREFIX = "/v2"
_OIP_STATUS = {422: 400}  # Triton's statuses: no 422
RETRY_AFTER_S = 2.0

# Errors that mean a backing service is down or unreachable, with the name a caller is told.
BACKEND_OUTAGES: dict[type[Exception], str] = {
    sqlalchemy.exc.OperationalError: "the metadata database",  # refused, dropped or reset connections
    sqlalchemy.exc.InterfaceError: "the metadata database",  # a connection closed under a query
    sqlalchemy.exc.TimeoutError: "the metadata database",  # no pooled connection freed in time
    redis.exceptions.ConnectionError: "Redis",
    redis.exceptions.TimeoutError: "Redis",
    kombu.exceptions.OperationalError: "the job broker",
}
# Every exception type the app renders through ``handle`` (the fast path uses the same handlers).
RENDERED: tuple[type[Exception], ...] = (InfaasError, *BACKEND_OUTAGES)


def domain_error(exc: Exception) -> InfaasError:
    """``exc`` as the error a caller sees: itself, or ``BackendUnavailable`` for an outage of a backing service."""
    if isinstance(exc, InfaasError):
        return exc
    for kind, service in BACKEND_OUTAGES.items():
        if isinstance(exc, kind):
            return BackendUnavailable(f"{service} is not answering; retry in a few seconds", RETRY_AFTER_S)
    raise TypeError(f"{type(exc).__name__} is not an error infaas renders") from exc


def _is_oip(path: str) -> bool:
    return path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/")


def render(path: str, exc: InfaasError) -> Response:
    """The response for ``exc`` on a request to ``path``."""
    if _is_oip(path):
        status = _OIP_STATUS.get(exc.status, exc.status)
        body = {"error": exc.message}
    else:
        status = exc.status
        body = {"detail": exc.message, "code": exc.code}
    return Response(orjson.dumps(body), status_code=status, headers=exc.headers, media_type="application/json")


def inference_endpoint(path: str) -> str | None:
    """The ``endpoint`` label (``infaas.metrics``) of an inference path, ``None`` for any other path."""
    if path == "/v1/infer":
        return "v1"
    if path.endswith("/infer"):
        if path.startswith(OIP_PREFIX + "/models/"):
            return "oip"
        if path.startswith("/v1/pipelines/"):
            return "pipeline"
    return None


async def refuse(scope: Scope, receive: Receive, send: Send, refusal: InfaasError) -> None:
    """Answer ``refusal`` from a middleware (outside the app's exception handlers), counting it in the metrics
    when it refuses an inference request: a 401, 413 or per-key 429 never reaches the engine, which counts the
    rest, so without this ``infaas_requests_total`` would miss exactly the refusals an operator alerts on."""
    endpoint = inference_endpoint(scope["path"])
    if endpoint is not None:
        app = scope.get("app")
        services = getattr(getattr(app, "state", None), "services", None)
        metrics = getattr(getattr(services, "engine", None), "metrics", None)
        if metrics is not None:
            metrics.failed(endpoint, refusal)
    await render(scope["path"], refusal)(scope, receive, send)


async def handle(request: Request, exc: Exception) -> Response:
    """The app's handler for the error root and backing-service outages (typed ``Exception`` by FastAPI).

    A 5xx is the server's problem and logged (an ``error`` event, with the request id); a 4xx is the caller's
    and is not, so no client can flood the log."""
    error = domain_error(exc)
    if error.status >= 500:
        log.warning(
            "%s %s answered %d: %s",
            request.method,
            request.url.path,
            error.status,
            error.message,
            extra={"event": "error", "status": error.status, "code": error.code},
        )
    return render(request.url.path, error)


# The framework's own refusals (no such route, wrong method, a query parameter out of range) in the same
# shapes: ``code`` beside FastAPI's ``detail`` on /v1 (its validation list kept, as the OpenAPI documents it),
# ``{"error"}`` on /v2.
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 429: "too_many_requests"}


async def handle_http(request: Request, exc: Exception) -> Response:
    """Starlette's ``HTTPException`` (unknown routes, wrong methods) in the house shape."""
    assert isinstance(exc, HTTPException)
    if exc.status_code in {204, 304}:
        return Response(status_code=exc.status_code, headers=exc.headers)
    if _is_oip(request.url.path):
        body: dict[str, object] = {"error": str(exc.detail)}
    else:
        body = {"detail": exc.detail, "code": _HTTP_CODES.get(exc.status_code, "http_error")}
    return Response(orjson.dumps(body), status_code=exc.status_code, headers=exc.headers, media_type="application/json")


async def handle_validation(request: Request, exc: Exception) -> Response:
    """FastAPI's parameter validation: 422 with its list of errors and a ``code`` on /v1, a 400 on /v2."""
    assert isinstance(exc, RequestValidationError)
    errors = jsonable_encoder(exc.errors())
    if _is_oip(request.url.path):
        where = "; ".join(f"{'.'.join(str(part) for part in e.get('loc', ()))}: {e.get('msg')}" for e in errors)
        return Response(orjson.dumps({"error": f"invalid request: {where}"}), 400, media_type="application/json")
    body = {"detail": errors, "code": "invalid_request"}
    return Response(orjson.dumps(body), status_code=422, media_type="application/json")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``: the error root, every backing-service outage, the framework's own."""
    for kind in RENDERED:
        app.add_exception_handler(kind, handle)
    app.add_exception_handler(HTTPException, handle_http)
    app.add_exception_handler(RequestValidationError, handle_validation)
