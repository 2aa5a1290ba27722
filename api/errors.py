"""Renders every ``InfaasError`` in one place, for every route and for the inference fast path.

``/v1`` and the console answer ``{"detail": message, "code": code}`` (``detail`` as FastAPI's own errors,
so clients read one field whatever raised). ``/v2`` answers ``{"error": message}`` with the statuses
Triton uses: it has no 422, so an unreachable accuracy floor is a 400 there.
"""

from __future__ import annotations

import orjson
from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from infaas.errors import InfaasError

OIP_PREFIX = "/v2"
_OIP_STATUS = {422: 400}  # Triton's statuses: no 422


def render(path: str, exc: InfaasError) -> Response:
    """The response for ``exc`` on a request to ``path``."""
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        status = _OIP_STATUS.get(exc.status, exc.status)
        body = {"error": exc.message}
    else:
        status = exc.status
        body = {"detail": exc.message, "code": exc.code}
    return Response(orjson.dumps(body), status_code=status, headers=exc.headers, media_type="application/json")


async def handle(request: Request, exc: Exception) -> Response:
    """The app's handler for the error root (FastAPI passes the exception typed as ``Exception``)."""
    assert isinstance(exc, InfaasError)
    return render(request.url.path, exc)


def install(app: FastAPI) -> None:
    """Register the one handler on ``app``."""
    app.add_exception_handler(InfaasError, handle)
