"""A direct path to the inference endpoints, past FastAPI's routing and request machinery.

``POST /v1/infer`` and ``POST /v2/models/{name}[/versions/{version}]/infer`` are nearly every request a
serving system gets, and for a small model FastAPI's per-request work (trying routes in order, the
exit stacks, dependency solving, exception wrapping) costs more than selecting a variant and running
it. Both endpoints take only the ``Request`` and raise ``HTTPException`` for client errors, so this
pure-ASGI middleware can call them itself. It sits inside the body-size and concurrency limits, so
they still apply; the routes stay registered (OpenAPI, and any request this does not match, e.g. a
wrong method or a trailing slash, goes through the router as before). Other exceptions propagate to
Starlette's server-error middleware and become a 500, as they did from the router.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Awaitable[Response]]

_OIP_INFER = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")


class FastInferenceRoutes:
    """Serve the inference routes directly; everything else goes to the app."""

    def __init__(self, app: ASGIApp, v1_infer: Endpoint, oip_infer: Endpoint) -> None:
        self.app = app
        self.v1_infer = v1_infer
        self.oip_infer = oip_infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path == "/v1/infer":
                await self._serve(self.v1_infer, {}, scope, receive, send)
                return
            if path.startswith("/v2/models/"):
                match = _OIP_INFER.fullmatch(path)
                if match is not None:
                    params = {k: v for k, v in match.groupdict().items() if v is not None}
                    await self._serve(self.oip_infer, params, scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @staticmethod
    async def _serve(endpoint: Endpoint, params: dict[str, str], scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_params"] = params
        request = Request(scope, receive, send)
        try:
            response = await endpoint(request)
        except HTTPException as exc:  # rendered by FastAPI's own handler (the app registers no other)
            response = await http_exception_handler(request, exc)  # type: ignore[arg-type]
        await response(scope, receive, send)
